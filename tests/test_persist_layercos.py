"""The Gradients panel's per-layer cosines ("What R measures", kind "layercos") kept on disk
beside their checkpoint like CKA and the distributions: they survive a server restart and
load at first paint; a truncated, edited or foreign file is recomputed, never shown."""
import json
import shutil

import numpy as np
import pytest
import torch

import parl_core as pc
from conftest import REPO, open_page, rerun
from dashboard import persist
from parl_core import prepare as prep
from parl_core.stored_results import check_layercos, layercos_value, load_result, save_result
from test_app_cifar_folders import private_checkpoints, shared_checkpoints  # noqa: F401  digits-only folders

PAGE = "pages/gradients.py"


def _value(per=(1.0, 0.25, -0.5), spread=(0.0, 0.5, 0.75), members=3, n=50, feature="pre_bn"):
    return {"per_layer": np.asarray(per, np.float32), "spread": np.asarray(spread, np.float32),
            "members": members, "n": n, "feature": feature}


def test_round_trip_and_every_unfit_file_counts_as_not_computed(tmp_path):
    ck = tmp_path / "a.safetensors"
    key = ("layercos", (str(ck), "abc"), "digits", 50, "pre_bn")
    file = persist.save(key, "fp", _value())
    assert file.name.startswith("layercos_a_") and json.loads(file.read_text())["key"]["kind"] == "layercos"
    back = persist.load(key, "fp")
    assert back["per_layer"].dtype == np.float32 and np.array_equal(back["per_layer"], _value()["per_layer"])
    assert back["members"] == 3 and back["n"] == 50 and back["feature"] == "pre_bn"
    assert persist.load(key[:4] + ("post_relu",), "fp") is None      # another definition of F^k
    assert persist.load(key[:3] + (100,) + key[4:], "fp") is None    # another n
    assert persist.load(key, "other images") is None                 # other test images
    assert persist.load(("layercos", (str(ck), "other sha")) + key[2:], "fp") is None  # another checkpoint
    good = file.read_text()
    d = json.loads(good)
    edits = {"a cosine above 1": ("per_layer", [1.0, 3.0, -0.5]),
             "below the floor -1/(M-1)": ("per_layer", [1.0, 0.25, -0.9]),
             "spread of another length": ("spread", [0.0, 0.5]),
             "n the key does not say": ("n", 100),
             "another feature": ("feature", "post_bn"),
             "one member": ("members", 1)}
    for what, (field, v) in edits.items():
        bad = json.loads(good)
        if field in ("per_layer", "spread"):
            bad["value"][field]["__nd__"], bad["value"][field]["shape"] = v, [len(v)]
        else:
            bad["value"][field] = v
        file.write_text(json.dumps(bad))
        assert persist.load(key, "fp") is None, what
    file.write_text(json.dumps({"key": d["key"], "value": {"per_layer": d["value"]["per_layer"]}}))
    assert persist.load(key, "fp") is None  # fields missing
    file.write_text(good[:60])
    assert persist.load(key, "fp") is None  # truncated
    other = tmp_path / "b.safetensors"  # a foreign file under this result's name
    foreign = persist.save(("layercos", (str(other), "xyz"), "digits", 50, "pre_bn"), "fp", _value())
    shutil.copy(foreign, file)
    assert persist.load(key, "fp") is None
    file.write_text(good)
    assert persist.load(key, "fp") is not None  # the untouched file loads again


def test_check_layercos_names_what_is_wrong():
    assert check_layercos(_value(), 50, "pre_bn")["n"] == 50
    with pytest.raises(ValueError, match="n=50"):
        check_layercos(_value(n=100), 50, "pre_bn")
    with pytest.raises(ValueError, match="floor"):
        check_layercos(_value(per=(1.0, -0.75, 0.0)), 50, "pre_bn")
    with pytest.raises(ValueError, match="must be a dict"):
        check_layercos([1.0], 50, "pre_bn")
    with pytest.raises(ValueError, match="at least 2 models"):
        layercos_value([pc.build_model("mlp", 2, in_channels=2)], torch.zeros(2, 2), "pre_bn")


def _open(n=50):
    at = open_page(PAGE)
    at.slider(key="k_gr_dist_n").set_value(n)
    return rerun(at)


def _finding(at):
    return next((m.value for m in at.markdown if m.value.startswith("With F^k")), None)


