import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

import parl_core as pc
from parl_core.checkpoints import CheckpointError, list_checkpoints, sanitize_name


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
