"""The paper's baselines as loss objects for the one trainer: ADP, GAL and DVERGE
(DVERGE lives in parl_core.dverge and is re-exported here).

Each follows its own paper; where the widely used reference trainers (the DVERGE
and TRS repositories) differ, the paper wins, the difference is written down here,
and it is an option when it matters. The options a run used are the method's
`params`, which the trainer records in the checkpoint. Options added later enter
`params` only when they differ from their defaults (`losses.non_default`), so runs
at the defaults keep the parameters, and the hashes, they had before.

Differences shared by all three (the one trainer, DESIGN §2):
  * Optimiser: Adam, lr 1e-3, for every method (the PARL paper's setting), weight
    decay 0 unless train's `weight_decay` is set. The references use Adam with weight
    decay 1e-4 (ADP, GAL) and SGD lr 0.1 with weight decay 1e-4 and momentum 0.9, one
    optimiser per member (DVERGE). One Adam over all members equals one Adam per
    member here, because Adam is per parameter and each member's DVERGE loss touches
    only its weights.
  * Models: ours (DESIGN §3) with ReLU; the GAL reference uses leaky ReLU (0.1).
  * Input gradients (GAL, DVERGE's distillation) are per example by default: batch-
    norm statistics are held constant (DESIGN §3). The references differentiate
    through the batch statistics (GAL's `bn_grad="batch"` does too), and DVERGE's also
    updates the running statistics during distillation; ours leaves them alone.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .dverge import DVERGE, dverge_distill, features_at  # re-exported; registers dverge
from .layergrad import BN_GRADS
from .losses import LABELS, _ce_sum, _check_nonneg, _members, non_default, register_method
from .models import per_example_bn

__all__ = ["adp_loss", "gal_loss", "gal_coherence", "dverge_distill", "features_at",
           "ADP", "GAL", "DVERGE"]

LABELS.update({"adp": "ADP", "gal": "GAL"})


# --------------------------------------------------------------------------- ADP
def adp_entropy(probs: torch.Tensor, log_offset: float = 1e-20) -> torch.Tensor:
    """H(p̄) of the members' mean softmax, batch mean. probs: (M, N, C) -> scalar."""
    p = probs.mean(0)  # (N, C)
    return -(p * torch.log(p + log_offset)).sum(-1).mean()


def adp_log_det(probs: torch.Tensor, y: torch.Tensor, det_offset: float = 1e-6) -> torch.Tensor:
    """log det(M̃ M̃ᵀ + δ·I), batch mean: one row of M̃ per member, its softmax with the
    true class removed, L2-normalised. probs: (M, N, C) -> scalar."""
    m, n, c = probs.shape
    keep = torch.ones(n, c, dtype=torch.bool, device=probs.device)
    keep[torch.arange(n, device=probs.device), y] = False
    rest = probs[:, keep].view(m, n, c - 1)  # (M, N, C-1)
    # float64: the Gram matrix of nearly parallel rows is nearly singular
    u = F.normalize(rest.double(), dim=-1, eps=1e-20)
    gram = torch.einsum("inc,jnc->nij", u, u)  # (N, M, M)
    eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
    return torch.logdet(gram + det_offset * eye).mean().to(probs.dtype)


def adp_loss(ens, x, y, alpha: float = 2.0, beta: float = 0.5, *, det_offset: float = 1e-6,
             log_offset: float = 1e-20):
    """Adaptive Diversity Promoting loss (Pang et al. 2019) on one batch.

        ADP = Σ_i mean_x CE_i − α · H(p̄) − β · log det(M̃ M̃ᵀ + δ·I)

    p̄ is the members' mean softmax, H its entropy; M̃ has one row per member (its
    softmax with the true class removed, L2-normalised); both terms are batch means.
    Defaults are the paper's (α = 2, β = 0.5, δ = 1e-6, log offset 1e-20), as in the
    reference trainers. Returns (loss, parts): "ce", "entropy", "log_det",
    "ce_members" (M,), "logits" (M, N, C) detached.
    """
    _check_nonneg(alpha=alpha, beta=beta, det_offset=det_offset)
    logits = [m(x) for m in _members(ens)]
    ce, ces = _ce_sum(logits, y)
    probs = F.softmax(torch.stack(logits).float(), -1)  # (M, N, C)
    entropy = adp_entropy(probs, log_offset)
    log_det = adp_log_det(probs, y, det_offset)
    loss = ce - alpha * entropy - beta * log_det
    return loss, {"ce": ce, "entropy": entropy, "log_det": log_det, "ce_members": ces.detach(),
                  "logits": torch.stack(logits).detach()}


