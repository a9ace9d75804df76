"""Transferability between an ensemble's members (DVERGE's figures): the (M, M) matrix of
member j's accuracy on examples crafted on member i (`parl_core.evaluate` re-exports it)."""
from __future__ import annotations

from numbers import Real

import numpy as np
import torch

from .attacks import _spec
from .ensemble import Ensemble
from .memory import rows_per_pass

__all__ = ["transferability_matrix"]


def transferability_matrix(ens, x, y, *, attack="pgd", eps, steps=50, step_size=None, restarts=1,
                           decay=0.01, seed=0, bounds=(0.0, 1.0), batch_size=None,
                           metric="accuracy") -> np.ndarray:
    """(M, M) matrix between members: row i = examples crafted on member i, column j = member j.

    metric "accuracy" (default): member j's ACCURACY on every example crafted on member i,
      so the diagonal is each member's white-box accuracy.
    metric "success_rate": as DVERGE's figures report it, the share of the examples member
      j classifies correctly when clean that the attack from member i makes it misclassify.
    With restarts, an example counts as correct only if every restart's example is.
    Memory-bounded like `robustness_curve` (batch_size caps the rows per pass).
    """
    if not isinstance(ens, Ensemble):
        raise ValueError(f"ens must be a parl_core.Ensemble, got {type(ens).__name__}")
    if not isinstance(eps, Real):
        raise ValueError(f"eps must be one number, got {eps!r}")
    if metric not in ("accuracy", "success_rate"):
        raise ValueError(f"metric must be 'accuracy' or 'success_rate', got {metric!r}")
    from .evaluate import _crafted, _score  # evaluate imports this module
    spec = _spec(attack, eps, steps, step_size, restarts, decay, seed, bounds, "ensemble", False)
    x, y = x.detach().cpu(), y.detach().cpu()
    m_n = len(ens.members)
    score_rows = rows_per_pass(ens, x[0], grad=False, cap=batch_size) if len(x) else 1
    clean = _score(ens, x, y, score_rows)[1]  # (M, N)
    out = np.zeros((m_n, m_n))
    for i, member in enumerate(ens.members):
        rows = rows_per_pass(member, x[0], grad=True, cap=batch_size) if len(x) else 1
        correct = torch.ones(m_n, len(x), dtype=torch.bool)
        for sl, _, _, _, adv in _crafted(spec, member, x, y, rows):
            r_n = adv.shape[1]
            _, mem = _score(ens, adv.reshape(-1, *x.shape[1:]), y[sl].repeat(r_n), score_rows)
            correct[:, sl] &= mem.view(m_n, r_n, -1).all(1)
        if metric == "accuracy":
            out[i] = correct.double().mean(1).numpy()
        else:
            out[i] = ((clean & ~correct).sum(1).double() / clean.sum(1).clamp(min=1)).numpy()
    return out
