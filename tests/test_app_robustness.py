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
    assert any("Transferability" in str(c.proto.spec) for c in at.get("plotly_chart"))


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
