"""APGD-CE and APGD-DLR (Croce & Hein 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks"), L∞, in pixel space.

Reached through `parl_core.attack("apgd-ce" | "apgd-dlr", ...)`; `craft` runs every
(ε, restart, example) row of one call in one batched loop, as the paper's attacks do.
APGD-T (`parl_core.apgd_targeted`) runs this same loop on its targeted DLR loss.

    x^(0)   = Π(x + U(−ε, ε))                 uniform start (PGD's draw: same seed, same start)
    η^(0)   = 2ε
    z       = Π(x^(k) + η·sign(∇f(x^(k))))
    x^(k+1) = Π(x^(k) + α(z − x^(k)) + (1 − α)(x^(k) − x^(k−1)))     α = 0.75 (1 at k = 0)

At the checkpoints w_j = ⌈p_j·N⌉ of N = `steps` iterations (p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), as the paper defines them; AutoAttack's
integer version can differ by an iteration when 0.03·N is not whole) an example's step
size is halved, and its iterate restarts from its best point x_max (with the gradient
there), when

    1. fewer than ρ = 0.75 of the period's steps raised its loss (f(x^(i+1)) > f(x^(i))), or
    2. neither its step size nor its best loss changed since the previous checkpoint
       (the paper's condition; at w_1 it compares with the start).

f is the cross-entropy (APGD-CE) or the DLR loss (APGD-DLR, ≥ 3 classes) of the model's
output: for an Ensemble the log-mean-softmax (its `forward`) is used as the logits, so
DLR's differences are of log mean probabilities. An example's result is its last iterate
that fools the model (an Ensemble: the majority vote), else its highest-loss iterate
(x_max). Π projects onto the ε-ball, then onto `bounds`. With early_stop, examples leave
the batch once fooled.
"""
from __future__ import annotations

import math

import torch

from .attacks import _layout, _project, _stopper, input_loss

__all__ = ["craft", "checkpoints", "RHO", "MOMENTUM"]

RHO = 0.75       # condition 1: the share of loss-raising steps a period needs
MOMENTUM = 0.75  # α


def checkpoints(steps: int) -> list[tuple[int, int]]:
    """[(w_j, w_j − w_{j−1})]: the iterations w_j = ⌈p_j·steps⌉ after which the step size
    is checked, and the length of the period each one closes."""
    p, out = [0.0, 0.22], []
    while p[-1] <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    for v in p[1:]:
        w = math.ceil(round(v * steps, 9))  # round: 0.57·100 is 57.000000000000007 in floats
        if v <= 1 and w > (out[-1][0] if out else 0):
            out.append((w, w - (out[-1][0] if out else 0)))
    return out


def _loss_grad(model, x, y, loss, target=None):
    """(loss (N,), ∇_x loss, fooled (N,) bool) at x. loss: a name of ATTACK_LOSSES, or a
    callable (model, x, y, target) -> (loss (N,), decision (N,)) (APGD-T's targeted DLR)."""
    xi = x.detach().requires_grad_(True)
    if callable(loss):
        per, pred = loss(model, xi, y, target)
    else:
        per, pred = input_loss(model, xi, y, loss, need_pred=True)
    (grad,) = torch.autograd.grad(per.sum(), xi)
    return per.detach(), grad, pred != y


def craft(spec, model, x, y, *, tick=None, cancel=None, loss=None, target=None) -> torch.Tensor:
    """APGD on every (ε, restart, example) row of `spec` -> (E, R, N, ...).

    loss: spec.loss by default, or a callable (model, x, y, target) -> (loss, decision),
    given `target` (E·R·N,), one entry per row (`parl_core.apgd_targeted`)."""
    e_n, r_n, n = len(spec.eps), spec.restarts, len(x)
    xa, lo, hi, _ = _layout(spec, x)
    rows, view = len(xa), (-1,) + (1,) * (x.dim() - 1)
    eta = torch.tensor([2.0 * e for e in spec.eps], dtype=x.dtype, device=x.device)
    yr, objective = y.repeat(e_n * r_n), spec.loss if loss is None else loss
    if target is not None and target.shape != yr.shape:
        raise ValueError(f"target must hold one class per row {tuple(yr.shape)}, got {tuple(target.shape)}")
    loss, grad, fooled = _loss_grad(model, xa, yr, objective, target)
    st = {"x": xa, "prev": xa, "grad": grad, "loss": loss, "best": xa, "best_loss": loss,
          "best_grad": grad, "hit": xa, "fooled": fooled, "lo": lo, "hi": hi, "y": yr,
          "eta": eta.repeat_interleave(r_n * n).view(view), "ups": torch.zeros_like(loss),
          "check_loss": loss, "reduced": torch.zeros_like(fooled),
          "idx": torch.arange(rows, device=x.device)}
    if target is not None:  # sliced with the rest when fooled rows leave the batch
        st["t"] = target
    out = xa.clone()
    check_cancel, marks = _stopper(cancel), dict(checkpoints(spec.steps))

    def finish(sel):  # the result of the rows `sel`: last fooling iterate, else x_max
        out[st["idx"][sel]] = torch.where(st["fooled"][sel].view(view), st["hit"][sel], st["best"][sel])

    for i in range(spec.steps):
        check_cancel()
        if spec.early_stop and bool(st["fooled"].any()):  # fooled rows leave the batch
            finish(st["fooled"])
            st = {k: v[~st["fooled"]] for k, v in st.items()}
            if not len(st["idx"]):
                break
        a, cur = (MOMENTUM if i > 0 else 1.0), st["x"]
        z = _project(cur + st["eta"] * st["grad"].sign(), st["lo"], st["hi"], spec.bounds)
        new = _project(cur + a * (z - cur) + (1 - a) * (cur - st["prev"]), st["lo"], st["hi"],
                       spec.bounds)
        loss, grad, now = _loss_grad(model, new, st["y"], objective, st.get("t"))
        st["ups"] = st["ups"] + (loss > st["loss"]).to(loss.dtype)
        better = loss > st["best_loss"]
        b = better.view(view)
        st.update(prev=cur, x=new, grad=grad, loss=loss, best=torch.where(b, new, st["best"]),
                  best_grad=torch.where(b, grad, st["best_grad"]),
                  best_loss=torch.where(better, loss, st["best_loss"]),
                  hit=torch.where(now.view(view), new, st["hit"]), fooled=st["fooled"] | now)
        if tick is not None:
            tick(len(new))
        if i + 1 in marks:  # a checkpoint: halve η and restart from x_max where it stalls
            period = marks[i + 1]
            stale = ~st["reduced"] & (st["best_loss"] <= st["check_loss"])
            cut = (st["ups"] < RHO * period) | stale
            c = cut.view(view)
            st.update(eta=torch.where(c, st["eta"] / 2, st["eta"]),
                      x=torch.where(c, st["best"], st["x"]),
                      grad=torch.where(c, st["best_grad"], st["grad"]),
                      loss=torch.where(cut, st["best_loss"], st["loss"]), reduced=cut,
                      check_loss=st["best_loss"], ups=torch.zeros_like(st["ups"]))
    if len(st["idx"]):
        finish(slice(None))
    return out.view(e_n, r_n, n, *x.shape[1:])
