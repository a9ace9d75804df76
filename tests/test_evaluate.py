"""Robustness evaluation (parl_core.evaluate): the table's contract, restart counting, the
black-box path, the sanity checks, the cache, progress/cancel and the CLI."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn

import parl_core as pc
from parl_core import evaluate as ev
from parl_core import checkpoint_eval, sanity
from parl_core.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "checkpoints"
FAST = dict(steps=8, eps=[0.1, 0.3])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ens():
    return pc.load_checkpoint(CKPT / "digits_ens_u.safetensors", device="cpu")[0]


@pytest.fixture(scope="module")
def sur():
    return pc.load_checkpoint(CKPT / "digits_surrogate.safetensors", device="cpu")[0]


@pytest.fixture(scope="module")
def data():
    ds = pc.load_dataset("digits", "test").subset(48, seed=1)
    return ds.images, ds.labels


@pytest.fixture(scope="module")
def white(ens, data):
    return pc.robustness_curve(ens, *data, **FAST, restarts=2)


@pytest.fixture()
def ckpts(tmp_path):
    for f in ("digits_ens_u", "digits_surrogate"):
        shutil.copy2(CKPT / f"{f}.safetensors", tmp_path / f"{f}.safetensors")
    return tmp_path


def test_wilson_interval_known_values():
    lo, hi = pc.wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = pc.wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    assert pc.wilson_interval(0, 0) == (0.0, 1.0)


def test_table_contract(white, ens, data):
    t = white.table
    for col in ["attack", "eps", "mode", "n", "acc", "ci_low", "ci_high", "clean_acc",
                "member_acc_0", "member_acc_1", "member_acc_2"]:
        assert col in t.columns
    assert len(t) == 1 + 4 * 2 + 2 and list(t.attack[:1]) == ["clean"] and t.eps[0] == 0.0
    assert set(zip(t.attack[1:], t.eps[1:])) == {(a, e) for a in pc.ATTACKS + ("worst-case",)
                                                 for e in (0.1, 0.3)}
    assert (t["mode"] == "white-box").all() and (t.n == 48).all()
    assert ((t.ci_low <= t.acc) & (t.acc <= t.ci_high)).all()
    assert t.acc.between(0, 1).all() and (t.acc[1:] <= t.clean_acc[1:]).all()
    x, y = data
    assert t.acc[0] == t.clean_acc[0] == (ens.predict(x) == y).sum().item() / len(y)
    assert white.settings["library_version"] == pc.__version__ and white.settings["restarts"] == 2


def test_restarts_count_robust_only_if_every_restart_is(ens, data, white):
    x, y = data
    adv = pc.attack_restarts("pgd", ens, x, y, 0.1, steps=8, restarts=2, seed=0)  # (R, N, ...)
    correct = torch.stack([ens.predict(a) == y for a in adv])  # (R, N)
    row = white.table.query("attack == 'pgd' and eps == 0.1").iloc[0]
    assert row.correct == correct.all(0).sum().item()
    assert row.acc <= correct.float().mean(1).min().item()


def test_black_box_is_crafted_on_the_surrogate(ens, sur, data):
    x, y = data
    res = pc.robustness_curve(ens, x, y, attacks=["bim"], eps=0.2, steps=3, surrogate=sur)
    row = res.table.iloc[1]
    adv = pc.attack("bim", sur, x, y, 0.2, steps=3)
    assert row["mode"] == "black-box"
    assert row.acc == (ens.predict(adv) == y).sum().item() / len(y)
    assert row.source_acc == (sur.predict(adv) == y).sum().item() / len(y)
    assert res.settings["mode"] == "black-box" and res.settings["surrogate_members"] == 3


def test_checks_pass_for_a_plain_ensemble(white):
    names = {c["check"] for c in white.checks}
    assert {"eps = 0", "monotone in eps", "iterative >= fgsm", "largest eps", "zero gradients"} <= names
    assert all(c["ok"] for c in white.checks), white.warnings
    assert white.warnings == []


def test_eps_zero_row_equals_clean(ens, data):
    res = pc.robustness_curve(ens, *data, attacks=["pgd"], eps=[0.0, 0.2], steps=2)
    assert res.table.query("attack == 'pgd' and eps == 0.0").acc.item() == res.table.clean_acc[0]


class _Masked(nn.Module):
    """Gradient masking: the logits are a step function of x (zero gradient everywhere)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return 20.0 * torch.nn.functional.one_hot(self.model(x).argmax(-1), 10).float() + 0 * x.sum()


