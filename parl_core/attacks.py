"""L∞ attacks in pixel space: FGSM, BIM, MIM and PGD, as the paper's Appendix A uses them.

One loop serves all four; they differ only where their definitions do (DESIGN §2):

    x^(0)   = x                                   (FGSM, BIM, MIM)
            = Π(x + U(-ε, ε))                     (PGD: uniform random start, per restart)
    g       = ∇_x J(x^(k), y)                     (torch.autograd.grad; parameter .grad untouched)
    d       = sign(g)                             (FGSM, BIM, PGD)
    m       ← decay·m + g/‖g‖₁, d = sign(m)       (MIM, per example, as Dong et al. 2018 define it;
                                                   the paper's Appendix A prints sign(g^(k)), a typo)
    x^(k+1) = Π(x^(k) + α·d)                      Π: onto the ε-ball around x, then onto `bounds`

FGSM is one step with α = ε; BIM, MIM and PGD take `steps` steps of α = ε/5 by default.
J is the cross-entropy of the model's output on the true labels: for an Ensemble the
log-mean-softmax (`loss="ensemble"`) or the mean of the members' cross-entropies
(`loss="members"`). Several ε values (and PGD restarts) run batched in one loop: rows
are laid out (E, R, N) and each row carries its own ε and step size.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from numbers import Real

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ensemble import Ensemble, eval_mode

__all__ = ["attack", "attack_restarts", "ATTACKS", "ATTACK_LOSSES", "AttackCancelled",
           "input_loss", "eval_mode"]

ATTACKS = ("fgsm", "bim", "mim", "pgd")
ATTACK_LOSSES = ("ensemble", "members")


class AttackCancelled(Exception):
    """Raised inside an attack when its `cancel` event fires (evaluation catches it)."""


@dataclass
class _Spec:
    name: str
    eps: list          # E values
    steps: int
    alpha: list        # E step sizes
    restarts: int
    decay: float
    seed: int
    bounds: tuple | None
    loss: str
    early_stop: bool
    first_restart: int = 0  # absolute index of restart 0 (a pass over restarts r0, r0+1, ...)


# --------------------------------------------------------------------------- validation
def _spec(name, eps, steps, step_size, restarts, decay, seed, bounds, loss, early_stop) -> _Spec:
    if name not in ATTACKS:
        raise ValueError(f"attack name must be one of {ATTACKS}, got {name!r}")
    eps_list = [eps] if isinstance(eps, Real) else list(eps) if eps is not None else []
    if not eps_list or not all(isinstance(e, Real) and math.isfinite(e) and e >= 0
                               for e in eps_list):
        raise ValueError(f"eps must be a number >= 0 or a non-empty list of them, got {eps!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
        raise ValueError(f"restarts must be an int >= 1, got {restarts!r}")
    if not (isinstance(decay, (int, float)) and decay >= 0):
        raise ValueError(f"decay must be a number >= 0, got {decay!r}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if loss not in ATTACK_LOSSES:
        raise ValueError(f"loss must be one of {ATTACK_LOSSES}, got {loss!r}")
    if bounds is not None:
        if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
            raise ValueError(f"bounds must be None or (low, high) with low < high, got {bounds!r}")
        bounds = (float(bounds[0]), float(bounds[1]))
    eps_list = [float(e) for e in eps_list]
    if name == "fgsm":  # one step of size ε; restarts would repeat the same deterministic step
        alpha, steps = list(eps_list), 1
    elif step_size is None:
        alpha = [e / 5 for e in eps_list]
    else:
        sizes = [step_size] * len(eps_list) if isinstance(step_size, Real) else list(step_size)
        if len(sizes) != len(eps_list) or not all(isinstance(a, Real) and a >= 0 for a in sizes):
            raise ValueError(f"step_size must be None, a number >= 0 or one per eps "
                             f"({len(eps_list)}), got {step_size!r}")
        alpha = [float(a) for a in sizes]
    restarts = _effective_restarts(name, restarts)  # only PGD's start is random
    return _Spec(name, eps_list, steps, alpha, restarts, float(decay), seed, bounds, loss,
                 bool(early_stop))


def _check_data(model, x, y, bounds):
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module or parl_core.Ensemble, got {type(model).__name__}")
    if not torch.is_tensor(x) or not torch.is_tensor(y) or x.dim() < 2 or y.dim() != 1 \
            or len(x) != len(y):
        raise ValueError(f"x must be (N, ...) and y (N,) tensors of equal length, got "
                         f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(y, 'shape', ()))}")
    if bounds is not None and len(x) and (x.min() < bounds[0] - 1e-6 or x.max() > bounds[1] + 1e-6):
        raise ValueError(f"x must lie within bounds {bounds}, got values in "
                         f"[{x.min().item():.4g}, {x.max().item():.4g}]")


# --------------------------------------------------------------------------- loss
def _model_device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def input_loss(model, x, y, loss: str = "ensemble", *, need_pred: bool = False):
    """Per-example attacked loss J(x, y) -> (N,), and the model's decision (N,) or None.

    Ensemble: cross-entropy of the log-mean-softmax ("ensemble") or the mean of the
    members' cross-entropies ("members"); its decision is the majority vote. Any other
    module: cross-entropy of its logits, decision argmax.
    """
    if isinstance(model, Ensemble):
        ml = model.member_logits(x)  # (M, N, C)
        if loss == "ensemble":
            logp = torch.logsumexp(F.log_softmax(ml, -1), 0) - math.log(len(ml))  # = Ensemble.forward
            per = F.cross_entropy(logp, y, reduction="none")
        else:
            m, n, c = ml.shape
            per = F.cross_entropy(ml.reshape(m * n, c), y.repeat(m), reduction="none").view(m, n).mean(0)
        pred = Ensemble.vote(ml.detach()) if need_pred else None
    else:
        logits = model(x)
        per = F.cross_entropy(logits, y, reduction="none")
        pred = logits.detach().argmax(-1) if need_pred else None
    return per, pred


# --------------------------------------------------------------------------- the loop
def _restart_seed(seed: int, r: int) -> int:
    # Restart 0 uses `seed` itself, so PGD's start equals torch's global-seeded uniform_
    # draw (the reference implementation's) under torch.manual_seed(seed).
    return (seed + 1_000_003 * r) % (2 ** 63)


def _layout(spec: _Spec, x: torch.Tensor):
    """Rows (E, R, N) flattened: x^(0), the ball's corners lo/hi and α per row."""
    e_n, r_n, n = len(spec.eps), spec.restarts, len(x)
    rows, shape = e_n * r_n * n, x.shape[1:]
    view = (-1,) + (1,) * (x.dim() - 1)
    per_row = lambda v: torch.tensor(v, dtype=x.dtype, device=x.device).repeat_interleave(r_n * n).view(view)
    eps, alpha = per_row(spec.eps), per_row(spec.alpha)
    xs = x.unsqueeze(0).unsqueeze(0).expand(e_n, r_n, *x.shape).reshape(rows, *shape)
    lo, hi = xs - eps, xs + eps
    x0 = xs.clone()
    if spec.name == "pgd":  # uniform random start in the ε-ball, one draw per (restart, ε)
        x0 = x0.view(e_n, r_n, *x.shape)
        for r in range(r_n):
            for i, e in enumerate(spec.eps):
                # Seeded alike for every ε: batched ε values draw what separate calls would.
                g = torch.Generator().manual_seed(_restart_seed(spec.seed, spec.first_restart + r))
                x0[i, r] += torch.empty(x.shape, dtype=x.dtype).uniform_(-e, e, generator=g).to(x.device)
        x0 = _project(x0.view(rows, *shape), lo, hi, spec.bounds)
    return x0, lo, hi, alpha


