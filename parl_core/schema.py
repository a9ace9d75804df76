"""The checkpoint schema: one validation, before anything is allocated (DESIGN §5).

A checkpoint's safetensors header decides what loading builds, so it is checked in
full before any model or weight tensor exists:

1. `parse_header(head, file_size)` reads the header bytes (8-byte length, then JSON)
   with bounded size (`MAX_HEADER_BYTES`); before `json.loads` runs, a vectorised lexer
   (`json_shape`) bounds the nesting depth and the number of values and objects, so
   the parse itself is bounded in time and memory. It refuses duplicate keys,
   non-string metadata and tensor entries whose offsets do not tile the data exactly.
2. `validate_metadata(meta)` checks every metadata field the library and the pages read:
   types, ranges and string lengths, bounds below as module constants.
3. `check_tensors(entries, meta, where)` derives, from the declared architecture alone
   (`expected_state`, no tensor is created), the names, shapes and dtypes each member
   must have and requires exactly those: parameters and float buffers in F16/BF16/F32/F64,
   `num_batches_tracked` in I64, and the total parameter count under `max_params()`.

After the weights are loaded, `check_finite` requires every floating value finite.
Every refusal is a `CheckpointError` (a ValueError) whose message names the field, what
was expected and what was found.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from . import __version__
from .data import DATASETS, TOY_2D
from .losses import METHODS
from .models import ARCHS
from . import baselines as _baselines  # noqa: F401  (registers adp, gal, dverge in METHODS)

__all__ = ["CheckpointError", "validate_metadata", "parse_header", "check_tensors", "expected_state",
           "check_finite", "max_params", "header_length", "loads_bounded", "json_shape", "META_KEY",
           "FORMAT_VERSION", "MAX_HEADER_BYTES", "MAX_JSON_DEPTH", "MAX_HEADER_VALUES",
           "MAX_METADATA_VALUES", "MAX_JSON_OBJECTS", "MAX_EXTRA_VALUES", "MAX_MEMBERS", "MIN_CLASSES",
           "MAX_CLASSES", "MAX_IN_CHANNELS", "MAX_WIDTH", "MAX_DEPTH", "MAX_SPATIAL", "DEFAULT_MAX_PARAMS",
           "MAX_HISTORY", "MAX_LIST", "MAX_STRING", "MAX_KEYS", "MAX_2D_SAMPLES"]


class CheckpointError(ValueError):
    """A file that is not a valid PARL Lab checkpoint (the message says why)."""


META_KEY = "parl"
FORMAT_VERSION = 1

# --------------------------------------------------------------------------- bounds
MAX_HEADER_BYTES = 16 * 2**20   # safetensors header (tensor table + metadata JSON)
MAX_JSON_DEPTH = 16             # nesting of arrays/objects, header and metadata alike
MAX_HEADER_VALUES = 200_000     # JSON values in the tensor table (64 ResNet20s: ~85 k)
MAX_METADATA_VALUES = 1_000_000  # JSON values in the metadata (mostly history)
MAX_JSON_OBJECTS = 20_000       # JSON objects in either (tensor entries, history records)
MAX_EXTRA_VALUES = 10_000       # JSON values in fields this version does not read
MAX_MEMBERS = 64
MIN_CLASSES, MAX_CLASSES = 2, 1000
MAX_IN_CHANNELS = 16            # image channels, or the input dimension of an mlp
MAX_WIDTH = 1024                # width of every architecture
MAX_DEPTH = 64                  # hidden layers of an mlp
MAX_SPATIAL = 1024              # height and width of an image input
DEFAULT_MAX_PARAMS = 50_000_000  # weights of all members together; env PARL_MAX_PARAMS
MAX_HISTORY = 10_000            # epochs in the history
MAX_LIST = 4096                 # entries of a list inside a history record (e.g. r_pairwise rows)
MAX_STRING = 4096               # characters of a string field (`command`: 4 x this)
MAX_KEYS = 256                  # keys of params, dataset_info, a history record, or the metadata
MAX_2D_SAMPLES = 100_000        # dataset_info.n_samples of the 2-D sets
MAX_INT = 2**63 - 1

DEFAULT_WIDTH = {"resnet20": 16, "smallcnn": 8, "mlp": 32}
DEFAULT_DEPTH = 3
IMAGE_SETS = {"digits": ((1, 8, 8), 10), "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}
# A user-defined nn.Module member (parl_core.hooked): its config names the factory that
# builds it ("package.module:function") and its hooked layers; its tensors are whatever
# that module holds, so they are checked for dtype, size and tiling, not names.
HOOKED_ARCH = "hooked"
FACTORY_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
MAX_HOOKED_LAYERS = 256
# where an imported ensemble came from (parl_core.importers): "module" is --model
IMPORT_LAYOUTS = ("dverge", "trs", "parl", "state-dict", "module")
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
INT_DTYPES = {"I64": 8}
# the history values the CLI and the pages format as single numbers
HISTORY_SCALARS = ("epoch", "lr", "loss", "ce", "reg", "train_acc", "test_acc", "r_mean",
                   "k_eval", "time")
HISTORY_NOT_NULL = ("loss", "r_mean")  # `python -m parl_core info` formats them as numbers


def max_params() -> int:
    """The bound on weights in one checkpoint (all members): $PARL_MAX_PARAMS or 50 M."""
    raw = os.environ.get("PARL_MAX_PARAMS", "").strip()
    if not raw:
        return DEFAULT_MAX_PARAMS
    try:
        n = int(raw.replace("_", ""))
    except ValueError:
        n = 0
    if n < 1:
        raise CheckpointError(f"PARL_MAX_PARAMS must be a positive integer, got {raw!r}")
    return n


# --------------------------------------------------------------------------- helpers
def _kind(v) -> str:
    """A short description of a JSON value for messages: type, and the value if short."""
    name = {dict: "an object", list: "a list", str: "a string", bool: "a bool",
            int: "an int", float: "a number", type(None): "null"}.get(type(v), type(v).__name__)
    if isinstance(v, (dict, list)):
        return f"{name} of {len(v)}"
    try:
        text = repr(v)
    except ValueError:  # an int too long to print
        text = "(too long to show)"
    return f"{name} {text[:60] + '…' if len(text) > 60 else text}"


def _fail(field: str, expected: str, got) -> None:
    raise CheckpointError(f"metadata field {field!r} must be {expected}, got {_kind(got)}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v) -> bool:
    """A finite number: a float that is finite, or an int within int64 (math.isfinite
    would overflow on a huge int)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return -MAX_INT - 1 <= v <= MAX_INT
    return isinstance(v, float) and math.isfinite(v)


