"""Any PyTorch model as an ensemble member: `HookedModel` wraps a user `nn.Module` and
reads its layer outputs through forward hooks.

The lab's analyses need three things of a member (DESIGN §3): pixel-space inputs with
the normalisation inside, `model(x, return_features=True) -> (logits, [layer outputs])`,
and `num_layers`. A HookedModel provides them for any module:
  * normalisation: `mean`/`std` buffers (one value per input channel), applied before
    the user's module; the default (0, 1) passes inputs through unchanged, for modules
    that normalise themselves or take pixels as they are;
  * layers: the outputs of a chosen list of submodules, by name (default: every
    `nn.Conv*d` and `nn.Linear` in registration order, `default_layers`), each of which
    must run exactly once per forward and return a tensor;
  * `layer_modules()` for DVERGE's distillation (parl_core.dverge.features_at).
PARL's layer gradients, R and CKA then take the generic autograd path
(parl_core.layergrad "autograd", feature space "pre_bn" = the hooked outputs as they
are); the attacks only need the logits.

Batch norm: per-example gradients hold batch-norm statistics constant (DESIGN §3) via
`parl_core.models.per_example_bn`, which acts on the lab's `BatchNorm2d`. Every plain
`nn.BatchNorm2d` of the user's module is therefore switched to that subclass in place
(same parameters, buffers, state-dict names and outputs; only the per-example mode is
added). Other normalisation layers (BatchNorm1d, GroupNorm, ...) are used as they are:
in train mode a BatchNorm1d couples the examples of a batch.

Checkpoints name the factory ("package.module:function", called with no arguments)
and the layers in the member config; `build_from_config` imports the factory only when
the caller passes allow_code=True (parl_core.checkpoints.load_checkpoint), or when the
person running the process allow-lists it: PARL_MODEL_FACTORIES="pkg.mod:fn,other.mod:fn"
(exact names; nothing else is ever imported). Importing a module runs its code, so a file
can name a factory but never make a server import one that its operator did not list: this
is how such ensembles open in the dashboard.
"""
from __future__ import annotations

import importlib
import os
import re

import torch
import torch.nn as nn

from .models import BatchNorm2d
from .schema import FACTORY_PATTERN, HOOKED_ARCH, MAX_HOOKED_LAYERS, CheckpointError

__all__ = ["HookedModel", "default_layers", "load_factory", "build_from_config", "hooked_model"]

_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def default_layers(module: nn.Module) -> list[str]:
    """Names of the module's conv and linear submodules, in registration order."""
    return [name for name, m in module.named_modules() if name and isinstance(m, _LAYER_TYPES)]


def _adopt_batchnorm(module: nn.Module) -> int:
    """Switch every plain nn.BatchNorm2d to the lab's subclass in place; returns how many."""
    n = 0
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = BatchNorm2d
            n += 1
    return n


