"""The Reproduction page through AppTest: it lists the reports found, shows verdicts, both
tables, the figures with captions computed from them (saying so when PARL is not ahead),
the sanity checks, and opens a report's ensemble in another page. Hand-made report folders
test what a real run cannot be made to produce (a reversed effect, a broken table, a run
in progress); one real smoke reproduction tests the whole path."""
import shutil

import pandas as pd
import pytest

from conftest import open_page, rerun
from dashboard import reports

PAGE = "pages/reproduction.py"


@pytest.fixture
def roots(monkeypatch, tmp_path):
    """Reports looked for only in tmp_path/reports (not this machine's reports/ or docs/)."""
    d = tmp_path / "reports"
    d.mkdir()
    monkeypatch.setattr(reports, "_roots", lambda: [(d, "this machine")])
    return d


def _real(smoke_reproduction, roots, name="smoke"):
    dest = roots / name
    shutil.copytree(smoke_reproduction[0], dest)
    return dest


def _texts(at) -> str:
    return " ".join(m.value for m in at.markdown) + " " + " ".join(c.value for c in at.caption)


def test_no_report_says_how_to_make_one(app_env, roots):
    at = open_page(PAGE)
    assert "No reproduction report here yet" in at.info[0].value
    assert "reproduce --scale smoke" in at.code[0].value


def test_a_real_smoke_report_is_shown_whole(app_env, roots, smoke_reproduction):
    _real(smoke_reproduction, roots)
    at = open_page(PAGE)
    assert at.selectbox(key="k_rp_report").value == "smoke"
    assert not at.code  # made through the API: report.md names no command, none is shown
    labels = [e.label for e in at.expander]
    assert sum(lab.startswith("(") for lab in labels) == 5  # one per claim, with its verdict
    verdicts = pd.read_csv(roots / "smoke" / "verdicts.csv")
    assert all(f"**{v}**" in lab for v, lab in zip(verdicts.verdict, labels))
    text = _texts(at)
    holds = (verdicts.verdict == "holds").sum()
    assert f"**{holds}** of {len(verdicts)} claims hold" in text
    t1 = at.dataframe[0].value
    assert set(t1.label) == {"ENS_U", "PARL"} and "PGD (paper)" in t1.columns
    assert len(at.get("plotly_chart")) == 4  # CKA, black-box, K ablation, white-box
    assert "Mean same-layer CKA" in text and "at ε = 0.3" in text
    assert any("evaluations pass every check" in m.value for m in at.markdown)


def test_opening_an_ensemble_copies_it_once_and_switches_page(private_checkpoints, roots, smoke_reproduction):
    rep = _real(smoke_reproduction, roots)
    at = open_page(PAGE)
    units = pd.read_csv(rep / "units.csv")
    want = units[units.roles == "ce_only"].unit.iloc[0]
    opts = at.selectbox(key="rp_ens").options
    at.selectbox(key="rp_ens").set_value(next(i for i, o in enumerate(opts) if want in o))
    at.selectbox(key="rp_where").set_value("Diversity")
    at.button(key="rp_open").click()
    rerun(at)
    name = reports.lab_name("smoke", want)
    copied = private_checkpoints / f"{name}.safetensors"
    assert copied.read_bytes() == (rep / "checkpoints" / f"{want}.safetensors").read_bytes()
    assert at.session_state["checkpoint"] == name
    assert at.title[0].value.startswith("Diversity")
    # the same ensemble again: reused, not duplicated; other weights under its name: refused
    ens = [e for e in reports.ensembles(rep, units) if e.unit == want][0]
    assert reports.open_in_lab("smoke", ens) == name
    other = [e for e in reports.ensembles(rep, units) if e.unit != want][0]
    shutil.copyfile(other.path, copied)
    with pytest.raises(FileExistsError, match="other weights"):
        reports.open_in_lab("smoke", ens)


def test_a_checkpoint_that_is_not_the_reports_is_refused(private_checkpoints, roots, smoke_reproduction):
    rep = _real(smoke_reproduction, roots)
    units = pd.read_csv(rep / "units.csv")
    a, b = reports.ensembles(rep, units)[:2]
    shutil.copyfile(b.path, a.path)  # swapped weights: the hash no longer matches units.csv
    with pytest.raises(ValueError, match="not the checkpoint the report made"):
        reports.open_in_lab("smoke", a)
    assert not list(private_checkpoints.glob("smoke-*"))


def test_read_only_server_cannot_open(app_env, roots, smoke_reproduction, monkeypatch):
    rep = _real(smoke_reproduction, roots)
    monkeypatch.setenv("PARL_READONLY", "1")
    at = open_page(PAGE)
    assert at.button(key="rp_open").disabled
    with pytest.raises(PermissionError, match="read-only"):
        reports.open_in_lab("smoke", reports.ensembles(rep, pd.read_csv(rep / "units.csv"))[0])


# --------------------------------------------------------------------------- hand-made reports
def _table(role, label, column, mean, eps=0.07, paper=None):
    return {"dataset": "cifar10", "role": role, "label": label, "column": column, "eps": eps, "seeds": 1,
            "n": 100, "mean": mean, "std": 0.0, "ci_low": mean - 5, "ci_high": mean + 5, "per_seed": "",
            "paper": paper}


