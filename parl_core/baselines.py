"""The paper's baselines as loss objects for the one trainer: ADP, GAL and DVERGE.

Each follows its own paper; where the widely used reference trainers (the DVERGE
and TRS repositories) differ, the paper wins, the difference is written down here,
and it is an option when it matters. The options a run used are the method's
`params`, which the trainer records in the checkpoint.

Differences shared by all three (the one trainer, DESIGN §2):
  * Optimiser: Adam, lr 1e-3, no weight decay, for every method (the PARL paper's
    setting). The references use Adam with weight decay 1e-4 (ADP, GAL) and SGD
    lr 0.1 with weight decay 1e-4 and momentum 0.9, one optimiser per member
    (DVERGE). One Adam over all members equals one Adam per member here, because
    Adam is per parameter and each member's DVERGE loss touches only its weights.
  * Models: ours (DESIGN §3) with ReLU; the GAL reference uses leaky ReLU (0.1).
  * Input gradients (GAL, DVERGE's distillation) are per example: batch-norm
    statistics are held constant (DESIGN §3). The references differentiate through
    the batch statistics, and DVERGE's also updates the running statistics during
    distillation; ours leaves them alone.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layergrad import num_layers
from .losses import LABELS, _ce_sum, register_method
from .models import per_example_bn

__all__ = ["adp_loss", "gal_loss", "gal_coherence", "dverge_distill", "features_at",
           "ADP", "GAL", "DVERGE"]

LABELS.update({"adp": "ADP", "gal": "GAL", "dverge": "DVERGE"})


def _members(ens) -> list:
    members = list(getattr(ens, "members", ens))
    if not members or not all(isinstance(m, nn.Module) for m in members):
        raise ValueError("expected an Ensemble or a non-empty list of models")
    return members


def _check_nonneg(**values):
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")


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
def ce_input_grad(model, x, y, *, create_graph: bool = True) -> torch.Tensor:
    """(N, *input) per-example ∇_x CE(model(x), y), batch-norm statistics held constant."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad(), per_example_bn(model):
        ce = F.cross_entropy(model(xg).float(), y, reduction="sum")  # sum: example n's own CE
        return torch.autograd.grad(ce, xg, create_graph=create_graph)[0]


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


def gal_loss(ens, x, y, lam: float = 0.5, *, ce_reduction: str = "sum"):
    """Gradient Alignment Loss training (Kariyappa & Qureshi 2019) on one batch.

        GAL = Σ_i mean_x CE_i + λ · mean_x log Σ_{i<j} exp(cos(∇_x CE_i, ∇_x CE_j))

    The input gradients are per example (batch-norm statistics held constant) and
    differentiated again (double backprop). `ce_reduction`: "sum" over members (the
    formula above, as in the TRS reference) or "mean" (the DVERGE reference divides
    the CE sum by M). λ = 0.5 as in both references. The CE term uses an ordinary
    forward, as the reference does, so batch norm trains and tracks as usual.
    Returns (loss, parts): "ce", "reg" (the λ-free coherence term), "pairwise"
    (M, M) mean cosines, "ce_members" (M,), "logits" (M, N, C) detached.
    """
    _check_nonneg(lam=lam)
    if ce_reduction not in ("sum", "mean"):
        raise ValueError(f"ce_reduction must be 'sum' or 'mean', got {ce_reduction!r}")
    members = _members(ens)
    if len(members) < 2:
        raise ValueError(f"GAL needs at least 2 members (it compares pairs), got {len(members)}")
    logits = [m(x) for m in members]
    ce, ces = _ce_sum(logits, y)
    if ce_reduction == "mean":
        ce = ce / len(members)
    coh, pair = gal_coherence(torch.stack([ce_input_grad(m, x, y) for m in members]))
    loss = ce + lam * coh
    return loss, {"ce": ce, "reg": coh, "pairwise": pair.detach(), "ce_members": ces.detach(),
                  "logits": torch.stack(logits).detach()}


@register_method
class GAL:
    """GAL (Kariyappa & Qureshi 2019): see `gal_loss`.

    noise_std > 0 adds Gaussian noise N(0, noise_std²) to each training image with
    probability `noise_prob`, as the DVERGE reference's GAL trainer does (std 0.045,
    p 0.5, citing the GAL paper). It is off by default so that GAL sees the same
    inputs as every other method in the one trainer; pass noise_std=0.045 to match.
    """
    name = "gal"

    def __init__(self, lam: float = 0.5, ce_reduction: str = "sum", noise_std: float = 0.0,
                 noise_prob: float = 0.5):
        _check_nonneg(lam=lam, noise_std=noise_std, noise_prob=noise_prob)
        if ce_reduction not in ("sum", "mean"):
            raise ValueError(f"ce_reduction must be 'sum' or 'mean', got {ce_reduction!r}")
        if noise_prob > 1:
            raise ValueError(f"noise_prob must be in [0, 1], got {noise_prob}")
        self.params = {"lam": float(lam), "ce_reduction": ce_reduction,
                       "noise_std": float(noise_std), "noise_prob": float(noise_prob)}
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
        return gal_loss(ens, x, y, p["lam"], ce_reduction=p["ce_reduction"])