def _int(meta, key, lo, hi, *, field=None, optional=True, none_ok=False):
    field = field or key
    if key not in meta:
        if optional:
            return None
        raise CheckpointError(f"metadata field {field!r} is missing (expected an int in {lo}..{hi})")
    v = meta[key]
    if v is None and none_ok:
        return None
    if not _is_int(v) or not lo <= v <= hi:
        _fail(field, f"an int in {lo}..{hi}" + (" or null" if none_ok else ""), v)
    return v


def _num(meta, key, *, field=None, lo=-math.inf, hi=math.inf, finite=True, none_ok=True):
    field = field or key
    if key not in meta:
        return None
    v = meta[key]
    if v is None and none_ok:
        return None
    ok = _is_num(v) and ((_finite(v) and lo <= v <= hi) or (not finite and isinstance(v, float) and math.isnan(v)))
    if not ok:
        rng = ("" if (lo, hi) == (-math.inf, math.inf) else f" >= {lo}" if hi == math.inf
               else f" in [{lo}, {hi}]")
        _fail(field, ("a finite number" if finite else "a number") + rng
              + (" or null" if none_ok else ""), v)
    return v


def _str(meta, key, *, field=None, max_len=MAX_STRING, choices=None, none_ok=False):
    field = field or key
    if key not in meta:
        return None
    v = meta[key]
    if v is None and none_ok:
        return None
    if choices is not None:
        if not isinstance(v, str) or v not in choices:
            _fail(field, f"one of {', '.join(sorted(choices))}", v)
    elif not isinstance(v, str) or len(v) > max_len:
        _fail(field, f"a string of at most {max_len} characters" + (" or null" if none_ok else ""), v)
    return v


def _bool(meta, key, *, none_ok=True):
    if key in meta and not (isinstance(meta[key], bool) or (none_ok and meta[key] is None)):
        _fail(key, "true or false" + (" or null" if none_ok else ""), meta[key])


def _scalar_ok(v, *, finite: bool) -> bool:
    """null, bool, a bounded int, a bounded string, or a (finite) float."""
    if v is None or isinstance(v, bool):
        return True
    if isinstance(v, int):
        return -MAX_INT - 1 <= v <= MAX_INT
    if isinstance(v, float):
        return math.isfinite(v) or not finite
    return isinstance(v, str) and len(v) <= MAX_STRING


