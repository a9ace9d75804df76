"""Import ensembles trained elsewhere: `.pth` state dicts of other codebases' ResNet20s,
the lab's own state dicts, or any `nn.Module` (parl_core.hooked), as an ordinary
Ensemble and checkpoint metadata.

Nothing is unpickled that could run code: every file is read with
`torch.load(..., weights_only=True, map_location="cpu")`, which rebuilds tensors and
plain containers (dict, list, str, numbers) only and refuses any other pickled object
(a class, a function call) before it is created.

Containers are unwrapped the way these codebases save: the value under "state_dict",
"net" or "model" (a torch.save of {"epoch": ..., "state_dict": ..., "optimizer": ...}),
several members in one file under "model_0", "model_1", ... (the DVERGE trainer's
`save`), "members.<i>." prefixes (a whole lab Ensemble), and the "module." prefix of
DataParallel (and "_orig_mod." of torch.compile).

Layouts (`layout`), read from the published model definitions:
  "dverge"  zjysteven/DVERGE models/resnet.py `ResNet(depth=20)` wrapped in its
            utils.py `ModelWrapper` (keys "model.<resnet key>", plus the advertorch
            `NormalizeByChannelMeanStd` buffers "normalizer.mean"/"normalizer.std").
            The wrapper normalises inside the model, so the inputs are pixels in [0, 1]
            as here; mean/std are taken from the file, else DVERGE's hard-coded CIFAR-10
            constants (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010).
  "trs"     AI-secure/Transferability-Reduced-Smooth-Ensemble models/cifar_resnet.py
            `resnet(depth=20)` inside `nn.Sequential(NormalizeLayer, resnet)`
            (utils/Empirical/architectures.py), usually in DataParallel: keys
            "module.1.<resnet key>". Its NormalizeLayer keeps mean/std as plain
            attributes (not in the state dict): inputs are pixels in [0, 1] and the
            CIFAR-10 constants of utils/Empirical/datasets.py (the same values as
            DVERGE's) are used; other datasets need `normalize`.
  "parl"    a state dict of this lab's models (`model.state_dict()`, or an Ensemble's
            "members.<i>." keys), mean/std buffers included.
  "state-dict"  the lab's key names for the weights; mean/std are used when present,
            else none (the model sees the inputs as they come) unless `normalize`.
Both reference ResNet20s are, module for module, the lab's ResNet20 (3x3 stem, three
stages of three basic blocks, 1x1 conv + BN shortcut where the shape changes, average
pool, linear); only the names differ:
  conv1, bn1, fc                       -> conv1, bn1, fc
  layer{s}.{i}.conv1 / bn1             -> blocks.{3(s-1)+i}.conv_a / bn_a
  layer{s}.{i}.conv2 / bn2             -> blocks.{3(s-1)+i}.conv_b / bn_b
  layer{s}.{i}.downsample.0 / .1       -> blocks.{3(s-1)+i}.short.0 / .1
(their AvgPool2d(8) on the 8x8 map is the lab's global mean for 32x32 inputs).
Every tensor's shape is checked against the lab model; unknown and missing keys are
listed in the error. A missing `num_batches_tracked` (state dicts older than PyTorch
0.4.1) is filled with 0: it only matters for BatchNorm's momentum=None mode.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import re
from pathlib import Path

import torch

from .data import DATASETS
from .ensemble import Ensemble
from .models import build_model
from .schema import IMAGE_SETS, IMPORT_LAYOUTS

__all__ = ["import_members", "safe_load", "read_state_dicts", "map_layout", "LAYOUTS",
           "REFERENCE_CIFAR10_MEAN", "REFERENCE_CIFAR10_STD"]

LAYOUTS = tuple(x for x in IMPORT_LAYOUTS if x != "module")
# DVERGE utils.py get_models and TRS utils/Empirical/datasets.py _CIFAR10_MEAN/_STDDEV
REFERENCE_CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
REFERENCE_CIFAR10_STD = [0.2023, 0.1994, 0.2010]
_CONTAINER_KEYS = ("state_dict", "net", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_MAX_LISTED = 12


# --------------------------------------------------------------------------- reading
def _source(item) -> tuple[str, bytes]:
    """(display name, bytes) of a path or a (name, bytes) pair (an upload)."""
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], (bytes, bytearray)):
        return str(item[0]), bytes(item[1])
    if not isinstance(item, (str, Path)):
        raise ValueError(f"files must be paths or (name, bytes) pairs, got {type(item).__name__}")
    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"member file {path} not found")
    return str(path), path.read_bytes()


def safe_load(data: bytes, name: str = "the file"):
    """`torch.load` of bytes with weights_only=True on the CPU: tensors and plain
    containers only. Anything else is refused with a ValueError before it is built,
    so a file cannot run code here."""
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"data must be bytes, got {type(data).__name__}")
    if len(data) >= 9 and data[8:9] == b"{":
        raise ValueError(f"{name}: a safetensors file, not a torch.save member file; add it as a "
                         "checkpoint instead (it must be written by PARL Lab)")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        code = re.search(r"Unsupported global: GLOBAL [\w.]+", str(e))
        if code:
            raise ValueError(f"{name}: refused: it holds Python code or objects, not only tensors "
                             f"({code[0]}). PARL Lab reads weights only (torch.load "
                             "weights_only=True) and never runs code from a file; save the "
                             "model's state_dict() instead of the model object") from None
        raise ValueError(f"{name}: cannot be read with torch.load(weights_only=True) (it is not a "
                         "torch.save file of tensors and plain containers)") from None
    except Exception as e:  # a junk file can fail anywhere in the unpickler
        text = str(e).strip().splitlines()
        raise ValueError(f"{name}: cannot be read as a torch.save file ({type(e).__name__}"
                         f"{': ' + text[0][:200] if text else ''})") from None


def _is_state(d) -> bool:
    return isinstance(d, dict) and bool(d) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def read_member_files(files) -> tuple[list[dict], list[tuple[str, dict]]]:
    """Every member state dict in `files` (paths or (name, bytes) pairs), read weights-only,
    and a record per file (name, sha256, members) for the metadata."""
    sources, states = [], []
    for item in files:
        name, data = _source(item)
        got = read_state_dicts(safe_load(data, name), Path(name).name)
        sources.append({"name": Path(name).name[:256], "sha256": hashlib.sha256(data).hexdigest(),
                        "members": len(got)})
        states += got
    return sources, states


def read_state_dicts(obj, name: str = "the file") -> list[tuple[str, dict]]:
    """[(label, state dict), ...] of the members in one loaded file: containers
    unwrapped, "model_<i>" and "members.<i>." split into members (by index), wrapper
    prefixes removed. ValueError saying what the file holds when no state dict is found."""
    for _ in range(4):  # {"state_dict": {"model": ...}} and the like
        if isinstance(obj, dict) and not _is_state(obj):
            multi = {k: v for k, v in obj.items() if isinstance(k, str) and re.fullmatch(r"model_\d+", k)}
            if multi and all(_is_state(v) for v in multi.values()):
                return [(f"{name} [{k}]", {_strip(a): t for a, t in multi[k].items()})
                        for k in sorted(multi, key=lambda k: int(k.split("_")[1]))]
            inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not _is_state(obj):
        what = (f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict)
                else type(obj).__name__)
        raise ValueError(f"{name}: no state dict found (got {what}); expected a dict of tensors, "
                         f"or one under {', '.join(map(repr, _CONTAINER_KEYS))}, or members under "
                         "'model_0', 'model_1', ...")
    state = {_strip(k): v for k, v in obj.items()}
    groups: dict[int, dict] = {}
    for k, v in state.items():
        m = re.match(r"members\.(\d+)\.(.+)", k)
        if m:
            groups.setdefault(int(m[1]), {})[m[2]] = v
    if groups and sum(len(g) for g in groups.values()) == len(state):
        return [(f"{name} [member {i}]", groups[i]) for i in sorted(groups)]
    return [(name, state)]


# --------------------------------------------------------------------------- layouts
def _resnet_ref_name(key: str, blocks_per_stage: int = 3) -> str | None:
    """The lab ResNet20 name of a reference (DVERGE/TRS) ResNet key, None if unknown."""
    if key == "conv1.weight":
        return key
    if re.fullmatch(rf"bn1\.{_BN}", key) or re.fullmatch(r"fc\.(weight|bias)", key):
        return key
    m = re.fullmatch(rf"layer([1-3])\.(\d+)\.(?:(conv[12])\.weight|(bn[12])\.{_BN}|downsample\.([01])\.(.+))", key)
    if not m or int(m[2]) >= blocks_per_stage:
        return None
    b = f"blocks.{(int(m[1]) - 1) * blocks_per_stage + int(m[2])}"
    if m[3]:
        return f"{b}.conv_{'a' if m[3] == 'conv1' else 'b'}.weight"
    if m[4]:
        return f"{b}.bn_{'a' if m[4] == 'bn1' else 'b'}.{m[5]}"
    return f"{b}.short.{m[6]}.{m[7]}"


def map_layout(state: dict, layout: str) -> tuple[dict, dict, list[str], dict]:
    """Rename one member's state dict from `layout` to the lab's names.

    Returns (mapped {lab key: tensor}, normalisation found in the file {"mean", "std"}
    (possibly empty), unknown source keys, {lab key: source key})."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    mapped, norm, unknown, origin = {}, {}, [], {}
    for src, t in state.items():
        key = src
        if layout == "dverge":
            if key in ("normalizer.mean", "normalizer.std"):
                norm[key.split(".")[1]] = t
                continue
            key = key[len("model."):] if key.startswith("model.") else key
            lab = _resnet_ref_name(key)
        elif layout == "trs":
            key = key[len("1."):] if key.startswith("1.") else key
            lab = _resnet_ref_name(key)
        else:
            if key in ("mean", "std"):
                norm[key] = t
                continue
            lab = key
        if lab is None:
            unknown.append(src)
        else:
            mapped[lab], origin[lab] = t, src
    return mapped, norm, unknown, origin


