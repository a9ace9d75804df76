"""Several surrogates (parl_core.surrogates): per-surrogate results are exactly the
single-surrogate evaluations (same tables, same cache files), and the worst over
surrogates is the per-example AND of their verdicts."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import parl_core as pc
from parl_core import checkpoint_eval
from parl_core import surrogates as su
from parl_core.result import _pack, verdict_key

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "checkpoints"
KW = dict(attacks=["fgsm", "pgd"], eps=[0.1, 0.25], steps=3)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def xy(data):
    return data[0][:40], data[1][:40]


@pytest.fixture(scope="module")
def suite(models, xy):
    return su.surrogate_curves(models["ens_u"], *xy, [models["surrogate"], models["parl"]],
                               names=["seed 100", "parl"], **KW)


def test_per_surrogate_results_are_the_single_surrogate_evaluations(suite, models, xy):
    for name, key in (("seed 100", "surrogate"), ("parl", "parl")):
        alone = pc.robustness_curve(models["ens_u"], *xy, surrogate=models[key], **KW)
        pd.testing.assert_frame_equal(suite.per_surrogate[name].table, alone.table)


def test_worst_is_the_per_example_and_of_the_verdicts(suite):
    w, a, b = suite.worst, suite.per_surrogate["seed 100"], suite.per_surrogate["parl"]
    assert list(zip(w.table.attack, w.table.eps)) == list(zip(a.table.attack, a.table.eps))
    for r in w.table.itertuples():
        want = a.verdict(r.attack, r.eps) & b.verdict(r.attack, r.eps)
        assert np.array_equal(w.verdict(r.attack, r.eps), want)
        assert r.correct == want.sum() and r.acc == pytest.approx(want.mean())
        assert r.ci_low <= r.acc <= r.ci_high and r.surrogates == 2
        if r.attack != "clean":
            accs = {"seed 100": a.table.set_index(["attack", "eps"]).acc[(r.attack, r.eps)],
                    "parl": b.table.set_index(["attack", "eps"]).acc[(r.attack, r.eps)]}
            assert r.acc <= min(accs.values()) and r.weakest == min(accs, key=accs.get)
    clean = w.table.iloc[0]
    assert clean.attack == "clean" and clean.acc == a.table.acc.iloc[0]
    assert w.settings["surrogates"] == ["seed 100", "parl"] and "worst of 2" in w.summary()
    t = suite.table()
    assert list(t.columns[:4]) == ["attack", "eps", "seed 100", "parl"] and "worst" in t
    # a paired comparison of two targets' worst over surrogates works on the verdicts
    cmp = pc.paired_comparison(w, w)
    assert (cmp["diff"] == 0).all() and len(cmp) == len(w.table)


def _fake(rows, verdicts, mode="black-box", n=4, **settings):
    table = pd.DataFrame([{"attack": a, "eps": e, "mode": mode, "n": n, "correct": 0, "acc": 0.0,
                           "ci_low": 0.0, "ci_high": 1.0, "clean_acc": 1.0, "steps": 1,
                           "step_size": 0.1, "restarts": 1} for a, e in rows])
    packed = {verdict_key(a, e): _pack(torch.tensor(v)) for (a, e), v in zip(rows, verdicts)}
    return pc.RobustnessResult(table, settings={"mode": mode, **settings}, verdicts=packed)


def test_worst_over_surrogates_refuses_what_cannot_be_combined():
    rows = [("clean", 0.0), ("pgd", 0.1)]
    a = _fake(rows, [[True] * 4, [True, True, False, False]])
    b = _fake(rows, [[True] * 4, [True, False, True, False]])
    w = su.worst_over_surrogates([a, b], ["a", "b"])
    assert w.verdict("pgd", 0.1).tolist() == [True, False, False, False]
    assert w.table.acc.tolist() == [1.0, 0.25] and w.table.weakest.tolist() == ["", "a"]
    with pytest.raises(ValueError, match="results must be a non-empty list"):
        su.worst_over_surrogates([])
    with pytest.raises(ValueError, match="names must give one label per result \\(2\\), got 1"):
        su.worst_over_surrogates([a, b], ["a"])
    with pytest.raises(ValueError, match="has other rows"):
        su.worst_over_surrogates([a, _fake([("clean", 0.0), ("pgd", 0.2)], [[True] * 4] * 2)])
    with pytest.raises(ValueError, match="on other examples"):
        su.worst_over_surrogates([a, _fake(rows, [[True] * 3] * 2, n=3)])
    with pytest.raises(ValueError, match="scores another target"):
        su.worst_over_surrogates([a, _fake(rows, [[False] * 4, [True] * 4])])
    with pytest.raises(ValueError, match="must be a black-box result"):
        su.worst_over_surrogates([a, _fake(rows, [[True] * 4] * 2, mode="white-box")])
    no_verdicts = _fake(rows, [[True] * 4] * 2)
    no_verdicts.verdicts.pop("pgd@0.1")
    with pytest.raises(ValueError, match="restart rule 'mean'"):
        su.worst_over_surrogates([a, no_verdicts])


@pytest.fixture()
def ckpts(tmp_path):
    for f in ("digits_ens_u", "digits_surrogate", "digits_parl"):
        shutil.copy2(CKPT / f"{f}.safetensors", tmp_path / f"{f}.safetensors")
    return tmp_path


def test_transfer_suite_uses_the_single_surrogate_cache(ckpts):
    target, s1, s2 = (str(ckpts / f"digits_{n}.safetensors") for n in ("ens_u", "surrogate", "parl"))
    kw = dict(n_examples=30, **KW)
    events = []
    (suite,) = su.transfer_suite([target], [s1, s2], on_progress=events.append, **kw)
    assert list(suite.per_surrogate) == ["digits_surrogate", "digits_parl"]
    assert {e["surrogate"] for e in events} == {"digits_surrogate", "digits_parl"}
    for s, label in ((s1, "digits_surrogate"), (s2, "digits_parl")):
        cached = pc.cached_evaluation(target, surrogate=s, **kw)  # today's key, today's file
        assert cached is not None
        pd.testing.assert_frame_equal(cached.table, suite.per_surrogate[label].table)
    assert len(list((ckpts / ".cache").glob("eval_*.json"))) == 2
    assert suite.kinds == {"digits_surrogate": ["other seed", "same method"], "digits_parl": []}
    assert "no surrogate of kind: other architecture" in suite.summary()
    assert suite.worst.settings["checkpoint"] == target and not suite.warnings
    (own,) = su.transfer_suite(target, [target, s1], **kw)
    assert any("is the target itself" in w for w in own.warnings)


def test_transfer_suite_validates(ckpts):
    target = str(ckpts / "digits_ens_u.safetensors")
    with pytest.raises(ValueError, match="surrogates must be a checkpoint path or a non-empty list"):
        su.transfer_suite(target, [])
    with pytest.raises(ValueError, match="surrogates must be distinct"):
        su.transfer_suite(target, [target, target])
    with pytest.raises(ValueError, match="not surrogate="):
        su.transfer_suite(target, [target], surrogate=target)
    with pytest.raises(ValueError, match="for several surrogates use parl_core.surrogates.transfer_suite"):
        checkpoint_eval.evaluate_checkpoints([target], surrogate=[target, target])