def _flat_dict(meta, key, *, finite=True, strings=True, max_keys=MAX_KEYS):
    """An object of scalars (null, bool, int, number, short string)."""
    v = meta.get(key)
    if key not in meta or v is None:
        return {}
    if not isinstance(v, dict) or len(v) > max_keys:
        _fail(key, f"an object of at most {max_keys} entries", v)
    for k, x in v.items():
        if len(k) > 64:
            _fail(f"{key}.{k[:20]}…", "a key of at most 64 characters", k)
        if not _scalar_ok(x, finite=finite) or (isinstance(x, str) and not strings):
            _fail(f"{key}.{k}", ("a finite number" if finite else "a number")
                  + (", a string (at most 4096 characters)" if strings else "") + ", a bool or null", x)
    return v


# --------------------------------------------------------------------------- metadata
def _check_config(cfg, field: str) -> dict:
    """A member's model config: arch, classes, channels, width, depth, mean, std."""
    if not isinstance(cfg, dict):
        _fail(field, "an object (the model config)", cfg)
    arch = cfg.get("arch")
    if arch not in ARCHS and arch != HOOKED_ARCH:
        raise CheckpointError(f"metadata field '{field}.arch': unknown architecture "
                              f"{arch if isinstance(arch, str) else _kind(arch)!r} "
                              f"(this version knows {', '.join(ARCHS + (HOOKED_ARCH,))})")
    allowed = {"arch", "num_classes", "in_channels", "width", "mean", "std"} | (
        {"depth"} if arch == "mlp" else set())
    if arch == HOOKED_ARCH:
        allowed = {"arch", "num_classes", "in_channels", "mean", "std", "factory", "layers"}
        _check_hooked(cfg, field)
    extra = sorted(str(k) for k in set(cfg) - allowed)
    if extra:
        raise CheckpointError(f"metadata field {field!r}: a {arch} config takes only "
                              f"{', '.join(sorted(allowed))}; got also {', '.join(extra)[:200]}")
    nc = _int(cfg, "num_classes", MIN_CLASSES, MAX_CLASSES, field=f"{field}.num_classes", optional=False)
    c = _int(cfg, "in_channels", 1, MAX_IN_CHANNELS, field=f"{field}.in_channels", optional=False)
    _int(cfg, "width", 1, MAX_WIDTH, field=f"{field}.width")
    _int(cfg, "depth", 1, MAX_DEPTH, field=f"{field}.depth")
    for key in ("mean", "std"):
        if key not in cfg or cfg[key] is None:
            continue
        v = cfg[key]
        pos = key == "std"
        if not (isinstance(v, list) and len(v) == c and all(
                _finite(x) and (x > 0 if pos else True) for x in v)):
            _fail(f"{field}.{key}", f"a list of {c} finite{' positive' if pos else ''} numbers "
                  "(one per input channel)", v)
    del nc
    return cfg


def _check_hooked(cfg, field: str) -> None:
    """The factory ("package.module:function") and layer names of a hooked member."""
    import re
    f = cfg.get("factory")
    if not (isinstance(f, str) and len(f) <= 200 and re.fullmatch(FACTORY_PATTERN, f)):
        _fail(f"{field}.factory", "'package.module:function' (the factory that builds the model)", f)
    layers = cfg.get("layers")
    if not (isinstance(layers, list) and 1 <= len(layers) <= MAX_HOOKED_LAYERS
            and all(isinstance(x, str) and 1 <= len(x) <= 200 for x in layers)):
        _fail(f"{field}.layers", f"a list of 1..{MAX_HOOKED_LAYERS} module names", layers)


def _check_imported(imp, members: int) -> None:
    """Where an imported ensemble came from (parl_core.importers)."""
    if not isinstance(imp, dict):
        _fail("imported", "an object (layout, files, normalize_source, ...)", imp)
    _str(imp, "layout", field="imported.layout", choices=set(IMPORT_LAYOUTS))
    files = imp.get("files", [])
    if not isinstance(files, list) or len(files) > MAX_MEMBERS:
        _fail("imported.files", f"a list of at most {MAX_MEMBERS} file records", files)
    for j, rec in enumerate(files):
        f = f"imported.files[{j}]"
        if not isinstance(rec, dict):
            _fail(f, "an object {name, sha256, members}", rec)
        _str(rec, "name", field=f"{f}.name", max_len=256)
        h = rec.get("sha256")
        if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
            _fail(f"{f}.sha256", "64 lowercase hex digits", h)
        _int(rec, "members", 1, MAX_MEMBERS, field=f"{f}.members")
    src = imp.get("normalize_source", [])
    if not (isinstance(src, list) and len(src) == members and all(
            isinstance(x, str) and len(x) <= 64 for x in src)):
        _fail("imported.normalize_source", f"a list of {members} short strings (one per member)", src)
    _int(imp, "filled_counters", 0, MAX_INT, field="imported.filled_counters")
    ren = imp.get("renames", [])
    if not (isinstance(ren, list) and len(ren) <= 1024 and all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) and len(x) <= 256 for x in r)
            for r in ren)):
        _fail("imported.renames", "a list of at most 1024 [source name, lab name] pairs", ren)