class HookedModel(nn.Module):
    """A user `nn.Module` as a member: normalisation inside, layer outputs by hooks.

    module: the user's model, mapping normalised inputs (N, C, ...) to logits (N, classes).
    layers: names of its submodules whose outputs are the layer list (default
    `default_layers(module)`). num_classes, in_channels: what it takes and gives.
    mean, std: per-channel normalisation (default none). factory: "package.module:function"
    that rebuilds `module`, recorded in `config` for checkpoints (None: not saveable).
    """

    def __init__(self, module: nn.Module, layers=None, *, num_classes: int, in_channels: int,
                 mean=None, std=None, factory: str | None = None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
        if factory is not None and not (isinstance(factory, str) and re.fullmatch(FACTORY_PATTERN, factory)):
            raise ValueError(f"factory must be 'package.module:function', got {factory!r}")
        named = dict(module.named_modules())
        layers = default_layers(module) if layers is None else list(layers)
        if not layers:
            raise ValueError(f"{type(module).__name__} has no conv or linear submodules; pass "
                             "layers=[names of the submodules whose outputs to compare]")
        if len(layers) > MAX_HOOKED_LAYERS or len(set(layers)) != len(layers):
            raise ValueError(f"layers must be 1..{MAX_HOOKED_LAYERS} distinct names, got {len(layers)}")
        unknown = [n for n in layers if not isinstance(n, str) or n not in named or not n]
        if unknown:
            known = [n for n in named if n][:20]
            raise ValueError(f"layers {unknown[:8]} are not submodules of {type(module).__name__}; "
                             f"its submodules include {known}")
        mean = [0.0] * in_channels if mean is None else [float(v) for v in mean]
        std = [1.0] * in_channels if std is None else [float(v) for v in std]
        if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
            raise ValueError(f"mean/std need {in_channels} values each (std > 0), got {mean} and {std}")
        _adopt_batchnorm(module)
        self.net = module
        self.layer_names = layers
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        self.config = {"arch": HOOKED_ARCH, "num_classes": num_classes, "in_channels": in_channels,
                       "mean": mean, "std": std, "layers": list(layers)}
        if factory is not None:
            self.config["factory"] = factory

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    def layer_modules(self) -> list[nn.Module]:
        named = dict(self.net.named_modules())
        return [named[n] for n in self.layer_names]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if not return_features:
            return self._logits(self.net(self._normalise(x)))
        outs: list[list] = [[] for _ in self.layer_names]

        def hook(i):
            def record(module, inputs, output):
                outs[i].append(output)
            return record

        handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(self.layer_modules())]
        try:
            logits = self._logits(self.net(self._normalise(x)))
        finally:
            for h in handles:
                h.remove()
        bad = [f"{n} ran {len(o)} times" for n, o in zip(self.layer_names, outs) if len(o) != 1]
        bad += [f"{n} returned {type(o[0]).__name__}" for n, o in zip(self.layer_names, outs)
                if len(o) == 1 and not isinstance(o[0], torch.Tensor)]
        if bad:
            raise ValueError("every hooked layer must run once per forward and return a tensor: "
                             + "; ".join(bad[:8]))
        return logits, [o[0] for o in outs]

    @staticmethod
    def _logits(out) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise ValueError(f"the wrapped module must return logits of shape (N, classes), got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return out


def load_factory(spec: str):
    """The callable named by "package.module:function" (importing the module runs its
    code). ValueError naming the spec when it is malformed, cannot be imported, or is
    not callable."""
    if not isinstance(spec, str) or not re.fullmatch(FACTORY_PATTERN, spec):
        raise ValueError(f"model factory must be 'package.module:function', got {spec!r}")
    mod_name, fn_name = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # the user's module may fail in any way on import
        raise ValueError(f"model factory {spec!r}: cannot import {mod_name} ({type(e).__name__}: "
                         f"{str(e)[:200]}); is it on PYTHONPATH?") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"model factory {spec!r}: {mod_name} has no callable {fn_name!r}")
    return fn


def hooked_model(factory: str, layers=None, *, num_classes: int, in_channels: int,
                 mean=None, std=None) -> HookedModel:
    """A HookedModel around `factory()` (imported with `load_factory`)."""
    net = load_factory(factory)()
    if not isinstance(net, nn.Module):
        raise ValueError(f"model factory {factory!r} returned {type(net).__name__}, not an nn.Module")
    return HookedModel(net, layers, num_classes=num_classes, in_channels=in_channels,
                       mean=mean, std=std, factory=factory)


def allowed_factories() -> set[str]:
    """The factories this process may import to open a checkpoint: the exact
    "module:function" names in PARL_MODEL_FACTORIES (comma-separated), set by whoever starts
    the process."""
    names = {n.strip() for n in os.environ.get("PARL_MODEL_FACTORIES", "").split(",") if n.strip()}
    return {n for n in names if re.fullmatch(FACTORY_PATTERN, n)}


