"""Gradients page (Figure 1) through AppTest: ENS_U and PARL in two rows on one colour
scale, layer-k views labelled as what they are (and layer 1's spike said in words), the
angle view, the distributions, and captions that follow the numbers."""
import json

import numpy as np
import pytest

import parl_core as pc
from conftest import REPO, open_page, rerun
from dashboard import findings
from parl_core.plots.gradient_rows import gradient_rows_figure
from test_app_cifar_folders import private_checkpoints, shared_checkpoints  # noqa: F401  digits-only folders

PAGE = "pages/gradients.py"


def _example_line(at):
    return next(m.value for m in at.markdown if m.value.startswith("**Test example #"))


def _spec(at, marker: str) -> dict:
    return json.loads(next(c.proto.spec for c in at.get("plotly_chart") if marker in c.proto.spec))


def _text(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption]
                     + [i.value for i in at.info])


def _rows_figure(at) -> dict:
    return _spec(at, "one row per ensemble")


def test_two_rows_of_members_on_one_colour_scale(app_env):
    at = open_page(PAGE)
    assert _example_line(at).startswith("**Test example #0**")
    assert at.selectbox(key="k_gr_row1").value == "digits_ens_u"
    assert at.selectbox(key="k_gr_row2").value == "digits_parl"
    fig = _rows_figure(at)
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert [f"{m} · M{i}" for m in ("ENS_U", "PARL") for i in (1, 2, 3)] == titles[1:]
    maps = [t for t in fig["data"] if t["type"] == "heatmap" and t.get("colorscale") != "gray"
            and "·" in t.get("name", "")]
    assert len(maps) == 6
    assert len({(t["zmin"], t["zmax"]) for t in maps}) == 1  # one scale for both rows
    assert sum(bool(t.get("showscale")) for t in maps) == 1  # one colour bar
    assert maps[-1]["colorbar"]["title"]["text"] == "∂loss/∂pixel"
    # the angle matrix and 3-D directions of the paper's Figure 1 members
    assert at.multiselect(key="k_gr_models").value == ["digits_ens_u:0", "digits_ens_u:1",
                                                       "digits_parl:0", "digits_parl:1"]
    assert len(at.get("plotly_chart")) == 3
    # the mean angle within each row, computed from the same gradients
    ens = {n: pc.load_checkpoint(app_env / f"{n}.safetensors")[0] for n in ("digits_ens_u", "digits_parl")}
    ds = pc.load_dataset("digits", "test")
    within = {}
    for n, e in ens.items():
        g = pc.input_gradients(e, ds.images[:1], ds.labels[:1])
        deg = pc.cosine_to_angle(np.asarray(pc.gradient_cosines(g)[0]))
        within[n] = np.mean([deg[0, 1], deg[0, 2], deg[1, 2]])
    text = next(m.value for m in at.markdown if m.value.startswith("At this example, the members'"))
    assert f"{within['digits_ens_u']:.0f}° apart in ENS_U (digits_ens_u)" in text
    assert f"{within['digits_parl']:.0f}° apart in PARL (digits_parl)" in text


def test_one_row_when_the_second_is_none(app_env):
    at = open_page(PAGE)
    at.selectbox(key="k_gr_row2").set_value("(none)")
    rerun(at)
    titles = [a["text"] for a in _rows_figure(at)["layout"]["annotations"]]
    assert titles[1:] == ["ENS_U · M1", "ENS_U · M2", "ENS_U · M3"]


def test_example_index_changes_the_view_and_the_url(app_env):
    at = open_page(PAGE)
    before = _example_line(at)
    at.number_input(key="gr_index").set_value(7)
    rerun(at)
    assert _example_line(at).startswith("**Test example #7**") and _example_line(at) != before
    assert at.query_params["example"] in ("7", ["7"])


def test_settings_from_the_link_and_back(app_env):
    at = open_page(PAGE, query={"example": "12", "grad": "layer", "layer": "2", "bottom": "digits_adp"})
    assert _example_line(at).startswith("**Test example #12**")
    assert at.radio(key="k_gr_kind").value == "PARL layer-k" and at.slider(key="k_gr_layer").value == 2
    assert at.selectbox(key="k_gr_row2").value == "digits_adp"
    at.slider(key="k_gr_layer").set_value(3)
    rerun(at)
    assert at.query_params["layer"] in ("3", ["3"]) and at.query_params["grad"] in ("layer", ["layer"])


def test_class_and_misclassified_pickers(app_env):
    at = open_page(PAGE)
    at.radio(key="k_gr_mode").set_value("by class")
    rerun(at)
    at.selectbox(key="k_gr_class").set_value(3)
    rerun(at)
    assert "true class **3**" in _example_line(at)
    at.radio(key="k_gr_mode").set_value("misclassified")
    rerun(at)
    line = _example_line(at)
    true = line.split("true class **")[1].split("**")[0]
    preds = [p.split(": ")[1].rstrip(".") for p in line.split("predictions ")[1].split(", ")]
    assert any(p != true for p in preds)


