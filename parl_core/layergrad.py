"""PARL's layer gradients g_k(x) = ∇_x Σ_f F^k_f(x), k = 1..K, for every example.

Two paths compute the same numbers (tests/test_layergrad.py checks them against
each other):

* "fast": the model's own explicit vector-Jacobian products (`layer_input_grads`,
  see parl_core.models), available for the shipped architectures and the default
  feature space and batch-norm rule only.
* "autograd": one `torch.autograd.grad` per layer; works for any model that returns
  its layer outputs with `model(x, return_features=True)` (other feature spaces need
  the models of parl_core.models, see parl_core.features).

Feature space (`feature`, parl_core.features): F^k is layer k's output
  "pre_bn"    the raw conv (linear) output (DESIGN §3; the default). The stem is linear
              in x, so layer 1's gradient is the same for every input: its cosine
              between two members is a constant of their weights, not of x.
  "post_bn"   after that layer's batch norm (for the MLP, which has none: "pre_bn").
  "post_relu" after the ReLU that follows it (a ResNet block's output for its 2nd conv).

Batch norm (`bn_grad`), which only matters in train mode (in eval mode both rules use
the running statistics and agree):
  "per_example" (default; DESIGN §3) the batch statistics are computed as usual but
      held constant (detached) while differentiating, and the running statistics are
      left alone: g_k(x_i) is the derivative of example i's own features only, with no
      term through the other examples (∂F^k(x_j)/∂x_i = 0 for j ≠ i), the paper's
      G(x) "for a particular data point". The statistics' values still come from the
      batch, so in train mode g_k(x_i) is scaled by them; in eval mode (running
      statistics) it is independent of the rest of the batch.
  "batch" differentiate through the batch statistics, as a plain train-mode forward
      does (what the DVERGE/TRS reference trainers' GAL does): g_k(x_i) = ∇_{x_i} of
      Σ_n Σ_f F^k_f(x_n), which includes how x_i moves the others' features through
      the batch mean and variance. One train-mode forward serves the logits and the
      features, so running statistics are updated once, as usual. With "post_bn" in
      train mode it is refused: the batch sum of a batch-normalised layer is the
      constant β·N·H·W per channel, so that gradient is zero.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .features import check_space, layer_outputs
from .models import per_example_bn

__all__ = ["layer_gradients", "num_layers", "check_layers", "forward_with_layer_grads",
           "PARL_FEATURES", "BN_GRADS"]

METHODS = ("auto", "fast", "autograd")
PARL_FEATURES = ("pre_bn", "post_bn", "post_relu")
BN_GRADS = ("per_example", "batch")


def num_layers(model) -> int:
    """L, the number of layer outputs the model returns."""
    if hasattr(model, "num_layers"):
        return model.num_layers
    raise ValueError(f"{type(model).__name__} does not report its layers (num_layers)")


def check_layers(layers, L: int) -> int:
    """Validate PARL's K against L layers; None means min(7, L)."""
    if layers is None:
        return min(7, L)
    if isinstance(layers, bool) or not isinstance(layers, int):
        raise ValueError(f"layers must be an int (the first K layers), got {layers!r}")
    if not 1 <= layers <= L:
        raise ValueError(f"layers={layers} is out of range: this model has L={L} layers "
                         f"(conv/linear outputs), so K must be in 1..{L}")
    return layers


def check_grad_options(feature: str, bn_grad: str) -> None:
    """ValueError naming `feature` or `bn_grad` when either is not a known choice."""
    check_space(feature, "feature", PARL_FEATURES)
    check_space(bn_grad, "bn_grad", BN_GRADS)


def _has_bn(model) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _has_fast(model) -> bool:
    return hasattr(model, "layer_input_grads") and hasattr(model, "forward_trace")


def forward_with_layer_grads(model, x, k: int, *, method: str = "auto",
                             create_graph: bool = True, feature: str = "pre_bn",
                             bn_grad: str = "per_example"):
    """One forward of `model` and its first k layer gradients.

    Returns (logits, grads) with grads (k, N, *x.shape[1:]). The logits come from an
    ordinary forward (in train mode its batch norm uses, and updates, batch statistics
    as usual), so they serve the cross-entropy term of a training loss. `feature` and
    `bn_grad`: see the module doc; anything but the defaults takes the autograd path.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_grad_options(feature, bn_grad)
    default = feature == "pre_bn" and bn_grad == "per_example"
    if method == "fast" and not (_has_fast(model) and default):
        raise ValueError(f"method='fast' is not available for {type(model).__name__} with "
                         f"feature={feature!r}, bn_grad={bn_grad!r} (it needs the model's "
                         "layer_input_grads, feature='pre_bn', bn_grad='per_example'); "
                         "use 'autograd'")
    if feature == "post_bn" and bn_grad == "batch" and model.training and _has_bn(model):
        raise ValueError("feature='post_bn' with bn_grad='batch' in train mode has no gradient: "
                         "the batch sum of a batch-normalised layer is the constant β·N·H·W, "
                         "so its input-gradient is zero; use bn_grad='per_example' or "
                         "feature='post_relu'")
    if method != "autograd" and default and _has_fast(model):
        logits, feats, trace = model.forward_trace(x)
        grads = model.layer_input_grads(feats, trace, k)
        if not create_graph:
            grads = grads.detach()
        return logits, grads
    if bn_grad == "batch":  # one forward: the logits share the batch-coupled graph
        return _autograd_grads(model, x, k, create_graph, feature, bn_grad)
    logits = model(x)
    return logits, _autograd_grads(model, x, k, create_graph, feature, bn_grad)[1]


def _autograd_grads(model, x, k, create_graph, feature, bn_grad):
    xg = x.detach().requires_grad_(True)
    hold = per_example_bn(model) if bn_grad == "per_example" else nullcontext()
    with torch.enable_grad(), hold:
        # per example, the forward can stop after layer k (the logits come from model(x))
        logits, feats = layer_outputs(model, xg, feature, None if bn_grad == "batch" else k)
        grads = [torch.autograd.grad(feats[j].sum(), xg, create_graph=create_graph,
                                     retain_graph=create_graph or j < k - 1 or bn_grad == "batch")[0]
                 for j in range(k)]
    return logits, torch.stack(grads)


def layer_gradients(model, x: torch.Tensor, layers: int | None = None, *,
                    method: str = "auto", create_graph: bool = False, feature: str = "pre_bn",
                    bn_grad: str = "per_example") -> torch.Tensor:
    """(K, N, *input) layer gradients g_1..g_K of one model at inputs x.

    layers: K (default min(7, L)). method: "auto" (fast path when the model has
    one and the options allow it), "fast" or "autograd". feature: "pre_bn" (default) |
    "post_bn" | "post_relu"; bn_grad: "per_example" (default) | "batch" (see the module
    doc). The model's train/eval mode is used as it is.
    """
    k = check_layers(layers, num_layers(model))
    if create_graph:
        return forward_with_layer_grads(model, x, k, method=method, create_graph=True,
                                        feature=feature, bn_grad=bn_grad)[1]
    with torch.enable_grad():
        return forward_with_layer_grads(model, x, k, method=method, create_graph=False,
                                        feature=feature, bn_grad=bn_grad)[1]
