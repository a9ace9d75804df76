"""Gradients page (Figure 1) through AppTest."""
from conftest import open_page, rerun
from test_app_cifar_folders import shared_checkpoints  # noqa: F401  digits-only folder

PAGE = "pages/gradients.py"


def _example_line(at):
    return next(m.value for m in at.markdown if m.value.startswith("**Test example #"))


def test_renders_figure_one_for_the_active_checkpoint(app_env):
    at = open_page(PAGE)
    assert _example_line(at).startswith("**Test example #0**")
    assert len(at.get("plotly_chart")) == 3  # maps, angle matrix, 3-D directions
    # the paper's Figure 1: a similar pair (two ENS_U members) and a diverse pair (two PARL members)
    assert at.multiselect(key="k_gr_models").value == ["digits_ens_u:0", "digits_ens_u:1",
                                                       "digits_parl:0", "digits_parl:1"]


def test_example_index_changes_the_view_and_the_url(app_env):
    at = open_page(PAGE)
    before = _example_line(at)
    at.number_input(key="gr_index").set_value(7)
    rerun(at)
    assert _example_line(at).startswith("**Test example #7**") and _example_line(at) != before
    assert at.query_params["example"] in ("7", ["7"])


def test_example_from_the_url(app_env):
    at = open_page(PAGE, query={"example": "12"})
    assert _example_line(at).startswith("**Test example #12**")


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
    # the ensemble's vote on this example is wrong, so some member disagrees with the truth
    true = line.split("true class **")[1].split("**")[0]
    preds = [p.split(": ")[1].rstrip(".") for p in line.split("predictions ")[1].split(", ")]
    assert any(p != true for p in preds)


def test_models_from_two_checkpoints_and_layer_gradient(app_env):
    at = open_page(PAGE)
    at.multiselect(key="k_gr_models").set_value(["digits_ens_u:0", "digits_ens_u:1", "digits_parl:0"])
    rerun(at)
    assert "ENS_U M1" in _example_line(at) and "PARL M1" in _example_line(at)
    at.radio(key="k_gr_kind").set_value("PARL layer-k")
    rerun(at)
    at.slider(key="k_gr_layer").set_value(2)
    rerun(at)
    assert any("layer-2 gradient" in c.value for c in at.caption)


def test_distribution_is_computed_on_request(app_env):
    at = open_page(PAGE)
    assert at.selectbox(key="k_gr_dist_a").value == "digits_ens_u"
    assert at.selectbox(key="k_gr_dist_b").value == "digits_parl"
    at.slider(key="k_gr_dist_n").set_value(100)
    rerun(at)
    assert len(at.get("plotly_chart")) == 3
    at.button(key="gr_dist_go").click()
    rerun(at)
    assert len(at.get("plotly_chart")) == 4
    rerun(at)  # kept: shown at once, no button
    assert len(at.get("plotly_chart")) == 4 and not any(b.key == "gr_dist_go" for b in at.button)


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