def _check_history(hist) -> None:
    if not isinstance(hist, list) or len(hist) > MAX_HISTORY:
        _fail("history", f"a list of at most {MAX_HISTORY} per-epoch objects", hist)
    f = "history"
    for e, rec in enumerate(hist):
        f = f"history[{e}]"
        if not isinstance(rec, dict) or len(rec) > MAX_KEYS:
            _fail(f, f"an object of at most {MAX_KEYS} numbers", rec)
        _int(rec, "epoch", 1, MAX_INT, field=f"{f}.epoch", optional=False)
        for k, v in rec.items():
            if len(k) > 64:
                _fail(f"{f}.{k[:20]}…", "a key of at most 64 characters", k)
            if type(v) in _HIST_TYPES and (type(v) is not int or -MAX_INT - 1 <= v <= MAX_INT) \
                    and not (v is None and k in HISTORY_NOT_NULL):
                continue
            if k not in HISTORY_SCALARS and type(v) is list and len(v) <= MAX_LIST:
                rows = v if v and all(type(r) is list for r in v) else [v]
                if all(len(r) <= MAX_LIST and _numbers(r) for r in rows):
                    continue
            _fail(f"{f}.{k}", ("a number" if k in HISTORY_NOT_NULL else "a number or null")
                  + ("" if k in HISTORY_SCALARS else
                  ", or a list (or list of lists) of numbers"), v)


_HIST_TYPES = {int, float, bool, type(None)}


def _numbers(row: list) -> bool:
    """Every entry a number or null (ints within int64); fast for long rows."""
    types = set(map(type, row))
    if not types <= {int, float, type(None)}:
        return False
    return int not in types or all(-MAX_INT - 1 <= x <= MAX_INT for x in row if type(x) is int)


