"""PGD restarts, one rule everywhere (issue 14): "target" (every restart must fail on the
scored model), "source" (the attacker's pick on the model it attacks) and "mean"."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import parl_core as pc

CKPT = Path(__file__).resolve().parents[1] / "checkpoints"
KW = dict(attacks=["pgd"], eps=[0.15], steps=4, restarts=4, seed=3)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup():
    ens = pc.load_checkpoint(CKPT / "digits_parl.safetensors", device="cpu")[0]
    sur = pc.load_checkpoint(CKPT / "digits_surrogate.safetensors", device="cpu")[0]
    ds = pc.evaluation_subset(pc.load_dataset("digits", "test"), 100)  # one block: seed as given
    return ens, sur, ds.images, ds.labels


def _pgd_row(res):
    return res.table[res.table.attack == "pgd"].iloc[0]


def test_defaults_per_mode(setup):
    ens, sur, x, y = setup
    assert pc.robustness_curve(ens, x, y, **KW, surrogate=sur).settings["restart_select"] == "source"
    assert pc.robustness_curve(ens, x, y, **KW).settings["restart_select"] == "target"
    with pytest.raises(ValueError, match="restart_select"):
        pc.robustness_curve(ens, x, y, **KW, restart_select="best")


def test_rules_agree_with_a_hand_computation(setup):
    ens, sur, x, y = setup
    adv = pc.attack_restarts("pgd", sur, x, y, 0.15, steps=4, restarts=4, seed=3)  # (R, N, ...)
    correct = torch.stack([ens.predict(a) == y for a in adv])  # (R, N) on the target
    with torch.no_grad():
        loss = torch.stack([F.nll_loss(sur(a), y, reduction="none") for a in adv])
        fooled = torch.stack([sur.predict(a) != y for a in adv]).float()
    pick = (loss + fooled * 1e31).argmax(0)  # the attacker's choice, seen on the surrogate only
    want = {"target": correct.all(0).double().mean().item(),
            "source": correct[pick, torch.arange(len(y))].double().mean().item(),
            "mean": correct.double().mean().item()}
    got = {r: _pgd_row(pc.robustness_curve(ens, x, y, **KW, surrogate=sur, restart_select=r))
           for r in ("target", "source", "mean")}
    for rule, w in want.items():
        assert got[rule].acc == pytest.approx(w, abs=1e-9), rule
    # The constructed case where the rules differ: the worst case over restarts is lower.
    assert want["target"] < want["source"] and want["target"] < want["mean"]
    m = got["mean"]
    assert m.ci_low < m.acc < m.ci_high and m.ci_high - m.ci_low < 0.3


def test_rule_is_in_the_cache_key_and_the_summary(setup, tmp_path):
    for f in ("digits_parl", "digits_surrogate"):
        shutil.copy2(CKPT / f"{f}.safetensors", tmp_path / f"{f}.safetensors")
    kw = dict(surrogate=tmp_path / "digits_surrogate.safetensors", n_examples=30, attacks=["pgd"],
              eps=[0.15], steps=2, restarts=2)
    target = tmp_path / "digits_parl.safetensors"
    res = pc.evaluate_checkpoint(target, **kw)
    assert pc.cached_evaluation(target, **kw, restart_select="source") is not None  # the default
    assert pc.cached_evaluation(target, **kw, restart_select="target") is None
    assert res.settings["restart_select"] == "source" and "restart rule: source" in res.summary()
