"""TRS, the Transferability Reduced Smooth ensemble (Yang et al., NeurIPS 2021), as a
loss object for the one trainer.

Read against the reference trainer (github.com/AI-secure/Transferability-Reduced-Smooth-
Ensemble: train/Empirical/trainer.py `TRS_Trainer` and `PGD`, train/Empirical/train_trs.py,
utils/Empirical/utils_ensemble.py `Cosine`/`Magnitude`, utils/Empirical/script_train.py).

One step on a batch (x, y) of N examples, members 1..M, g_j(x) = ∇_x CE_j where CE_j is
member j's cross-entropy averaged over the batch (so each example's row carries the
reference's 1/N):

    loss   = Σ_j CE_j(x, y) + scale · (coeff · L_cos + lamda · L_smooth)
    L_cos  = mean over pairs i<j of  mean_n |cos(g_i(x_n), g_j(x_n))|
    L_smooth = mean over j of  2 · mean_n ‖g_j(x̃_n)‖²

x̃ ("plus_adv", the perturbed inputs of the paper's smoothness term): the first half of
the batch as it is, the second half moved by `pgd_steps` signed steps of ε/3 from a
uniform start in the ε-ball, each projected to the ball and to [0, 1], ascending the
members' mean gradient magnitude mean_j 2 · mean_n ‖g_j‖² (the reference's `PGD`). ε
grows linearly over training, ε_e = init_eps + (adv_eps − init_eps) · e / E for 0-based
epoch e of E (`ramp_epochs`; see below). plus_adv=False takes L_smooth at the clean x.

Defaults are the reference's: coeff 2, lamda 2, scale 5 (train_trs.py, script_train.py),
init_eps 0.1, adv_eps 0.2, plus_adv on (script_train.py's `plus_adv = True`), 6 PGD steps
of ε/3 (trainer.py `PGD`).

Differences from the reference, all documented choices:
  * Members: the reference hard-codes three (three pairs, "/ 3"); here the means are
    over any M >= 2 (the same numbers for M = 3).
  * Batch norm: `bn_grad` "per_example" (default, DESIGN §3) holds batch-norm statistics
    constant in every input gradient, in PGD and at x̃, and leaves the running statistics
    alone there; the CE term comes from an ordinary train-mode forward. "batch" is the
    reference's: plain train-mode forwards, through the batch statistics, updating the
    running statistics in each (PGD included).
  * With plus_adv=False the reference recomputes the clean gradients for L_smooth; they
    are the same values, so the ones of L_cos are reused.
  * The ε ramp needs the run's length E. `ramp_epochs` sets it; 0 (default) takes it from
    the trainer when it passes `epochs` to `start_epoch`, and otherwise holds ε at
    init_eps. The ε used is logged every step ("eps" in the history).
  * PGD's random start is drawn from a generator seeded per epoch by the trainer.
  * The rest is the one trainer's (parl_core.baselines' notes): Adam lr 1e-3 with this
    project's schedules; the reference uses Adam lr 1e-3, eps 1e-7, weight decay 1e-4,
    StepLR ×0.1 every 40 of 120 epochs, batch 128. The released script_train.py sets
    plus_adv but does not pass --plus-adv on the command it writes, so runs made by it
    take L_smooth at the clean inputs (plus_adv=False here).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .layergrad import BN_GRADS
from .losses import LABELS, _at_least_fp32, _ce_sum, _check_nonneg, _members, register_method
from .models import per_example_bn

__all__ = ["trs_loss", "trs_cosine", "trs_magnitude", "trs_pgd", "TRS"]

LABELS.update({"trs": "TRS"})


def trs_cosine(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L_cos: mean over pairs i<j of mean_n |cos(g_i(x_n), g_j(x_n))|.

    grads: (M, N, *input), M >= 2 -> (scalar, (M, M) matrix of the pairs' batch-mean
    |cos|, zero diagonal). A zero gradient has cosine 0 with everything."""
    m = grads.shape[0]
    u = F.normalize(_at_least_fp32(grads.flatten(2)), dim=-1, eps=1e-12)  # (M, N, D)
    cos = torch.einsum("ind,jnd->ijn", u, u).abs().mean(-1)  # (M, M)
    iu = torch.triu_indices(m, m, 1, device=cos.device)
    return cos[iu[0], iu[1]].mean(), cos * (1 - torch.eye(m, device=cos.device))