# --------------------------------------------------------------------------- members
def _listed(what: str, items: list[str]) -> str:
    more = f", … and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{what} ({len(items)}): {', '.join(items[:_MAX_LISTED])}{more}"


def _infer_kwargs(arch: str, mapped: dict) -> dict:
    """width (and depth, mlp) of a lab model from its weights; defaults when absent."""
    first = {"resnet20": "conv1.weight", "smallcnn": "convs.0.weight", "mlp": "linears.0.weight"}[arch]
    kw = {"width": int(mapped[first].shape[0])} if first in mapped and mapped[first].dim() >= 1 else {}
    if arch == "mlp":
        kw["depth"] = max(1, len([k for k in mapped if re.fullmatch(r"linears\.\d+\.weight", k)]))
    return kw


def _build_member(label, mapped, origin, unknown, arch, num_classes, in_channels, mean, std):
    """The lab model with `mapped` loaded; ValueError listing unknown, missing and
    mis-shaped tensors (source names, with the lab name they map to)."""
    kw = _infer_kwargs(arch, mapped)
    try:
        model = build_model(arch, num_classes, in_channels, mean=mean, std=std, **kw)
    except ValueError as e:
        raise ValueError(f"{label}: {e}") from None
    want = {k: v for k, v in model.state_dict().items() if k not in ("mean", "std")}
    filled = [k for k in want if k not in mapped and k.endswith("num_batches_tracked")]
    missing = [k for k in want if k not in mapped and k not in filled]
    unknown = unknown + [origin[k] for k in mapped if k not in want]
    shapes = [f"{origin[k]} -> {k}: file {list(mapped[k].shape)}, {arch} needs {list(want[k].shape)}"
              for k in mapped if k in want and tuple(mapped[k].shape) != tuple(want[k].shape)]
    bad = [f"{origin[k]} -> {k}: dtype {mapped[k].dtype}" for k in mapped
           if k in want and not k.endswith("num_batches_tracked") and not mapped[k].is_floating_point()]
    if missing or unknown or shapes or bad:
        parts = [_listed(w, x) for w, x in (("unknown keys", unknown), ("missing keys", missing),
                                             ("wrong shapes", shapes), ("not floating point", bad)) if x]
        raise ValueError(f"{label} does not fit a {arch} ({num_classes} classes, {in_channels} "
                         f"input channels): " + "; ".join(parts))
    state = {k: mapped[k].to(want[k].dtype) if mapped[k].is_floating_point() else mapped[k]
             for k in want if k in mapped}
    state.update({k: torch.zeros((), dtype=torch.long) for k in filled})
    state["mean"], state["std"] = model.mean, model.std
    model.load_state_dict(state, strict=True)
    return model.eval(), len(filled)