def test_layer_k_view_is_labelled_for_what_it_shows(app_env):
    at = open_page(PAGE)
    at.radio(key="k_gr_kind").set_value("PARL layer-k")
    rerun(at)
    at.slider(key="k_gr_layer").set_value(2)
    rerun(at)
    fig = _rows_figure(at)
    bar = next(t for t in fig["data"] if t.get("showscale"))["colorbar"]["title"]["text"]
    assert "loss" not in bar and "layer 2" in bar
    assert fig["layout"]["title"]["text"].startswith("Input gradients (layer-2 gradients), one row")
    text = _text(at)
    assert "gradient of layer 2's summed pre-BN output w.r.t. the pixels" in text
    assert "raises the loss" not in text and "∂loss" not in json.dumps(fig)
    assert "Angles between layer-2 gradients" in json.dumps(_spec(at, "Angles between"))


def test_layer_one_is_the_same_for_every_input_and_its_spike_is_said(app_env):
    at = open_page(PAGE, query={"grad": "layer", "layer": "1"})
    assert any("the same for every" in i.value for i in at.info)
    at.slider(key="k_gr_dist_n").set_value(50)
    rerun(at)
    at.button(key="gr_dist_go").click()
    rerun(at)
    ds = pc.evaluation_subset(pc.load_dataset("digits", "test"), 50)
    ens, _ = pc.load_checkpoint(app_env / "digits_parl.safetensors")
    d = pc.cosine_distribution(ens, ds.images, ds.labels, layer=1)
    assert np.ptp(d["all"].reshape(3, -1), axis=1).max() < 1e-4  # truly one value per pair
    line = next(m.value for m in at.markdown if m.value.startswith("PARL (digits_parl): all 50 examples"))
    assert f"{d['cosines'][(0, 1)][0]:+.2f} for M1–M2" in line and "not a distribution" in line
    assert not any("cosine between members" in c.proto.spec for c in at.get("plotly_chart"))  # no histogram
    finding = next(m.value for m in at.markdown if m.value.startswith("Median cosine"))
    assert "layer-1 gradients" in finding


def test_loss_distribution_on_request_then_kept(app_env):
    at = open_page(PAGE)
    assert at.selectbox(key="k_gr_dist_a").value == "digits_ens_u"
    assert at.selectbox(key="k_gr_dist_b").value == "digits_parl"
    at.slider(key="k_gr_dist_n").set_value(100)
    rerun(at)
    assert len(at.get("plotly_chart")) == 3
    at.button(key="gr_dist_go").click()
    rerun(at)
    hist = _spec(at, "Loss-gradient cosine between members")
    assert len(hist["data"]) == 2
    rerun(at)  # kept: shown at once, no button
    assert len(at.get("plotly_chart")) == 4 and not any(b.key == "gr_dist_go" for b in at.button)


def _dist(values):
    v = np.asarray(values, dtype=float)
    return {"all": v, "n": len(v) // 3, "cosines": {(0, 1): v[0::3], (0, 2): v[1::3], (1, 2): v[2::3]},
            "labels": ["M1–M2", "M1–M3", "M2–M3"], "summary": {"all": {"mean": float(v.mean()),
                                                                        "q50": float(np.median(v))}},
            "gradient": "loss (cross-entropy)", "layer": None}


def test_reversed_effect_is_said_plainly(app_env, monkeypatch):
    """PARL's gradients made MORE aligned than ENS_U's: the caption must not claim the effect."""
    from dashboard import compute
    rng = np.random.default_rng(0)
    fake = {"digits_parl": _dist(0.5 + 0.05 * rng.standard_normal(150)),
            "digits_ens_u": _dist(0.1 + 0.05 * rng.standard_normal(150))}
    real = compute.stored
    monkeypatch.setattr(compute, "stored", lambda key: fake[key[1][0].rsplit("/", 1)[-1][:-12]]
                        if key[0] == "cosdist" else real(key))
    at = open_page(PAGE)
    text = next(m.value for m in at.markdown if m.value.startswith("Median cosine"))
    med = {n: np.median(d["all"]) for n, d in fake.items()}
    assert f"ENS_U (digits_ens_u): {med['digits_ens_u']:+.2f}" in text
    assert f"PARL (digits_parl): {med['digits_parl']:+.2f}" in text
    assert "are not less aligned than ENS_U's here" in text and "are less aligned" not in text


def test_provenance_is_built_only_when_opened(app_env):
    at = open_page(PAGE)
    assert len(at.code) == 0 and len(at.json) == 0  # closed: nothing for the browser to load
    at.session_state["prov_gr_maps"] = True  # what a click on the expander sends
    rerun(at)
    assert any(c.value.startswith("python -c") and "input_gradients" in c.value for c in at.code)
    assert any("sha256" in j.value for j in at.json)


