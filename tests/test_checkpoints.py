import json
import math
import pickle
import resource
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save
from safetensors.torch import save_file

import parl_core as pc
from parl_core import schema
from parl_core.checkpoints import CheckpointError, list_checkpoints, sanitize_name
from parl_core.cli import main as cli_main


@pytest.fixture
def ens():
    return pc.Ensemble([pc.build_model("smallcnn", 10, 1, mean=[0.3], std=[0.4], seed=i)
                        for i in range(2)]).eval()


def test_round_trip(tmp_path, ens):
    path = pc.save_checkpoint(tmp_path / "a.safetensors", ens, {"method": "parl", "seed": 4,
                                                               "history": [{"epoch": 1}]})
    back, meta = pc.load_checkpoint(path)
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(back(x), ens(x), rtol=0, atol=0)
    assert meta["method"] == "parl" and meta["members"] == 2 and meta["seed"] == 4
    assert meta["model"]["arch"] == "smallcnn" and meta["model"]["mean"] == [0.3]
    assert meta["library_version"] == pc.__version__ and "created" in meta
    assert pc.read_metadata(path) == meta
    assert not back.training
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temporary left


def test_overwrite_guard_and_bad_paths(tmp_path, ens):
    path = pc.save_checkpoint(tmp_path / "a.safetensors", ens)
    with pytest.raises(FileExistsError, match="already exists"):
        pc.save_checkpoint(path, ens, overwrite=False)
    with pytest.raises(ValueError, match="must end in .safetensors"):
        pc.save_checkpoint(tmp_path / "a.pt", ens)
    with pytest.raises(FileNotFoundError, match="not found"):
        pc.load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="JSON-serialisable"):
        pc.save_checkpoint(tmp_path / "b.safetensors", ens, {"x": object()})


def test_refuses_pickles(tmp_path, ens):
    p = tmp_path / "evil.safetensors"
    torch.save(ens.state_dict(), p)
    with pytest.raises(CheckpointError, match="pickle/torch.save"):
        pc.load_checkpoint(p)
    p.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(CheckpointError, match="never unpickles"):
        pc.read_metadata(p)


