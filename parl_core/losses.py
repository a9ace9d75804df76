"""Training methods as loss objects: one trainer, a method is a loss (DESIGN §2).

A method is a class with
    name: str                      registry key ("ce_only", "parl", ...)
    params: dict                   its hyperparameters (recorded in checkpoints)
    __call__(ens, x, y) -> (loss, parts)
        parts: dict of tensors; "ce" (Σ_i mean_x CE_i) always, scalars are logged
    start_epoch(ens, epoch, generator, train_data)   optional per-epoch hook
`make_method(name, **params)` validates the parameters against the constructor.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layergrad import check_grad_options, check_layers, forward_with_layer_grads, num_layers

__all__ = ["parl_loss", "pairwise_cosines", "make_method", "METHODS", "register_method",
           "CEOnly", "PARL", "method_label"]

METHODS: dict[str, type] = {}
LABELS = {"ce_only": "ENS_U", "parl": "PARL"}


def register_method(cls):
    """Class decorator: add a method to the registry under `cls.name`."""
    METHODS[cls.name] = cls
    return cls


def method_label(name: str) -> str:
    """The paper's name for a method, e.g. 'ce_only' -> 'ENS_U'."""
    return LABELS.get(name, name.upper())


def make_method(name: str, **params):
    """Instantiate a registered method, checking its parameter names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    bad = sorted(set(params) - set(allowed))
    if bad:
        raise ValueError(f"method {name!r} does not take {bad}; its parameters are {allowed}")
    return cls(**params)


def _members(ens) -> list:
    """The member models of an Ensemble or a list of models (ValueError otherwise)."""
    members = list(getattr(ens, "members", ens))
    if not members or not all(isinstance(m, nn.Module) for m in members):
        raise ValueError("expected an Ensemble or a non-empty list of models")
    return members


def _check_nonneg(**values):
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")


def non_default(**options) -> dict:
    """{name: value} for the options given as name=(value, default) whose value differs
    from the default: options added after a method's parameters were first recorded
    enter `params` only when used, so earlier records and their hashes stay valid."""
    return {k: v for k, (v, d) in options.items() if v != d}


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Reductions run in float32 under bf16 autocast, in float64 when the model is."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _ce_sum(logits_list, y):
    """Σ_i mean_x CE_i and the per-member CE values (M,)."""
    ces = torch.stack([F.cross_entropy(_at_least_fp32(lg), y) for lg in logits_list])
    return ces.sum(), ces


def pairwise_cosines(grads: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-example, per-layer cosine of every member pair.

    grads: (M, K, N, *input) -> (M, M, K, N). A zero gradient has cosine 0 with
    everything (instead of NaN), and its derivative stays finite.
    """
    u = F.normalize(_at_least_fp32(grads.flatten(3)), dim=-1, eps=eps)  # (M, K, N, D)
    return torch.einsum("iknd,jknd->ijkn", u, u)


