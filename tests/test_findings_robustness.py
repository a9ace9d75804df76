"""The Robustness page's sentences about several surrogates and the masking checks, from
constructed numbers: they name the weakest surrogate, say when a check fails and when the
other surrogates change nothing."""
import pandas as pd
import pytest

from dashboard import findings_masking as findings


def _table(first, second, worst, weakest):
    """A SurrogateSuite.table() for PGD at ε 0.1 and 0.3 (and the clean row)."""
    return pd.DataFrame({"attack": ["clean", "pgd", "pgd"], "eps": [0.0, 0.1, 0.3],
                         "main_sur": [0.9, *first], "other_sur": [0.9, *second],
                         "worst": [0.9, *worst], "ci_low": [0.8, 0.1, 0.1], "ci_high": [1.0, 0.9, 0.9],
                         "weakest": ["", *weakest]})


KINDS = {"main_sur": ["other seed"], "other_sur": ["other seed", "same method"]}


def test_surrogate_finding_names_the_weakest_and_the_overstatement():
    t = _table([0.6, 0.4], [0.5, 0.2], [0.45, 0.15], ["other_sur", "other_sur"])
    text = findings.surrogate_finding(t, KINDS, ["fgsm", "pgd"])
    assert text.startswith("PGD from 2 surrogates")
    assert "main_sur 50.0 %, other_sur 35.0 %" in text and "worst over surrogates" in text
    assert "The weakest surrogate for this target is **other_sur**" in text and "weakest at 2 of 2 ε" in text
    assert "At ε = 0.3 the worst case is 15.0 % against 40.0 % from main_sur alone" in text
    assert "overstates robustness here by 25.0 points" in text
    assert "No surrogate of kind: other architecture" in text  # present: other seed, same method


def test_surrogate_finding_says_plainly_when_other_surrogates_change_nothing():
    t = _table([0.3, 0.2], [0.7, 0.6], [0.3, 0.2], ["main_sur", "main_sur"])
    text = findings.surrogate_finding(t, {"main_sur": ["other seed", "other architecture"],
                                          "other_sur": ["same method"]}, ["pgd"], per255=True)
    assert "**main_sur**" in text and "overstates" not in text
    assert "The other surrogates do not lower the accuracy at ε = 0.3 (≈ 76.5/255)" in text
    assert "No surrogate of kind" not in text  # every kind present


def test_surrogate_finding_validates_its_table():
    with pytest.raises(ValueError, match="SurrogateSuite.table"):
        findings.surrogate_finding(pd.DataFrame({"attack": ["pgd"], "eps": [0.1]}), {}, ["pgd"])
    one = pd.DataFrame({"attack": ["pgd"], "eps": [0.1], "a": [0.5], "worst": [0.5], "weakest": ["a"]})
    with pytest.raises(ValueError, match="at least two surrogates"):
        findings.surrogate_finding(one, {}, ["pgd"])


def test_check_lines_and_headline_say_when_a_check_fails():
    ok = {"check": "accuracy falls", "ok": True, "detail": "falls to 3 %"}
    bad = {"check": "more steps", "ok": False, "detail": "more steps help the defender"}
    assert findings.check_line(ok).startswith(":material/check_circle: **accuracy falls** passes")
    assert findings.check_line(bad).startswith(":material/warning: **more steps: fails**")
    assert findings.checks_headline([ok, ok]) == "all 2 pass"
    assert findings.checks_headline([ok, bad, bad]) == "2 of 3 fail"
    assert findings.checks_headline([]) == "none recorded"
    slow = {"check": "more steps", "ok": True, "detail": "8 steps fool more", "p_value": 0.004,
            "only_steps": 9, "only_more_steps": 0}
    assert findings.not_converged(slow) and not findings.not_converged({**slow, "p_value": 0.5})
    assert "**but the attack has not converged**" in findings.check_line(slow)
    assert findings.checks_headline([ok, slow]) == "all 2 pass, not converged"
    with pytest.raises(ValueError, match="chk must be a check dict"):
        findings.check_line({"check": "x"})


def test_white_black_text_verdict_or_what_is_missing():
    bad = {"check": "white-box <= black-box", "ok": False, "detail": "white-box accuracy above black-box"}
    line = findings.white_black_text(bad, "parl", "sur")
    assert "white-box ≤ black-box (black-box from sur): fails" in line and line.startswith(":material/warning:")
    miss = findings.white_black_text(None, "parl", "sur", ["black-box"])
    assert "no black-box result of parl" in miss and "surrogate sur" in miss and "computes nothing" in miss
    both = findings.white_black_text(None, "parl", "sur", ["white-box", "black-box"])
    assert "no white-box and no black-box result" in both
    assert "no second checkpoint" in findings.white_black_text(None, "parl", None)
    with pytest.raises(ValueError, match="missing must name"):
        findings.white_black_text(None, "parl", "sur", [])
