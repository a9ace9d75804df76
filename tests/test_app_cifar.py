"""Every analysis page with a CIFAR-10 checkpoint active (tiny CIFAR-shaped ensembles named
like the shipped ones; test images from the embedded sample): the dashboard opens on
them, shows images in colour with class names, says which test set and how many images
each view used, writes ε also in /255, and describes results from their numbers."""
import json

import numpy as np
import pandas as pd
import pytest

import parl_core as pc
from conftest import open_page, rerun
from test_app_cifar_folders import TINY_PARL_K, cifar_env, tiny_cifar_folder  # noqa: F401

SAMPLE = "CIFAR-10: embedded sample of 1,000 test images (a JPEG re-encoding of the originals)"


def _spec(at, marker: str) -> dict:
    return json.loads(next(c.proto.spec for c in at.get("plotly_chart") if marker in c.proto.spec))


def _shape(z) -> tuple:
    """Shape of a plotly array, plain or base64-packed ({"bdata", "dtype", "shape"})."""
    if isinstance(z, dict):
        return tuple(int(v) for v in str(z["shape"]).split(","))
    return np.asarray(z).shape


def _text(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption])


def test_opens_on_cifar_and_home_lists_it(cifar_env):
    at = open_page()
    assert at.sidebar.selectbox(key="_sb_checkpoint").value == "cifar10_parl"
    side = " ".join(m.value for m in at.sidebar.markdown) + " ".join(c.value for c in at.sidebar.caption)
    assert "`cifar10`" in side and "embedded test sample" in side and "1,000 test images" in side
    table = at.dataframe[0].value.set_index("checkpoint")
    assert {"cifar10_parl", "cifar10_ens_u", "cifar10_surrogate", "digits_parl"} <= set(table.index)
    assert table.loc["cifar10_parl", "dataset"] == "cifar10" and table.loc["cifar10_parl", "method"] == "PARL"


def test_gradients_compare_ens_u_and_parl_on_colour_images(cifar_env):
    at = open_page("pages/gradients.py")
    assert at.multiselect(key="k_gr_models").value == [
        "cifar10_ens_u:0", "cifar10_ens_u:1", "cifar10_parl:0", "cifar10_parl:1"]
    test = pc.load_dataset("cifar10", "test", cifar_env.parent / "no_data")
    true = test.classes[int(test.labels[0])]
    line = next(m.value for m in at.markdown if m.value.startswith("**Test example #0**"))
    assert f"true class **{true}**" in line and all(p.split(": ")[1].rstrip(".") in test.classes
                                                    for p in line.split("predictions ")[1].split(", "))
    assert any(c.value == f"Test image from {SAMPLE}." for c in at.caption)
    maps = _spec(at, "Input gradients")
    image = maps["data"][0]
    h, w, channels = _shape(image["z"])
    assert image["type"] == "image" and h >= 160 and w >= 160  # 32 × 32, enlarged
    assert channels == 3  # RGB, not one channel
    assert f"input: {true}" in [a["text"] for a in maps["layout"]["annotations"]]
    angles = next(m.value for m in at.markdown if m.value.startswith("At this example"))
    assert "ENS_U (cifar10_ens_u)" in angles and "PARL (cifar10_parl)" in angles


def test_gradient_distributions_caption_is_computed(cifar_env):
    at = open_page("pages/gradients.py")
    at.slider(key="k_gr_dist_n").set_value(50)
    rerun(at)
    at.button(key="gr_dist_go").click()
    rerun(at)
    test = pc.evaluation_subset(pc.load_dataset("cifar10", "test", cifar_env.parent / "no_data"), 50)
    med = {}
    for name in ("cifar10_ens_u", "cifar10_parl"):
        ens, _ = pc.load_checkpoint(cifar_env / f"{name}.safetensors")
        med[name] = float(np.median(pc.cosine_distribution(ens, test.images, test.labels)["all"]))
    text = next(m.value for m in at.markdown if m.value.startswith("Median cosine"))
    assert f"ENS_U (cifar10_ens_u): {med['cifar10_ens_u']:+.2f}" in text
    assert f"PARL (cifar10_parl): {med['cifar10_parl']:+.2f}" in text
    less = med["cifar10_parl"] < med["cifar10_ens_u"] - 0.02
    assert ("are less aligned than ENS_U's" in text) == less
    assert ("are not less aligned than ENS_U's here" in text) == (not less)
    assert any("Test images: CIFAR-10: embedded sample" in c.value and "50 used" in c.value for c in at.caption)