# --------------------------------------------------------------------------- DVERGE
class _Reached(Exception):
    """Raised by a forward hook to stop a forward once the wanted layer has run."""


def features_at(model, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Output of `model`'s 1-based layer `layer` (the list of DESIGN §3).

    The forward stops right after that layer: nothing later changes it, and skipping
    the rest halves the average cost of DVERGE's distillation. Models without
    `layer_modules()` run the whole forward.
    """
    if not hasattr(model, "layer_modules"):
        return model(x, return_features=True)[1][layer - 1]
    box = {}

    def hook(module, inputs, output):
        box["out"] = output
        raise _Reached

    handle = model.layer_modules()[layer - 1].register_forward_hook(hook)
    try:
        model(x)
    except _Reached:
        pass  # the forward was stopped on purpose; its result is in box
    finally:
        handle.remove()
    return box["out"]


def _check_distill(models, x_source, x_target, layer, eps, step_size, steps):
    if x_source.shape != x_target.shape:
        raise ValueError(f"x_source and x_target must have the same shape, got "
                         f"{tuple(x_source.shape)} and {tuple(x_target.shape)}")
    L = min(num_layers(m) for m in models)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= L:
        raise ValueError(f"layer must be an int in 1..{L} (the models' layers), got {layer!r}")
    _check_nonneg(eps=eps, step_size=step_size)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")


def dverge_distill(model, x_source: torch.Tensor, x_target: torch.Tensor, layer: int,
                   eps: float = 0.07, step_size: float = 0.007, steps: int = 10, *,
                   momentum: bool = True, rand_start: bool = False, seed: int = 0,
                   bounds=(0.0, 1.0)) -> torch.Tensor:
    """DVERGE's feature distillation (Yang et al. 2020).

    Finds x' within `eps` (L∞) of x_source whose layer-`layer` features match those
    of x_target: x' = argmin ||f_l(x') − f_l(x_target)||² by `steps` signed steps of
    `step_size`, each projected to the ε-ball and to `bounds` (None: no pixel range).
    As in the reference: start at the source (`rand_start` adds uniform noise in the
    ball, drawn from `seed`), momentum 1 on the per-example L1-normalised gradient.
    Features are our layer outputs (DESIGN §3, numbered 1..L) with batch-norm
    statistics held constant; the model's train/eval mode is used as it is.

    model: one model -> (N, *input); a list of models or an Ensemble -> (M, N, *input),
    one x' per member, all members distilled together with one backward per step.
    """
    single = isinstance(model, nn.Module) and not hasattr(model, "members")
    models = [model] if single else _members(model)
    _check_distill(models, x_source, x_target, layer, eps, step_size, steps)
    x0 = x_source.detach()
    with contextlib.ExitStack() as stack, torch.no_grad():
        for m in models:
            stack.enter_context(per_example_bn(m))
        targets = [features_at(m, x_target.detach(), layer) for m in models]
    x = x0.unsqueeze(0).repeat(len(models), *[1] * x0.dim())  # (M, N, *input)
    if rand_start:
        gen = torch.Generator().manual_seed(int(seed))
        x = x + (torch.rand(x.shape, generator=gen) * 2 - 1).to(x) * eps
        x = x.clamp(*bounds) if bounds is not None else x
    g = torch.zeros_like(x)
    for _ in range(steps):
        grad = _feature_grad(models, x, targets, layer)
        with torch.no_grad():
            if momentum:  # accumulate the per-example L1-normalised gradient
                norm = grad.flatten(2).abs().sum(-1).clamp_min(1e-12)
                g = g + grad / norm.view(*norm.shape, *[1] * (grad.dim() - 2))
                grad = g
            x = x - step_size * grad.sign()
            x = torch.min(torch.max(x, x0 - eps), x0 + eps)
            x = x.clamp(*bounds) if bounds is not None else x
    return x[0] if single else x


def _feature_grad(models, x, targets, layer):
    """∇ of Σ_j MSE(f_l^j(x_j), target_j) w.r.t. x (M, N, ...): member j's slice only
    depends on member j's loss, so one backward serves every member."""
    xg = x.detach().requires_grad_(True)
    with contextlib.ExitStack() as stack, torch.enable_grad():
        for m in models:
            stack.enter_context(per_example_bn(m))
        loss = sum(F.mse_loss(features_at(m, xg[j], layer).float(), t.float())
                   for j, (m, t) in enumerate(zip(models, targets)))
        return torch.autograd.grad(loss, xg)[0]


