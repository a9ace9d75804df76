"""L∞ attacks in pixel space: the paper's FGSM, BIM, MIM and PGD (Appendix A), and beside
them APGD-CE, APGD-DLR (`parl_core.apgd`), APGD-T (`parl_core.apgd_targeted`) and the
gradient-free Square attack (`parl_core.square`), all behind one interface (`attack`,
`attack_restarts`).

One loop serves the paper's four; they differ only where their definitions do (DESIGN §2):

    x^(0)   = x                                   (FGSM, BIM, MIM)
            = Π(x + U(-ε, ε))                     (PGD: uniform random start, per restart)
    g       = ∇_x J(x^(k), y)                     (torch.autograd.grad; parameter .grad untouched)
    d       = sign(g)                             (FGSM, BIM, PGD)
    m       ← decay·m + g/‖g‖₁, d = sign(m)       (MIM, per example, as Dong et al. 2018 define it;
                                                   the paper's Appendix A prints sign(g^(k)), a typo)
    x^(k+1) = Π(x^(k) + α·d)                      Π: onto the ε-ball around x, then onto `bounds`

FGSM is one step with α = ε; BIM, MIM and PGD take `steps` steps of α = ε/5 by default.
J is one of ATTACK_LOSSES (`input_loss`): CE, CW margin, DLR, or a loss on the majority
vote itself (`vote_loss`). Several ε values (and restarts) run batched in one loop: rows
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

__all__ = ["attack", "attack_restarts", "ATTACKS", "EXTRA_ATTACKS", "ALL_ATTACKS",
           "ATTACK_LOSSES", "AttackCancelled", "input_loss", "vote_loss", "eval_mode"]

ATTACKS = ("fgsm", "bim", "mim", "pgd")  # the paper's four: the evaluation's default
EXTRA_ATTACKS = ("apgd-ce", "apgd-dlr", "square", "mi-di", "pgd-vote", "apgd-t")
ALL_ATTACKS = ATTACKS + EXTRA_ATTACKS
ATTACK_LOSSES = ("ensemble", "members", "margin", "vote", "dlr")
RANDOM_ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "square", "mi-di", "pgd-vote", "apgd-t")  # random draws
# The loss is set by the name; "pgd-vote" is PGD (same start, steps, step size) on `vote_loss`;
# "apgd-t" crafts on the targeted DLR (`apgd_targeted`) and picks among restarts by "dlr".
_FIXED_LOSS = {"apgd-ce": "ensemble", "apgd-dlr": "dlr", "square": "margin", "pgd-vote": "vote",
               "apgd-t": "dlr"}
_OWN_SCHEDULE = ("apgd-ce", "apgd-dlr", "square", "apgd-t")  # step_size ignored
_PGD_LOOP = ATTACKS + ("pgd-vote",)  # crafted by `_craft`


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
    if name not in ALL_ATTACKS:
        raise ValueError(f"attack name must be one of {ALL_ATTACKS}, got {name!r}")
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
    _check_loss(loss)
    if bounds is not None:
        if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
            raise ValueError(f"bounds must be None or (low, high) with low < high, got {bounds!r}")
        bounds = (float(bounds[0]), float(bounds[1]))
    eps_list = [float(e) for e in eps_list]
    if step_size is not None:
        sizes = [step_size] * len(eps_list) if isinstance(step_size, Real) else list(step_size)
        if len(sizes) != len(eps_list) or not all(isinstance(a, Real) and a >= 0 for a in sizes):
            raise ValueError(f"step_size must be None, a number >= 0 or one per eps "
                             f"({len(eps_list)}), got {step_size!r}")
    if name == "fgsm":  # one step of size ε; restarts would repeat the same deterministic step
        alpha, steps = list(eps_list), 1
    elif name in _OWN_SCHEDULE:  # step_size ignored; recorded: APGD's first step, Square's ±2ε
        alpha = [2 * e for e in eps_list]
    else:
        alpha = [e / 5 for e in eps_list] if step_size is None else [float(a) for a in sizes]
    restarts = _effective_restarts(name, restarts)  # only random starts make restarts differ
    return _Spec(name, eps_list, steps, alpha, restarts, float(decay), seed, bounds,
                 _FIXED_LOSS.get(name, loss), bool(early_stop))


def _check_loss(loss):
    if loss not in ATTACK_LOSSES:
        raise ValueError(f"loss must be one of {ATTACK_LOSSES}, got {loss!r}")


def _check_data(model, x, y, bounds):
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module or parl_core.Ensemble, got {type(model).__name__}")
    if not torch.is_tensor(x) or not torch.is_tensor(y) or x.dim() < 2 or y.dim() != 1 \
            or len(x) != len(y):
        raise ValueError(f"x must be (N, ...) and y (N,) tensors of equal length, got "
                         f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(y, 'shape', ()))}")
    from .validate import model_inputs
    model_inputs(model, x, y)
    if bounds is not None and len(x) and (x.min() < bounds[0] - 1e-6 or x.max() > bounds[1] + 1e-6):
        raise ValueError(f"x must lie within bounds {bounds}, got values in "
                         f"[{x.min().item():.4g}, {x.max().item():.4g}]")


# --------------------------------------------------------------------------- loss
def _model_device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def input_loss(model, x, y, loss: str = "ensemble", *, need_pred: bool = False):
    """Per-example attacked loss J(x, y) -> (N,) (attacks maximise it), and the model's
    decision (N,) or None.

    The output z is an Ensemble's log-mean-softmax (its `forward`) or a module's logits.
    "ensemble": CE(z, y).  "members": the mean of the members' CE (a module: CE(z, y)).
    "margin": the CW margin max_{j≠y} z_j − z_y (> 0 iff argmax z is wrong).
    "dlr": −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e−12), z sorted decreasingly (Croce &
      Hein 2020; needs ≥ 3 classes).  "vote": `vote_loss` of an Ensemble's members; for a
      module (one voter) it is "margin".
    Decision: an Ensemble's majority vote (`Ensemble.vote`), a module's argmax.
    """
    _check_loss(loss)
    if isinstance(model, Ensemble):
        ml = model.member_logits(x)  # (M, N, C)
        pred = Ensemble.vote(ml.detach()) if need_pred else None
        if loss == "members":
            m, n, c = ml.shape
            per = F.cross_entropy(ml.reshape(m * n, c), y.repeat(m), reduction="none").view(m, n).mean(0)
        elif loss == "vote":
            per = vote_loss(ml, y)
        else:
            logp = torch.logsumexp(F.log_softmax(ml, -1), 0) - math.log(len(ml))  # = Ensemble.forward
            per = _output_loss(logp, y, loss)
    else:
        logits = model(x)
        per = _output_loss(logits, y, "margin" if loss == "vote" else loss)
        pred = logits.detach().argmax(-1) if need_pred else None
    return per, pred


def _output_loss(z, y, loss):
    """CE, margin or DLR of one output z (N, C) -> (N,)."""
    if loss in ("ensemble", "members"):
        return F.cross_entropy(z, y, reduction="none")
    if loss == "dlr" and z.shape[-1] < 3:
        raise ValueError(f"the DLR loss (apgd-dlr) needs at least 3 classes, the model has "
                         f"{z.shape[-1]}")
    zy = z.gather(1, y[:, None]).squeeze(1)
    other = z.masked_fill(F.one_hot(y, z.shape[-1]).bool(), -math.inf).amax(1)  # max_{j≠y} z_j
    if loss == "margin":
        return other - zy
    top = z.topk(3, dim=1).values
    return (other - zy) / (top[:, 0] - top[:, 2] + 1e-12)


def vote_loss(member_logits, y):
    """The "vote" loss (N,), an attack on the majority vote itself, from (M, N, C) logits.

    Per example a common wrong target t: the class `Ensemble.vote` would pick among j ≠ y
    (most votes, ties by the mean member probability), recomputed at every call (every
    step). Member i's margin toward t is m_i = z_i,t − max_{j≠t} z_i,j (> 0 iff i votes t).
    A majority needs k = ⌊M/2⌋ + 1 members, so only the k members closest to voting t count
    (3 members: fooling 2 suffices), each clipped softly: −softplus(−m_i) ≈ m_i far from t,
    → 0 once i votes t, so members voting t stop pulling (weight σ(−m_i)) while the input
    gradient never becomes exactly zero:  J_vote = −Σ_{i ∈ top-k of m} softplus(−m_i) ≤ 0.
    """
    m, n, c = member_logits.shape
    with torch.no_grad():
        p = F.softmax(member_logits.float(), -1).mean(0)
        score = 2.0 * F.one_hot(member_logits.argmax(-1), c).sum(0) + p  # as Ensemble.vote
        t = score.scatter(1, y[:, None], -math.inf).argmax(1)  # (N,)
    hot_t = F.one_hot(t, c).bool().expand(m, n, c)
    zt = member_logits.gather(2, t.view(1, n, 1).expand(m, n, 1)).squeeze(2)
    margins = zt - member_logits.masked_fill(hot_t, -math.inf).amax(2)  # (M, N)
    return -F.softplus(-margins.topk(m // 2 + 1, dim=0).values).sum(0)


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
    if spec.name in ("pgd", "pgd-vote", "apgd-ce", "apgd-dlr", "apgd-t"):  # uniform start, per (restart, ε)
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


def _stopper(cancel):
    """A callable that raises AttackCancelled once `cancel` (an Event or callable) fires."""
    stop = cancel.is_set if hasattr(cancel, "is_set") else cancel

    def check():
        if stop is not None and stop():
            raise AttackCancelled()
    return check


def _craft(spec: _Spec, model, x, y, *, record_path=False, tick=None, cancel=None):
    """Run FGSM/BIM/MIM/PGD on every (ε, restart, example) row.

    Returns x_adv (E, R, N, ...) and, with record_path, the iterates (steps+1, E, R, N, ...).
    """
    e_n, r_n, n = len(spec.eps), spec.restarts, len(x)
    xa, lo, hi, alpha = _layout(spec, x)
    rows, view = len(xa), (-1,) + (1,) * (x.dim() - 1)
    yr = y.repeat(e_n * r_n)
    mom = torch.zeros_like(xa) if spec.name == "mim" else None
    active = None  # row indices still attacked (early stop); None = every row
    path = [xa.clone()] if record_path else None
    check_cancel = _stopper(cancel)
    for _ in range(spec.steps):
        check_cancel()
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
    if record_path:
        path += [path[-1]] * (spec.steps + 1 - len(path))  # early stop: iterates stay put
        path = torch.stack(path).view(len(path), e_n, r_n, n, *x.shape[1:])
    return xa.view(e_n, r_n, n, *x.shape[1:]), path


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
    if record_path and spec.name not in _PGD_LOOP:
        raise ValueError(f"return_path is available for {_PGD_LOOP}, got {spec.name!r}")
    spec.first_restart = first_restart if spec.name in RANDOM_ATTACKS else 0
    _check_data(model, x, y, spec.bounds)
    device = _model_device(model)
    work = _frozen_copy(model)
    modes = eval_mode(model) if work is model else contextlib.nullcontext()
    xd, yd = x.detach().to(device), y.to(device)
    with modes, torch.enable_grad():
        if spec.name in _PGD_LOOP:
            adv, path = _craft(spec, work, xd, yd, record_path=record_path, tick=tick, cancel=cancel)
        else:  # the stronger attacks live in their own modules
            from . import apgd, apgd_targeted, midi, square
            craft = {"square": square.craft, "mi-di": midi.craft,
                     "apgd-t": apgd_targeted.craft}.get(spec.name, apgd.craft)
            adv, path = craft(spec, work, xd, yd, tick=tick, cancel=cancel), None
        per = fooled = None
        if score:  # one more forward, only to pick among restarts
            yr, flat = yd.repeat(adv.shape[0] * adv.shape[1]), adv.reshape(-1, *x.shape[1:])
            with torch.no_grad():
                per, pred = input_loss(work, flat, yr, spec.loss, need_pred=True)
            per, fooled = per.view(adv.shape[:3]), (pred != yr).view(adv.shape[:3])
    out = (adv, per, fooled, path)
    return spec, tuple(t.to(x.device) if torch.is_tensor(t) else t for t in out)


# --------------------------------------------------------------------------- public
def _effective_restarts(name, restarts) -> int:
    """Restarts actually run: `restarts` for PGD, APGD, Square and MI-DI; 1 for the deterministic
    FGSM, BIM and MIM."""
    return restarts if name in RANDOM_ATTACKS else 1


def attack(name, model, x, y, eps, steps=50, step_size=None, restarts=1, decay=0.01, seed=0,
           bounds=(0.0, 1.0), *, loss="ensemble", early_stop=False, return_path=False,
           on_step=None, cancel=None):
    """Adversarial examples for (x, y) under an L∞ budget eps.

    name: one of ALL_ATTACKS: the paper's "fgsm" | "bim" | "mim" | "pgd" (ATTACKS), and
      "apgd-ce" | "apgd-dlr" (`parl_core.apgd`) | "square" (`parl_core.square`) | "mi-di"
      (`parl_core.midi`: MIM through a random resize-and-pad, a transfer attack) | "pgd-vote"
      (PGD on `vote_loss`: an attack on the majority vote itself, at PGD's budget) | "apgd-t"
      (`parl_core.apgd_targeted`: APGD on the targeted DLR loss, ≥ 4 classes; restart r
      targets the (r+1)-th most likely wrong class, so AutoAttack's apgd-t is restarts=9).
    model: nn.Module (logits) or Ensemble.
    x: (N, ...) inputs within `bounds` ((0, 1) pixels; None: no range, e.g. 2-D data).
    eps: a float -> (N, ...); a list of E floats -> (E, N, ...), crafted in one batched loop.
    steps: iterations of BIM/MIM/PGD/APGD; Square's queries after its first; FGSM: 1.
    step_size: α of BIM/MIM/PGD (default ε/5); ignored by APGD (own schedule) and Square.
    restarts: random starts of PGD, APGD and Square, MI-DI's independent diversity draws,
      APGD-T's target classes (seeds `seed`, restart r its own); per
      example the restart that fools the model, and among those (or all, if none does) the
      one with the highest loss, is returned. FGSM, BIM and MIM are deterministic: 1.
    decay: MIM's momentum decay (paper: 0.01).  seed: the random starts.
    loss: FGSM/BIM/MIM/PGD's loss, one of ATTACK_LOSSES (`input_loss`): "ensemble" (CE of
      the log-mean-softmax), "members" (members' mean CE), "margin" (CW), "vote" (the
      majority vote, `vote_loss`), "dlr". The names fix APGD-CE's ("ensemble"), APGD-DLR's
      ("dlr"), Square's ("margin") and PGD-vote's ("vote"); APGD-T crafts on the targeted
      DLR and ranks its restarts by "dlr".
    early_stop: examples the model already misclassifies stop moving (off: as the paper);
      Square always stops querying an example once the model is fooled (as published).
    return_path: also return the iterates (steps+1, N, ...) from x^(0) (one ε, restarts=1;
      FGSM, BIM, MIM, PGD and PGD-vote only).
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
    MIM are deterministic, so they return R = 1. first_restart: PGD's, APGD's and Square's
    restarts are first_restart … first_restart + restarts − 1 of the same seed, so passes
    over subsets of the restarts draw exactly what one pass over all of them draws (APGD-T's
    restart r, its target rank too).
    """
    _, (adv, _, _, _) = _run(name, model, x, y, eps, steps, step_size, restarts, decay, seed,
                             bounds, loss, early_stop, False, on_step, cancel,
                             first_restart=first_restart)
    return adv[0] if isinstance(eps, Real) else adv
