"""Checks of what a person passes to the public API, with messages that name the
parameter, what was expected and what was given (instead of PyTorch's internal errors).

`model_inputs` compares x and y with the model: a floating tensor of the model's dtype,
the channel count (or input dimension) the model was built for, integer labels in
[0, num_classes). `device` refuses CUDA where PyTorch has none. `finite` refuses NaN and
infinite hyperparameters.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["model_inputs", "device", "finite"]


def _config(model: nn.Module) -> dict | None:
    """The lab config of a model or of an ensemble's first member (None for other modules)."""
    members = getattr(model, "members", None)
    m = members[0] if members is not None and len(members) else model
    return getattr(m, "config", None)


def _dtype(model: nn.Module) -> torch.dtype | None:
    p = next(model.parameters(), None)
    return p.dtype if p is not None else None


def model_inputs(model: nn.Module, x, y=None, *, name: str = "x") -> None:
    """ValueError when x (and y) cannot be the model's input (and labels)."""
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of pixels in [0, 1], got dtype {x.dtype}")
    want = _dtype(model)
    if want is not None and x.dtype != want:
        raise ValueError(f"{name} must have the model's dtype {want}, got {x.dtype} (convert with "
                         f"{name}.to({want}))")
    cfg = _config(model)
    if cfg and x.dim() >= 2:
        channels = cfg.get("in_channels")
        if channels is not None and x.shape[1] != channels:
            what = "input dimension" if cfg.get("arch") == "mlp" else "channels"
            raise ValueError(f"{name} must have {channels} {what} (the model's), got shape {tuple(x.shape)}")
    if y is None:
        return
    if not torch.is_tensor(y) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"y must be an integer tensor of class labels, got "
                         f"{y.dtype if torch.is_tensor(y) else type(y).__name__}")
    classes = (cfg or {}).get("num_classes")
    if classes is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"y must hold labels in 0..{classes - 1} (the model's {classes} classes), got "
                         f"values in {int(y.min())}..{int(y.max())}")


def device(dev) -> torch.device:
    """`dev` as a torch.device, refusing CUDA where this PyTorch has none."""
    try:
        d = torch.device(dev)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {dev!r} ({e})") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={dev!r}, but no CUDA GPU is available to this PyTorch "
                         f"({torch.__version__}); use device='cpu' (or leave it out)")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise ValueError(f"device={dev!r}, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return d


def finite(**values) -> None:
    """ValueError naming the first value that is not a finite number."""
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{k} must be a finite number, got {v!r}")