def _project(xa, lo, hi, bounds):
    """Onto the ε-ball [lo, hi] = [x − ε, x + ε] (min/max: x ± ε is reached exactly), then bounds."""
    xa = torch.minimum(torch.maximum(xa, lo), hi)
    return xa.clamp(bounds[0], bounds[1]) if bounds is not None else xa


def _l1_normalised(grad):
    """g/‖g‖₁ per example; 0 where the gradient is all zero (MIM's zero-gradient guard)."""
    l1 = grad.abs().flatten(1).sum(1).view(-1, *([1] * (grad.dim() - 1)))
    return torch.where(l1 > 0, grad / l1.clamp_min(1e-30), torch.zeros_like(grad))


def _craft(spec: _Spec, model, x, y, *, record_path=False, tick=None, cancel=None, score=False):
    """Run the attack on every (ε, restart, example) row.

    Returns x_adv (E, R, N, ...); with `score`, the final loss (E, R, N) and fooled
    (E, R, N) bool (else None); with record_path, the iterates (steps+1, E, R, N, ...).
    """
    e_n, r_n, n = len(spec.eps), spec.restarts, len(x)
    xa, lo, hi, alpha = _layout(spec, x)
    rows, view = len(xa), (-1,) + (1,) * (x.dim() - 1)
    yr = y.repeat(e_n * r_n)
    mom = torch.zeros_like(xa) if spec.name == "mim" else None
    active = None  # row indices still attacked (early stop); None = every row
    path = [xa.clone()] if record_path else None
    stop = cancel.is_set if hasattr(cancel, "is_set") else cancel
    for _ in range(spec.steps):
        if stop is not None and stop():
            raise AttackCancelled()
        sel = slice(None) if active is None else active
        xi = xa[sel].detach().requires_grad_(True)
        per, pred = input_loss(model, xi, yr[sel], spec.loss, need_pred=spec.early_stop)
        (grad,) = torch.autograd.grad(per.sum(), xi)
        if mom is not None:  # MIM: g ← decay·g + ∇/‖∇‖₁, step along sign(g)
            grad = mom[sel] = spec.decay * mom[sel] + _l1_normalised(grad)
        new = _project(xi.detach() + alpha[sel] * grad.sign(), lo[sel], hi[sel], spec.bounds)
        if spec.early_stop:  # examples already fooled keep their iterate and leave the batch
            still = pred == yr[sel]
            new = torch.where(still.view(view), new, xi.detach())
            active = (torch.arange(rows, device=x.device) if active is None else active)[still]
        xa[sel] = new
        if tick is not None:
            tick(len(per))
        if record_path:
            path.append(xa.clone())
        if active is not None and len(active) == 0:
            break
    out = xa.view(e_n, r_n, n, *x.shape[1:])
    per = fooled = None
    if score:  # one more forward, only to pick among restarts
        with torch.no_grad():
            per, pred = input_loss(model, xa, yr, spec.loss, need_pred=True)
        per, fooled = per.view(e_n, r_n, n), (pred != yr).view(e_n, r_n, n)
    if record_path:
        path += [path[-1]] * (spec.steps + 1 - len(path))  # early stop: iterates stay put
        path = torch.stack(path).view(len(path), e_n, r_n, n, *x.shape[1:])
    return out, per, fooled, path