@register_method
class ADP:
    """ADP (Pang et al. 2019): see `adp_loss`. Paper defaults α = 2, β = 0.5."""
    name = "adp"

    def __init__(self, alpha: float = 2.0, beta: float = 0.5, det_offset: float = 1e-6,
                 log_offset: float = 1e-20):
        _check_nonneg(alpha=alpha, beta=beta, det_offset=det_offset, log_offset=log_offset)
        self.params = {"alpha": float(alpha), "beta": float(beta),
                       "det_offset": float(det_offset), "log_offset": float(log_offset)}

    def __call__(self, ens, x, y):
        return adp_loss(ens, x, y, **self.params)


# --------------------------------------------------------------------------- GAL
def _check_bn_grad(bn_grad):
    if bn_grad not in BN_GRADS:
        raise ValueError(f"bn_grad must be one of {', '.join(map(repr, BN_GRADS))}, got {bn_grad!r}")


def _ce_grad(model, x, y, create_graph, bn_grad):
    """(logits, ∇_x Σ_n CE_n) from one forward at a leaf copy of x."""
    xg = x.detach().requires_grad_(True)
    hold = per_example_bn(model) if bn_grad == "per_example" else nullcontext()
    with torch.enable_grad(), hold:
        logits = model(xg)
        ce = F.cross_entropy(logits.float(), y, reduction="sum")  # sum: example n's own CE
        return logits, torch.autograd.grad(ce, xg, create_graph=create_graph,
                                           retain_graph=create_graph or bn_grad == "batch")[0]


def ce_input_grad(model, x, y, *, create_graph: bool = True,
                  bn_grad: str = "per_example") -> torch.Tensor:
    """(N, *input) ∇_x CE(model(x), y) for every example.

    bn_grad "per_example" (default): batch-norm statistics held constant, so row n is
    the gradient of example n's own CE. "batch": through the batch statistics (a plain
    train-mode forward, as the GAL/DVERGE/TRS references do), so row n also holds how
    x_n moves the other examples' CE; this forward updates running statistics in train
    mode. In eval mode the two agree.
    """
    _check_bn_grad(bn_grad)
    return _ce_grad(model, x, y, create_graph, bn_grad)[1]