@register_method
class DVERGE:
    """DVERGE (Yang et al. 2020): each member learns the other members' non-robust features.

    Every step, for every member j, x'_j = dverge_distill(member j, x, t, layer): the batch
    x (source) moved within ε until member j's layer-l features match those of a target
    batch t. Member i then minimises Σ_{j≠i} CE_i(x'_j, y) with the source labels (the
    reference's round-robin), and loss = Σ_i of those sums. parts: "ce" (that loss, the
    only CE DVERGE trains on), "clean_ce" (Σ_i CE_i on the clean batch, no gradient),
    "layer" (the distillation layer), "ce_members" (M,), "logits" (clean, for accuracy).

    Defaults are the paper's and the DVERGE reference's: ε 0.07, step 0.007, 10 steps,
    momentum, no random start, a layer drawn every epoch (`layer=None`; an int fixes it,
    the reference's --distill-fixed-layer).
    Differences from the reference trainer, all documented choices:
      * Layers: the reference draws from 1..20 of its ResNet20, block outputs after batch
        norm and the residual add, before ReLU, 20 being the logits. Ours are the layer
        outputs of DESIGN §3 (raw conv outputs, 1..L: 19 for ResNet20, no logits layer).
        The TRS reference draws one layer for the whole run; we draw per epoch.
      * Targets: as in the reference, a batch from an independently shuffled pass over the
        training set (a seeded permutation per epoch), but not augmented. Outside pc.train
        (no start_epoch) the targets are the batch itself rolled by one.
      * Warm start: the reference starts from a trained plain ensemble; here that is the
        CLI's `--init CKPT` (or loading weights before pc.train). The default is scratch.
      * Distillation holds batch-norm statistics constant and leaves the running ones
        alone; target features are computed once per step (the reference recomputes the
        same values every distillation step). Clean logits for train accuracy also leave
        the running statistics alone.
    """
    name = "dverge"

    def __init__(self, eps: float = 0.07, step_size: float = 0.007, steps: int = 10,
                 layer: int | None = None, momentum: bool = True, rand_start: bool = False):
        _check_nonneg(eps=eps, step_size=step_size)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 1):
            raise ValueError(f"layer must be None (drawn every epoch) or an int >= 1, got {layer!r}")
        self.params = {"eps": float(eps), "step_size": float(step_size), "steps": steps,
                       "layer": layer, "momentum": bool(momentum), "rand_start": bool(rand_start)}
        self._gen, self._layer, self._pool, self._order, self._cursor = None, None, None, None, 0

    def start_epoch(self, ens, epoch, generator, train_ds):
        """Draw this epoch's layer and target order from the epoch's seeded generator."""
        self._start(ens, int(torch.randint(2**62, (1,), generator=generator)))
        self._pool = train_ds.images
        self._order, self._cursor = torch.randperm(len(self._pool), generator=self._gen), 0

    def _start(self, ens, seed):
        self._gen = torch.Generator().manual_seed(seed)
        L = min(num_layers(m) for m in _members(ens))
        layer = self.params["layer"]
        if layer is not None and layer > L:
            raise ValueError(f"layer={layer} is out of range: these models have L={L} layers")
        self._layer = layer if layer is not None else int(torch.randint(1, L + 1, (1,), generator=self._gen))

    def _targets(self, x):
        n = x.shape[0]
        if self._pool is None or n > len(self._pool):
            return torch.roll(x, 1, 0)
        if self._cursor + n > len(self._order):  # a new pass, like the reference's loader
            self._order, self._cursor = torch.randperm(len(self._pool), generator=self._gen), 0
        idx = self._order[self._cursor:self._cursor + n]
        self._cursor += n
        return self._pool[idx].to(x.device, x.dtype)

    def __call__(self, ens, x, y):
        members = _members(ens)
        if len(members) < 2:
            raise ValueError(f"DVERGE needs at least 2 members (round-robin), got {len(members)}")
        if self._gen is None:
            self._start(ens, 0)
        p = self.params
        seed = int(torch.randint(2**62, (1,), generator=self._gen)) if p["rand_start"] else 0
        xd = dverge_distill(members, x, self._targets(x), self._layer, p["eps"], p["step_size"],
                            p["steps"], momentum=p["momentum"], rand_start=p["rand_start"], seed=seed,
                            bounds=(0.0, 1.0) if x.dim() == 4 else None)  # (M, N, ...)
        ces = torch.stack([sum(F.cross_entropy(m(xd[j]).float(), y)
                               for j in range(len(members)) if j != i)
                           for i, m in enumerate(members)])
        with contextlib.ExitStack() as stack, torch.no_grad():
            for m in members:
                stack.enter_context(per_example_bn(m))
            clean = torch.stack([m(x) for m in members])  # (M, N, C)
        loss = ces.sum()
        clean_ce = sum(F.cross_entropy(c.float(), y) for c in clean)
        return loss, {"ce": loss, "clean_ce": clean_ce, "layer": torch.tensor(float(self._layer)),
                      "ce_members": ces.detach(), "logits": clean}
