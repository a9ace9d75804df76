"""`python -m parl_core prepare`: the results it stores are the ones the pages open on
(no Compute button after it), a second run computes nothing, bad input is named."""
import json
import os

import numpy as np
import pytest

import parl_core as pc
from conftest import open_page, rerun
from parl_core import prepare as prep
from parl_core.cli import main


def _tiny(folder, name, method, seed, params=None, members=2):
    test = pc.load_dataset("digits", "test")
    ens = pc.build_ensemble("smallcnn", members, test, seed=seed, width=4)
    pc.save_checkpoint(folder / f"{name}.safetensors", ens, {
        "dataset": "digits", "classes": test.classes, "input_shape": [1, 8, 8], "method": method,
        "params": params or {}, "seed": seed, "epochs": 0, "epochs_done": 0, "train_size": 0,
        "clean_acc": None, "r_mean": None})
    return folder / f"{name}.safetensors"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep") / "checkpoints"
    d.mkdir()
    _tiny(d, "digits_ens_u", "ce_only", 0)
    _tiny(d, "digits_parl", "parl", 1, {"gamma1": 1.0, "gamma2": 0.5, "layers": 2})
    _tiny(d, "digits_surrogate", "ce_only", 100)
    return d


@pytest.fixture(scope="module")
def prepared(folder):
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["prepare", str(folder / "digits_parl.safetensors"),
                   str(folder / "digits_ens_u.safetensors"), "--device", "cpu"])
    assert rc == 0, err.getvalue()
    return out.getvalue(), err.getvalue()


def test_prepare_stores_every_kind_with_progress(folder, prepared):
    out, err = prepared
    cache = folder / ".cache"
    for kind in ("cka", "cosdist", "layercos", "transfer", "eval"):
        for stem in ("digits_parl", "digits_ens_u"):
            assert len(list(cache.glob(f"{kind}_{stem}_*.json"))) == 1, (kind, stem)
    assert not list(cache.glob("*_digits_surrogate_*"))  # only what was asked
    assert out.count("computed") == 10 and "black-box from digits_surrogate" in out
    assert "prepare" in err and "eval" in err and "layercos computed" in err  # progress lines on stderr
    rec = json.loads(next(cache.glob("cka_digits_parl_*.json")).read_text())["key"]
    assert rec["kind"] == "cka" and rec["checkpoint_hash"] == pc.file_hash(folder / "digits_parl.safetensors")


def test_a_second_run_computes_nothing(folder, prepared, capsys):
    before = {f: f.stat().st_mtime_ns for f in (folder / ".cache").glob("*.json")}
    assert main(["prepare", str(folder / "digits_parl.safetensors"), str(folder / "digits_ens_u.safetensors"),
                 "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "computed" not in out and out.count("already there") == 10
    assert before == {f: f.stat().st_mtime_ns for f in (folder / ".cache").glob("*.json")}


def test_the_pages_open_on_the_prepared_results(folder, prepared, monkeypatch):
    from dashboard import compute
    monkeypatch.setenv("PARL_CHECKPOINTS", str(folder))
    monkeypatch.setenv("PARL_DEBUG", "1")
    monkeypatch.setenv("PARL_READONLY", "1")  # nothing may be computed and written by the pages
    compute._store.clear()  # only what is on disk
    at = open_page("pages/diversity.py", query={"checkpoint": "digits_parl"})
    assert not [b for b in at.button if b.key == "dv_go"] and at.get("plotly_chart")
    at.switch_page("pages/gradients.py")
    rerun(at)
    assert not [b for b in at.button if b.key == "gr_dist_go"]
    assert any("Median cosine" in m.value for m in at.markdown)
    assert at.radio(key="k_gr_feature").value == prep.DEFAULTS["feature"]  # the panel's default
    assert not [b for b in at.button if b.key == "gr_rk_go"]  # "What R measures" drawn at once
    assert any(m.value.startswith("With F^k") and "ENS_U (digits_ens_u)" in m.value
               and "PARL (digits_parl)" in m.value for m in at.markdown)
    at.switch_page("pages/robustness.py")
    rerun(at)
    assert not [b for b in at.button if b.key in ("rb_go", "rb_t_go")]
    assert any("fooled" in c.value.lower() or "Accuracy of each member" in c.value for c in at.caption)


def test_layer_cosines_are_the_gradients_panels(folder, prepared):
    """The stored per-layer cosines are pc.layer_cosines at the panel's default feature on the
    first min(450, N) test images of the evaluation order (the panel's default n)."""
    from dashboard import findings_r
    from parl_core.stored_results import load_result
    assert prep.DEFAULTS["feature"] == list(findings_r.FEATURE_WORDS)[0] == "pre_bn"
    path = folder / "digits_parl.safetensors"
    test = pc.load_dataset("digits", "test")
    settings = prep.analysis_settings("digits", len(test))["layercos"]
    assert settings == ["digits", min(prep.ANALYSIS_N, len(test)), "pre_bn"]
    ds = pc.evaluation_subset(test, settings[1])
    value = load_result("layercos", path, pc.file_hash(path), prep._fingerprint(ds), settings)
    ens, _ = pc.load_checkpoint(path, device="cpu")
    want = pc.layer_cosines(ens, ds.images, feature="pre_bn").numpy()
    assert value["n"] == settings[1] and value["feature"] == "pre_bn" and value["members"] == 2
    assert np.allclose(value["per_layer"], want, atol=1e-5) and len(want) == ens.members[0].num_layers


def test_a_single_member_checkpoint_has_no_layer_cosines(tmp_path):
    one = _tiny(tmp_path, "digits_single", "ce_only", 3, members=1)
    (r,) = prep.prepare([one], what=["layercos"], surrogate=None, device="cpu", quiet=True)
    assert (r.what, r.status) == ("layercos", "skipped") and "single member" in r.detail
    assert not list((tmp_path / ".cache").glob("layercos_*"))


def test_defaults_are_the_robustness_pages():
    from dashboard import robust
    for dataset, n_test in (("cifar10", 1000), ("digits", 450)):
        for cpu in (True, False):
            mine = prep.evaluation_defaults(dataset, n_test, cpu)
            assert {k: v for k, v in mine.items() if k != "eps"} == robust.defaults(dataset, n_test, cpu)
            assert mine["eps"] == pc.default_eps_grid(dataset)


def test_surrogate_is_the_pages_default(folder):
    assert prep.default_surrogate(folder / "digits_parl.safetensors").stem == "digits_surrogate"
    assert prep.default_surrogate(folder / "digits_surrogate.safetensors").stem == "digits_ens_u"


@pytest.mark.parametrize("args,match", [
    (["nope.safetensors"], "nope.safetensors"),
    (["{ok}", "--only", "cka,speed"], "what must be"),
    (["{ok}", "--surrogate", "missing.safetensors"], "missing.safetensors")])
def test_bad_input_is_named(folder, capsys, args, match):
    args = [a.replace("{ok}", str(folder / "digits_parl.safetensors")) for a in args]
    assert main(["prepare", *args, "--quiet"]) == 2
    assert match in capsys.readouterr().err


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(os.urandom(64))
    with pytest.raises(ValueError):
        prep.prepare([bad], quiet=True)