def test_the_panel_survives_a_restart_and_a_tampered_file_is_recomputed(private_checkpoints, monkeypatch):
    from dashboard import compute
    compute._store.clear()
    calls = []
    real = compute.layer_cosines
    monkeypatch.setattr(compute, "layer_cosines", lambda *a: calls.append(a) or real(*a))
    at = _open()
    assert _finding(at) is None
    at.button(key="gr_rk_go").click()
    rerun(at)
    first = _finding(at)
    assert first is not None and len(calls) == 2  # ENS_U and PARL
    files = sorted((private_checkpoints / ".cache").glob("layercos_digits_*.json"))
    assert [f.name.split("_")[2] for f in files] == ["ens", "parl"]
    assert all(json.loads(f.read_text())["key"]["settings"] == ["digits", 50, "pre_bn"] for f in files)
    compute._store.clear()  # a restarted server: nothing in memory
    at = _open()
    assert not [b for b in at.button if b.key == "gr_rk_go"]  # first paint, no Compute button
    assert _finding(at) == first and len(calls) == 2  # loaded, not computed again
    # an edited file (a cosine changed by hand, the key intact) is not shown: offered again
    parl = next(f for f in files if "_parl_" in f.name)
    d = json.loads(parl.read_text())
    d["value"]["per_layer"]["__nd__"][1] = 7.0
    parl.write_text(json.dumps(d))
    compute._store.clear()
    at = _open()
    assert _finding(at) is None and [b for b in at.button if b.key == "gr_rk_go"]
    at.button(key="gr_rk_go").click()
    rerun(at)
    assert _finding(at) == first and len(calls) == 3  # only the tampered one recomputed
    assert json.loads(parl.read_text())["value"]["per_layer"]["__nd__"][1] != 7.0  # rewritten
    compute._store.clear()


def test_prepare_recomputes_a_truncated_file(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    shutil.copy2(REPO / "checkpoints" / "digits_parl.safetensors", folder / "digits_parl.safetensors")
    path = folder / "digits_parl.safetensors"
    (r,) = prep.prepare([path], what=["layercos"], surrogate=None, device="cpu", quiet=True)
    assert r.status == "computed"
    (file,) = (folder / ".cache").glob("layercos_digits_parl_*.json")
    file.write_text(file.read_text()[:100])
    (r,) = prep.prepare([path], what=["layercos"], surrogate=None, device="cpu", quiet=True)
    assert r.status == "computed"  # not "already there": the truncated file did not count
    test = pc.load_dataset("digits", "test")
    settings = prep.analysis_settings("digits", len(test))["layercos"]
    fp = prep._fingerprint(pc.evaluation_subset(test, settings[1]))
    value = load_result("layercos", path, pc.file_hash(path), fp, settings)
    assert value is not None and value["feature"] == "pre_bn"
    assert save_result("layercos", path, pc.file_hash(path), fp, settings, value) == file


SHIPPED = [REPO / "checkpoints" / f"cifar10_{n}.safetensors" for n in ("ens_u", "parl")]


@pytest.mark.skipif(not all(p.is_file() for p in SHIPPED) or not list(
    (REPO / "checkpoints" / ".cache").glob("layercos_cifar10_*.json")), reason="no shipped CIFAR-10 layercos results")
def test_shipped_cifar_results_paint_the_panel_at_once(tmp_path, monkeypatch):
    """The committed layercos files fit the shipped checkpoints at prepare's settings (the
    panel's defaults), and the Gradients page, on a copy, shows "What R measures" at once."""
    from dashboard import compute
    test = pc.load_dataset("cifar10", "test")
    settings = prep.analysis_settings("cifar10", len(test))["layercos"]
    fp = prep._fingerprint(pc.evaluation_subset(test, settings[1]))
    folder = tmp_path / "checkpoints"
    (folder / ".cache").mkdir(parents=True)
    for p in SHIPPED:
        value = load_result("layercos", p, pc.file_hash(p), fp, settings)
        assert value is not None and value["n"] == 450 and value["members"] == 3, p.name
        shutil.copy2(p, folder / p.name)
        for kind in ("layercos", "cosdist"):
            for f in (REPO / "checkpoints" / ".cache").glob(f"{kind}_{p.stem}_*.json"):
                shutil.copy2(f, folder / ".cache" / f.name)
    monkeypatch.setenv("PARL_CHECKPOINTS", str(folder))
    monkeypatch.setenv("PARL_DEBUG", "1")
    monkeypatch.setenv("PARL_READONLY", "1")
    monkeypatch.setattr(compute, "layer_cosines", lambda *a: pytest.fail("computed instead of loaded"))
    compute._store.clear()
    at = open_page(PAGE, timeout=300, query={"checkpoint": "cifar10_parl"})
    assert not [b for b in at.button if b.key == "gr_rk_go"]
    finding = _finding(at)
    assert finding is not None and "ENS_U (cifar10_ens_u)" in finding and "PARL (cifar10_parl)" in finding
    assert "450" in finding
    compute._store.clear()