def test_direction_diagram_svg_by_default_webgl_on_request(app_env):
    at = open_page(PAGE)

    def diagram():
        return next(c.proto.spec for c in at.get("plotly_chart") if "true angles" in c.proto.spec)
    assert '"scatter3d"' not in diagram() and '"frames"' in diagram()
    at.toggle(key="k_gr_webgl").set_value(True)
    rerun(at)
    assert '"scatter3d"' in diagram()


# --------------------------------------------------------------------------- pure parts
def test_rows_figure_shares_one_range_over_every_map():
    rng = np.random.default_rng(1)
    weak, strong = 0.01 * rng.standard_normal((3, 1, 8, 8)), rng.standard_normal((2, 1, 8, 8))
    fig = gradient_rows_figure(rng.random((1, 8, 8)), {"A": (weak, ["m1", "m2", "m3"]), "B": (strong, ["m1", "m2"])},
                               clip_percentile=100, value_label="v")
    maps = [t for t in fig.data if t.type == "heatmap" and t.name != "input"]
    r = float(np.abs(np.concatenate([weak.sum(1).ravel(), strong.sum(1).ravel()])).max())
    assert all(np.isclose(t.zmax, r) and np.isclose(t.zmin, -r) for t in maps)  # A is not rescaled alone
    assert [t.showscale for t in maps] == [False] * 4 + [True]
    assert [a.text for a in fig.layout.annotations] == ["input", "A · m1", "A · m2", "A · m3", "B · m1", "B · m2"]