def build_from_config(cfg: dict, *, allow_code: bool = False) -> HookedModel:
    """Rebuild a hooked member from its checkpoint config. Importing the factory runs
    code, so it happens only with allow_code=True; otherwise, and when the factory
    cannot be imported, a CheckpointError names the factory."""
    factory = cfg.get("factory")
    if not (allow_code or factory in allowed_factories()):
        raise CheckpointError(
            f"this ensemble is a user-defined model built by {factory!r}; opening it would import "
            "and run that code, which this process has not been allowed to do. Where that module is "
            f"importable: start the dashboard or command with PARL_MODEL_FACTORIES={factory} (an "
            "allow-list of exact factory names), or in your own Python use "
            "load_checkpoint(path, allow_code=True)")
    try:
        return hooked_model(factory, cfg["layers"], num_classes=cfg["num_classes"],
                            in_channels=cfg["in_channels"], mean=cfg.get("mean"), std=cfg.get("std"))
    except ValueError as e:
        raise CheckpointError(f"cannot rebuild the user-defined model {factory!r}: {e}") from None


def import_module_members(files, factory: str, layers=None, dataset: str = "cifar10",
                          normalize=None, *, method: str | None = None):
    """(Ensemble, metadata) of user-defined members: `factory()` per member, loaded
    strictly with that member's weights (read like parl_core.importers reads files: no
    code unpickled, containers and wrapper prefixes unwrapped). The factory runs here:
    this is for a person's own command line, never for the dashboard.

    layers: the hooked layer names (default `default_layers`); dataset fixes the input
    shape; normalize: (mean, std) per channel applied before the module (default none).
    Every member is checked on a dry forward: logits (N, classes) and each layer once."""
    from pathlib import Path

    from .data import DATASETS, TOY_2D
    from .ensemble import Ensemble
    from .importers import check_normalize, read_member_files
    from .losses import METHODS
    from .schema import IMAGE_SETS

    if isinstance(files, (str, Path)) or not files:
        raise ValueError(f"files must be a non-empty list of member files, got {files!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(sorted(METHODS))} or None, got {method!r}")
    if isinstance(layers, str):
        layers = [n.strip() for n in layers.split(",") if n.strip()]
    shape, classes = IMAGE_SETS[dataset] if dataset not in TOY_2D else ((2,), None)
    norm = check_normalize(normalize, shape[0]) or (None, None)
    load_factory(factory)  # a bad spec fails before any file is read
    members = []
    sources, states = read_member_files(files)
    for label, state in states:
        net = load_factory(factory)()
        if not isinstance(net, nn.Module):
            raise ValueError(f"model factory {factory!r} returned {type(net).__name__}, not an nn.Module")
        state = {k: v for k, v in state.items()}
        mean, std = state.pop("mean", None), state.pop("std", None)
        state = {k[len("net."):] if k.startswith("net.") else k: v for k, v in state.items()}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{label} does not fit {factory}(): "
                             + " ".join(str(e).split("\n\t")[1:])[:1500]) from None
        if norm[0] is None and mean is not None and std is not None:  # a HookedModel's own
            mean, std = mean.flatten().tolist(), std.flatten().tolist()
        else:
            mean, std = norm
        k = classes or _dry_classes(net, shape)
        m = HookedModel(net, layers, num_classes=k, in_channels=shape[0], mean=mean,
                        std=std, factory=factory).eval()
        _dry_run(m, shape, k, label)
        members.append(m)
    meta = {"dataset": dataset, "num_classes": members[0].config["num_classes"],
            "input_shape": list(shape),
            "imported": {"layout": "module", "files": sources,
                         "normalize_source": ["option" if normalize is not None else "none"
                                              for _ in members],
                         "filled_counters": 0, "renames": []}}
    if method is not None:
        meta.update(method=method, params={})
    return Ensemble(members).eval(), meta


def _dry_classes(net: nn.Module, shape) -> int:
    with torch.no_grad():
        was = net.training
        out = net.eval()(torch.zeros(2, *shape))
        net.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError("the model must return logits of shape (N, classes)")
    return int(out.shape[1])


def _dry_run(m: HookedModel, shape, classes: int, label: str) -> None:
    """One eval-mode forward with features: logits (2, classes), each layer once."""
    try:
        with torch.no_grad():
            logits, _ = m(torch.rand(2, *shape), return_features=True)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{label}: the model fails on inputs of shape {[2, *shape]}: {e}") from None
    if tuple(logits.shape) != (2, classes):
        raise ValueError(f"{label}: the model gives logits of shape {list(logits.shape)} for 2 "
                         f"inputs; this dataset needs [2, {classes}]")
