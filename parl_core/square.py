"""The Square attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search"), L∞, in pixel space.

Reached through `parl_core.attack("square", ...)`. It needs forward passes only, so it
is the masking check: a model whose gradients are masked still falls to it if it is not
robust. Every (ε, restart, example) row of one call runs in one batched loop.

    x_best = Π_bounds(x + ε·s), s ∈ {−1, 1} per (channel, column)    vertical stripes (query 1)
    then `steps` times, for every example the model still gets right:
      p      = the published schedule: p_init = 0.8, halved after 10, 50, 200, 500, 1000,
               2000, 4000, 6000 and 8000 of 10,000 queries (the schedule rescaled to `steps`)
      side   = round(√(p·n/c)), between 1 and min(H, W) − 1 (n = C·H·W features, c = C)
      x_new  = x_best with one side × side square (random place) set to x ± ε, one random
               sign per channel (the L∞ update; a proposal that changes nothing is drawn
               again, as published), then clipped to `bounds`
      keep x_new if its margin loss max_{j≠y} z_j − z_y is higher, or it fools the model.

z is the model's output (an Ensemble's log-mean-softmax); "fools" is the model's decision
(an Ensemble's majority vote). An example stops being queried once fooled. Squares are
drawn per example, as the original code does (AutoAttack's port shares one square per
batch), and may touch the last row and column (the original draws the corner from
[0, H − side), so they never do). Inputs (N, D) (2-D data) are treated as one row of D
pixels. Randomness: restart r draws from its own generator (`attacks._restart_seed`),
the same draws for every ε and whichever examples are still attacked, so a batched call
gives what separate calls give.
"""
from __future__ import annotations

import math

import torch

from .attacks import _restart_seed, _stopper, input_loss

__all__ = ["craft", "p_schedule", "P_INIT"]

P_INIT = 0.8
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of 10,000 queries
_TRIES = 4  # redraws of a proposal that changes nothing; then its opposite sign


def p_schedule(i: int, queries: int, p_init: float = P_INIT) -> float:
    """The share p of pixels a square covers at iteration i of `queries` (piecewise
    constant, halved at each of _HALVINGS, the schedule stretched to `queries`)."""
    it = int(i / queries * 10000)
    return p_init / 2 ** sum(it > h for h in _HALVINGS)


@torch.no_grad()
def _query(model, x, y, loss, shape):
    per, pred = input_loss(model, x.reshape(len(x), *shape), y, loss, need_pred=True)
    return per, pred != y


def _signs(shape, gen):
    return torch.randint(0, 2, shape, generator=gen).float() * 2 - 1


def craft(spec, model, x, y, *, tick=None, cancel=None) -> torch.Tensor:
    """Square on every (ε, restart, example) row of `spec` -> (E, R, N, ...)."""
    if x.dim() not in (2, 4):
        raise ValueError(f"square needs inputs (N, C, H, W) or (N, D), got shape {tuple(x.shape)}")
    shape = x.shape[1:]
    x4 = x.reshape(len(x), 1, 1, -1) if x.dim() == 2 else x
    n, c, h, w = x4.shape
    e_n, r_n = len(spec.eps), spec.restarts
    rows, dev, dt = e_n * r_n * n, x.device, x.dtype
    gens = [torch.Generator().manual_seed(_restart_seed(spec.seed, spec.first_restart + r))
            for r in range(r_n)]

    def draw(f):  # (R, N, ...) from every restart's generator, on the device
        return torch.stack([f(g) for g in gens]).to(dev)

    def clip(v):
        return v.clamp(*spec.bounds) if spec.bounds is not None else v

    eps = torch.tensor(spec.eps, dtype=dt, device=dev).repeat_interleave(r_n * n).view(-1, 1, 1, 1)
    xs = x4.unsqueeze(0).unsqueeze(0).expand(e_n, r_n, *x4.shape).reshape(rows, c, h, w)
    stripes = draw(lambda g: _signs((n, c, 1, w), g)).to(dt)
    best = clip(xs + eps * stripes.unsqueeze(0).expand(e_n, *stripes.shape).reshape(rows, c, 1, w))
    loss, fooled = _query(model, best, y.repeat(e_n * r_n), spec.loss, shape)
    st = {"x": xs, "best": best, "loss": loss, "fooled": fooled, "eps": eps,
          "y": y.repeat(e_n * r_n), "idx": torch.arange(rows, device=dev)}
    out = best.clone()
    hh, ww = torch.arange(h, device=dev).view(1, 1, h, 1), torch.arange(w, device=dev).view(1, 1, 1, w)
    check_cancel = _stopper(cancel)
    for i in range(spec.steps):
        check_cancel()
        p = p_schedule(i, spec.steps)
        side = min(max(int(round(math.sqrt(p * h * w))), 1), max(min(h, w) - 1, 1))
        sh, sw = min(side, h), min(side, w)
        top = draw(lambda g: torch.randint(0, h - sh + 1, (n,), generator=g))  # drawn for every
        left = draw(lambda g: torch.randint(0, w - sw + 1, (n,), generator=g))  # row, attacked or not
        cand = draw(lambda g: _signs((n, _TRIES, c), g)).to(dt)
        if bool(st["fooled"].any()):  # fooled rows are done
            out[st["idx"][st["fooled"]]] = st["best"][st["fooled"]]
            st = {k: v[~st["fooled"]] for k, v in st.items()}
        if not len(st["idx"]):
            break
        r_of, ex = (st["idx"] // n) % r_n, st["idx"] % n
        t0, l0 = top[r_of, ex].view(-1, 1, 1, 1), left[r_of, ex].view(-1, 1, 1, 1)
        square = (hh >= t0) & (hh < t0 + sh) & (ww >= l0) & (ww < l0 + sw)  # (A, 1, H, W)
        signs = cand[r_of, ex]  # (A, TRIES, C)
        new, todo, cur = st["best"], torch.ones_like(st["fooled"]), st["best"]
        for t in range(_TRIES + 1):  # as published: redraw a proposal that changes nothing
            s = signs[:, t] if t < _TRIES else -signs[:, -1]
            prop = clip(torch.where(square, st["x"] + st["eps"] * s.view(-1, c, 1, 1), cur))
            new = torch.where(todo.view(-1, 1, 1, 1), prop, new)
            todo = todo & ((new - cur).abs() < 1e-7).flatten(1).all(1)
            if not bool(todo.any()):
                break
        loss, now = _query(model, new, st["y"], spec.loss, shape)
        if tick is not None:
            tick(len(new))
        keep = (loss > st["loss"]) | now
        st.update(best=torch.where(keep.view(-1, 1, 1, 1), new, cur),
                  loss=torch.where(keep, loss, st["loss"]), fooled=now)
    out[st["idx"]] = st["best"]
    return out.view(e_n, r_n, n, *shape)
