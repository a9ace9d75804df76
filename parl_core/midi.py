"""MI-DI: the momentum iterative attack with input diversity (Xie et al., CVPR 2019,
"Improving transferability of adversarial examples with input diversity", M-DI²-FGSM),
L∞, in pixel space. A transfer attack: the random transform keeps the examples from
over-fitting the surrogate they are crafted on.

Reached through `parl_core.attack("mi-di", ...)` (and `robustness_curve`,
`evaluate_checkpoints`, the CLI's `evaluate --attacks mi-di`), or `mi_di` below, which
also takes the transform's `prob` and `ratio`. It is our MIM with one change, the
gradient is taken through a random transform T of the iterate:

    g       ← decay·g + ∇_x J(T(x^(k)), y) / ‖∇_x J(T(x^(k)), y)‖₁
    x^(k+1) = Π(x^(k) + α·sign(g))                         (x^(0) = x, α = ε/5 by default)

T, drawn afresh at every step for every (restart, example) row: with probability `prob`
(default 0.5; otherwise T is the identity) the H×W image is resized (nearest neighbour,
as the published code) to (H + o)×(W + o), o uniform in {0, …, P − 1}, and placed at a
uniform offset on a zero canvas of (H + P)×(W + P), P = ⌈S·(1 + ratio)⌉ − S ≥ 1 with
S = max(H, W) (ratio 0.1: 32×32 → side in [32, 36) on a 36×36 canvas, as 299 → [299, 330)
in the paper). Our models take their own input size, so the canvas is resized back to
H×W (bilinear, align_corners=False) — the published code feeds the 330×330 canvas to an
Inception network, which accepts any size. The offset ranges over every placement
({0, …, P − o} per axis); the published code draws from {0, …, P − o − 1} and so never
touches the far edge. On 8×8 digits (P = 1) the side stays 8 and four placements remain.

T is one linear map per row (out = A_h · x · A_wᵀ per channel, the matrices built from
F.interpolate), so every row gets its own draw in one batched, differentiable step.
Draws come from restart r's own generator (`attacks._restart_seed`), the same for every
ε and whichever rows are still attacked: a batched call gives what separate calls give.
With prob = 0 the loop is MIM's, step for step.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from numbers import Real

import torch
import torch.nn.functional as F

from .attacks import _l1_normalised, _layout, _project, _restart_seed, _stopper, attack, input_loss

__all__ = ["mi_di", "input_diversity", "options", "current_options", "padded_size", "craft",
           "PROB", "RATIO"]

PROB = 0.5   # the paper's p
RATIO = 0.1  # canvas side over image side, minus 1 (330 / 299 ≈ 1.1)
_OPTIONS = contextvars.ContextVar("parl_core_midi_options", default=(PROB, RATIO))


def _check_options(prob, ratio) -> tuple[float, float]:
    if not isinstance(prob, Real) or isinstance(prob, bool) or not 0 <= prob <= 1:
        raise ValueError(f"prob must be a number in [0, 1], got {prob!r}")
    if not isinstance(ratio, Real) or isinstance(ratio, bool) or not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"ratio must be a finite number > 0, got {ratio!r}")
    return float(prob), float(ratio)


@contextlib.contextmanager
def options(prob: float = PROB, ratio: float = RATIO):
    """Within the block, "mi-di" (however it is reached) uses this `prob` and `ratio`.
    Per thread and task (a context variable): concurrent evaluations do not see it."""
    token = _OPTIONS.set(_check_options(prob, ratio))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def current_options() -> dict:
    """{"prob", "ratio"}: what "mi-di" uses here and now (the defaults outside `options`)."""
    prob, ratio = _OPTIONS.get()
    return {"prob": prob, "ratio": ratio}


def padded_size(side: int, ratio: float = RATIO) -> int:
    """The canvas side for images of `side` pixels: ⌈side·(1 + ratio)⌉, at least side + 1."""
    return max(side + 1, math.ceil(round(side * (1 + ratio), 9)))


# --------------------------------------------------------------------------- the transform
def _matrices(side: int, pad: int, dtype, device) -> torch.Tensor:
    """(pad, pad + 1, side, side): M[o, t] maps one axis of the image to the transformed
    axis — nearest resize to side + o, placed at offset t on a zero canvas of side + pad,
    bilinear resize back to side. Entries with t > pad − o are never used (zeros)."""
    canvas_side, eye = side + pad, torch.eye(side + pad, dtype=torch.float64)
    back = F.interpolate(eye[None], size=side, mode="linear", align_corners=False)[0].T  # (side, canvas)
    out = torch.zeros(pad, pad + 1, side, side, dtype=torch.float64)
    for o in range(pad):
        near = F.interpolate(torch.eye(side, dtype=torch.float64)[None], size=side + o,
                             mode="nearest")[0].T  # (side + o, side)
        for t in range(pad - o + 1):
            place = torch.zeros(canvas_side, side, dtype=torch.float64)
            place[t:t + side + o] = near
            out[o, t] = back @ place
    return out.to(dtype=dtype, device=device)


def _draw(gens, n: int, pad: int, prob: float) -> torch.Tensor:
    """(4, R, N) long: per restart generator and example, applied (0/1), o, top, left."""
    out = []
    for g in gens:
        apply = torch.rand(n, generator=g) < prob
        o = torch.randint(0, pad, (n,), generator=g)
        top = (torch.rand(n, generator=g) * (pad - o + 1)).floor().long().clamp(max=pad - o)
        left = (torch.rand(n, generator=g) * (pad - o + 1)).floor().long().clamp(max=pad - o)
        out.append(torch.stack([apply.long(), o, top, left]))
    return torch.stack(out, 1)


def _diverse(x, draw, mh, mw):
    """T(x) (R, C, H, W) for the rows whose draw (4, R) says applied, x itself elsewhere."""
    idx = draw[0].nonzero().squeeze(1)
    if not len(idx):
        return x
    o, top, left = draw[1, idx], draw[2, idx], draw[3, idx]
    t = torch.einsum("aij,acjk,alk->acil", mh[o, top], x[idx], mw[o, left])  # (A, C, H, W)
    return x.index_put((idx,), t)


def input_diversity(x, prob: float = PROB, ratio: float = RATIO, *, generator=None):
    """MI-DI's random transform of a batch x (N, C, H, W) -> (T(x) (N, C, H, W), applied
    (N,) bool). Each example draws its own transform (see the module docstring); those
    not applied (probability 1 − prob) are returned unchanged. Differentiable in x."""
    prob, ratio = _check_options(prob, ratio)
    if not torch.is_tensor(x) or x.dim() != 4:
        raise ValueError(f"x must be an (N, C, H, W) tensor, got {tuple(getattr(x, 'shape', ()))}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be None or a torch.Generator, got {type(generator).__name__}")
    h, w = x.shape[2:]
    pad = padded_size(max(h, w), ratio) - max(h, w)
    g = generator if generator is not None else torch.Generator().manual_seed(
        int(torch.randint(0, 2 ** 62, ())))
    draw = _draw([g], len(x), pad, prob)[:, 0].to(x.device)
    mh, mw = _matrices(h, pad, x.dtype, x.device), _matrices(w, pad, x.dtype, x.device)
    return _diverse(x, draw, mh, mw), draw[0].bool()


# --------------------------------------------------------------------------- the attack
def craft(spec, model, x, y, *, tick=None, cancel=None) -> torch.Tensor:
    """MI-DI on every (ε, restart, example) row of `spec` -> (E, R, N, ...). MIM's loop
    (`attacks._craft`), the gradient taken through `input_diversity`'s transform."""
    if x.dim() != 4:
        raise ValueError(f"mi-di needs image inputs (N, C, H, W), got shape {tuple(x.shape)}")
    prob, ratio = _OPTIONS.get()
    e_n, r_n, n = len(spec.eps), spec.restarts, len(x)
    xa, lo, hi, alpha = _layout(spec, x)  # x^(0) = x: no random start, as MIM
    rows, view = len(xa), (-1,) + (1,) * (x.dim() - 1)
    yr = y.repeat(e_n * r_n)
    mom = torch.zeros_like(xa)
    h, w = x.shape[2:]
    pad = padded_size(max(h, w), ratio) - max(h, w)
    mh, mw = _matrices(h, pad, x.dtype, x.device), _matrices(w, pad, x.dtype, x.device)
    gens = [torch.Generator().manual_seed(_restart_seed(spec.seed, spec.first_restart + r))
            for r in range(r_n)]
    row = torch.arange(rows, device=x.device)
    r_of, ex = (row // n) % r_n, row % n
    active = None  # row indices still attacked (early stop); None = every row
    check_cancel = _stopper(cancel)
    for _ in range(spec.steps):
        check_cancel()
        draws = _draw(gens, n, pad, prob).to(x.device)  # drawn for every row, attacked or not
        sel = slice(None) if active is None else active
        xi = xa[sel].detach().requires_grad_(True)
        draw = draws[:, r_of[sel], ex[sel]]
        per, pred = input_loss(model, _diverse(xi, draw, mh, mw), yr[sel], spec.loss,
                               need_pred=spec.early_stop)
        if spec.early_stop and bool(draw[0].any()):  # the decision on the iterate itself
            with torch.no_grad():
                pred = input_loss(model, xi.detach(), yr[sel], spec.loss, need_pred=True)[1]
        (grad,) = torch.autograd.grad(per.sum(), xi)
        grad = mom[sel] = spec.decay * mom[sel] + _l1_normalised(grad)
        new = _project(xi.detach() + alpha[sel] * grad.sign(), lo[sel], hi[sel], spec.bounds)
        if spec.early_stop:  # examples already fooled keep their iterate and leave the batch
            still = pred == yr[sel]
            new = torch.where(still.view(view), new, xi.detach())
            active = (row if active is None else active)[still]
        xa[sel] = new
        if tick is not None:
            tick(len(per))
        if active is not None and len(active) == 0:
            break
    return xa.view(e_n, r_n, n, *x.shape[1:])


def mi_di(model, x, y, eps, steps=50, step_size=None, restarts=1, decay=0.01, seed=0,
          bounds=(0.0, 1.0), *, prob: float = PROB, ratio: float = RATIO, loss="ensemble",
          early_stop=False, on_step=None, cancel=None):
    """`parl_core.attack("mi-di", ...)` with the transform's probability `prob` and canvas
    `ratio` (module docstring); every other argument as `attack`'s (decay: MIM's, 0.01 as
    the paper's MIM; restarts: independent transform draws, the attacker keeps per example
    the one that fools the model, else the highest loss). prob = 0 gives MIM's examples."""
    with options(prob, ratio):
        return attack("mi-di", model, x, y, eps, steps, step_size, restarts, decay, seed, bounds,
                      loss=loss, early_stop=early_stop, on_step=on_step, cancel=cancel)