def gal_coherence(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GAL's coherence term mean_x log Σ_{i<j} exp(cos(g_i(x), g_j(x))).

    grads: (M, N, *input), M >= 2 -> (scalar, (M, M) batch-mean cosines, zero diagonal).
    A zero gradient has cosine 0 with everything.
    """
    m = grads.shape[0]
    u = F.normalize(grads.flatten(2).float(), dim=-1, eps=1e-12)  # (M, N, D)
    cos = torch.einsum("ind,jnd->ijn", u, u)  # (M, M, N)
    iu = torch.triu_indices(m, m, 1, device=cos.device)
    coh = torch.logsumexp(cos[iu[0], iu[1]], 0).mean()  # exp(cos) >= 1/e: no log offset needed
    pair = cos.mean(-1) * (1 - torch.eye(m, device=cos.device))
    return coh, pair


def gal_loss(ens, x, y, lam: float = 0.5, *, ce_reduction: str = "sum",
             bn_grad: str = "per_example"):
    """Gradient Alignment Loss training (Kariyappa & Qureshi 2019) on one batch.

        GAL = Σ_i mean_x CE_i + λ · mean_x log Σ_{i<j} exp(cos(∇_x CE_i, ∇_x CE_j))

    The input gradients are differentiated again (double backprop). `bn_grad`
    "per_example" (default): batch-norm statistics held constant in the gradients, and
    the CE term uses a separate ordinary forward, so batch norm trains and tracks as
    usual. "batch": as the references, one train-mode forward per member gives both
    the CE and the gradients, through the batch statistics (see `ce_input_grad`).
    `ce_reduction`: "sum" over members (the formula above, as in the TRS reference) or
    "mean" (the DVERGE reference divides the CE sum by M). λ = 0.5 as in both
    references.
    Returns (loss, parts): "ce", "reg" (the λ-free coherence term), "pairwise"
    (M, M) mean cosines, "ce_members" (M,), "logits" (M, N, C) detached.
    """
    _check_nonneg(lam=lam)
    if ce_reduction not in ("sum", "mean"):
        raise ValueError(f"ce_reduction must be 'sum' or 'mean', got {ce_reduction!r}")
    _check_bn_grad(bn_grad)
    members = _members(ens)
    if len(members) < 2:
        raise ValueError(f"GAL needs at least 2 members (it compares pairs), got {len(members)}")
    if bn_grad == "batch":
        logits, grads = zip(*[_ce_grad(m, x, y, True, "batch") for m in members])
    else:
        logits = [m(x) for m in members]
        grads = [ce_input_grad(m, x, y) for m in members]
    ce, ces = _ce_sum(logits, y)
    if ce_reduction == "mean":
        ce = ce / len(members)
    coh, pair = gal_coherence(torch.stack(grads))
    loss = ce + lam * coh
    return loss, {"ce": ce, "reg": coh, "pairwise": pair.detach(), "ce_members": ces.detach(),
                  "logits": torch.stack(list(logits)).detach()}


@register_method
class GAL:
    """GAL (Kariyappa & Qureshi 2019): see `gal_loss`.

    noise_std > 0 adds Gaussian noise N(0, noise_std²) to each training image with
    probability `noise_prob`, as the DVERGE reference's GAL trainer does (std 0.045,
    p 0.5, citing the GAL paper). It is off by default so that GAL sees the same
    inputs as every other method in the one trainer; pass noise_std=0.045 to match.
    bn_grad="batch" differentiates through the batch statistics as the references do
    (see `gal_loss`); it enters `params` only when set.
    """
    name = "gal"

    def __init__(self, lam: float = 0.5, ce_reduction: str = "sum", noise_std: float = 0.0,
                 noise_prob: float = 0.5, bn_grad: str = "per_example"):
        _check_nonneg(lam=lam, noise_std=noise_std, noise_prob=noise_prob)
        if ce_reduction not in ("sum", "mean"):
            raise ValueError(f"ce_reduction must be 'sum' or 'mean', got {ce_reduction!r}")
        if noise_prob > 1:
            raise ValueError(f"noise_prob must be in [0, 1], got {noise_prob}")
        _check_bn_grad(bn_grad)
        self.params = {"lam": float(lam), "ce_reduction": ce_reduction,
                       "noise_std": float(noise_std), "noise_prob": float(noise_prob),
                       **non_default(bn_grad=(bn_grad, "per_example"))}
        self._gen = torch.Generator().manual_seed(0)

    def start_epoch(self, ens, epoch, generator, train_ds):
        self._gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))

    def __call__(self, ens, x, y):
        p = self.params
        if p["noise_std"] > 0:
            n = x.shape[0]
            hit = (torch.rand(n, generator=self._gen) < p["noise_prob"]).float()
            noise = torch.randn(x.shape, generator=self._gen) * p["noise_std"]
            x = x + (noise * hit.view(n, *[1] * (x.dim() - 1))).to(x.device, x.dtype)
        return gal_loss(ens, x, y, p["lam"], ce_reduction=p["ce_reduction"],
                        bn_grad=p.get("bn_grad", "per_example"))