def trs_magnitude(grads: torch.Tensor) -> torch.Tensor:
    """L_smooth's per-member term, the reference's `Magnitude`, averaged over members:
    mean_j 2 · mean_n ‖g_j(x_n)‖². grads: (M, N, *input) -> scalar."""
    return 2 * _at_least_fp32(grads.flatten(2)).pow(2).sum(-1).mean()


def _ce_grads(model, x, y, bn_grad: str, create_graph: bool = True):
    """(logits, ∇_x of the batch-mean CE) at x (at a leaf copy when x needs no gradient),
    with batch-norm statistics held constant ("per_example") or through them ("batch", a
    plain forward)."""
    xg = x if x.requires_grad else x.detach().requires_grad_(True)
    hold = per_example_bn(model) if bn_grad == "per_example" else nullcontext()
    with torch.enable_grad(), hold:
        logits = model(xg)
        ce = F.cross_entropy(_at_least_fp32(logits), y)
        return logits, torch.autograd.grad(ce, xg, create_graph=create_graph)[0]


def trs_pgd(members, x, y, eps: float, *, steps: int = 6, step_size: float | None = None,
            bn_grad: str = "per_example", generator: torch.Generator | None = None,
            bounds=(0.0, 1.0)) -> torch.Tensor:
    """x moved to raise the members' gradient magnitude (the reference's `PGD`): a uniform
    start in the L∞ ε-ball, then `steps` signed ascent steps of `step_size` (default ε/3)
    on mean_j 2 · mean_n ‖∇_x CE_j‖², each projected to the ball and to `bounds`
    (None: no pixel range). Returns a detached tensor like x."""
    _check_nonneg(eps=eps)
    step_size = eps / 3 if step_size is None else step_size
    x0 = x.detach()
    noise = torch.rand(x0.shape, generator=generator).to(x0) * 2 - 1
    adv = x0 + eps * noise
    adv = adv.clamp(*bounds) if bounds is not None else adv
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        with torch.enable_grad():
            grads = torch.stack([_ce_grads(m, adv, y, bn_grad)[1] for m in members])
            g = torch.autograd.grad(trs_magnitude(grads), adv)[0]
        with torch.no_grad():
            adv = adv + step_size * g.sign()
            adv = torch.min(torch.max(adv, x0 - eps), x0 + eps)
            adv = adv.clamp(*bounds) if bounds is not None else adv
    return adv.detach()