def test_gradient_masking_is_reported(ens, data):
    res = pc.robustness_curve(_Masked(ens.members[0]), *data, attacks=["fgsm", "pgd"], eps=[0.1, 0.3],
                              steps=2)
    failed = {c["check"] for c in res.checks if not c["ok"]}
    assert {"zero gradients", "largest eps"} <= failed
    assert any("gradient masking" in w for w in res.warnings)


def test_monotone_check_catches_a_rise():
    rows = [{"attack": "clean", "eps": 0.0, "acc": 0.9, "correct": 90, "n": 100, "ci_high": 0.95},
            {"attack": "pgd", "eps": 0.1, "acc": 0.1, "correct": 10, "n": 100},
            {"attack": "pgd", "eps": 0.2, "acc": 0.5, "correct": 50, "n": 100}]
    c = sanity._check_monotone(pd.DataFrame(rows))
    assert not c["ok"] and "0.1→0.2" in c["detail"]
    rows[2].update(acc=0.12, correct=12)  # within noise
    assert sanity._check_monotone(pd.DataFrame(rows))["ok"]


def test_json_csv_roundtrip(white, tmp_path):
    back = pc.RobustnessResult.from_json(white.to_json(tmp_path / "r.json"))
    pd.testing.assert_frame_equal(back.table, white.table)
    assert back.settings == json.loads(json.dumps(white.settings)) and back.checks == white.checks
    assert pc.RobustnessResult.from_json(tmp_path / "r.json").table.equals(back.table)
    csv = white.to_csv(tmp_path / "r.csv")
    assert csv.splitlines()[0].startswith("attack,eps,mode,n") and len(csv.splitlines()) == 12
    assert "[ok]" in white.summary()


def test_progress_and_cancel(ens, data):
    events = []
    pc.robustness_curve(ens, *data, attacks=["fgsm", "bim"], eps=0.1, steps=2, on_progress=events.append)
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"
    assert events[-1]["done"] == events[-1]["total"] == 48 * (1 + 2)
    assert any(e["eta"] is not None for e in events)
    stop = threading.Event()

    def cb(e):
        if e["event"] == "attack":
            stop.set()
    res = pc.robustness_curve(ens, *data, attacks=["fgsm", "bim"], eps=0.1, steps=2, on_progress=cb,
                              cancel=stop)
    assert res.cancelled and list(res.table.attack) == ["clean", "fgsm"]
    assert any("cancelled" in w for w in res.warnings)


def test_transferability_matrix(ens, data):
    x, y = data
    m = pc.transferability_matrix(ens, x, y, attack="bim", eps=0.2, steps=3)
    assert m.shape == (3, 3) and ((0 <= m) & (m <= 1)).all()
    adv = pc.attack("bim", ens.members[1], x, y, 0.2, steps=3)
    want = [(mem(adv).argmax(-1) == y).float().mean().item() for mem in ens.members]
    assert m[1] == pytest.approx(want)
    assert m.diagonal().mean() < m[~torch.eye(3, dtype=bool).numpy()].mean()  # white-box is strongest
    rate = pc.transferability_matrix(ens, x, y, attack="bim", eps=0.2, steps=3, metric="success_rate")
    clean = [mem(x).argmax(-1) == y for mem in ens.members]
    want = [((mem(adv).argmax(-1) != y) & c).sum().item() / c.sum().item() for mem, c in zip(ens.members, clean)]
    assert rate[1] == pytest.approx(want)


