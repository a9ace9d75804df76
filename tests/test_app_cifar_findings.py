"""The sentences that describe results (dashboard.findings) follow the numbers: the
verdict changes when the numbers do, and no effect is claimed that the numbers lack."""
import numpy as np
import pandas as pd
import pytest

from dashboard import findings, robust
from parl_core import wilson_interval

EPS = [0.01, 0.03, 0.05]
METHODS = {"PARL": "parl", "ENS_U": "ce_only"}


def _table(accs, n=500, attack="pgd"):
    rows = [{"attack": "clean", "eps": 0.0, "acc": 0.6}] + [
        {"attack": attack, "eps": e, "acc": a} for e, a in zip(EPS, accs)]
    for r in rows:
        r["ci_low"], r["ci_high"] = wilson_interval(round(r["acc"] * n), n)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("parl,ens_u,verdict,intervals", [
    ([0.30, 0.10, 0.02], [0.45, 0.20, 0.05], "PARL is not more robust than ENS_U here",
     "apart at ε = 0.01 and 0.03 (2 of 3)"),
    ([0.50, 0.25, 0.10], [0.40, 0.12, 0.03], "PARL is more robust than ENS_U here", "apart at every ε"),
    ([0.41, 0.13, 0.04], [0.40, 0.12, 0.03], "it is not shown to be more robust", "overlap at every ε"),
    ([0.30, 0.25, 0.12], [0.45, 0.10, 0.03], "mixed", "apart at every ε"),
])
def test_robustness_verdict_follows_differences_and_intervals(parl, ens_u, verdict, intervals):
    text = findings.robustness_finding({"PARL": _table(parl), "ENS_U": _table(ens_u)}, METHODS, ["pgd"],
                                       per255=True)
    assert verdict in text and intervals in text
    assert f"0.03 (≈ 7.6/255): {100 * (parl[1] - ens_u[1]):+.1f}" in text
    assert f"mean {100 * np.mean(np.subtract(parl, ens_u)):+.1f}" in text


def test_robustness_without_both_methods_claims_nothing():
    text = findings.robustness_finding({"ADP": _table([0.5, 0.2, 0.1])}, {"ADP": "adp"}, ["pgd"])
    assert "PARL and an ENS_U" in text and "robust than" not in text


def test_cka_compares_the_regularised_layers():
    def res(diag):
        return {"pairs": {(0, 1): {"diagonal": np.array(diag)}}, "overall": float(np.mean(diag))}
    low = findings.cka_finding({"PARL": res([0.4, 0.5, 0.9, 1.0]), "ENS_U": res([0.8, 0.8, 0.9, 0.9])},
                               METHODS, 2)
    assert "PARL: 0.45 over the first 2 layers, 0.70 over all" in low
    assert "are less similar than ENS_U's (-0.35)" in low
    same = findings.cka_finding({"PARL": res([0.8, 0.81, 0.5]), "ENS_U": res([0.8, 0.8, 0.9])}, METHODS, 2)
    assert "PARL's members are not less similar than ENS_U's in the first 2 layers here" in same


def test_cosine_and_angle_findings():
    dist = lambda v: {"all": np.array(v), "n": len(v)}  # noqa: E731
    less = findings.cosine_finding({"PARL": dist([-0.2, 0.0, 0.1]), "ENS_U": dist([0.3, 0.4, 0.5])}, METHODS)
    assert "PARL: +0.00, ENS_U: +0.40" in less and "are less aligned" in less
    more = findings.cosine_finding({"PARL": dist([0.5, 0.6]), "ENS_U": dist([0.3, 0.4])}, METHODS)
    assert "are not less aligned than ENS_U's here" in more
    cos = np.array([[1, 0.9, 0, 0], [0.9, 1, 0, 0], [0, 0, 1, -0.5], [0, 0, -0.5, 1]])
    text = findings.angle_finding(cos, {"ENS_U": [0, 1], "PARL": [2, 3]}, METHODS)
    assert "26° apart in ENS_U, 120° apart in PARL" in text and "PARL's point further apart" in text


def test_work_counts_each_attack_with_its_own_steps_and_restarts():
    # FGSM 1 step; BIM, MIM 10; PGD 10 × 3 restarts -> 51 steps per example and ε
    assert robust.attack_work(["fgsm", "bim", "mim", "pgd"], [0.1, 0.2], 10, 3, 100) == 51 * 2 * 100
    assert robust.attack_work(["fgsm"], [0.1], 50, 5, 7) == 7
    assert robust.adversarial_rows(["fgsm", "pgd"], [0.1, 0.2], 3, 10) == (1 + 3) * 2 * 10
    assert [robust.duration(s) for s in (0.2, 75, 600, 7260)] == ["1 s", "75 s", "10 min", "2 h 1 min"]


def test_paired_test_decides_when_the_results_kept_their_verdicts():
    import pandas as pd
    tables = {"PARL": pd.DataFrame({"attack": ["pgd"] * 2, "eps": [0.01, 0.03], "acc": [0.50, 0.30],
                                    "ci_low": [0.46, 0.27], "ci_high": [0.54, 0.33]}),
              "ENS_U": pd.DataFrame({"attack": ["pgd"] * 2, "eps": [0.01, 0.03], "acc": [0.47, 0.25],
                                     "ci_low": [0.43, 0.22], "ci_high": [0.51, 0.28]})}
    methods = {"PARL": "parl", "ENS_U": "ce_only"}
    overlap = findings.robustness_finding(tables, methods, ["pgd"])
    assert "intervals overlap at every" in overlap and "not shown" in overlap  # unpaired: noise
    paired = pd.DataFrame({"attack": ["pgd", "pgd"], "eps": [0.01, 0.03], "p_value": [0.2, 0.001]})
    text = findings.robustness_finding(tables, methods, ["pgd"], paired=paired)
    assert "exact McNemar test): p = 0.2, 0.001" in text and "significant at 5 % at ε = 0.03" in text
    assert "**PARL is more robust than ENS_U here.**" in text
    none = findings.robustness_finding(tables, methods, ["pgd"], paired=paired.assign(p_value=0.5))
    assert "no difference is significant" in none and "not shown to be more robust" in none
