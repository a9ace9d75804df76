"""Robustness page through AppTest: nothing heavy runs on first render; a tiny evaluation
draws the curve, the Table-1 row, the checks, and is cached for the next visit; several
surrogates, the convergence opt-in and white-box <= black-box from cached results."""
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
    assert any(e.label.startswith("Sanity checks") for e in at.expander)
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


def _md(at) -> list:
    return [m.value for m in at.markdown]


def test_attack_chips_offer_every_attack_with_help(app_env):
    import parl_core as pc
    at = open_page(PAGE)
    chips = at.multiselect(key="k_rb_attacks_digits")
    assert list(chips.options) == [a.upper() for a in pc.ALL_ATTACKS] and "MI-DI" in chips.options
    assert "MI-DI" in chips.help and "Square" in chips.help


def test_two_surrogates_table_worst_and_weakest(app_env):
    import numpy as np
    at = _small(open_page(PAGE), eps="0.05, 0.25")
    at.button(key="rb_go").click()
    rerun(at)
    assert not any("Several surrogates" in h.value for h in at.subheader)  # default: none added
    at.multiselect(key="k_rb_more_digits_parl").set_value(["digits_ens_u"])
    rerun(at)
    assert any(b.key == "rb_suite_go" for b in at.button)  # nothing computed implicitly
    assert any("Not computed yet from digits_ens_u" in m for m in _md(at))
    at.button(key="rb_suite_go").click()
    rerun(at)
    table = next(d.value for d in at.dataframe if "worst over surrogates" in d.value.columns)
    assert {"digits_surrogate", "digits_ens_u", "weakest"} <= set(table.columns)
    for s in ("digits_surrogate", "digits_ens_u"):
        assert (table["worst over surrogates"] <= table[s] + 1e-12).all()
    pgd = table[(table.attack == "pgd") & (table.eps > 0)]
    weakest = min(("digits_surrogate", "digits_ens_u"), key=lambda s: float(pgd[s].mean()))
    finding = next(m for m in _md(at) if m.startswith("PGD from 2 surrogates"))
    assert f"The weakest surrogate for this target is **{weakest}**" in finding
    assert "No surrogate of kind:" in finding and "other architecture" in finding
    top = pgd.iloc[-1]
    gap = float(top["digits_surrogate"] - top["worst over surrogates"])
    assert ("overstates robustness here by" in finding) == (gap > 1e-9)
    assert np.isclose(float(table[table.attack == "clean"]["worst over surrogates"].iloc[0]),
                      float(table[table.attack == "clean"]["digits_surrogate"].iloc[0]))
    fresh = _small(open_page(PAGE), eps="0.05, 0.25")  # another visit: both from the cache
    fresh.multiselect(key="k_rb_more_digits_parl").set_value(["digits_ens_u"])
    rerun(fresh)
    assert not any(b.key in ("rb_go", "rb_suite_go") for b in fresh.button)
    assert any(m.startswith("PGD from 2 surrogates") for m in _md(fresh))


def test_convergence_opt_in_is_cached_separately(app_env):
    at = _small(open_page(PAGE), eps="0.12")
    at.button(key="rb_go").click()
    rerun(at)
    assert not any("more steps" in m for m in _md(at))
    assert any("More steps (convergence): not run" in c.value for c in at.caption)
    at.checkbox(key="k_rb_convergence_digits").check()
    rerun(at)
    assert any(b.key == "rb_go" for b in at.button)  # another evaluation: not the cached one
    assert any("PGD at the largest ε with 4× the steps" in m for m in _md(at))
    at.button(key="rb_go").click()
    rerun(at)
    line = next(m for m in _md(at) if "**more steps" in m)
    assert "after 2 steps" in line and "after 8" in line and "McNemar p" in line
    assert ("passes" in line) != (": fails**" in line)
    files = sorted((app_env / ".cache").glob("eval_digits_parl_*.json"))
    at.checkbox(key="k_rb_convergence_digits").uncheck()  # back: the first result, cached
    rerun(at)
    assert not any(b.key == "rb_go" for b in at.button)
    assert not any("**more steps" in m for m in _md(at))
    assert sorted((app_env / ".cache").glob("eval_digits_parl_*.json")) == files


def test_white_below_black_from_cached_results_only(app_env):
    at = _small(open_page(PAGE), eps="0.07, 0.21")
    at.button(key="rb_go").click()
    rerun(at)
    msg = next(m for m in _md(at) if "white-box ≤ black-box" in m)
    assert "not checked yet: no white-box result of digits_parl" in msg and "computes nothing" in msg
    at.radio(key="k_rb_mode").set_value("white-box")
    rerun(at)
    at.button(key="rb_go").click()
    rerun(at)
    line = next(m for m in _md(at) if "white-box ≤ black-box" in m)
    assert "(black-box from digits_surrogate)" in line and ("shared rows" in line or "beyond noise" in line)
    assert ("passes" in line) != (": fails**" in line)
    other = _small(open_page(PAGE), eps="0.09")  # white-box only for these settings
    other.radio(key="k_rb_mode").set_value("white-box")
    rerun(other)
    other.button(key="rb_go").click()
    rerun(other)
    msg = next(m for m in _md(other) if "white-box ≤ black-box" in m)
    assert "no black-box result" in msg and "digits_surrogate" in msg


def test_read_only_server_suite_and_convergence_write_nothing(private_checkpoints, monkeypatch):
    from dashboard import robust
    monkeypatch.setenv("PARL_READONLY", "1")
    monkeypatch.setattr(robust, "_memory", type(robust._memory)())
    cache_dir = private_checkpoints / ".cache"
    before = set(cache_dir.glob("*")) if cache_dir.exists() else set()
    at = _small(open_page(PAGE), eps="0.2")
    at.checkbox(key="k_rb_convergence_digits").check()
    at.multiselect(key="k_rb_more_digits_parl").set_value(["digits_gal"])
    rerun(at)
    at.button(key="rb_go").click()
    rerun(at)
    at.button(key="rb_suite_go").click()
    rerun(at)
    assert any("worst over surrogates" in d.value.columns for d in at.dataframe)
    assert any("**more steps" in m for m in _md(at))
    after = set(cache_dir.glob("*")) if cache_dir.exists() else set()
    assert after == before  # kept in this server's memory only
    fresh = _small(open_page(PAGE), eps="0.2")
    fresh.checkbox(key="k_rb_convergence_digits").check()
    fresh.multiselect(key="k_rb_more_digits_parl").set_value(["digits_gal"])
    rerun(fresh)
    assert not any(b.key in ("rb_go", "rb_suite_go") for b in fresh.button)


def test_work_counts_random_attacks_restarts_and_the_convergence_run():
    from dashboard import robust
    assert robust.attack_work(["mi-di", "square"], [0.1], 10, 3, 5) == 2 * 10 * 3 * 5
    assert robust.attack_work(["mim"], [0.1], 10, 3, 5) == 10 * 5  # deterministic: one restart
    # with the check: PGD at the largest ε, 4 × 10 steps, and the 10-step run when PGD is not evaluated
    assert robust.attack_work(["fgsm"], [0.1, 0.2], 10, 2, 5, convergence=True) == 2 * 5 + (40 + 10) * 2 * 5
    assert robust.attack_work(["pgd"], [0.1], 10, 1, 5, convergence=True) == 10 * 5 + 40 * 5
    assert robust.adversarial_rows(["pgd"], [0.1], 2, 5, convergence=True) == 2 * 5 + 2 * 5
