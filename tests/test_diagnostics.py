"""Masking diagnostics (parl_core.diagnostics): "more steps never help the defender" on
known counts, on a constructed ensemble where they do help, and on the shipped digits
ensemble; "white-box <= black-box" on real results and on constructed ones."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import parl_core as pc
from parl_core import diagnostics as dg
from parl_core.result import RobustnessResult, _pack, verdict_key

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- known counts
def _verdicts(both, only_n, only_more, neither):
    at_n = [True] * both + [True] * only_n + [False] * only_more + [False] * neither
    at_more = [True] * both + [False] * only_n + [True] * only_more + [False] * neither
    return np.array(at_n), np.array(at_more)


def test_convergence_check_on_known_counts():
    c = dg.convergence_check(*_verdicts(5, 0, 10, 85), steps=50, more_steps=200, eps=0.3)
    assert not c["ok"] and c["only_more_steps"] == 10 and c["only_steps"] == 0
    assert c["p_value"] == pytest.approx(2 / 2 ** 10) and "help the defender" in c["detail"]
    assert c["acc_steps"] == 0.05 and c["acc_more_steps"] == 0.15
    ok = dg.convergence_check(*_verdicts(5, 2, 3, 90), steps=50, more_steps=200, eps=0.3)
    assert ok["ok"] and "do not help the defender" in ok["detail"]
    slow = dg.convergence_check(*_verdicts(5, 12, 0, 83), steps=50, more_steps=200, eps=0.3)
    assert slow["ok"] and "had not converged" in slow["detail"]
    with pytest.raises(ValueError, match="at_n and at_more must be 1-D verdicts of equal"):
        dg.convergence_check([True, False], [True], steps=1, more_steps=4, eps=0.1)
    with pytest.raises(ValueError, match="alpha must be a number in \\(0, 1\\), got 2"):
        dg.convergence_check([True], [True], steps=1, more_steps=4, eps=0.1, alpha=2)


# --------------------------------------------------------------------------- a constructed case
class _Linear(nn.Module):
    """Votes class 1 for every x > 0, more confidently as x grows: it drives the CE of the
    mean probability up along +x everywhere."""

    def forward(self, x):
        z = 5.0 * x.flatten(1).sum(1)
        return torch.stack([torch.zeros_like(z), z], 1)


class _Band(nn.Module):
    """Votes class 1 inside the band 0.22 < x < 0.79, class 0 elsewhere (no gradient)."""

    def forward(self, x):
        v = x.flatten(1).sum(1)
        inside = ((v > 0.22) & (v < 0.79)).float()
        return torch.stack([1 - inside, inside], 1)


class _Right(nn.Module):
    def forward(self, x):
        v = x.flatten(1).sum(1)
        return torch.stack([torch.ones_like(v), torch.zeros_like(v)], 1)


@pytest.fixture(scope="module")
def masked():
    """An ensemble right on x = 0.2, whose vote PGD at ε = 0.6 (steps of 0.12 up from a
    random start in [0, 0.8]) fools after 2 steps wherever the start was below 0.55 (two
    members vote 1 in the band) and never after 8 (every iterate at 0.8, out of the band):
    more steps help the defender."""
    ens = pc.Ensemble([_Linear(), _Band(), _Right()]).eval()
    x = torch.full((40, 1, 1, 1), 0.2)
    return ens, x, torch.zeros(40, dtype=torch.long)


def test_more_steps_that_help_the_defender_fail_the_check(masked):
    ens, x, y = masked
    c = dg.step_convergence(ens, x, y, eps=0.6, steps=2)
    assert not c["ok"] and c["only_more_steps"] >= 20 and c["only_steps"] == 0
    assert c["acc_steps"] <= 0.5 and c["acc_more_steps"] == 1.0 and c["more_steps"] == 8
    res = pc.robustness_curve(ens, x, y, attacks=["fgsm", "pgd"], eps=[0.3, 0.6], steps=2,
                              convergence=True)
    check = next(c for c in res.checks if c["check"] == "more steps")
    assert not check["ok"] and check["detail"] in res.warnings
    assert res.settings["convergence"] is True and res.settings["convergence_factor"] == dg.FACTOR
    assert "more steps" not in {c["check"] for c in pc.robustness_curve(
        ens, x, y, attacks=["pgd"], eps=[0.6], steps=2).checks}  # opt-in


def test_step_convergence_on_the_shipped_ensemble(ens, data):
    x, y = data[0][:40], data[1][:40]
    c = dg.step_convergence(ens, x, y, eps=0.2, steps=2, restarts=2)
    short = pc.robustness_curve(ens, x, y, attacks=["pgd"], eps=[0.2], steps=2, restarts=2)
    long = pc.robustness_curve(ens, x, y, attacks=["pgd"], eps=[0.2], steps=8, restarts=2)
    assert c["acc_steps"] == short.table.acc.iloc[-1] and c["acc_more_steps"] == long.table.acc.iloc[-1]
    assert c["ok"] and c["acc_more_steps"] <= c["acc_steps"]
    known = dg.step_convergence(ens, x, y, eps=0.2, steps=2, restarts=2,
                                at_steps=[short.verdict("pgd", 0.2)])
    assert known == c  # the evaluation's own N-step verdicts give the same check
    mean = dg.step_convergence(ens, x, y, eps=0.2, steps=2, restart_select="mean")
    assert "'mean' keeps no per-example verdicts" in mean["detail"]
    with pytest.raises(ValueError, match="factor must be an int >= 2, got 1"):
        dg.step_convergence(ens, x, y, eps=0.2, factor=1)
    with pytest.raises(ValueError, match="eps must be one number"):
        dg.step_convergence(ens, x, y, eps=[0.1, 0.2])


# --------------------------------------------------------------------------- white vs black
def _result(mode, accs_verdicts, n=50, checkpoint_hash="h"):
    """A RobustnessResult with one pgd row per ε: {eps: verdict array}."""
    rows, verdicts = [], {}
    for e, v in accs_verdicts.items():
        v = np.asarray(v, bool)
        lo, hi = pc.wilson_interval(int(v.sum()), n)
        rows.append({"attack": "pgd", "eps": e, "mode": mode, "n": n, "correct": int(v.sum()),
                     "acc": v.mean(), "ci_low": lo, "ci_high": hi})
        verdicts[verdict_key("pgd", e)] = _pack(torch.from_numpy(v))
    return RobustnessResult(pd.DataFrame(rows), settings={"mode": mode, "checkpoint_hash": checkpoint_hash},
                            verdicts=verdicts)


def test_white_below_black_on_constructed_results():
    rng = np.random.default_rng(0)
    weak = rng.random(50) < 0.2
    strong = weak | (rng.random(50) < 0.6)
    ok = dg.white_below_black(_result("white-box", {0.1: weak}), _result("black-box", {0.1: strong}))
    assert ok["ok"] and ok["rows"] == 1
    bad = dg.white_below_black(_result("white-box", {0.1: strong}), _result("black-box", {0.1: weak}))
    assert not bad["ok"] and "gradient masking" in bad["detail"] and "pgd ε 0.1" in bad["detail"]
    no_verdicts = _result("black-box", {0.1: weak})
    no_verdicts.verdicts = {}
    assert not dg.white_below_black(_result("white-box", {0.1: strong}), no_verdicts)["ok"]
    with pytest.raises(ValueError, match="white must be a white-box result, got mode 'black-box'"):
        dg.white_below_black(_result("black-box", {0.1: weak}), _result("black-box", {0.1: weak}))
    with pytest.raises(ValueError, match="same examples"):
        dg.white_below_black(_result("white-box", {0.1: weak}), _result("black-box", {0.1: weak[:40]}, n=40))
    with pytest.raises(ValueError, match="same target"):
        dg.white_below_black(_result("white-box", {0.1: weak}),
                             _result("black-box", {0.1: weak}, checkpoint_hash="other"))
    with pytest.raises(ValueError, match="share no"):
        dg.white_below_black(_result("white-box", {0.1: weak}), _result("black-box", {0.2: weak}))


def test_white_below_black_on_the_shipped_ensembles(ens, data):
    sur = pc.load_checkpoint(REPO / "checkpoints" / "digits_surrogate.safetensors", device="cpu")[0]
    x, y = data[0][:40], data[1][:40]
    kw = dict(attacks=["fgsm", "pgd"], eps=[0.1, 0.2], steps=3)
    c = dg.white_below_black(pc.robustness_curve(ens, x, y, **kw),
                             pc.robustness_curve(ens, x, y, surrogate=sur, **kw))
    assert c["ok"] and c["rows"] == 6  # 2 attacks + worst-case, 2 ε each