def test_diversity_side_by_side_with_a_computed_caption(cifar_env):
    at = open_page("pages/diversity.py")
    assert at.selectbox(key="k_dv_cmp").value == "cifar10_ens_u"
    at.slider(key="k_dv_n").set_value(50)
    at.select_slider(key="k_dv_batch").set_value(32)
    rerun(at)
    at.button(key="dv_go").click()
    rerun(at)
    assert sum("overall average CKA" in m.value for m in at.markdown) == 2
    x = pc.evaluation_subset(pc.load_dataset("cifar10", "test", cifar_env.parent / "no_data"), 50).images
    first_k = {}
    for name in ("cifar10_ens_u", "cifar10_parl"):
        r = pc.ensemble_cka(pc.load_checkpoint(cifar_env / f"{name}.safetensors")[0], x, batch_size=32)
        first_k[name] = np.mean([np.mean(p["diagonal"][:TINY_PARL_K]) for p in r["pairs"].values()])
    text = next(m.value for m in at.markdown if m.value.startswith("Mean same-layer CKA"))
    for name, label in (("cifar10_parl", "PARL"), ("cifar10_ens_u", "ENS_U")):
        assert f"{label} ({name}): {first_k[name]:.2f} over the first {TINY_PARL_K} layers" in text
    lower = first_k["cifar10_parl"] < first_k["cifar10_ens_u"] - 0.02
    assert ("PARL's members are not less similar" in text) == (not lower)
    assert any("Test images: " + SAMPLE + ", 50 used" in c.value for c in at.caption)


# --------------------------------------------------------------------------- robustness
TINY = {"attacks": ["fgsm", "pgd"], "steps": 2, "restarts": 1, "n": 30}


@pytest.fixture
def tiny_defaults(monkeypatch):
    """The Robustness page's CIFAR-10 defaults shrunk to seconds (the real ones, equal to
    the shipped results' settings, are checked in test_cifar_defaults_are_the_shipped_settings)."""
    from dashboard import robust
    monkeypatch.setitem(robust.DEFAULTS, "cifar10", dict(TINY))
    return TINY


def test_cifar_defaults_are_the_shipped_settings():
    from dashboard import robust
    shipped = {"attacks": ["fgsm", "bim", "mim", "pgd"], "steps": 20, "restarts": 1, "n": 1000}
    assert robust.defaults("cifar10", 1000, on_cpu=True) == shipped
    assert robust.defaults("cifar10", 10_000, on_cpu=False) == shipped
    assert robust.defaults("cifar10", 500, on_cpu=True)["n"] == 500  # capped by the test set


def test_robustness_shows_the_precomputed_result_at_once(cifar_env, tiny_defaults):
    eps = pc.default_eps_grid("cifar10")
    done = pc.evaluate_checkpoints(
        [str(cifar_env / "cifar10_parl.safetensors"), str(cifar_env / "cifar10_ens_u.safetensors")],
        surrogate=str(cifar_env / "cifar10_surrogate.safetensors"), n_examples=TINY["n"], seed=0,
        attacks=TINY["attacks"], eps=eps, steps=TINY["steps"], restarts=TINY["restarts"])
    at = open_page("pages/robustness.py")
    assert at.selectbox(key="k_rb_sur").value == "cifar10_surrogate"
    assert at.multiselect(key="k_rb_cmp_cifar10_parl").value == ["cifar10_ens_u"]
    assert not any(b.key == "rb_go" for b in at.button)  # shown at once, nothing to press
    assert "Ensemble accuracy under attack" in json.dumps(_spec(at, "Ensemble accuracy under attack"))
    text = _text(at)
    assert "ε in /255 units: 0.01 (≈ 2.6/255), 0.02 (≈ 5.1/255)" in text
    assert f"Test images: {SAMPLE}, 30 used" in text
    parl, ens_u = done[0].table, done[1].table
    diff = [parl[(parl.attack == "pgd") & np.isclose(parl.eps, e)].acc.iloc[0]
            - ens_u[(ens_u.attack == "pgd") & np.isclose(ens_u.eps, e)].acc.iloc[0] for e in eps]
    finding = next(m.value for m in at.markdown if m.value.startswith("PGD: PARL − ENS_U"))
    assert f"0.03 (≈ 7.6/255): {100 * diff[2]:+.1f}" in finding
    assert f"(mean {100 * np.mean(diff):+.1f})" in finding
    assert ("PARL is not more robust than ENS_U here" in finding) == (np.mean(diff) <= 0)
    assert any("ε = 0.04 (≈ 10.2/255)" in c.value for c in at.caption)  # the Table-1 row
    viewer = _spec(at, "perturbation")
    assert [t["type"] for t in viewer["data"]] == ["image"] * 3  # clean, adversarial, perturbation: colour
    assert viewer["layout"]["yaxis3"]["scaleanchor"] == "x3"  # the perturbation is square
    title = next(a["text"] for a in viewer["layout"]["annotations"] if a["text"].startswith("perturbation"))
    factor = title.split("× ")[1].split("<br>")[0]
    assert any(f"shows it × {factor}" in c.value for c in at.caption)