def _dataset_shape(dataset: str, mapped: dict, arch: str) -> tuple[tuple[int, ...], int]:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if dataset in IMAGE_SETS:
        return IMAGE_SETS[dataset]
    if arch != "mlp":
        raise ValueError(f"dataset {dataset} (2-D points) needs --arch mlp, got {arch!r}")
    fc = mapped.get("fc.weight")
    return (2,), (int(fc.shape[0]) if fc is not None and fc.dim() == 2 else 2)


def _normalisation(layout, norm, dataset, channels, normalize, label):
    """(mean, std, source) for one member: `normalize`, else the file's, else the layout's."""
    if normalize is not None:
        return list(normalize[0]), list(normalize[1]), "option"
    if "mean" in norm and "std" in norm:
        mean, std = norm["mean"].flatten().tolist(), norm["std"].flatten().tolist()
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f"{label}: the file's normalisation mean {mean[:8]} / std {std[:8]} "
                             f"needs {channels} values each, std > 0 (override with --normalize)")
        return mean, std, "file"
    if layout == "dverge" or (layout == "trs" and dataset == "cifar10"):
        return list(REFERENCE_CIFAR10_MEAN), list(REFERENCE_CIFAR10_STD), f"{layout} default"
    if layout == "trs":
        raise ValueError(f"{label}: the TRS layout keeps its normalisation outside the state dict "
                         f"and defines it for cifar10 only; give --normalize MEAN STD for {dataset}")
    if layout == "parl":
        raise ValueError(f"{label}: a 'parl' state dict holds 'mean' and 'std'; they are missing "
                         "(use --layout state-dict, with --normalize if the model expects it)")
    return [0.0] * channels, [1.0] * channels, "none"


