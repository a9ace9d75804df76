"""How many rows an attack or a scoring pass may hold at once: memory bounded by design.

An evaluation's peak memory is dominated by the activations autograd keeps for one
attack step: about (bytes of every module's output for one example) × rows. We measure
the first factor with one probe forward (forward hooks on the leaf modules, one
example) and divide a memory budget by it, so the number of rows per pass follows from
the model and the machine instead of a fixed default (3 × ResNet20 on CIFAR keeps ~4 MB
per row with gradients: 8,192 rows would be ~34 GB).

Budget: $PARL_EVAL_MEMORY_MB when set; else on CUDA half the free device memory, on CPU
a quarter of the available memory, at most 1 GiB (an evaluation then stays under ~2 GB
with the data and models).
"""
from __future__ import annotations

import os
import weakref

import torch
import torch.nn as nn

from .ensemble import eval_mode

__all__ = ["memory_budget", "bytes_per_row", "rows_per_pass"]

_CPU_CAP = 1 << 30
_GRAD_FACTOR = 2.0  # saved activations plus the transient gradients of the backward pass
_cache: dict = {}


def _available_cpu_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # unknown platform: assume a small machine


def memory_budget(device=None) -> int:
    """Bytes one evaluation pass may use for activations on `device`."""
    env = os.environ.get("PARL_EVAL_MEMORY_MB")
    if env:
        try:
            mb = float(env)
        except ValueError:
            raise ValueError(f"PARL_EVAL_MEMORY_MB must be a number of megabytes, got {env!r}") from None
        if not mb > 0:
            raise ValueError(f"PARL_EVAL_MEMORY_MB must be > 0, got {env!r}")
        return int(mb * 2 ** 20)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return int(min(_CPU_CAP, _available_cpu_bytes() * 0.25))


def bytes_per_row(model: nn.Module, sample: torch.Tensor) -> int:
    """Bytes of every leaf module's output for one example (`sample`: (C, H, W) or (D,)),
    measured once per model (cached by identity and input shape)."""
    key = (id(model), tuple(sample.shape))
    hit = _cache.get(key)
    if hit is not None and hit[0]() is model:
        return hit[1]
    total = [0]

    def hook(_m, _i, out):
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if torch.is_tensor(t):
                total[0] += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    try:
        with eval_mode(model), torch.no_grad():
            model(sample[None].to(dev))
    finally:
        for h in handles:
            h.remove()
    nbytes = max(total[0], sample.numel() * sample.element_size())
    _cache[key] = (weakref.ref(model), nbytes)
    return nbytes


def rows_per_pass(model: nn.Module, sample: torch.Tensor, *, grad: bool = True,
                  budget: int | None = None, cap: int | None = None) -> int:
    """Rows (examples, or adversarial copies of them) one pass through `model` may hold:
    the memory budget over the measured bytes per row (× 2 with gradients), at least 1;
    `cap` (a person's --batch-size) bounds it further."""
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ValueError(f"batch size must be None or an int >= 1, got {cap!r}")
    per = bytes_per_row(model, sample) * (_GRAD_FACTOR if grad else 1.0)
    if budget is None:
        p = next(model.parameters(), None)
        budget = memory_budget(p.device if p is not None else None)
    rows = max(1, int(budget // per))
    return min(rows, cap) if cap is not None else rows