def trs_loss(ens, x, y, coeff: float = 2.0, lamda: float = 2.0, scale: float = 5.0, *,
             eps: float = 0.1, plus_adv: bool = True, pgd_steps: int = 6,
             bn_grad: str = "per_example", generator: torch.Generator | None = None):
    """The TRS loss on one batch at perturbation radius `eps` (module doc).

    Returns (loss, parts): "ce" (Σ_j CE_j), "cos" (L_cos), "smooth" (L_smooth), "eps",
    "pairwise" (M, M) batch-mean |cos|, "ce_members" (M,), "logits" (M, N, C) detached."""
    _check_nonneg(coeff=coeff, lamda=lamda, scale=scale, eps=eps)
    if bn_grad not in BN_GRADS:
        raise ValueError(f"bn_grad must be one of {', '.join(map(repr, BN_GRADS))}, got {bn_grad!r}")
    members = _members(ens)
    if len(members) < 2:
        raise ValueError(f"TRS needs at least 2 members (it compares pairs), got {len(members)}")
    if bn_grad == "batch":  # one train-mode forward per member: CE and gradients, as the reference
        logits, grads = zip(*[_ce_grads(m, x, y, "batch") for m in members])
    else:
        logits = [m(x) for m in members]
        grads = [_ce_grads(m, x, y, "per_example")[1] for m in members]
    ce, ces = _ce_sum(logits, y)
    grads = torch.stack(grads)  # (M, N, *input)
    cos, pair = trs_cosine(grads)
    if plus_adv:
        half = x.shape[0] // 2
        bounds = (0.0, 1.0) if x.dim() == 4 else None
        x_adv = trs_pgd(members, x[half:], y[half:], eps, steps=pgd_steps, bn_grad=bn_grad,
                        generator=generator, bounds=bounds)
        x_t = torch.cat([x[:half].detach(), x_adv])
        smooth = trs_magnitude(torch.stack([_ce_grads(m, x_t, y, bn_grad)[1] for m in members]))
    else:
        smooth = trs_magnitude(grads)
    loss = ce + scale * (coeff * cos + lamda * smooth)
    return loss, {"ce": ce, "cos": cos, "smooth": smooth, "eps": torch.tensor(float(eps)),
                  "pairwise": pair.detach(), "ce_members": ces.detach(),
                  "logits": torch.stack(list(logits)).detach()}


@register_method
class TRS:
    """TRS (Yang et al. 2021): see the module doc and `trs_loss`. Reference defaults:
    coeff 2, lamda 2, scale 5, ε from init_eps 0.1 to adv_eps 0.2 over the run, 6 PGD
    steps of ε/3, smoothness at perturbed inputs (plus_adv)."""
    name = "trs"

    def __init__(self, coeff: float = 2.0, lamda: float = 2.0, scale: float = 5.0,
                 init_eps: float = 0.1, adv_eps: float = 0.2, plus_adv: bool = True,
                 pgd_steps: int = 6, ramp_epochs: int = 0, bn_grad: str = "per_example"):
        _check_nonneg(coeff=coeff, lamda=lamda, scale=scale, init_eps=init_eps, adv_eps=adv_eps)
        if not isinstance(plus_adv, bool):
            raise ValueError(f"plus_adv must be True or False, got {plus_adv!r}")
        for name, v in (("pgd_steps", pgd_steps), ("ramp_epochs", ramp_epochs)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if bn_grad not in BN_GRADS:
            raise ValueError(f"bn_grad must be one of {', '.join(map(repr, BN_GRADS))}, got {bn_grad!r}")
        self.params = {"coeff": float(coeff), "lamda": float(lamda), "scale": float(scale),
                       "init_eps": float(init_eps), "adv_eps": float(adv_eps), "plus_adv": plus_adv,
                       "pgd_steps": pgd_steps, "ramp_epochs": ramp_epochs, "bn_grad": bn_grad}
        self._eps = float(init_eps)
        self._gen = torch.Generator().manual_seed(0)

    def eps_at(self, epoch: int, epochs: int | None) -> float:
        """ε for 0-based `epoch` of `epochs` (ramp_epochs, when > 0, wins; neither: init_eps)."""
        p = self.params
        total = p["ramp_epochs"] or epochs
        if not total:
            return p["init_eps"]
        return p["init_eps"] + (p["adv_eps"] - p["init_eps"]) * min(epoch, total) / total

    def start_epoch(self, ens, epoch, generator, train_ds, epochs: int | None = None):
        self._eps = self.eps_at(epoch, epochs)
        self._gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))

    def __call__(self, ens, x, y):
        p = self.params
        return trs_loss(ens, x, y, p["coeff"], p["lamda"], p["scale"], eps=self._eps,
                        plus_adv=p["plus_adv"], pgd_steps=p["pgd_steps"], bn_grad=p["bn_grad"],
                        generator=self._gen)