def check_normalize(normalize, channels: int):
    """None, or (mean list, std list) of `channels` values each with std > 0."""
    if normalize is None:
        return None
    try:
        mean, std = ([float(v) for v in part] for part in normalize)
    except (TypeError, ValueError):
        raise ValueError(f"normalize must be (mean values, std values), got {normalize!r}") from None
    if len(mean) == 1 and channels > 1:
        mean = mean * channels
    if len(std) == 1 and channels > 1:
        std = std * channels
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"normalize needs {channels} mean and {channels} std values (std > 0) "
                         f"for this dataset, got mean {mean} and std {std}")
    return mean, std


def import_members(files, layout: str, arch: str = "resnet20", dataset: str = "cifar10",
                   normalize=None, *, method: str | None = None) -> tuple[Ensemble, dict]:
    """An Ensemble (eval mode) and checkpoint metadata from member weight files.

    files: paths, or (name, bytes) pairs (uploads); a file may hold several members
    (DVERGE's "model_<i>", a lab Ensemble's "members.<i>."). layout: "dverge" | "trs" |
    "parl" | "state-dict" (module doc). arch: a lab architecture ("resnet20" only for
    dverge/trs). normalize: (mean, std) per input channel, overriding what the file or
    layout gives. method: the training method to record (labels only; nothing trains).
    The metadata says where the ensemble came from under "imported": layout, each file's
    name and sha256, the normalisation's source per member and the module renames."""
    if isinstance(files, (str, Path)) or not files:
        raise ValueError(f"files must be a non-empty list of member files, got {files!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout in ("dverge", "trs") and arch != "resnet20":
        raise ValueError(f"the {layout} layout holds ResNet20s; arch must be 'resnet20', got {arch!r}")
    if arch not in ("resnet20", "smallcnn", "mlp"):
        raise ValueError(f"arch must be one of resnet20, smallcnn, mlp, got {arch!r}")
    from .losses import METHODS
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(sorted(METHODS))} or None, got {method!r}")
    members, records = [], []
    sources, states = read_member_files(files)
    for label, state in states:
        mapped, norm, unknown, origin = map_layout(state, layout)
        shape, classes = _dataset_shape(dataset, mapped, arch)
        mean, std, how = _normalisation(layout, norm, dataset, shape[0],
                                        check_normalize(normalize, shape[0]), label)
        model, filled = _build_member(label, mapped, origin, unknown, arch, classes, shape[0],
                                      mean, std)
        members.append(model)
        records.append({"normalize": how, "filled": filled, "origin": origin})
    renames = _renames(records[0]["origin"])
    meta = {"dataset": dataset, "num_classes": members[0].config["num_classes"],
            "input_shape": list(shape),
            "imported": {"layout": layout, "files": sources,
                         "normalize_source": [r["normalize"] for r in records],
                         "filled_counters": sum(r["filled"] for r in records), "renames": renames}}
    if method is not None:
        meta.update(method=method, params={})
    return Ensemble(members).eval(), meta


def _renames(origin: dict) -> list[list[str]]:
    """[[source module, lab module], ...] in the file's order: what was mapped to what."""
    out, seen = [], set()
    for lab, src in origin.items():
        pair = (src.rsplit(".", 1)[0], lab.rsplit(".", 1)[0])
        if pair not in seen:
            seen.add(pair)
            out.append(list(pair))
    return out
