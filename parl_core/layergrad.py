"""PARL's layer gradients g_k(x) = ∇_x Σ_f F^k_f(x), k = 1..K, for every example.

Two paths compute the same numbers (tests/test_layergrad.py checks them against
each other):

* "fast": the model's own explicit vector-Jacobian products (`layer_input_grads`,
  see parl_core.models), available for the shipped architectures.
* "autograd": one `torch.autograd.grad` per layer through a forward in which batch
  norm holds its statistics constant; works for any model that returns its layer
  outputs with `model(x, return_features=True)`.

In both, batch-norm statistics are held constant (DESIGN §3): batch statistics in
train mode, running statistics in eval mode, so an example's gradient does not
depend on the rest of the batch — the paper's G(x) "for a particular data point".
"""
from __future__ import annotations

import torch

from .models import per_example_bn

__all__ = ["layer_gradients", "num_layers", "check_layers", "forward_with_layer_grads"]

METHODS = ("auto", "fast", "autograd")


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


def _has_fast(model) -> bool:
    return hasattr(model, "layer_input_grads") and hasattr(model, "forward_trace")


def forward_with_layer_grads(model, x, k: int, *, method: str = "auto",
                             create_graph: bool = True):
    """One forward of `model` and its first k layer gradients.

    Returns (logits, grads) with grads (k, N, *x.shape[1:]). The logits come from an
    ordinary forward (in train mode its batch norm uses, and updates, batch statistics
    as usual), so they serve the cross-entropy term of a training loss.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "fast" and not _has_fast(model):
        raise ValueError(f"{type(model).__name__} has no fast layer-gradient path; use 'autograd'")
    if method != "autograd" and _has_fast(model):
        logits, feats, trace = model.forward_trace(x)
        grads = model.layer_input_grads(feats, trace, k)
        if not create_graph:
            grads = grads.detach()
        return logits, grads
    logits = model(x)
    return logits, _autograd_grads(model, x, k, create_graph)


def _autograd_grads(model, x, k, create_graph):
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad(), per_example_bn(model):
        _, feats = model(xg, return_features=True)
        grads = [torch.autograd.grad(feats[j].sum(), xg, create_graph=create_graph,
                                       retain_graph=create_graph or j < k - 1)[0]
                 for j in range(k)]
    return torch.stack(grads)


def layer_gradients(model, x: torch.Tensor, layers: int | None = None, *,
                    method: str = "auto", create_graph: bool = False) -> torch.Tensor:
    """(K, N, *input) layer gradients g_1..g_K of one model at inputs x.

    layers: K (default min(7, L)). method: "auto" (fast path when the model has
    one), "fast" or "autograd". The model's train/eval mode is used as it is.
    """
    k = check_layers(layers, num_layers(model))
    if create_graph:
        return forward_with_layer_grads(model, x, k, method=method, create_graph=True)[1]
    with torch.enable_grad():
        return forward_with_layer_grads(model, x, k, method=method, create_graph=False)[1]
