"""Robustness page through AppTest: nothing heavy runs on first render; a tiny evaluation
draws the curve, the Table-1 row, the checks, and is cached for the next visit."""
from conftest import open_page, rerun
from test_app_cifar_folders import private_checkpoints, shared_checkpoints  # noqa: F401  digits-only folders

PAGE = "pages/robustness.py"


def _small(at, eps="0.1, 0.3"):
    at.multiselect(key="k_rb_attacks_digits").set_value(["fgsm", "pgd"])
    at.text_input(key="k_rb_eps_digits").input(eps)
    at.number_input(key="k_rb_n_digits").set_value(20)
    at.number_input(key="k_rb_steps_digits").set_value(2)
    return rerun(at)


def test_first_render_computes_nothing(app_env):
    at = open_page(PAGE)
    assert at.text_input(key="k_rb_eps_digits").value == "0.05, 0.1, 0.15, 0.2, 0.25, 0.3"
    assert at.selectbox(key="k_rb_sur").value == "digits_surrogate"
    assert len(at.get("plotly_chart")) == 0 and any(b.key == "rb_go" for b in at.button)


def test_tiny_black_box_evaluation_then_cached(app_env):
    at = _small(open_page(PAGE))
    at.button(key="rb_go").click()
    rerun(at)
    assert len(at.get("plotly_chart")) >= 2  # the curve and the adversarial example
    table = at.dataframe[0].value
    assert list(table.columns) == ["ensemble", "clean", "FGSM", "PGD"]
    assert 0 <= table.PGD[0] <= 1 and table.clean[0] > 0.5
    assert any(e.label == "Sanity checks" for e in at.expander)
    fresh = _small(open_page(PAGE))  # another session: the cached result shows at once
    assert not any(b.key == "rb_go" for b in fresh.button)
    assert len(fresh.get("plotly_chart")) >= 2


def test_white_box_and_eps_choice(app_env):
    at = _small(open_page(PAGE))
    at.radio(key="k_rb_mode").set_value("white-box")
    rerun(at)
    assert not any(s.key == "k_rb_sur" for s in at.selectbox)
    at.button(key="rb_go").click()
    rerun(at)
    at.select_slider(key="rb_eps_row_digits").set_value(0.3)
    rerun(at)
    assert any("ε = 0.3" in c.value for c in at.caption)
    at.button(key="rb_t_go").click()
    rerun(at)
    mats = [c for c in at.get("plotly_chart") if "Transferability" in str(c.proto.spec)]
    assert len(mats) == 2  # the active PARL and the ENS_U compared, side by side
    finding = next(m.value for m in at.markdown if m.value.startswith("Mean accuracy of a member"))
    assert "PARL" in finding and "ENS_U" in finding and "On 20 test examples" in finding


def test_transfer_finding_says_when_the_effect_is_absent():
    from dashboard import findings
    import numpy as np
    low, high = np.array([[0.1, 0.2], [0.3, 0.1]]), np.array([[0.1, 0.6], [0.5, 0.1]])
    methods = {"PARL": "parl", "ENS_U": "ce_only"}
    good = findings.transfer_finding({"PARL": high, "ENS_U": low}, methods, 200)
    assert "PARL 55.0 %, ENS_U 25.0 %" in good and "less between PARL's members (30.0 points" in good
    assert "absent" not in good
    bad = findings.transfer_finding({"PARL": low, "ENS_U": high}, methods, 200)
    assert "less between ENS_U's members" in bad and "is absent here" in bad
    same = findings.transfer_finding({"PARL": low, "ENS_U": low + 0.001}, methods, 200)
    assert "about the same" in same and "is absent here" in same


def test_bad_eps_grid_is_an_error_with_advice(app_env):
    at = _small(open_page(PAGE), eps="0.1, lots")
    assert any("cannot be read" in e.value and "separated by commas" in e.value for e in at.error)


def test_read_only_server_shows_results_but_writes_no_cache(private_checkpoints, monkeypatch):
    from dashboard import robust
    monkeypatch.setenv("PARL_READONLY", "1")
    monkeypatch.setattr(robust, "_memory", type(robust._memory)())
    before = set((private_checkpoints / ".cache").glob("*")) if (private_checkpoints / ".cache").exists() else set()
    at = _small(open_page(PAGE), eps="0.15")
    at.button(key="rb_go").click()
    rerun(at)
    assert len(at.get("plotly_chart")) >= 2 and at.dataframe[0].value.shape[0] >= 1
    after = set((private_checkpoints / ".cache").glob("*")) if (private_checkpoints / ".cache").exists() else set()
    assert after == before  # shown from this server's memory, nothing written
    fresh = _small(open_page(PAGE), eps="0.15")  # another visit: from memory, no Run button
    assert not any(b.key == "rb_go" for b in fresh.button)
