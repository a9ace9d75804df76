"""Diversity page (Figure 2) through AppTest."""
from conftest import open_page, rerun
from test_app_cifar_folders import shared_checkpoints  # noqa: F401  digits-only folder

PAGE = "pages/diversity.py"


def test_cka_on_request_then_curves_and_heatmaps(app_env):
    at = open_page(PAGE)
    assert len(at.get("plotly_chart")) == 0 and any(b.key == "dv_go" for b in at.button)
    assert at.selectbox(key="k_dv_cmp").value == "digits_ens_u"  # PARL vs ENS_U by default
    at.slider(key="k_dv_n").set_value(100)
    rerun(at)
    at.button(key="dv_go").click()
    rerun(at)
    # the curves + one heatmap per member pair (3) for each of the two checkpoints
    assert len(at.get("plotly_chart")) == 1 + 3 + 3
    assert sum("overall average CKA" in m.value for m in at.markdown) == 2


def test_settings_change_what_is_shown(app_env):
    at = open_page(PAGE)
    at.slider(key="k_dv_n").set_value(150)  # not computed by the test above
    at.selectbox(key="k_dv_cmp").set_value("(none)")
    rerun(at)
    at.button(key="dv_go").click()
    rerun(at)
    assert len(at.get("plotly_chart")) == 1 + 3
    at.radio(key="k_dv_est").set_value("full")
    rerun(at)  # another estimator: not computed yet
    assert len(at.get("plotly_chart")) == 0 and any(b.key == "dv_go" for b in at.button)