def test_refuses_truncated_and_foreign_files(tmp_path, ens):
    good = pc.save_checkpoint(tmp_path / "a.safetensors", ens)
    raw = good.read_bytes()
    for cut in (4, 100, len(raw) // 2, len(raw) - 10):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError):
            pc.load_checkpoint(bad)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a PARL Lab checkpoint"):
        pc.load_checkpoint(plain)


def _rewrite_meta(path, out, change):
    tensors = {k: v for k, v in __import__("safetensors.torch", fromlist=["load_file"]).load_file(path).items()}
    meta = pc.read_metadata(path)
    change(meta)
    save_file(tensors, out, metadata={"parl": json.dumps(meta)})


def test_future_and_foreign_architectures(tmp_path, ens):
    good = pc.save_checkpoint(tmp_path / "a.safetensors", ens)
    future = tmp_path / "future.safetensors"
    _rewrite_meta(good, future, lambda m: m.update(format_version=99))
    with pytest.raises(CheckpointError, match="newer PARL Lab"):
        pc.load_checkpoint(future)
    alien = tmp_path / "alien.safetensors"
    _rewrite_meta(good, alien, lambda m: [c.update(arch="vit") for c in m["member_configs"]])
    with pytest.raises(CheckpointError, match="unknown architecture 'vit'"):
        pc.load_checkpoint(alien)
    mismatch = tmp_path / "mismatch.safetensors"
    _rewrite_meta(good, mismatch, lambda m: [c.update(arch="resnet20", in_channels=1)
                                             for c in m["member_configs"]])
    with pytest.raises(CheckpointError, match="do not fit a resnet20"):
        pc.load_checkpoint(mismatch)


def test_names_and_listing(tmp_path, ens):
    assert sanitize_name("../../etc/passwd") == "passwd"
    assert sanitize_name("my run #1.safetensors") == "my_run_1"
    with pytest.raises(ValueError, match="no usable characters"):
        sanitize_name("../..")
    pc.save_checkpoint(tmp_path / "b.safetensors", ens)
    pc.save_checkpoint(tmp_path / "a.safetensors", ens)
    (tmp_path / ".tmp-123-c.safetensors").write_bytes(b"partial")  # a write in progress
    assert [p.name for p in list_checkpoints(tmp_path)] == ["a.safetensors", "b.safetensors"]
    assert list_checkpoints(tmp_path / "nope") == []
    assert len(pc.file_hash(tmp_path / "a.safetensors")) == 64


def test_shipped_checkpoints_load():
    from pathlib import Path
    folder = Path(__file__).resolve().parents[1] / "checkpoints"
    names = {p.name for p in folder.glob("*.safetensors")}
    assert {"digits_ens_u.safetensors", "digits_parl.safetensors",
            "digits_surrogate.safetensors"} <= names
    test = pc.load_dataset("digits", "test")
    for name in ("digits_ens_u", "digits_parl", "digits_surrogate"):
        e, meta = pc.load_checkpoint(folder / f"{name}.safetensors")
        acc, _ = pc.evaluate_accuracy(e, test)
        assert acc == pytest.approx(meta["clean_acc"], abs=1e-9) and acc > 0.95


# --------------------------------------------------------------------------- issue 16
# One validation, before allocating: hostile headers are refused with a CheckpointError
# that says what is wrong, in bounded time and memory, before any model is built or any
# weight is read.
REPO = Path(__file__).resolve().parents[1]


def _split(path):
    """(header dict, metadata dict, data bytes) of a checkpoint file."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return header, json.loads(header["__metadata__"]["parl"]), raw[8 + n:]


def _write(path, header=None, data=b"", *, raw_header=None, length=None):
    """A file from a hand-written header (dict, or raw bytes) and data bytes."""
    hb = raw_header if raw_header is not None else json.dumps(header).encode()
    n = len(hb) if length is None else length
    Path(path).write_bytes(n.to_bytes(8, "little") + hb + data)
    return Path(path)


def _with_meta(good, out, change):
    """`good` with its metadata changed by `change(meta)` (tensors untouched)."""
    header, meta, data = _split(good)
    change(meta)
    header["__metadata__"] = {"parl": json.dumps(meta)}
    return _write(out, header, data)


def _with_tensors(good, out, change):
    """`good` rewritten by the safetensors library with its tensors changed by `change`."""
    from safetensors.torch import load_file
    tensors = load_file(good)
    change(tensors)
    _, meta, _ = _split(good)
    Path(out).write_bytes(st_save(tensors, metadata={"parl": json.dumps(meta)}))
    return Path(out)


def _set_all_configs(**kw):
    def change(m):
        for c in [m["model"], *m["member_configs"]]:
            c.update(kw)
    return change


@pytest.fixture
def good(tmp_path, ens):
    return pc.save_checkpoint(tmp_path / "good.safetensors", ens,
                              {"method": "parl", "dataset": "digits", "params": {"gamma2": 0.5},
                               "history": [{"epoch": 1, "loss": 1.0}]})


@pytest.fixture
def nothing_built(monkeypatch):
    """Fails the test if a refusal gets as far as building a model or reading weights."""
    import parl_core.checkpoints as ck

    def boom(*a, **k):
        raise AssertionError("a model was built or weights were read before the refusal")
    monkeypatch.setattr(ck, "build_model", boom)
    monkeypatch.setattr(ck, "st_load", boom)


def _refused(fn, path, match):
    """fn(path) raises CheckpointError matching `match`, in < 1 s and < 50 MB (Python
    heap peak, tracemalloc) with the process's peak RSS growing < 200 MB. Returns
    (seconds, peak bytes)."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match=match) as info:
            fn(path)
        dt = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    assert dt < 1.0, f"refusing took {dt:.2f} s"
    assert peak < 50 * 2**20, f"refusing peaked at {peak / 2**20:.1f} MB"
    assert rss < 200 * 2**20, f"refusing grew the peak RSS by {rss / 2**20:.0f} MB"
    assert str(path) in str(info.value)  # the message says which file
    return dt, peak


HOSTILE_META = [  # (id, change to the metadata, what the message must say)
    ("width_20000", _set_all_configs(width=20000), r"'member_configs\[0\]\.width' must be an int in 1\.\.1024, got an int 20000"),
    ("classes_1e9", _set_all_configs(num_classes=10**9), r"num_classes' must be an int in 2\.\.1000, got an int 1000000000"),
    ("mlp_depth_100000", _set_all_configs(arch="mlp", depth=100000), r"depth' must be an int in 1\.\.64, got an int 100000"),
    ("too_many_weights", _set_all_configs(arch="resnet20", width=1024, in_channels=1),
     r"weights in all; at most 50,000,000 are accepted \(raise PARL_MAX_PARAMS"),
    ("method_5", lambda m: m.update(method=5), r"'method' must be one of adp, ce_only, dverge, gal, parl, trs, got an int 5"),
    ("method_unknown", lambda m: m.update(method="magic"), r"'method' must be one of .*got a string 'magic'"),
    ("params_list", lambda m: m.update(params=[1, 2]), r"'params' must be an object of at most 64 entries, got a list of 2"),
    ("params_nan", lambda m: m.update(params={"gamma2": float("nan")}), r"'params\.gamma2' must be a finite number.*got a number nan"),
    ("params_nested", lambda m: m.update(params={"gamma2": {"a": 1}}), r"'params\.gamma2' must be a finite number"),
    ("layers_text", lambda m: m.update(params={"layers": "seven"}), r"'params\.layers' must be an int"),
    ("model_list", lambda m: m.update(model=[1]), r"'model' must be an object \(the model config\), got a list of 1"),
    ("members_0", lambda m: m.update(members=0), r"'members' must be an int in 1\.\.64, got an int 0"),
    ("members_1e6", lambda m: m.update(members=10**6), r"'members' must be an int in 1\.\.64"),
    ("members_mismatch", lambda m: m.update(members=3), r"'member_configs' must be a list of 3 model configs"),
    ("in_channels_99", _set_all_configs(in_channels=99), r"in_channels' must be an int in 1\.\.16, got an int 99"),
    ("unknown_config_key", _set_all_configs(kernel=7), r"takes only .*got also kernel"),
    ("std_zero", _set_all_configs(std=[0.0]), r"std' must be a list of 1 finite positive numbers"),
    ("mean_wrong_length", _set_all_configs(mean=[0.1, 0.2]), r"mean' must be a list of 1 finite numbers"),
    ("dataset_unknown", lambda m: m.update(dataset="imagenet"), r"'dataset' must be one of .*got a string 'imagenet'"),
    ("dataset_mismatch", lambda m: m.update(dataset="cifar10"), r"dataset cifar10 needs a convolutional model with 3 input channels"),
    ("input_shape_huge", lambda m: m.update(input_shape=[1, 10**6, 10**6]), r"'input_shape' must be \[in_channels, height, width\]"),
    ("n_samples_1e9", lambda m: m.update(dataset_info={"n_samples": 10**9}), r"'dataset_info\.n_samples' must be an int in 1\.\.100000"),
    ("epochs_negative", lambda m: m.update(epochs=-1), r"'epochs' must be an int in 0\.\."),
    ("epochs_float", lambda m: m.update(epochs=1.5), r"'epochs' must be an int .*got a number 1\.5"),
    ("seed_huge", lambda m: m.update(seed=10**30), r"'seed' must be an int"),
    ("lr_inf", lambda m: m.update(lr=float("inf")), r"'lr' must be a finite number"),
    ("clean_acc_text", lambda m: m.update(clean_acc="high"), r"'clean_acc' must be a number in \[0\.0, 1\.0\]"),
    ("history_dict", lambda m: m.update(history={"epoch": 1}), r"'history' must be a list of at most 10000"),
    ("history_strings", lambda m: m.update(history=[{"epoch": 1, "loss": "low"}]), r"'history\[0\]\.loss' must be a number, got a string 'low'"),
    ("history_no_epoch", lambda m: m.update(history=[{"loss": 1.0}]), r"'history\[0\]\.epoch' is missing"),
    ("history_loss_list", lambda m: m.update(history=[{"epoch": 1, "loss": [1.0]}]), r"'history\[0\]\.loss' must be a number, got a list of 1"),
    ("history_loss_null", lambda m: m.update(history=[{"epoch": 1, "loss": None}]), r"'history\[0\]\.loss' must be a number, got null"),
    ("history_test_acc_text", lambda m: m.update(history=[{"epoch": 1, "test_acc": "x"}]), r"'history\[0\]\.test_acc' must be a number or null, got a string"),
    ("history_matrix_text", lambda m: m.update(history=[{"epoch": 1, "r_pairwise": [[1.0, "x"]]}]), r"'history\[0\]\.r_pairwise' must be a number or null, or a list"),
    ("history_20000", lambda m: m.update(history=[{"epoch": 1}] * 10_001), r"'history' must be a list of at most 10000"),
    ("command_long", lambda m: m.update(command="x" * 100_000), r"'command' must be a string of at most 16384 characters"),
    ("classes_wrong", lambda m: m.update(classes=["a"]), r"'classes' must be a list of 10 class names"),
    ("future_format", lambda m: m.update(format_version=99), r"newer PARL Lab"),
    ("format_text", lambda m: m.update(format_version="1"), r"no format_version"),
    ("extra_field_long_string", lambda m: m.update(notes=["y" * 100_000]), r"'notes' must be JSON with strings of at most"),
]


@pytest.mark.parametrize("change,match", [h[1:] for h in HOSTILE_META], ids=[h[0] for h in HOSTILE_META])
def test_hostile_metadata_refused_before_building(tmp_path, good, nothing_built, change, match):
    bad = _with_meta(good, tmp_path / "bad.safetensors", change)
    _refused(pc.read_metadata, bad, match)
    _refused(pc.load_checkpoint, bad, match)
    with pytest.raises(CheckpointError, match=match):  # the same check, without a file
        schema.validate_metadata(_split(bad)[1])


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def _hostile_headers(good):
    """(id, file bytes builder, match) for headers written by hand."""
    header, meta, data = _split(good)
    mj = json.dumps(meta)
    return [
        ("header_list", lambda p: _write(p, [header]), r"header must be a JSON object, got a list of 1"),
        ("header_string", lambda p: _write(p, "parl"), r"header must be a JSON object, got a string"),
        ("header_not_json", lambda p: _write(p, raw_header=b"{not json" + b" " * 7), r"header is not valid JSON"),
        ("header_not_utf8", lambda p: _write(p, raw_header=b'{"\xff\xfe": 1}'), r"header is not valid JSON"),
        ("header_nested_100000", lambda p: _write(p, raw_header=b'{"x": ' + _deep(100_000) + b"}"),
         r"header nests 100001 levels deep; at most 16"),
        ("header_nested_unclosed", lambda p: _write(p, raw_header=b"[" * 1_000_000), r"nests 1000000 levels deep"),
        ("metadata_nested_100000", lambda p: _write(p, {**header, "__metadata__": {
            "parl": mj[:-1] + ', "x": ' + _deep(100_000).decode() + "}"}}, data), r"metadata nests 100001 levels deep"),
        ("metadata_not_object", lambda p: _write(p, {**header, "__metadata__": {"parl": "[1, 2]"}}, data),
         r"the metadata must be a JSON object, got a list of 2"),
        ("metadata_not_json", lambda p: _write(p, {**header, "__metadata__": {"parl": "{oops"}}, data),
         r"the metadata is not valid JSON"),
        ("metadata_values_not_strings", lambda p: _write(p, {**header, "__metadata__": {"parl": meta}}, data),
         r"__metadata__ must be an object of strings, got non-string values for 'parl'"),
        ("metadata_number", lambda p: _write(p, {**header, "__metadata__": {"parl": mj, "n": 5}}, data),
         r"non-string values for 'n'"),
        ("metadata_list", lambda p: _write(p, {**header, "__metadata__": [mj]}, data),
         r"__metadata__ must be an object of strings, got a list of 1"),
        ("duplicate_keys", lambda p: _write(p, raw_header=json.dumps(header).encode()[:-1]
                                            + b', "__metadata__": {"parl": "{}"}}', data=data),
         r"duplicate key '__metadata__'"),
        ("header_length_2_60", lambda p: _write(p, header, data, length=2**60),
         r"not a safetensors checkpoint: its first 8 bytes announce a header of 1152921504606846976 bytes "
         r"and the file has only \d+ bytes \(random data, another file format"),
        ("header_length_past_end", lambda p: _write(p, header, data, length=len(json.dumps(header)) + len(data) + 1),
         r"truncated or not a safetensors file"),
        ("header_length_0", lambda p: _write(p, header, data, length=0), r"header length 0"),
        ("short_file", lambda p: Path(p).write_bytes(b"\x05\x00\x00"), r"too short"),
        ("empty_file", lambda p: Path(p).write_bytes(b""), r"too short"),
        ("shape_lie", lambda p: _write(p, {**header, "member0.fc.weight": {
            "dtype": "F32", "shape": [10**9, 32], "data_offsets": header["member0.fc.weight"]["data_offsets"]}}, data),
         r"tensor member0\.fc\.weight: the declared model needs shape \[10, 32\], the file has \[1000000000, 32\]"),
        ("offsets_lie", lambda p: _write(p, {**header, "member0.fc.weight": {
            **header["member0.fc.weight"], "data_offsets": [0, 2**62]}}, data), r"needs 1280 bytes"),
        ("offsets_overlap", lambda p: _write(p, {**header, "member0.fc.bias": {
            **header["member0.fc.bias"], "data_offsets": [0, 40]}}, data), r"must not overlap or leave gaps"),
        ("trailing_data", lambda p: _write(p, header, data + b"\0" * 1000), r"trailing data"),
        ("missing_tensor", lambda p: _write(p, {k: v for k, v in header.items() if k != "member1.fc.bias"}, data),
         r"member 1 weights do not fit a smallcnn \(missing 1: member1\.fc\.bias\)"),
        ("stray_tensor", lambda p: _write(p, {**header, "evil": header["member0.fc.bias"]}, data),
         r"tensors that belong to no member: evil"),
        ("entry_not_object", lambda p: _write(p, {**header, "member0.fc.bias": [1, 2]}, data),
         r"tensor entry 'member0\.fc\.bias' must be \{dtype"),
        ("negative_shape", lambda p: _write(p, {**header, "member0.fc.bias": {
            **header["member0.fc.bias"], "shape": [-10]}}, data), r"tensor entry 'member0\.fc\.bias' must be"),
        ("not_a_checkpoint", lambda p: _write(p, {k: v for k, v in header.items() if k != "__metadata__"}, data),
         r"not a PARL Lab checkpoint"),
        ("header_300k_values", lambda p: _write(p, {**header, "x": [0] * 300_000}, data),
         r"header holds about 300,\d+ values; at most 200,000"),
        ("metadata_25k_objects", lambda p: _write(p, {**header, "__metadata__": {
            "parl": mj[:-1] + ', "x": [' + ",".join(["{}"] * 25_000) + "]}"}}, data),
         r"metadata holds 25,\d+ objects; at most 20,000"),
        ("metadata_1_2m_values", lambda p: _write(p, {**header, "__metadata__": {
            "parl": mj[:-1] + ', "x": [' + "0," * 1_200_000 + "0]}"}}, data),
         r"metadata holds about 1,2\d\d,\d+ values; at most 1,000,000"),
        ("extra_field_20k_values", lambda p: _write(p, {**header, "__metadata__": {
            "parl": mj[:-1] + ', "x": [' + "0," * 20_000 + "0]}"}}, data),
         r"'x' must be JSON of at most 10000 values"),
        ("header_over_16mb", lambda p: _write(p, raw_header=b" " * (schema.MAX_HEADER_BYTES + 1)),
         r"header of 16777217 bytes; at most 16777216"),
    ]


def test_hostile_headers_refused_before_building(tmp_path, good, nothing_built):
    for name, build, match in _hostile_headers(good):
        bad = tmp_path / f"{name}.safetensors"
        build(bad)
        for fn in (pc.read_metadata, pc.load_checkpoint):
            try:
                _refused(fn, bad, match)
            except BaseException as e:
                raise AssertionError(f"{name} ({fn.__name__}): {e}") from e


def test_worst_16mb_headers_are_refused_in_bounded_time_and_memory(tmp_path, good, nothing_built):
    """Headers at the 16 MB bound built to be expensive to parse: refused by the pre-scan
    (no json.loads), in < 1 s with the Python heap peak < 80 MB (the header itself is 16)."""
    header, meta, data = _split(good)
    room = schema.MAX_HEADER_BYTES - 64
    cases = {
        "zeros": (b'{"x": [' + b"0," * (room // 2) + b"0]}", r"holds about 8,\d+,\d+ values"),
        "empty_objects": (b'{"x": [' + b"{}," * (room // 3) + b"{}]}", r"holds about 11,[\d,]+ values"),
        "short_strings": (b'{"x": [' + b'"",' * (room // 3) + b'""]}', r"holds about [\d,]+ values"),
        "brackets": (b"[" * room, r"nests 16,?777,?\d+ levels deep"),
        "metadata_string": (json.dumps({**header, "__metadata__": {
            "parl": json.dumps(meta)[:-1] + ', "x": [' + "0," * (room // 3) + "0]}"}}).encode(),
            r"the metadata holds about 5,\d+,\d+ values"),
    }
    for name, (hb, match) in cases.items():
        assert len(hb) <= schema.MAX_HEADER_BYTES, name
        bad = _write(tmp_path / f"{name}.safetensors", raw_header=hb, data=data)
        tracemalloc.start()
        t = time.perf_counter()
        try:
            with pytest.raises(CheckpointError, match=match):
                pc.load_checkpoint(bad)
            dt, peak = time.perf_counter() - t, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert dt < 1.0 and peak < 80 * 2**20, (name, dt, peak / 2**20)


def test_truncated_anywhere_is_refused(tmp_path, good):
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    for cut in (0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(raw) // 2, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match="too short|truncated|trailing|not a safetensors"):
            pc.read_metadata(bad)
        with pytest.raises(CheckpointError):
            pc.load_checkpoint(bad)


def test_declared_giant_model_with_no_data_is_refused(tmp_path, good, nothing_built, monkeypatch):
    """Even with PARL_MAX_PARAMS raised, a header that lists a 67 M-weight mlp exactly
    (names, shapes, offsets) but carries no data is refused from the header alone."""
    monkeypatch.setenv("PARL_MAX_PARAMS", str(10**10))
    _, meta, _ = _split(good)
    cfg = {"arch": "mlp", "num_classes": 1000, "in_channels": 16, "width": 1024, "depth": 64}
    meta.update(model=cfg, member_configs=[cfg] * 2, dataset="moons", input_shape=[16])
    meta.pop("dataset")
    meta.pop("input_shape")
    header, pos = {"__metadata__": {"parl": json.dumps(meta)}}, 0
    for i in range(2):
        for k, (shape, is_float) in schema.expected_state(cfg).items():
            size = math.prod(shape) * (4 if is_float else 8)
            header[f"member{i}.{k}"] = {"dtype": "F32" if is_float else "I64", "shape": list(shape),
                                        "data_offsets": [pos, pos + size]}
            pos += size
    bad = _write(tmp_path / "giant.safetensors", header)
    for fn in (pc.read_metadata, pc.load_checkpoint):
        _refused(fn, bad, r"the tensors take 537337920 bytes but the file holds 0 after the header")


BAD_WEIGHTS = [  # (id, change to the tensors, what the message must say)
    ("bool_weights", lambda t: t.update({"member0.fc.weight": t["member0.fc.weight"] > 0}),
     r"tensor member0\.fc\.weight: dtype must be F16 or BF16 or F32 or F64, got BOOL"),
    ("int8_weights", lambda t: t.update({"member1.convs.0.weight": t["member1.convs.0.weight"].to(torch.int8)}),
     r"tensor member1\.convs\.0\.weight: dtype must be F16 or BF16 or F32 or F64, got I8"),
    ("float_counter", lambda t: t.update({"member0.bns.0.num_batches_tracked": torch.tensor(1.0)}),
     r"num_batches_tracked: dtype must be I64, got F32"),
    ("uint64_counter", lambda t: t.update({"member0.bns.0.num_batches_tracked": torch.tensor(1, dtype=torch.uint64)}),
     r"num_batches_tracked: dtype must be I64, got U64"),
]


@pytest.mark.parametrize("change,match", [b[1:] for b in BAD_WEIGHTS], ids=[b[0] for b in BAD_WEIGHTS])
def test_bad_weight_dtypes_refused_from_the_header(tmp_path, good, nothing_built, change, match):
    bad = _with_tensors(good, tmp_path / "bad.safetensors", change)
    _refused(pc.read_metadata, bad, match)
    _refused(pc.load_checkpoint, bad, match)


def _nan_half(t):
    for k in list(t):
        if t[k].is_floating_point():
            t[k] = t[k].half()
    t["member1.fc.weight"][0, 0] = float("nan")


NONFINITE_WEIGHTS = [
    ("float16_nan", _nan_half, r"member 1: tensor fc\.weight has 1 non-finite value\(s\)"),
    ("float64_overflow", lambda t: t.update({"member0.fc.bias": t["member0.fc.bias"].double() * 1e300}),
     r"member 0: tensor fc\.bias has \d+ non-finite value"),
    ("inf_running_var", lambda t: t["member0.bns.2.running_var"].fill_(float("inf")),
     r"member 0: tensor bns\.2\.running_var has 16 non-finite"),
    ("mean_lies", lambda t: t["member0.mean"].fill_(100.0), r"member 0: tensor mean \[100\.0\] differs from the metadata's mean"),
]


@pytest.mark.parametrize("change,match", [b[1:] for b in NONFINITE_WEIGHTS], ids=[b[0] for b in NONFINITE_WEIGHTS])
def test_non_finite_weights_refused_on_load(tmp_path, good, change, match):
    bad = _with_tensors(good, tmp_path / "bad.safetensors", change)
    pc.read_metadata(bad)  # the header is fine: only the values are wrong
    _refused(pc.load_checkpoint, bad, match)


def test_half_precision_weights_load(tmp_path, good):
    """F16/BF16/F64 weights are accepted (converted to the model's float32)."""
    ref, _ = pc.load_checkpoint(good)
    x = torch.rand(4, 1, 8, 8)
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        def change(t, dt=dt):
            for k in list(t):
                if t[k].is_floating_point() and not k.endswith((".mean", ".std")):
                    t[k] = t[k].to(dt)
        p = _with_tensors(good, tmp_path / f"{dt}.safetensors", change)
        back, _ = pc.load_checkpoint(p)
        torch.testing.assert_close(back(x), ref(x), rtol=0.1, atol=0.1)


def test_save_refuses_what_load_would_refuse(tmp_path, ens):
    p = tmp_path / "bad.safetensors"
    with pytest.raises(CheckpointError, match=r"not saving .*'params\.gamma2' must be a finite number.*got a number nan"):
        pc.save_checkpoint(p, ens, {"method": "parl", "params": {"gamma2": float("nan")}})
    with pytest.raises(CheckpointError, match=r"'method' must be one of"):
        pc.save_checkpoint(p, ens, {"method": 5})
    with pytest.raises(CheckpointError, match=r"'history\[0\]\.epoch' is missing"):
        pc.save_checkpoint(p, ens, {"history": [{"loss": 1.0}]})
    with torch.no_grad():
        ens.members[1].fc.weight[3, 2] = float("nan")
    with pytest.raises(CheckpointError, match=r"not saving .*member 1: tensor fc\.weight has 1 non-finite"):
        pc.save_checkpoint(p, ens, {"method": "parl"})
    assert not p.exists() and list(tmp_path.iterdir()) == []  # nothing written, no temporary left
    wide = pc.Ensemble([pc.build_model("mlp", 2, 2, width=2000)])
    with pytest.raises(CheckpointError, match=r"'member_configs\[0\]\.width' must be an int in 1\.\.1024, got an int 2000"):
        pc.save_checkpoint(p, wide)


def test_cli_train_with_nan_hyperparameter_exits_with_an_error(tmp_path, capsys):
    out = tmp_path / "nan.safetensors"
    rc = cli_main(["train", "--dataset", "moons", "--members", "2", "--epochs", "1", "--quiet",
                   "--method", "parl", "--gamma2", "nan", "--train-subset", "64", "--eval-size", "64",
                   "--out", str(out)])
    err = capsys.readouterr()
    assert rc == 2, err
    # refused before the first step (parl_core.validate), so nothing trains or is saved
    assert "error: gamma2 must be a finite number, got nan" in err.err and "saved" not in err.out + err.err
    assert not out.exists()


def test_measurements_may_be_nan(tmp_path):
    """A one-member ensemble has no pairs: its r_mean is NaN, and that is no reason to
    lose a training run."""
    one = pc.Ensemble([pc.build_model("mlp", 2, 2, seed=0)])
    p = pc.save_checkpoint(tmp_path / "one.safetensors", one, {
        "method": "ce_only", "dataset": "moons", "r_mean": float("nan"), "input_shape": [2],
        "history": [{"epoch": 1, "loss": 0.5, "r_mean": float("nan"), "r_pairwise": [[1.0]],
                     "member_acc": [0.9], "train_acc": None}]})
    _, meta = pc.load_checkpoint(p)
    assert math.isnan(meta["r_mean"]) and meta["history"][0]["member_acc"] == [0.9]


def test_max_params_setting(monkeypatch):
    assert schema.max_params() == schema.DEFAULT_MAX_PARAMS == 50_000_000
    monkeypatch.setenv("PARL_MAX_PARAMS", "200_000_000")
    assert schema.max_params() == 200_000_000
    monkeypatch.setenv("PARL_MAX_PARAMS", "lots")
    with pytest.raises(CheckpointError, match="PARL_MAX_PARAMS must be a positive integer, got 'lots'"):
        schema.max_params()


@pytest.mark.parametrize("arch,kw", [("resnet20", {}), ("resnet20", {"width": 3}), ("smallcnn", {}),
                                     ("smallcnn", {"width": 5}), ("mlp", {}), ("mlp", {"width": 7, "depth": 1}),
                                     ("mlp", {"depth": 5})])
def test_expected_state_matches_the_models(arch, kw):
    """The analytic tensor table is exactly what parl_core.models builds."""
    m = pc.build_model(arch, 7, 2 if arch == "mlp" else 3, **kw)
    got = {k: (tuple(v.shape), v.is_floating_point()) for k, v in m.state_dict().items()}
    assert schema.expected_state(m.config) == got


def test_shipped_checkpoints_all_pass_validation():
    """Every shipped checkpoint (digits_* and cifar10_*) passes the new checks and loads."""
    paths = sorted((REPO / "checkpoints").glob("*.safetensors"))
    names = {p.stem for p in paths}
    assert {"digits_ens_u", "digits_parl", "digits_surrogate"} <= names
    assert any(n.startswith("cifar10_") for n in names)
    for p in paths:
        meta = pc.read_metadata(p)
        ens, meta2 = pc.load_checkpoint(p)
        assert meta2 == meta or meta2["created"] != meta["created"]  # may be rewritten meanwhile
        assert len(ens.members) == meta2["members"]