def test_evaluate_checkpoint_caches(ckpts, monkeypatch):
    kw = dict(surrogate=ckpts / "digits_surrogate.safetensors", n_examples=40, attacks=["fgsm"],
              eps=[0.1, 0.2], steps=2)
    target = ckpts / "digits_ens_u.safetensors"
    assert pc.cached_evaluation(target, **kw) is None
    res = pc.evaluate_checkpoint(target, **kw)
    assert res.settings["dataset"] == "digits" and res.settings["mode"] == "black-box"
    assert len(list((ckpts / ".cache").glob("*.json"))) == 1
    monkeypatch.setattr(checkpoint_eval, "robustness_curve", lambda *a, **k: pytest.fail("recomputed"))
    hit = pc.cached_evaluation(target, **kw)
    pd.testing.assert_frame_equal(hit.table, res.table)
    pd.testing.assert_frame_equal(pc.evaluate_checkpoint(target, **kw).table, res.table)
    assert pc.cached_evaluation(target, **{**kw, "steps": 3}) is None  # every setting is in the key
    assert pc.cached_evaluation(target, **{**kw, "surrogate": None}) is None
    # cache="read" (a read-only server): uses the cache, computes what is missing, writes nothing
    monkeypatch.undo()
    pd.testing.assert_frame_equal(pc.evaluate_checkpoint(target, **kw, cache="read").table, res.table)
    fresh = pc.evaluate_checkpoint(target, **{**kw, "steps": 3}, cache="read")
    assert fresh.settings["steps"] == 3 and len(list((ckpts / ".cache").glob("*.json"))) == 1
    with pytest.raises(ValueError, match="cache must be True, False or 'read'"):
        pc.evaluate_checkpoint(target, **kw, cache="write")


def test_evaluate_checkpoint_default_grid_and_validation(ckpts):
    target = ckpts / "digits_ens_u.safetensors"
    res = pc.evaluate_checkpoint(target, n_examples=20, attacks=["fgsm"], steps=1, cache=False)
    assert sorted(set(res.table.eps) - {0.0}) == pc.default_eps_grid("digits")
    assert not (ckpts / ".cache").exists()
    with pytest.raises(ValueError, match="attacks"):
        pc.evaluate_checkpoint(target, attacks=["deepfool"])
    with pytest.raises(ValueError, match="n_examples"):
        pc.evaluate_checkpoint(target, n_examples=0)
    moons = pc.build_ensemble("mlp", 2, pc.load_dataset("moons", "train"))
    pc.save_checkpoint(ckpts / "moons.safetensors", moons, {"dataset": "moons"})
    with pytest.raises(ValueError, match="surrogate"):
        pc.evaluate_checkpoint(target, surrogate=ckpts / "moons.safetensors")


