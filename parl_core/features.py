"""A model's layer outputs in a chosen feature space.

DESIGN §3's layer list is the raw conv (linear) outputs, before batch norm. PARL's
R and DVERGE's distillation can also be read elsewhere in the same layers. For layer
k (conv k, its batch norm bn_k and the ReLU that follows):

  "pre_bn"     conv_k(h), the raw conv output: DESIGN §3's list and every default.
  "post_bn"    bn_k(conv_k(h)); for a ResNet block's second conv, without the shortcut.
  "post_relu"  the ReLU that follows: relu(bn_k(conv_k(h))); for a ResNet block's second
               conv relu(bn_b(conv_b(u)) + shortcut(h)), the block output.
  "reference"  the DVERGE reference trainer's layers (zjysteven/DVERGE, models/resnet.py
               `get_features`, called with before_relu=True by its trainer): what enters
               each ReLU. Layer 1 is bn1(conv1(x)); in each basic block, bn_a(conv_a(h))
               and then bn_b(conv_b(u)) + shortcut(h) (shortcut: the identity, or the
               1x1 conv + batch norm); finally the logits as layer L + 1. For ResNet20
               that is the reference's 1..20; for the SmallCNN the same rule gives
               bn_k(conv_k(h)) per conv plus the logits.

The MLP has no batch norm, so its "post_bn" and "reference" hidden layers equal
"pre_bn". Layers are numbered 1..L (1..L+1 for "reference").
"""
from __future__ import annotations

import torch

__all__ = ["FEATURE_SPACES", "check_space", "num_feature_layers", "layer_outputs"]

FEATURE_SPACES = ("pre_bn", "post_bn", "post_relu", "reference")


def check_space(space, name: str = "feature space", allowed=FEATURE_SPACES) -> str:
    """`space` if it is one of `allowed`, else a ValueError naming `name`."""
    if not isinstance(space, str) or space not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {space!r}")
    return space


def _supports_taps(model) -> bool:
    return hasattr(model, "forward_trace") and hasattr(model, "num_layers")


def num_feature_layers(model, space: str = "pre_bn") -> int:
    """Number of layers of `model` in `space`: L, or L + 1 for "reference" (the logits)."""
    check_space(space)
    if not hasattr(model, "num_layers"):
        raise ValueError(f"{type(model).__name__} does not report its layers (num_layers)")
    return model.num_layers + (space == "reference")


class _Reached(Exception):
    """Raised by `_Taps` to stop a forward once the wanted layer has run."""


class _Taps(list):
    """Collects one feature space's layer outputs during a forward (the models call
    `add` once per layer) and raises `_Reached` once `stop` of them are in."""

    def __init__(self, space: str, stop: int | None = None):
        super().__init__()
        self.space, self.stop = space, stop

    def add(self, pre_bn, post_bn, post_relu, reference):
        self.append({"pre_bn": pre_bn, "post_bn": post_bn, "post_relu": post_relu,
                     "reference": reference}[self.space])
        if self.stop is not None and len(self) >= self.stop:
            raise _Reached


def layer_outputs(model, x: torch.Tensor, space: str = "pre_bn", upto: int | None = None):
    """(logits, [layer outputs]) of `model` at x in feature space `space`.

    upto: stop the forward right after that layer (1-based): the result is then
    (None, the first `upto` outputs); nothing later can change them. A model without
    the `taps` protocol (parl_core.models) offers "pre_bn" only, via
    `model(x, return_features=True)`. The model's train/eval mode is used as it is
    (a train-mode forward updates batch-norm running statistics as usual; wrap the
    call in `per_example_bn` to leave them alone).
    """
    check_space(space)
    if not _supports_taps(model):
        if space != "pre_bn":
            raise ValueError(f"{type(model).__name__} only offers feature space 'pre_bn' "
                             f"(model(x, return_features=True)), got {space!r}")
        logits, feats = model(x, return_features=True)
        return (logits, list(feats)) if upto is None else (None, list(feats[:upto]))
    n = num_feature_layers(model, space)
    if upto is not None and (isinstance(upto, bool) or not isinstance(upto, int) or not 1 <= upto <= n):
        raise ValueError(f"upto must be None or an int in 1..{n} (the layers of {space!r}), "
                         f"got {upto!r}")
    taps = _Taps(space, upto)
    try:
        logits = model.forward_trace(x, trace=False, taps=taps)[0]
        if space == "reference":
            taps.add(None, None, None, logits)
    except _Reached:
        return None, list(taps)
    return logits, list(taps)
