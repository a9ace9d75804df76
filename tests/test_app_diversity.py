"""Diversity page (Figure 2) through AppTest: the CKA heatmaps of two checkpoints side by
side on one colour scale (ENS_U first), a member-pair choice shared by both, and captions
computed from both that say plainly when PARL's CKA is not lower."""
import json

import numpy as np
import pytest

import parl_core as pc
from conftest import open_page, rerun
from dashboard import findings
from test_app_cifar_folders import shared_checkpoints  # noqa: F401  digits-only folder

PAGE = "pages/diversity.py"
METHODS = {"PARL": "parl", "ENS_U": "ce_only"}


def _heatmaps(at) -> list[dict]:
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return [f for f in figs if f["data"] and f["data"][0].get("type") == "heatmap"]


def _titles(figs) -> list[str]:
    return [f["layout"]["title"]["text"] for f in figs]


def test_cka_on_request_then_two_heatmaps_side_by_side(app_env):
    at = open_page(PAGE)
    assert len(at.get("plotly_chart")) == 0 and any(b.key == "dv_go" for b in at.button)
    assert at.selectbox(key="k_dv_cmp").value == "digits_ens_u"  # PARL vs ENS_U by default
    at.slider(key="k_dv_n").set_value(100)
    rerun(at)
    at.button(key="dv_go").click()
    rerun(at)
    heat = _heatmaps(at)
    assert len(heat) == 2 and len(at.get("plotly_chart")) == 3  # two heatmaps + the curves
    assert _titles(heat)[0].startswith("ENS_U (digits_ens_u)") and _titles(heat)[1].startswith("PARL (digits_parl)")
    assert all("the mean of the 3 member pairs" in t for t in _titles(heat))
    assert {(f["data"][0]["zmin"], f["data"][0]["zmax"]) for f in heat} == {(0, 1)}  # one colour scale
    assert sum("overall average CKA" in m.value for m in at.markdown) == 2
    # the caption's numbers are those of the matrices shown
    x = pc.evaluation_subset(pc.load_dataset("digits", "test"), 100).images
    k = 4  # digits_parl regularised all 4 conv layers of smallcnn
    diag = {}
    for name in ("digits_ens_u", "digits_parl"):
        r = pc.ensemble_cka(pc.load_checkpoint(app_env / f"{name}.safetensors")[0], x, batch_size=128)
        diag[name] = np.mean([np.mean(np.diag(p["matrix"])[:k]) for p in r["pairs"].values()])
    cap = next(c.value for c in at.caption if c.value.startswith("Every layer of one member"))
    assert f"ENS_U (digits_ens_u) {diag['digits_ens_u']:.2f}" in cap and f"PARL (digits_parl) {diag['digits_parl']:.2f}" in cap
    lower = diag["digits_parl"] < diag["digits_ens_u"] - findings.CLOSE
    assert ("the expected effect is absent" in cap) == (not lower)


def test_one_pair_for_both_and_the_link(app_env):
    at = open_page(PAGE, query={"n": "100", "pair": "1-3"})
    assert at.radio(key="k_dv_pair").value == "1-3"
    assert all("members 1 and 3" in t for t in _titles(_heatmaps(at)))
    at.radio(key="k_dv_pair").set_value("2-3")
    rerun(at)
    assert at.query_params["pair"] in ("2-3", ["2-3"]) and at.query_params["n"] in ("100", ["100"])


def test_settings_change_what_is_shown(app_env):
    at = open_page(PAGE)
    at.slider(key="k_dv_n").set_value(150)  # not computed by the tests above
    at.selectbox(key="k_dv_cmp").set_value("(none)")
    rerun(at)
    at.button(key="dv_go").click()
    rerun(at)
    assert len(_heatmaps(at)) == 1
    at.radio(key="k_dv_est").set_value("full")
    rerun(at)  # another estimator: not computed yet
    assert len(at.get("plotly_chart")) == 0 and any(b.key == "dv_go" for b in at.button)


def _cka(diagonals):
    """An ensemble_cka-like result whose pairs have these same-layer values."""
    pairs = {}
    for (i, j), d in zip([(0, 1), (0, 2), (1, 2)], diagonals):
        m = np.full((len(d), len(d)), 0.3) + np.diag(np.asarray(d) - 0.3)
        pairs[(i, j)] = {"matrix": m, "diagonal": np.asarray(d, dtype=float), "label": f"M{i + 1}–M{j + 1}",
                         "overall": float(np.mean(d))}
    return {"pairs": pairs, "overall": float(np.mean([np.mean(d) for d in diagonals])), "estimator": "minibatch"}


def test_reversed_effect_is_said_plainly(app_env, monkeypatch):
    """PARL's members made MORE similar than ENS_U's: no caption may claim they are less."""
    from dashboard import compute
    fake = {"digits_parl": _cka([[0.95, 0.9, 0.9, 0.85]] * 3), "digits_ens_u": _cka([[0.6, 0.5, 0.5, 0.4]] * 3)}
    real = compute.stored
    monkeypatch.setattr(compute, "stored", lambda key: fake[key[1][0].rsplit("/", 1)[-1][:-12]]
                        if key[0] == "cka" else real(key))
    at = open_page(PAGE)
    finding = next(m.value for m in at.markdown if m.value.startswith("Mean same-layer CKA"))
    assert "PARL (digits_parl): 0.90 over the first 4 layers" in finding
    assert "ENS_U (digits_ens_u): 0.50 over the first 4 layers" in finding
    assert "**PARL's members are not less similar than ENS_U's in the first 4 layers here (+0.40" in finding
    cap = next(c.value for c in at.caption if c.value.startswith("Every layer of one member"))
    assert "not darker than ENS_U's here (+0.40): the expected effect is absent" in cap


# --------------------------------------------------------------------------- findings
def test_cka_finding_counts_layers_and_pair_ranges():
    parl = _cka([[0.2, 0.3, 0.9], [0.4, 0.5, 0.9], [0.9, 0.9, 0.9]])
    ens_u = _cka([[0.8, 0.8, 0.9]] * 3)
    text = findings.cka_finding({"PARL": parl, "ENS_U": ens_u}, METHODS, 2)
    assert "range 0.25–0.90 in PARL and 0.80–0.80 in ENS_U" in text
    assert "less similar than ENS_U's (-0.27), lower in 2 of 2 layers; the member pairs' ranges overlap." in text
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        findings.cka_finding({"PARL": parl}, METHODS, 0)


def test_heatmap_caption_follows_the_matrices():
    a, b = np.diag([0.2, 0.3, 1.0]), np.diag([0.9, 0.9, 1.0])
    less = findings.cka_heatmap_caption({"ENS_U": b, "PARL": a}, METHODS, 2, "members 1 and 2")
    assert "ENS_U 0.90, PARL 0.25" in less and "PARL's diagonal is darker (less similar) here (-0.65)" in less
    same = findings.cka_heatmap_caption({"ENS_U": b, "PARL": b}, METHODS, 2, "members 1 and 2")
    assert "not darker than ENS_U's here (+0.00): the expected effect is absent" in same
    alone = findings.cka_heatmap_caption({"ADP": a}, {"ADP": "adp"}, 2, "x")
    assert "darker" not in alone and "ADP 0.25" in alone
