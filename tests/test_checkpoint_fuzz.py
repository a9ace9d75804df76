"""Property tests for checkpoint reading (issue 16): whatever the bytes, the header or
the metadata, read_metadata and load_checkpoint either succeed or raise CheckpointError,
never anything else, and never build a model the header did not pass."""
import atexit
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import parl_core as pc  # noqa: E402
from parl_core import schema  # noqa: E402
from parl_core.checkpoints import CheckpointError  # noqa: E402

SETTINGS = settings(max_examples=int(os.environ.get("PARL_FUZZ_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_DIR = Path(tempfile.mkdtemp(prefix="parl-fuzz-"))
atexit.register(shutil.rmtree, _DIR, True)


def _good_bytes() -> bytes:
    ens = pc.Ensemble([pc.build_model("mlp", 3, 2, width=4, depth=2, seed=i) for i in range(2)])
    path = pc.save_checkpoint(_DIR / "good.safetensors", ens, {
        "method": "parl", "dataset": "blobs", "params": {"gamma2": 0.5, "layers": 2},
        "input_shape": [2], "classes": ["a", "b", "c"], "num_classes": 3, "seed": 1,
        "epochs": 2, "epochs_done": 1, "lr": 0.01, "clean_acc": 0.5, "r_mean": -0.1,
        "history": [{"epoch": 1, "loss": 1.0, "member_acc": [0.5, 0.4], "r_pairwise": [[1, 0], [0, 1]]}]})
    return path.read_bytes()


GOOD = _good_bytes()
N = int.from_bytes(GOOD[:8], "little")
HEADER = json.loads(GOOD[8:8 + N])
META = json.loads(HEADER["__metadata__"]["parl"])
DATA = GOOD[8 + N:]


def _file(raw: bytes) -> Path:
    p = _DIR / "case.safetensors"
    p.write_bytes(raw)
    return p


def _from(header, data=DATA) -> bytes:
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(hb).to_bytes(8, "little") + hb + data


def _only_checkpoint_errors(raw: bytes) -> None:
    """read_metadata and load_checkpoint: success, or CheckpointError; nothing else."""
    p = _file(raw)
    for fn in (pc.read_metadata, pc.load_checkpoint):
        try:
            out = fn(p)
        except CheckpointError as e:
            assert str(e)
            continue
        if fn is pc.load_checkpoint:  # what loads must work
            ens, meta = out
            x = torch.zeros(2, *meta.get("input_shape", [meta["model"]["in_channels"]]))
            assert torch.isfinite(ens(x)).all()


json_scalars = (st.none() | st.booleans() | st.integers(min_value=-2**1100, max_value=2**1100)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=6)
                           | st.dictionaries(st.text(max_size=12), c, max_size=6), max_leaves=40)


def _dumps(v) -> str:
    return json.dumps(v, allow_nan=True)


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(raw):
    _only_checkpoint_errors(raw)


@SETTINGS
@given(st.binary(max_size=4096))
def test_valid_length_prefix_random_header(body):
    _only_checkpoint_errors(len(body).to_bytes(8, "little") + body)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_bytes(edits):
    raw = bytearray(GOOD)
    for pos, byte in edits:
        raw[pos] = byte
    _only_checkpoint_errors(bytes(raw))


@SETTINGS
@given(st.integers(0, len(GOOD)))
def test_truncated(cut):
    _only_checkpoint_errors(GOOD[:cut])


@SETTINGS
@given(json_values)
def test_random_json_as_header(value):
    _only_checkpoint_errors(_from(_dumps(value).encode()))


@SETTINGS
@given(json_values)
def test_random_json_as_metadata(value):
    _only_checkpoint_errors(_from({**HEADER, "__metadata__": {"parl": _dumps(value)}}))


@SETTINGS
@given(json_values)
def test_random_json_as_metadata_map(value):
    _only_checkpoint_errors(_from({**HEADER, "__metadata__": value}))


FIELDS = sorted(set(META) | {"model.width", "model.num_classes", "model.in_channels", "model.depth",
                             "model.mean", "model.std", "model.arch", "params.gamma2", "params.layers",
                             "history.0.loss", "history.0.epoch", "history.0.member_acc",
                             "history.0.r_pairwise", "dataset_info.n_samples", "dataset_info.noise"})
near_bounds = st.sampled_from([0, 1, 2, 3, 15, 16, 17, 64, 65, 1000, 1001, 1024, 1025, 20000,
                               10**9, 2**63, 10**400, -1, 0.5, math.nan, math.inf, -math.inf, "", "parl",
                               "mlp", "resnet20", [], {}, None, True, [0.0, 1.0], [[1.0]]])


def _set(meta: dict, dotted: str, value) -> dict:
    meta = json.loads(json.dumps(meta))
    cur, parts = meta, dotted.split(".")
    for part in parts[:-1]:
        cur = cur[int(part)] if isinstance(cur, list) else cur.setdefault(part, {})
    if parts[0] == "model":  # keep model and member configs alike, so the field itself is tested
        for c in meta["member_configs"]:
            c[parts[-1]] = value
    cur[parts[-1]] = value
    return meta


@SETTINGS
@given(st.sampled_from(FIELDS), json_values | near_bounds)
def test_one_field_changed(field, value):
    meta = _set(META, field, value)
    _only_checkpoint_errors(_from({**HEADER, "__metadata__": {"parl": _dumps(meta)}}))
    try:  # validate_metadata alone: the same contract
        schema.validate_metadata(meta)
    except CheckpointError:
        pass


@SETTINGS
@given(st.sampled_from(sorted(k for k in HEADER if k != "__metadata__")),
       st.sampled_from(["F64", "F32", "F16", "BF16", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "X", ""]),
       st.lists(st.integers(-1, 2**40), max_size=4) | st.none(),
       st.lists(st.integers(-1, 2**62), min_size=0, max_size=3) | st.none())
def test_tensor_entry_changed(name, dtype, shape, offsets):
    entry = dict(HEADER[name], dtype=dtype)
    if shape is not None:
        entry["shape"] = shape
    if offsets is not None:
        entry["data_offsets"] = offsets
    _only_checkpoint_errors(_from({**HEADER, name: entry}))


@SETTINGS
@given(st.integers(0, 2**64 - 1))
def test_any_header_length(n):
    _only_checkpoint_errors(n.to_bytes(8, "little") + GOOD[8:])


def _reference_shape(text: str):
    """A character-by-character lexer; None once a backslash appears outside a string
    (invalid JSON: json.loads stops there too)."""
    depth = best = values = objects = 0
    inside = escaped = False
    for ch in text:
        if inside:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                inside = False
            continue
        if ch == "\\":
            return None
        if ch == '"':
            inside = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
            values += 1
            objects += ch == "{"
        elif ch in "]}":
            depth -= 1
        elif ch == ",":
            values += 1
    return best, values + 1, objects


@SETTINGS
@given(st.text(alphabet='[]{}",\\:a0 ', max_size=200) | json_values.map(_dumps),
       st.sampled_from([1, 2, 3, 7, 64, 1 << 18]))
def test_json_shape_agrees_with_a_reference_lexer(text, chunk):
    want = _reference_shape(text)
    if want is None:
        return
    old = schema._SCAN_CHUNK
    schema._SCAN_CHUNK = chunk
    try:
        assert schema.json_shape(text.encode()) == want
    finally:
        schema._SCAN_CHUNK = old