class _AffineBN(nn.Module):
    """An eval-mode BatchNorm2d as the affine map it is: x·s + b per channel."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        s = bn.running_var.add(bn.eps).rsqrt() * (bn.weight if bn.weight is not None else 1.0)
        b = (bn.bias if bn.bias is not None else 0.0) - bn.running_mean * s
        self.register_buffer("s", s.detach().view(1, -1, 1, 1).clone())
        self.register_buffer("b", b.detach().view(1, -1, 1, 1).clone())

    def forward(self, x):
        return torch.addcmul(self.b, x, self.s)


def _frozen_copy(model):
    """The model to differentiate: an eval-mode copy whose parameters need no gradient and
    whose batch norms are plain affine maps (what they compute in eval mode; autograd
    through them is ~10 % cheaper per step on CPU). The caller's model (its modes, flags,
    .grad) is never touched. Input gradients agree with the original's to ~1e-7
    relative. A model that cannot be copied is attacked as it is."""
    try:
        work = copy.deepcopy(model)
    except (TypeError, RuntimeError, copy.Error):  # e.g. modules holding unpicklable state
        return model
    for p in work.parameters():
        p.requires_grad_(False)
    work.eval()
    for parent in list(work.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d) and child.running_var is not None:
                setattr(parent, name, _AffineBN(child))
    return work


def _run(name, model, x, y, eps, steps, step_size, restarts, decay, seed, bounds, loss,
         early_stop, record_path=False, tick=None, cancel=None, score=False, first_restart=0):
    """Validate, craft on an eval-mode copy (or the model itself in eval mode, modes
    restored after, when it cannot be copied); outputs on x's device."""
    spec = _spec(name, eps, steps, step_size, restarts, decay, seed, bounds, loss, early_stop)
    if not isinstance(first_restart, int) or first_restart < 0:
        raise ValueError(f"first_restart must be an int >= 0, got {first_restart!r}")
    spec.first_restart = first_restart if spec.name == "pgd" else 0
    _check_data(model, x, y, spec.bounds)
    device = _model_device(model)
    work = _frozen_copy(model)
    modes = eval_mode(model) if work is model else contextlib.nullcontext()
    with modes, torch.enable_grad():
        out = _craft(spec, work, x.detach().to(device), y.to(device),
                     record_path=record_path, tick=tick, cancel=cancel, score=score)
    return spec, tuple(t.to(x.device) if torch.is_tensor(t) else t for t in out)