@pytest.mark.parametrize("rows,message", [
    ({}, "rows must map"),
    ({"A": (np.zeros((2, 1, 4, 4)), ["only one"])}, "must name each of its 2 members"),
    ({"A": (np.zeros((2, 4, 4)), ["a", "b"])}, "must be (M, C, H, W)"),
    ({"A": (np.zeros((1, 1, 4, 4)), ["a"]), "B": (np.zeros((1, 1, 5, 5)), ["b"])}, "same image size"),
])
def test_rows_figure_names_what_is_wrong(rows, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gradient_rows_figure(np.zeros((1, 4, 4)), rows)


def test_gradient_words_and_spikes():
    assert findings.gradient_words(None)["bar"] == "∂loss/∂pixel"
    w = findings.gradient_words(3)
    assert "loss" not in w["bar"] + w["title"] + w["sign"] and "summed pre-BN output" in w["what"]
    with pytest.raises(ValueError, match="layer must be None"):
        findings.gradient_words(0)
    spike = _dist(np.tile([0.25, -0.1, 0.4], 20))
    assert findings.constant_pairs(spike) == pytest.approx({"M1–M2": 0.25, "M1–M3": -0.1, "M2–M3": 0.4})
    assert findings.constant_pairs(_dist(np.linspace(0, 1, 60))) is None
    text = findings.constant_text("PARL", spike, findings.constant_pairs(spike))
    assert text.startswith("PARL: all 20 examples have the same cosine") and "-0.10 for M1–M3" in text


def test_layer_finding_words_and_beyond_k():
    methods = {"PARL": "parl", "ENS_U": "ce_only"}
    less = findings.cosine_finding({"PARL": _dist([-0.3] * 9), "ENS_U": _dist([0.2] * 9)}, methods, layer=2,
                                   parl_layers=7)
    assert "layer-2 gradients are less aligned than ENS_U's (-0.50), as its regulariser asks" in less
    beyond = findings.cosine_finding({"PARL": _dist([0.3] * 9), "ENS_U": _dist([0.2] * 9)}, methods, layer=9,
                                     parl_layers=7)
    assert "beyond the first 7 layers" in beyond and "layer-9 gradients are not less aligned" in beyond


def test_shipped_cifar_layer_one_is_input_independent():
    """The note's claim on a real ResNet20: layer 1's gradient is the same at two inputs."""
    path = REPO / "checkpoints" / "cifar10_parl.safetensors"
    if not path.is_file():
        pytest.skip("the shipped CIFAR-10 PARL checkpoint is absent")
    ens, _ = pc.load_checkpoint(path, device="cpu")
    x = pc.load_dataset("cifar10", "test").images[:2]
    g = pc.input_gradients(ens, x, layer=1)
    assert np.allclose(g[:, 0], g[:, 1], atol=1e-5)


# --------------------------------------------------------------------------- what R measures
def _r_expected(app_env, n, feature):
    """R/K at the PARL checkpoint's K and the mean pairwise loss-gradient cosine, computed
    here through other code paths (mean_pairwise_r, cosine_distribution)."""
    from parl_core.train import mean_pairwise_r
    ds = pc.evaluation_subset(pc.load_dataset("digits", "test"), n)
    k = pc.read_metadata(app_env / "digits_parl.safetensors")["params"]["layers"]
    out = {}
    for name in ("digits_ens_u", "digits_parl"):
        ens, _ = pc.load_checkpoint(app_env / f"{name}.safetensors", device="cpu")
        out[name] = (mean_pairwise_r(ens, ds.images, k, feature=feature)[0],
                     pc.cosine_distribution(ens, ds.images, ds.labels)["mean"])
    return k, out


def _r_panel(at):
    fig = _spec(at, "Layer-gradient cosine per layer")
    lines = {t["name"]: t["y"] for t in fig["data"] if t["type"] == "scatter"}
    finding = next(m.value for m in at.markdown if m.value.startswith("With F^k"))
    table = next(m.value for m in at.markdown if m.value.startswith("| ensemble | R/K"))
    return lines, finding, table


def test_what_r_measures_per_definition_on_request_and_in_the_link(app_env):
    at = open_page(PAGE)
    assert at.radio(key="k_gr_feature").value == "pre_bn"
    assert at.radio(key="k_gr_feature").options[0] == "before batch norm (PARL's default)"
    at.slider(key="k_gr_dist_n").set_value(150)
    rerun(at)
    assert not any("Layer-gradient cosine per layer" in c.proto.spec for c in at.get("plotly_chart"))
    at.button(key="gr_rk_go").click()
    rerun(at)
    assert not any(b.key == "gr_rk_go" for b in at.button)  # kept: drawn from the store
    k, want = _r_expected(app_env, 150, "pre_bn")
    lines, finding, table = _r_panel(at)
    seen = {}
    for name, (r, loss) in want.items():
        label = f"{pc.method_label(pc.read_metadata(app_env / f'{name}.safetensors')['method'])} ({name})"
        assert np.mean(lines[label][:k]) == pytest.approx(r, abs=1e-4)
        assert f"| {label} | {r:+.2f} (layers 1–{k}) | -0.50 | {loss:+.2f} |" in table
        assert f"{label}: {loss:+.2f}" in finding
        seen[name] = r
    assert "before batch norm" in finding and "constant of the weights: the same at all 150 examples" in finding
    assert "lower than" in finding and "loss-gradient cosine" in finding
    assert "feature" not in at.query_params  # the default stays out of the link
    # another definition: computed on request again, other numbers, other words, in the URL
    at.radio(key="k_gr_feature").set_value("post_relu")
    rerun(at)
    assert at.query_params["feature"] in ("post_relu", ["post_relu"])
    at.button(key="gr_rk_go").click()
    rerun(at)
    _, want_relu = _r_expected(app_env, 150, "post_relu")
    lines, finding2, table2 = _r_panel(at)
    assert finding2 != finding and "after ReLU" in finding2
    assert "before batch norm (PARL's default), the" not in finding2
    assert "this view reads R another way" in finding2 and "constant of the weights" not in finding2
    for name, (r, loss) in want_relu.items():
        assert abs(r - seen[name]) > 0.05  # the definition changes R
        assert f"{r:+.2f} (layers 1–{k})" in table2 and f"{loss:+.2f} |" in table2
    at.session_state["prov_gr_rk"] = True  # the provenance names the definition
    rerun(at)
    assert any("layer_cosines" in c.value and "feature='post_relu'" in c.value for c in at.code)
    assert any('"feature": "post_relu"' in j.value and "after ReLU" in j.value for j in at.json)
    # a link carries the definition
    at2 = open_page(PAGE, query={"feature": "post_bn"})
    assert at2.radio(key="k_gr_feature").value == "post_bn"


def test_what_r_measures_says_when_a_definition_is_not_offered(private_checkpoints, monkeypatch):
    """A user-defined model (parl_core.hooked) exposes its layers before batch norm only: the
    panel says so instead of failing, and computes under "pre_bn"."""
    from import_helpers import save_user_net_ensemble
    save_user_net_ensemble(private_checkpoints)
    monkeypatch.setenv("PARL_MODEL_FACTORIES", "import_helpers:make_user_net")
    at = open_page(PAGE, query={"feature": "post_relu"})
    at.selectbox(key="k_gr_dist_a").set_value("user_net")
    at.slider(key="k_gr_dist_n").set_value(50)
    rerun(at)
    assert any("ENS_U (user_net): its models expose their layer outputs before batch norm only" in i.value
               for i in at.info)
    assert not any(b.key == "gr_rk_go" for b in at.button)
    at.radio(key="k_gr_feature").set_value("pre_bn")
    rerun(at)
    at.button(key="gr_rk_go").click()
    rerun(at)
    finding = next(m.value for m in at.markdown if m.value.startswith("With F^k"))
    assert "ENS_U (user_net): " in finding and "PARL (digits_parl): " in finding