def parl_loss(ens, x, y, gamma1: float = 1.0, gamma2: float = 0.5, layers: int | None = None,
              *, grad_method: str = "auto", feature: str = "pre_bn", bn_grad: str = "per_example"):
    """The Pairwise Adversarially Robust Loss, paper Eq. (1), on one batch.

        PARL = γ1 · Σ_i mean_x CE_i(x, y) + γ2 · Σ_{i<j} R(M_i, M_j)
        R(M_i, M_j) = mean_x Σ_{k≤K} cos(g^k_i(x), g^k_j(x)),  g^k = ∇_x Σ_f F^k_f(x)

    Choices the paper leaves open, made here (parl_core.layergrad has the details):
      * F^k (`feature`, default "pre_bn") is the raw output of the k-th conv (linear,
        for MLPs) layer, before batch norm, shortcut convs excluded (DESIGN §3). The
        stem is linear, so under "pre_bn" layer 1's gradient does not depend on the
        input: its cosine between two members is the same for every example, and R's
        layer-1 term is a function of the stem weights alone. "post_bn" (after that
        layer's batch norm) and "post_relu" (after the ReLU that follows it) are
        options. K = `layers`, default min(7, L).
      * `bn_grad` "per_example" (default): the gradient is taken per example with
        batch-norm statistics held constant (batch statistics in train mode, running
        ones in eval mode), so g^k(x) is the paper's gradient "for a particular data
        point". "batch": through the batch statistics, as a plain train-mode forward.
      * The mean over x is the batch mean (a minibatch estimate of the paper's mean
        over the training set); cosines are per example, then averaged.
      * The layer gradients are computed once per member and reused for every pair,
        so the cost grows linearly with the number of members.
      * A zero gradient contributes cosine 0 (no NaN).

    Returns (loss, parts) with parts: "ce" (Σ_i mean CE), "reg" (Σ_{i<j} R), "pairwise"
    (M, M) tensor of R with zero diagonal, "ce_members" (M,), "logits" (M, N, C), detached.
    """
    from .validate import finite, model_inputs
    finite(gamma1=gamma1, gamma2=gamma2)
    if gamma1 < 0 or gamma2 < 0:
        raise ValueError(f"gamma1 and gamma2 must be >= 0, got {gamma1} and {gamma2}")
    check_grad_options(feature, bn_grad)
    model_inputs(ens, x, y)
    k = check_layers(layers, min(num_layers(m) for m in ens.members))
    xg = x if x.requires_grad else x.detach().requires_grad_(False)
    outs = [forward_with_layer_grads(m, xg, k, method=grad_method, create_graph=True,
                                     feature=feature, bn_grad=bn_grad)
            for m in ens.members]
    logits = [o[0] for o in outs]
    ce, ces = _ce_sum(logits, y)
    cos = pairwise_cosines(torch.stack([o[1] for o in outs]))  # (M, M, K, N)
    pair = cos.sum(2).mean(-1)  # (M, M): R(M_i, M_j)
    pair = pair * (1 - torch.eye(len(ens.members), device=pair.device))
    reg = pair.sum() / 2
    loss = gamma1 * ce + gamma2 * reg
    return loss, {"ce": ce, "reg": reg, "pairwise": pair, "ce_members": ces.detach(),
                  "logits": torch.stack(logits).detach()}


@register_method
class CEOnly:
    """ENS_U: every member trained with its own cross-entropy, Σ_i mean_x CE_i."""
    name = "ce_only"

    def __init__(self):
        self.params = {}

    def __call__(self, ens, x, y):
        logits = [m(x) for m in ens.members]
        ce, ces = _ce_sum(logits, y)
        return ce, {"ce": ce, "ce_members": ces.detach(), "logits": torch.stack(logits).detach()}


@register_method
class PARL:
    """PARL (paper Eq. 1): see `parl_loss`. Paper defaults γ1 = 1, γ2 = 0.5, K = 7.

    `feature` ("pre_bn" | "post_bn" | "post_relu") and `bn_grad` ("per_example" |
    "batch") appear in `params` only when they differ from their defaults, so a run at
    the defaults records (and hashes) the same parameters as before they existed.
    """
    name = "parl"

    def __init__(self, gamma1: float = 1.0, gamma2: float = 0.5, layers: int | None = None,
                 grad_method: str = "auto", feature: str = "pre_bn", bn_grad: str = "per_example"):
        if gamma1 < 0 or gamma2 < 0:
            raise ValueError(f"gamma1 and gamma2 must be >= 0, got {gamma1} and {gamma2}")
        check_grad_options(feature, bn_grad)
        self.params = {"gamma1": float(gamma1), "gamma2": float(gamma2), "layers": layers,
                       "grad_method": grad_method}
        self.params.update(non_default(feature=(feature, "pre_bn"),
                                       bn_grad=(bn_grad, "per_example")))

    def __call__(self, ens, x, y):
        return parl_loss(ens, x, y, **self.params)


from . import trs as _trs  # noqa: E402,F401  (registers trs; it builds on this module)