def validate_metadata(meta) -> dict:
    """Check a checkpoint's metadata (the parsed JSON under "parl"); returns it unchanged.

    Raises CheckpointError naming the first bad field, what was expected and what was
    found. Required: format_version, members, model, member_configs (save_checkpoint
    writes them); every other known field is checked when present."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"the metadata must be a JSON object, got {_kind(meta)}")
    if len(meta) > MAX_KEYS:
        raise CheckpointError(f"the metadata has {len(meta)} fields; at most {MAX_KEYS} are accepted")
    v = meta.get("format_version")
    if not _is_int(v) or v < 1:
        raise CheckpointError(f"metadata has no format_version (expected an int >= 1, got "
                              f"{_kind(v) if 'format_version' in meta else 'nothing'})")
    if v > FORMAT_VERSION:
        raise CheckpointError(f"the file was written by a newer PARL Lab (format {v}; this is "
                              f"{__version__}, format {FORMAT_VERSION}): upgrade parl_core to read it")
    n = _int(meta, "members", 1, MAX_MEMBERS, optional=False)
    cfgs = meta.get("member_configs")
    if not isinstance(cfgs, list) or len(cfgs) != n:
        _fail("member_configs", f"a list of {n} model configs (one per member)", cfgs)
    for i, c in enumerate(cfgs):
        _check_config(c, f"member_configs[{i}]")
    if "model" not in meta:
        raise CheckpointError("metadata field 'model' is missing (expected the model config)")
    model = _check_config(meta["model"], "model")
    nc, c = model["num_classes"], model["in_channels"]
    for i, cfg in enumerate(cfgs):
        if cfg["num_classes"] != nc or cfg["in_channels"] != c:
            raise CheckpointError(f"metadata field 'member_configs[{i}]': every member must take "
                                  f"{c} input channels and give {nc} classes like 'model', got "
                                  f"{cfg['in_channels']} and {cfg['num_classes']}")
    if len({cfg["arch"] == "mlp" for cfg in [model, *cfgs] if cfg["arch"] != HOOKED_ARCH}) > 1:
        raise CheckpointError("metadata: 'model' and 'member_configs' mix mlp and convolutional "
                              "members (they take different inputs)")
    total = sum(_count(expected_state(cfg)) for cfg in cfgs if cfg["arch"] != HOOKED_ARCH)
    if total > max_params():
        raise CheckpointError(f"the declared models have {total:,} weights in all; at most "
                              f"{max_params():,} are accepted (raise PARL_MAX_PARAMS to allow more)")

    _str(meta, "method", choices=set(METHODS))
    ds = _str(meta, "dataset", choices=set(DATASETS))
    _int(meta, "num_classes", MIN_CLASSES, MAX_CLASSES)
    if "num_classes" in meta and meta["num_classes"] != nc:
        _fail("num_classes", f"{nc} (the model's num_classes)", meta["num_classes"])
    if "classes" in meta:
        cl = meta["classes"]
        if not (isinstance(cl, list) and len(cl) == nc and all(isinstance(x, str) and len(x) <= 256 for x in cl)):
            _fail("classes", f"a list of {nc} class names (strings of at most 256 characters)", cl)
    if "input_shape" in meta:
        shp = meta["input_shape"]
        want = "[in_channels]" if model["arch"] == "mlp" else "[in_channels, height, width]"
        ok = isinstance(shp, list) and all(_is_int(x) for x in shp) and len(shp) in (
            (1, 3) if model["arch"] == HOOKED_ARCH else (1,) if model["arch"] == "mlp" else (3,)) and shp[0] == c and all(1 <= x <= MAX_SPATIAL for x in shp)
        if not ok:
            _fail("input_shape", f"{want} with in_channels {c} and sizes in 1..{MAX_SPATIAL}", shp)
    if ds is not None:
        if ds in IMAGE_SETS:
            shape, classes = IMAGE_SETS[ds]
            if model["arch"] == "mlp" or c != shape[0] or nc != classes:
                raise CheckpointError(f"metadata: dataset {ds} needs a convolutional model with "
                                      f"{shape[0]} input channels and {classes} classes, got "
                                      f"{model['arch']} with {c} and {nc}")
            if meta.get("input_shape", list(shape)) != list(shape):
                _fail("input_shape", f"{list(shape)} for {ds}", meta["input_shape"])
        elif ds in TOY_2D and (model["arch"] not in ("mlp", HOOKED_ARCH) or c != 2):
            raise CheckpointError(f"metadata: dataset {ds} (2-D points) needs an mlp with 2 inputs, "
                                  f"got {model['arch']} with {c}")
    info = _flat_dict(meta, "dataset_info")
    _int(info, "n_samples", 1, MAX_2D_SAMPLES, field="dataset_info.n_samples")
    _num(info, "noise", lo=0.0, hi=100.0, field="dataset_info.noise", none_ok=False)
    _int(info, "seed", -MAX_INT - 1, MAX_INT, field="dataset_info.seed")

    params = _flat_dict(meta, "params", max_keys=64)
    _int(params, "layers", 1, MAX_DEPTH * 2, field="params.layers", none_ok=True)
    _int(meta, "seed", -MAX_INT - 1, MAX_INT, none_ok=True)
    for key in ("epochs", "epochs_done", "train_size"):
        _int(meta, key, 0, MAX_INT, none_ok=True)
    _int(meta, "batch_size", 1, MAX_INT, none_ok=True)
    _int(meta, "train_subset", 0, MAX_INT, none_ok=True)
    _num(meta, "lr", lo=0.0)
    _num(meta, "clean_acc", lo=0.0, hi=1.0, finite=False)
    _num(meta, "r_mean", finite=False)          # NaN for a one-member ensemble
    _str(meta, "schedule", max_len=64, none_ok=True)
    for key in ("augment", "cancelled"):
        _bool(meta, key)
    _str(meta, "library_version", max_len=64)
    _str(meta, "created", max_len=64, none_ok=True)
    _str(meta, "command", max_len=4 * MAX_STRING, none_ok=True)
    _str(meta, "init", none_ok=True)
    if "history" in meta and meta["history"] is not None:
        _check_history(meta["history"])
    if "imported" in meta:
        _check_imported(meta["imported"], n)
    for key in set(meta) - KNOWN_FIELDS:
        _check_extra(key, meta[key])
    return meta


KNOWN_FIELDS = {"format_version", "library_version", "members", "model", "member_configs", "method",
                "dataset", "num_classes", "classes", "input_shape", "dataset_info", "params", "seed",
                "epochs", "epochs_done", "train_size", "batch_size", "train_subset", "lr", "clean_acc",
                "r_mean", "schedule", "augment", "cancelled", "created", "command", "init", "history",
                "imported"}


def _check_extra(key: str, value) -> None:
    """A field this version does not read: any JSON value, strings and keys bounded."""
    if len(key) > 64:
        _fail(key[:20] + "…", "a field name of at most 64 characters", key)
    stack, seen = [value], 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen > MAX_EXTRA_VALUES:
            _fail(key, f"JSON of at most {MAX_EXTRA_VALUES} values", value)
        if isinstance(v, str) and len(v) > 4 * MAX_STRING:
            _fail(key, f"JSON with strings of at most {4 * MAX_STRING} characters", v)
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            if any(len(k) > 256 for k in v):
                _fail(key, "JSON with keys of at most 256 characters", v)
            stack.extend(v.values())


# --------------------------------------------------------------------------- architecture
def _bn(out: dict, prefix: str, n: int) -> None:
    for k in ("weight", "bias", "running_mean", "running_var"):
        out[f"{prefix}.{k}"] = ((n,), True)
    out[f"{prefix}.num_batches_tracked"] = ((), False)


def expected_state(cfg: dict) -> dict[str, tuple[tuple[int, ...], bool]]:
    """{state_dict name: (shape, is_floating)} of the model `cfg` declares, computed from
    the config alone (nothing is allocated); mirrors parl_core.models (a test checks it
    against real models)."""
    arch, nc, c = cfg["arch"], cfg["num_classes"], cfg["in_channels"]
    w = cfg.get("width", DEFAULT_WIDTH[arch])
    out: dict[str, tuple[tuple[int, ...], bool]] = {}
    norm = (1, c) if arch == "mlp" else (1, c, 1, 1)
    out["mean"], out["std"] = (norm, True), (norm, True)
    if arch == "resnet20":
        out["conv1.weight"] = ((w, c, 3, 3), True)
        _bn(out, "bn1", w)
        cin, b = w, 0
        for stage, cout in enumerate([w, 2 * w, 4 * w]):
            for i in range(3):
                stride = 2 if (stage > 0 and i == 0) else 1
                p = f"blocks.{b}"
                out[f"{p}.conv_a.weight"] = ((cout, cin, 3, 3), True)
                _bn(out, f"{p}.bn_a", cout)
                out[f"{p}.conv_b.weight"] = ((cout, cout, 3, 3), True)
                _bn(out, f"{p}.bn_b", cout)
                if stride != 1 or cin != cout:
                    out[f"{p}.short.0.weight"] = ((cout, cin, 1, 1), True)
                    _bn(out, f"{p}.short.1", cout)
                cin, b = cout, b + 1
        out["fc.weight"], out["fc.bias"] = ((nc, cin), True), ((nc,), True)
    elif arch == "smallcnn":
        chans = [c, w, 2 * w, 2 * w, 4 * w]
        for i in range(4):
            out[f"convs.{i}.weight"] = ((chans[i + 1], chans[i], 3, 3), True)
        for i in range(4):
            _bn(out, f"bns.{i}", chans[i + 1])
        out["fc.weight"], out["fc.bias"] = ((nc, chans[-1]), True), ((nc,), True)
    elif arch == "mlp":
        dims = [c] + [w] * cfg.get("depth", DEFAULT_DEPTH)
        for i in range(len(dims) - 1):
            out[f"linears.{i}.weight"] = ((dims[i + 1], dims[i]), True)
            out[f"linears.{i}.bias"] = ((dims[i + 1],), True)
        out["fc.weight"], out["fc.bias"] = ((nc, w), True), ((nc,), True)
    else:  # validate_metadata refuses unknown archs first
        raise CheckpointError(f"unknown architecture {arch!r}")
    return out


def _hooked_state(entries: dict, have: set, cfg: dict, i: int) -> dict:
    """The expected tensors of a hooked member: its mean/std (in_channels,) and whatever
    else it declares, each with the shape it declares (names bounded; float or I64)."""
    c = cfg["in_channels"]
    out = {f"member{i}.mean": ((c,), True), f"member{i}.std": ((c,), True)}
    for k in sorted(have - set(out)):
        if len(k) > 256 + 10:
            raise CheckpointError(f"tensor {k[:60]}…: names must have at most 256 characters")
        out[k] = (tuple(entries[k]["shape"]), entries[k]["dtype"] in FLOAT_DTYPES)
    return out


def _count(state: dict) -> int:
    return sum(math.prod(shape) for shape, is_float in state.values() if is_float)


def check_tensors(entries: dict, meta: dict, data_len: int) -> None:
    """The header's tensor table against the declared models: exactly the expected names,
    their shapes, float dtypes for weights (I64 for counters), and offsets that tile the
    `data_len` bytes after the header exactly (no gaps, overlaps or slack)."""
    want, seen = {}, set()
    for i, cfg in enumerate(meta["member_configs"]):
        have = {k for k in entries if k.startswith(f"member{i}.")}
        if cfg["arch"] == HOOKED_ARCH:
            mine = _hooked_state(entries, have, cfg, i)
        else:
            mine = {f"member{i}.{k}": spec for k, spec in expected_state(cfg).items()}
        missing, extra = sorted(set(mine) - have), sorted(have - set(mine))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)}: {', '.join(missing[:3])}"
                             + (", …" if len(missing) > 3 else ""))
            if extra:
                parts.append(f"unexpected {len(extra)}: {', '.join(e[:60] for e in extra[:3])}"
                             + (", …" if len(extra) > 3 else ""))
            raise CheckpointError(f"member {i} weights do not fit a {cfg['arch']} "
                                  f"({'; '.join(parts)})")
        want.update(mine)
        seen |= have
    if any(cfg["arch"] == HOOKED_ARCH for cfg in meta["member_configs"]):
        total = _count({k: v for k, v in want.items()})
        if total > max_params():
            raise CheckpointError(f"the file holds {total:,} weights in all; at most {max_params():,} "
                                  "are accepted (raise PARL_MAX_PARAMS to allow more)")
    stray = sorted(set(entries) - seen)
    if stray:
        raise CheckpointError(f"tensors that belong to no member: {', '.join(e[:60] for e in stray[:3])}"
                              + (", …" if len(stray) > 3 else ""))
    spans = []
    for name, (shape, is_float) in want.items():
        e = entries[name]
        dt, shp, off = e["dtype"], e["shape"], e["data_offsets"]
        if tuple(shp) != shape:
            raise CheckpointError(f"tensor {name}: the declared model needs shape "
                                  f"{list(shape)}, the file has {shp}")
        sizes = FLOAT_DTYPES if is_float else INT_DTYPES
        if dt not in sizes:
            raise CheckpointError(f"tensor {name}: dtype must be {' or '.join(sizes)}, got {dt}")
        if off[1] - off[0] != math.prod(shape) * sizes[dt]:
            raise CheckpointError(f"tensor {name}: {dt} {list(shape)} needs "
                                  f"{math.prod(shape) * sizes[dt]} bytes, its offsets {off} span "
                                  f"{off[1] - off[0]}")
        spans.append((off[0], off[1], name))
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos:
            raise CheckpointError(f"tensor {name}: data starts at byte {b}, expected {pos} "
                                  "(tensor data must not overlap or leave gaps)")
        pos = e
    if pos != data_len:
        raise CheckpointError(f"the tensors take {pos} bytes but the file holds {data_len} after "
                              "the header (truncated, or trailing data)")


def check_finite(model, where: str) -> None:
    """Every floating parameter and buffer of a model is finite (checked with numpy,
    which does not wait on torch's thread pool); the first bad tensor is named."""
    import torch
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            continue
        v = v.detach().cpu()
        a = (v if v.dtype in (torch.float16, torch.float32, torch.float64) else v.float()).numpy()
        if not np.isfinite(a).all():
            raise CheckpointError(f"{where}: tensor {k} has {int((~np.isfinite(a)).sum())} "
                                  "non-finite value(s) (NaN or inf)")


# --------------------------------------------------------------------------- header
_SCAN_CHUNK = 1 << 18


def json_shape(raw: bytes) -> tuple[int, int, int]:
    """(deepest array/object nesting, values (about), objects) of a JSON text, without
    parsing it: a vectorised lexer that skips strings (escapes included) and counts
    brackets and commas outside them. Linear time, memory bounded by its chunks; it
    agrees with json.loads on valid JSON, and on invalid JSON up to json's first error."""
    depth = best = values = objects = 0
    parity = 0   # 1 while inside a string
    run = 0      # backslashes at the end of the previous chunk
    for s in range(0, len(raw), _SCAN_CHUNK):
        a = np.frombuffer(raw, dtype=np.uint8, count=min(_SCAN_CHUNK, len(raw) - s), offset=s)
        n = len(a)
        bs = a == 0x5C
        idx = np.arange(n, dtype=np.int64)
        last = np.maximum.accumulate(np.where(bs, -1, idx))   # last non-backslash at or before i
        prev = np.empty(n, dtype=np.int64)                    # backslashes right before i
        prev[0] = run
        before = idx[1:] - 1 - last[:-1]
        prev[1:] = np.where(last[:-1] < 0, before + run, before)
        quote = (a == 0x22) & (prev % 2 == 0)                 # quotes that open or close a string
        inside = ((np.cumsum(quote, dtype=np.int64) + parity) & 1).astype(bool) | quote
        out = ~inside
        opens = out & ((a == 0x5B) | (a == 0x7B))
        d = opens.view(np.int8) - (out & ((a == 0x5D) | (a == 0x7D))).view(np.int8)
        c = np.cumsum(d, dtype=np.int64)
        if n:
            best = max(best, depth + int(c.max()))
            depth += int(c[-1])
        values += int(np.count_nonzero(opens)) + int(np.count_nonzero(out & (a == 0x2C)))
        objects += int(np.count_nonzero(out & (a == 0x7B)))
        parity = (parity + int(np.count_nonzero(quote))) & 1
        run = (run + n) if last[-1] < 0 else (n - 1 - int(last[-1]))
    return best, values + 1, objects


def _no_duplicates(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        seen, dup = set(), None
        for k, _ in pairs:
            if k in seen:
                dup = k
                break
            seen.add(k)
        raise CheckpointError(f"duplicate key {str(dup)[:60]!r} in a JSON object")
    return d


def loads_bounded(raw: bytes | str, what: str, max_values: int):
    """json.loads with the nesting depth and the number of values bounded first (so the
    parse itself is bounded in time and memory) and duplicate keys refused."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth, values, objects = json_shape(data)
    del data
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"{what} nests {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted")
    if values > max_values:
        raise CheckpointError(f"{what} holds about {values:,} values; at most {max_values:,} are accepted")
    if objects > MAX_JSON_OBJECTS:
        raise CheckpointError(f"{what} holds {objects:,} objects; at most {MAX_JSON_OBJECTS:,} are accepted")
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates)
    except CheckpointError as e:
        raise CheckpointError(f"{what}: {e}") from None
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{what} is not valid JSON ({str(e)[:200]})") from None


def header_length(first8: bytes, file_size: int) -> int:
    """The header length from the 8-byte prefix, checked against the file and the bound."""
    if len(first8) < 8 or file_size < 8:
        raise CheckpointError(f"too short to be a safetensors file ({file_size} bytes)")
    n = int.from_bytes(first8[:8], "little")
    if n < 2:
        raise CheckpointError(f"not a safetensors file (header length {n})")
    if n > MAX_HEADER_BYTES and 8 + n > file_size:  # random data or another format, most likely
        raise CheckpointError(f"not a safetensors checkpoint: its first 8 bytes announce a header of "
                              f"{n} bytes and the file has only {file_size} bytes (random data, another "
                              f"file format, or a file cut short)")
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(f"header of {n} bytes; at most {MAX_HEADER_BYTES} are accepted")
    if 8 + n > file_size:
        raise CheckpointError(f"truncated or not a safetensors file (header of {n} bytes, "
                              f"file of {file_size} bytes)")
    return n


def parse_header(head: bytes, file_size: int) -> tuple[dict, dict]:
    """(tensor entries, validated metadata) from the first 8 + n bytes of a file of
    `file_size` bytes. Checks everything the header can tell, tensors included."""
    n = header_length(head[:8], file_size)
    if len(head) < 8 + n:
        raise CheckpointError(f"truncated (header of {n} bytes, only {len(head) - 8} read)")
    header = loads_bounded(head[8:8 + n], "the safetensors header", MAX_HEADER_VALUES)
    if not isinstance(header, dict):
        raise CheckpointError(f"the safetensors header must be a JSON object, got {_kind(header)}")
    md = header.get("__metadata__")
    if md is None:
        md = {}
    if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
        raise CheckpointError("the safetensors __metadata__ must be an object of strings, got "
                              + (_kind(md) if not isinstance(md, dict) else
                                 "non-string values for " + ", ".join(
                                     repr(k)[:40] for k, v in md.items() if not isinstance(v, str))[:200]))
    if META_KEY not in md:
        raise CheckpointError(f"a safetensors file but not a PARL Lab checkpoint (no '{META_KEY}' metadata)")
    meta = validate_metadata(loads_bounded(md[META_KEY], "the metadata", MAX_METADATA_VALUES))
    entries = {}
    for k, e in header.items():
        if k == "__metadata__":
            continue
        if not (isinstance(e, dict) and isinstance(e.get("dtype"), str)
                and isinstance(e.get("shape"), list) and len(e["shape"]) <= 8
                and all(_is_int(x) and 0 <= x <= MAX_INT for x in e["shape"])
                and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2
                and all(_is_int(x) and 0 <= x <= MAX_INT for x in e["data_offsets"])
                and e["data_offsets"][0] <= e["data_offsets"][1]):
            raise CheckpointError(f"tensor entry {k[:60]!r} must be {{dtype: string, shape: [ints], "
                                  f"data_offsets: [begin, end]}}, got {_kind(e)}")
        entries[k] = e
    check_tensors(entries, meta, file_size - 8 - n)
    return entries, meta
