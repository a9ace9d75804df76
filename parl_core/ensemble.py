"""An ensemble of classifiers, as the paper and DESIGN §3 define its outputs."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Ensemble", "eval_mode"]


@contextlib.contextmanager
def eval_mode(models):
    """Every submodule of `models` (a module or a list of modules) in eval mode inside the
    block; each submodule's own train/eval flag is restored afterwards."""
    mods = [models] if isinstance(models, nn.Module) else list(models)
    flags = [(m, m.training) for model in mods for m in model.modules()]
    for model in mods:
        model.eval()
    try:
        yield models
    finally:
        for m, was in flags:
            m.training = was


class Ensemble(nn.Module):
    """M member models trained and attacked together.

    `ens(x)` is the log of the mean of the members' softmax: differentiable, and the
    output attacks differentiate. `ens.predict(x)` is the paper's decision: majority
    vote of the members, ties broken by the mean probability.
    """

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if len(members) < 1:
            raise ValueError("an Ensemble needs at least one member, got 0")
        bad = [i for i, m in enumerate(members) if not isinstance(m, nn.Module)]
        if bad:
            raise ValueError(f"Ensemble members must be torch.nn.Module; members {bad} are not")
        self.members = nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def config(self) -> dict:
        """The first member's config (members share architecture in this project)."""
        return getattr(self.members[0], "config", {})

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(M, N, classes) logits of every member."""
        return torch.stack([m(x) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(self.member_logits(x), dim=-1)  # (M, N, C)
        return torch.logsumexp(logp, 0) - math.log(len(self.members))  # (N, C)

    @staticmethod
    def vote(member_logits: torch.Tensor) -> torch.Tensor:
        """Majority vote from (M, N, C) logits, ties broken by the mean probability -> (N,)."""
        m, n, c = member_logits.shape
        votes = F.one_hot(member_logits.argmax(-1), c).sum(0).float()  # (N, C)
        mean_p = F.softmax(member_logits.float(), -1).mean(0)  # (N, C) in [0, 1]
        # A difference of one vote (weight 2) always outweighs the tie-break (< 1).
        return (2.0 * votes + mean_p).argmax(-1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) majority-vote class of each input."""
        return self.vote(self.member_logits(x))
