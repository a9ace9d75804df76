"""APGD-T: APGD on the targeted DLR loss (Croce & Hein 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks"; AutoAttack's
"apgd-t"), L∞, in pixel space. Reached through `parl_core.attack("apgd-t", ...)`.

    DLR_t(z, y) = −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e−12)

z_π1 ≥ z_π2 ≥ … are the outputs sorted decreasingly and t the target class (AutoAttack's
`dlr_loss_targeted`); maximising it pushes z_t above z_y. Needs ≥ 4 classes. z is the
model's output: for an Ensemble its log-mean-softmax (its `forward`), as APGD-DLR uses.

Targets are restarts. Restart r (its absolute index, first_restart + r) attacks the
(k+1)-th most likely wrong class of the clean prediction, k = r mod (C − 1): classes are
ranked by the model's output on the clean input with y left out (for a correctly
classified example these are AutoAttack's targets, the 2nd, 3rd, … largest outputs; for a
misclassified one the target is still a wrong class). AutoAttack's standard apgd-t
(n_target_classes = 9, one run each: every wrong class on 10 classes) is restarts = 9;
restarts beyond C − 1 attack the ranks again from other starts. Each restart draws its
own uniform start in the ε-ball (apgd-dlr's restart r draws the same) and runs APGD's
step-size schedule and checkpoints (`parl_core.apgd`) unchanged, all (ε, restart,
example) rows in one batched loop.

Success is fooling the model (its decision ≠ y; an Ensemble's majority vote), not
reaching t, as in AutoAttack, and an example counts as fooled if any target's run fools
it: `attack` returns, per example, a restart that fools the model (among those, or all,
the highest untargeted DLR loss, which compares across targets), and an evaluation
counts an example as robust only if every restart's example is classified correctly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import apgd
from .ensemble import Ensemble

__all__ = ["craft", "targeted_dlr", "target_classes", "MIN_CLASSES"]

MIN_CLASSES = 4  # z_π4 in the denominator


def _check_classes(c: int):
    if c < MIN_CLASSES:
        raise ValueError(f"apgd-t (the targeted DLR loss) needs at least {MIN_CLASSES} classes, "
                         f"the model has {c}")


def targeted_dlr(z, y, t) -> torch.Tensor:
    """−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e−12) per example, from outputs z (N, C),
    labels y (N,) and targets t (N,) -> (N,)."""
    if not torch.is_tensor(z) or z.dim() != 2:
        raise ValueError(f"z must be an (N, C) tensor, got {tuple(getattr(z, 'shape', ()))}")
    _check_classes(z.shape[1])
    if y.shape != (len(z),) or t.shape != (len(z),):
        raise ValueError(f"y and t must be ({len(z)},), got {tuple(y.shape)} and {tuple(t.shape)}")
    top = z.topk(4, dim=1).values
    zy, zt = z.gather(1, y[:, None]).squeeze(1), z.gather(1, t[:, None]).squeeze(1)
    return (zt - zy) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def _output(model, x):
    """(z (N, C), decision (N,)): an Ensemble's log-mean-softmax and majority vote, a
    module's logits and argmax."""
    if isinstance(model, Ensemble):
        ml = model.member_logits(x)  # (M, N, C)
        z = torch.logsumexp(F.log_softmax(ml, -1), 0) - math.log(len(ml))  # = Ensemble.forward
        return z, Ensemble.vote(ml.detach())
    z = model(x)
    return z, z.detach().argmax(-1)


def _loss(model, x, y, t):
    """The loss `apgd.craft` maximises: (DLR_t (N,), decision (N,))."""
    z, pred = _output(model, x)
    return targeted_dlr(z, y, t), pred


@torch.no_grad()
def target_classes(model, x, y, restarts: int, first_restart: int = 0) -> torch.Tensor:
    """(R, N) target classes: restart r attacks the (k+1)-th most likely wrong class of the
    clean output, k = (first_restart + r) mod (C − 1); ties by class index."""
    if not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an int >= 1, got {restarts!r}")
    if not isinstance(first_restart, int) or first_restart < 0:
        raise ValueError(f"first_restart must be an int >= 0, got {first_restart!r}")
    z, _ = _output(model, x)
    c = z.shape[1]
    _check_classes(c)
    wrong = z.float().scatter(1, y[:, None], -math.inf)  # y ranks last
    order = wrong.sort(dim=1, descending=True, stable=True).indices  # (N, C)
    ranks = [(first_restart + r) % (c - 1) for r in range(restarts)]
    return order[:, ranks].T.contiguous()


def craft(spec, model, x, y, *, tick=None, cancel=None) -> torch.Tensor:
    """APGD-T on every (ε, restart, example) row of `spec` -> (E, R, N, ...)."""
    targets = target_classes(model, x, y, spec.restarts, spec.first_restart)  # (R, N)
    rows = targets.reshape(-1).repeat(len(spec.eps))  # (E, R, N) flattened
    return apgd.craft(spec, model, x, y, tick=tick, cancel=cancel, loss=_loss, target=rows)