def _write_report(d, *, parl_better: bool):
    """A minimal finished report where PARL is (or is not) more robust and less similar."""
    d.mkdir(parents=True)
    (d / "report.md").write_text("# PARL reproduction\n\nWritten now. Command: python -m parl_core "
                                 "reproduce --scale cpu-small --out x\n")
    p, u = (0.40, 0.20) if parl_better else (0.20, 0.40)
    rows = []
    for role, acc in (("ce_only", u), ("parl", p)):
        for seed in (0, 1):
            rows += [{"attack": "clean", "eps": 0.0, "n": 100, "correct": 80, "acc": 0.8, "ci_low": 0.7,
                      "ci_high": 0.9, "dataset": "cifar10", "seed": seed, "mode": "black-box", "role": role}]
            rows += [{"attack": a, "eps": e, "n": 100, "correct": int(100 * acc), "acc": acc,
                      "ci_low": acc - 0.05, "ci_high": acc + 0.05, "dataset": "cifar10", "seed": seed,
                      "mode": "black-box", "role": role} for a in ("fgsm", "pgd") for e in (0.03, 0.07)]
    pd.DataFrame(rows).to_csv(d / "accuracy_vs_eps.csv", index=False)
    cu, cp = (0.8, 0.5) if parl_better else (0.5, 0.8)
    pd.DataFrame([{"dataset": "cifar10", "seed": 0, "role": r, "pair": "M1–M2", "layer": k, "cka": c}
                  for r, c in (("ce_only", cu), ("parl", cp)) for k in (1, 2, 3)]
                 ).to_csv(d / "cka_layers.csv", index=False)
    pd.DataFrame([_table("ce_only", "ENS_U", "clean", 80.0, 0.0, 84.2), _table("ce_only", "ENS_U", "pgd", 100 * u),
                  _table("parl", "PARL", "clean", 80.0, 0.0), _table("parl", "PARL", "pgd", 100 * p, paper=15.65)]
                 ).to_csv(d / "table1.csv", index=False)
    pd.DataFrame(columns=list(_table("x", "x", "clean", 0))).to_csv(d / "table2.csv", index=False)
    pd.DataFrame([{"claim": "(1) PARL's black-box accuracy is above every baseline's at large ε",
                   "verdict": "holds" if parl_better else "does not hold", "rule": "r",
                   "numbers": "a | b"}]).to_csv(d / "verdicts.csv", index=False)
    pd.DataFrame([{"unit": "u", "target": "parl", "seed": 0, "checks passed": "3/4",
                   "failed checks and notes": "white-box above black-box"}]).to_csv(d / "sanity_checks.csv",
                                                                                     index=False)
    pd.DataFrame([{"unit": "train-cifar10-parl-s0-abc", "kind": "train", "roles": "parl", "seed": 0,
                   "checkpoint sha256": "0" * 64}]).to_csv(d / "units.csv", index=False)


@pytest.mark.parametrize("parl_better", [True, False])
def test_captions_follow_the_numbers(app_env, roots, parl_better):
    _write_report(roots / "made", parl_better=parl_better)
    at = open_page(PAGE)
    text = _texts(at)
    assert "PGD at ε = 0.07" in text
    if parl_better:
        assert "PARL is highest" in text and "PARL's is lower than ENS_U's (-0.300)" in text
        assert "not the most robust" not in text and "absent here" not in text
    else:  # the effect reversed: the captions say so
        assert "ENS_U is highest" in text and "PARL is not the most robust here" in text
        assert "PARL's is higher than ENS_U's (+0.300)" in text and "absent here" in text
    assert f"**{int(parl_better)}** of 1 claims hold" in text
    assert "1 have failed checks or notes" in text
    assert "not in its folder" in " ".join(i.value for i in at.info)  # committed-style: no checkpoints
    assert "python -m parl_core reproduce --scale cpu-small" in at.code[0].value


def test_broken_tables_and_runs_in_progress_do_not_break_the_page(app_env, roots):
    _write_report(roots / "made", parl_better=True)
    (roots / "made" / "cka_layers.csv").write_bytes(b"\xff\xfe\x00garbage,,,\n\x00")
    (roots / "made" / "table1.csv").write_text("a,b\n1,2\n")
    running = roots / "running" / "units"
    running.mkdir(parents=True)
    (running / "train-x.json").write_text("{}")
    at = open_page(PAGE)
    warned = " ".join(w.value for w in at.warning)
    assert "table1.csv" in warned and "lacks the columns" in warned and "cka_layers.csv" in warned
    box = at.selectbox(key="k_rp_report")
    assert box.options[1] == "running (this machine: in progress, 1 units finished)"
    box.set_value("running")
    rerun(at)
    assert "not finished: 1 units are done" in at.warning[0].value
    assert at.query_params["report"] in ("running", ["running"])


def test_the_committed_cpu_small_report_is_whole_and_shown(app_env, monkeypatch):
    """docs/reproduction/cpu-small: made by the project's own command on this machine; every
    table reads, five verdicts, and the page draws it (without its checkpoints)."""
    from conftest import REPO
    d = REPO / "docs" / "reproduction" / "cpu-small"
    tables, problems = reports.load_tables(d)
    assert problems == {} and len(tables["verdicts"]) == 5
    assert (reports.command(d) or "").startswith("python -m parl_core reproduce --scale cpu-small")
    assert set(tables["table1"].label) >= {"ENS_U", "PARL", "ADP", "GAL", "DVERGE"}
    monkeypatch.setattr(reports, "_roots", lambda: [(d.parent, "committed")])
    at = open_page(PAGE)
    assert at.selectbox(key="k_rp_report").value == "cpu-small"
    assert len(at.get("plotly_chart")) >= 3 and not at.warning
    assert "not in its folder" in " ".join(i.value for i in at.info)