# --------------------------------------------------------------------------- public
def _effective_restarts(name, restarts) -> int:
    """Restarts actually run: PGD's `restarts`; 1 for the deterministic attacks."""
    return restarts if name == "pgd" else 1


def attack(name, model, x, y, eps, steps=50, step_size=None, restarts=1, decay=0.01, seed=0,
           bounds=(0.0, 1.0), *, loss="ensemble", early_stop=False, return_path=False,
           on_step=None, cancel=None):
    """Adversarial examples for (x, y) under an L∞ budget eps.

    name: "fgsm" | "bim" | "mim" | "pgd".  model: nn.Module (logits) or Ensemble.
    x: (N, ...) inputs within `bounds` ((0, 1) pixels; None: no range, e.g. 2-D data).
    eps: a float -> (N, ...); a list of E floats -> (E, N, ...), crafted in one batched loop.
    steps, step_size: iterations and α (default ε/5) of BIM/MIM/PGD; FGSM is one step of ε.
    restarts: PGD random starts; per example the restart that fools the model, and among
      those (or all, if none does) the one with the highest loss, is returned.
    decay: MIM's momentum decay (paper: 0.01).  seed: PGD's random starts.
    loss: "ensemble" (CE of the log-mean-softmax) or "members" (mean of members' CE).
    early_stop: examples the model already misclassifies stop moving (off: as the paper).
    return_path: also return the iterates (steps+1, N, ...) from x^(0) (one ε, restarts=1).
    on_step(rows): called after each step; cancel: an Event (or callable) that aborts
      with AttackCancelled.
    Every output satisfies ‖x_adv − x‖∞ ≤ ε and lies within bounds. The model is attacked
    in eval mode through a copy: its own modes, flags and parameters' .grad are untouched.
    """
    if return_path and (restarts != 1 or not isinstance(eps, Real)):
        raise ValueError(f"return_path needs restarts=1 and a single eps, got restarts={restarts!r}, "
                         f"eps={eps!r}")
    spec, (adv, per, fooled, path) = _run(name, model, x, y, eps, steps, step_size, restarts, decay,
                                          seed, bounds, loss, early_stop, return_path, on_step, cancel,
                                          score=_effective_restarts(name, restarts) > 1)
    if per is None:
        out = adv[:, 0]
    else:  # (E, R, N): prefer restarts that fool the model, then the highest loss
        best = (per.nan_to_num(posinf=1e30) + fooled.to(per.dtype) * 1e31).argmax(1)  # (E, N)
        e_n, n = best.shape
        out = adv[torch.arange(e_n, device=adv.device)[:, None], best, torch.arange(n, device=adv.device)]
    single = isinstance(eps, Real)
    out = out[0] if single else out
    if return_path:
        return out, path[:, 0, 0]
    return out


def attack_restarts(name, model, x, y, eps, steps=50, step_size=None, restarts=1, decay=0.01,
                    seed=0, bounds=(0.0, 1.0), *, loss="ensemble", early_stop=False,
                    on_step=None, cancel=None, first_restart=0):
    """Every restart's adversarial examples: (R, N, ...) for one eps, (E, R, N, ...) for a list.

    Same arguments as `attack`. An evaluation counts an example as robust only if the
    scored model classifies every restart's example correctly (DESIGN §3). FGSM, BIM and
    MIM are deterministic, so they return R = 1. first_restart: PGD's restarts are
    first_restart … first_restart + restarts − 1 of the same seed, so an evaluation split
    into passes over restarts draws exactly the starts of one pass over all of them.
    """
    _, (adv, _, _, _) = _run(name, model, x, y, eps, steps, step_size, restarts, decay, seed,
                             bounds, loss, early_stop, False, on_step, cancel,
                             first_restart=first_restart)
    return adv[0] if isinstance(eps, Real) else adv