def _result(path, accs, *, n=1000, method="?"):
    """A RobustnessResult with PGD accuracies `accs` over the CIFAR grid (and its intervals)."""
    rows = [{"attack": "clean", "eps": 0.0, "acc": 0.6, "n": n}]
    rows += [{"attack": "pgd", "eps": e, "acc": a, "n": n} for e, a in zip(pc.default_eps_grid("cifar10"), accs)]
    for r in rows:
        r["ci_low"], r["ci_high"] = pc.wilson_interval(round(r["acc"] * n), n)
    return pc.RobustnessResult(pd.DataFrame(rows), settings={"mode": "black-box", "n": n, "checkpoint": path})


@pytest.mark.parametrize("parl,ens_u,verdict", [
    ([0.30, 0.20, 0.10, 0.05, 0.03, 0.02, 0.01], [0.45, 0.30, 0.20, 0.10, 0.06, 0.04, 0.02],
     "PARL is not more robust than ENS_U here"),
    ([0.48, 0.35, 0.20, 0.12, 0.09, 0.06, 0.05], [0.44, 0.22, 0.12, 0.04, 0.02, 0.01, 0.01],
     "PARL is more robust than ENS_U here"),
    ([0.45, 0.31, 0.21, 0.11, 0.07, 0.05, 0.03], [0.44, 0.30, 0.20, 0.10, 0.06, 0.04, 0.02],
     "it is not shown to be more robust than ENS_U here"),
], ids=["parl-worse", "parl-better", "within-noise"])
def test_robustness_caption_follows_the_numbers(cifar_env, tiny_defaults, monkeypatch, parl, ens_u, verdict):
    fake = {"cifar10_parl": _result("parl", parl), "cifar10_ens_u": _result("ens_u", ens_u)}
    monkeypatch.setattr(pc, "cached_evaluation", lambda path, **kw: fake[path.rsplit("/", 1)[-1][:-12]])
    at = open_page("pages/robustness.py")
    finding = next(m.value for m in at.markdown if m.value.startswith("PGD: PARL − ENS_U"))
    assert verdict in finding
    assert f"0.01 (≈ 2.6/255): {100 * (parl[0] - ens_u[0]):+.1f}" in finding
    others = [v for v in ("PARL is not more robust", "PARL is more robust", "not shown to be") if v not in verdict]
    assert not any(v in finding for v in others)


def test_work_and_time_estimate_and_paper_defaults(cifar_env, tiny_defaults):
    at = open_page("pages/robustness.py")
    at.multiselect(key="k_rb_attacks_cifar10").set_value(list(pc.ATTACKS))
    at.text_input(key="k_rb_eps_cifar10").input("0.01, 0.03")
    at.number_input(key="k_rb_n_cifar10").set_value(20)
    at.number_input(key="k_rb_steps_cifar10").set_value(3)
    at.number_input(key="k_rb_restarts_cifar10").set_value(2)
    rerun(at)
    # FGSM 1 + BIM 3 + MIM 3 + PGD 3 × 2 restarts = 13 steps per example per ε; 2 ε; 20 examples
    est = next(m.value for m in at.markdown if m.value.startswith("Not computed yet"))
    assert "520 attack steps (crafted once on the surrogate, scored on all 2 targets" in est
    assert "on this machine" in est and "about " in est
    at.radio(key="k_rb_mode").set_value("white-box")
    rerun(at)
    est = next(m.value for m in at.markdown if m.value.startswith("Not computed yet"))
    assert "1,040 attack steps (crafted on each ensemble itself" in est
    next(b for b in at.button if b.label == "Paper").click()
    rerun(at)
    assert at.multiselect(key="k_rb_attacks_cifar10").value == list(pc.ATTACKS)
    assert at.number_input(key="k_rb_steps_cifar10").value == 50
    assert at.number_input(key="k_rb_n_cifar10").value == 1000
    assert at.number_input(key="k_rb_restarts_cifar10").value == 10  # the paper's PGD restarts


# --------------------------------------------------------------------------- checkpoints
def _compare_tab(at):
    at.session_state["ck_tab"] = "Compare (Table 2)"
    return rerun(at)


def test_checkpoints_comparison_stays_within_the_active_dataset(cifar_env):
    at = _compare_tab(open_page("pages/checkpoints.py"))
    assert at.multiselect(key="k_ck_cmp_cifar10").value == ["cifar10_ens_u", "cifar10_parl"]
    table = at.dataframe[1].value
    assert list(table.checkpoint) == ["cifar10_ens_u", "cifar10_parl"]
    assert any("ε = 0.04 (≈ 10.2/255)" in c.value and "embedded sample" in c.value for c in at.caption)
    at.multiselect(key="k_ck_cmp_cifar10").set_value(["cifar10_parl", "digits_parl"])
    rerun(at)
    assert any("different datasets" in w.value for w in at.warning)
    assert len(at.dataframe) == 1 and not any(c.key == "fig_ck_bars" for c in at.get("plotly_chart"))