def test_cli_evaluate(ckpts, capsys):
    target = str(ckpts / "digits_ens_u.safetensors")
    rc = cli_main(["evaluate", target, "--n", "24", "--steps", "2", "--eps", "0.1,0.3", "--restarts", "2",
                   "--attacks", "fgsm,pgd", "--quiet", "--csv", str(ckpts / "o.csv"),
                   "--json", str(ckpts / "o.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "white-box" in out and "pgd" in out and "[ok]" in out
    assert pd.read_csv(ckpts / "o.csv").shape[0] == 7  # clean, 2 x (fgsm, pgd, worst-case)
    assert pc.RobustnessResult.from_json(ckpts / "o.json").settings["restarts"] == 2
    assert cli_main(["evaluate", target, "--attacks", "cw", "--quiet"]) == 2
    assert "attacks" in capsys.readouterr().err


def test_gradient_free_check_flags_square_beating_every_gradient_attack():
    def rows(sq):
        base = {"mode": "white-box", "n": 400, "eps": 0.1, "ci_low": 0.0}
        return pd.DataFrame([{**base, "attack": "pgd", "acc": 0.6, "ci_high": 0.65},
                             {**base, "attack": "apgd-ce", "acc": 0.55, "ci_high": 0.6},
                             {**base, "attack": "square", "acc": sq, "ci_high": sq + 0.05}])
    bad = sanity._check_gradient_free(rows(0.2))
    assert not bad["ok"] and "masking" in bad["detail"] and "apgd-ce" in bad["detail"]
    assert sanity._check_gradient_free(rows(0.52))["ok"]  # within noise of the best


def test_shipped_results_keep_their_cache_keys():
    """New options enter the cache key only when used: every shipped result is still found
    under the settings it records (the "more steps" check and MI-DI's transform only in the
    results that used them)."""
    import subprocess
    listed = subprocess.run(["git", "ls-files", "checkpoints/.cache"], cwd=CKPT.parent,
                            capture_output=True, text=True).stdout.split()
    shipped = sorted(CKPT.parent / f for f in listed if Path(f).name.startswith("eval_"))  # not local ones
    if not shipped:
        pytest.skip("no shipped evaluation results in checkpoints/.cache")
    for f in shipped:
        s = json.loads(f.read_text())["settings"]
        kw = {k: s[k] for k in ("n_examples", "seed", "attacks", "eps", "steps", "step_size",
                                "restarts", "decay", "early_stop", "loss", "restart_select")}
        kw["convergence"] = bool(s.get("convergence", False))
        sur = CKPT / Path(s["surrogate"]).name if s.get("surrogate") else None
        try:
            key, file = checkpoint_eval._resolve(CKPT / Path(s["checkpoint"]).name, sur,
                                                 batch_size=None, data_root=None, **kw)
        except FileNotFoundError as e:
            pytest.skip(f"the shipped results' dataset is not here: {e}")
        assert file == f
        assert ("convergence" in key) == kw["convergence"]
        assert ("mi_di" in key) == ("mi-di" in kw["attacks"]) and key.get("mi_di") == s.get("mi_di")
        assert pc.cached_evaluation(CKPT / Path(s["checkpoint"]).name, surrogate=sur, **kw) is not None


def test_new_options_enter_the_cache_key_only_when_used(ckpts):
    target = ckpts / "digits_ens_u.safetensors"
    args = dict(surrogate=None, n_examples=20, seed=0, attacks=["pgd"], eps=[0.1], steps=2,
                step_size=None, restarts=1, decay=0.01, early_stop=False, loss="ensemble",
                batch_size=None, data_root=None)
    plain = checkpoint_eval._resolve(target, **args)
    assert checkpoint_eval._resolve(target, **args, convergence=False) == plain
    conv = checkpoint_eval._resolve(target, **args, convergence=True)
    assert conv[1] != plain[1] and conv[0]["convergence"] is True
    midi = checkpoint_eval._resolve(target, **{**args, "attacks": ["pgd", "mi-di"]})
    assert midi[0]["mi_di"] == {"prob": 0.5, "ratio": 0.1}
    from parl_core.midi import options
    with options(prob=0.0):
        other = checkpoint_eval._resolve(target, **{**args, "attacks": ["pgd", "mi-di"]})
    assert other[1] != midi[1]  # MI-DI's transform is part of what a result means
    res = pc.evaluate_checkpoint(target, **{k: v for k, v in args.items() if k not in
                                            ("batch_size", "data_root")}, convergence=True)
    assert res.settings["convergence"] is True and pc.cached_evaluation(
        target, **{k: v for k, v in args.items() if k != "batch_size"}, convergence=True) is not None
    with pytest.raises(ValueError, match="convergence must be True or False, got 'yes'"):
        pc.evaluate_checkpoint(target, convergence="yes")
