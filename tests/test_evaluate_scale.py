"""Evaluation at scale: memory-bounded passes whose size never changes a result, one
black-box crafting for several targets, the fixed evaluation subset, the cache key and
log-friendly progress."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import parl_core as pc
from parl_core import checkpoint_eval, memory
from parl_core.cli import main as cli_main
from parl_core.progress import Progress

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "checkpoints"
KW = dict(attacks=["fgsm", "pgd"], eps=[0.1, 0.25], steps=3, restarts=3, seed=5)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    ds = pc.evaluation_subset(pc.load_dataset("digits", "test"), 130)  # two attack blocks
    return ds.images, ds.labels


@pytest.fixture()
def ckpts(tmp_path):
    for f in ("digits_ens_u", "digits_parl", "digits_surrogate"):
        shutil.copy2(CKPT / f"{f}.safetensors", tmp_path / f"{f}.safetensors")
    return tmp_path


def test_pass_size_never_changes_the_result(models, data):
    """Tiny passes split every block over ε and restarts; the PGD starts are the same."""
    big = pc.robustness_curve(models["ens_u"], *data, **KW)
    for rows in (1, 150, 390):
        small = pc.robustness_curve(models["ens_u"], *data, **KW, batch_size=rows)
        pd.testing.assert_frame_equal(small.table, big.table)
    assert big.settings["block"] == 100 and "rows_per_pass" in big.settings


def test_black_box_crafts_once_for_several_targets(models, data, monkeypatch):
    calls = []
    real = pc.evaluate.attack_restarts
    monkeypatch.setattr(pc.evaluate, "attack_restarts",
                        lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    both = pc.robustness_curve([models["ens_u"], models["parl"]], *data, **KW,
                               surrogate=models["surrogate"])
    assert all(m is models["surrogate"] for m in calls)
    n_calls = len(calls)
    alone = [pc.robustness_curve(models[n], *data, **KW, surrogate=models["surrogate"])
             for n in ("ens_u", "parl")]
    assert len(calls) == 3 * n_calls  # one crafting for two targets, then one each
    for a, b in zip(both, alone):
        pd.testing.assert_frame_equal(a.table, b.table)
        assert a.settings["mode"] == "black-box"


def test_clean_row_reports_the_surrogates_own_accuracy(models, data):
    x, y = data
    res = pc.robustness_curve(models["ens_u"], x, y, attacks=["fgsm"], eps=0.1,
                              surrogate=models["surrogate"])
    clean = res.table.iloc[0]
    assert clean.source_acc == pytest.approx((models["surrogate"].predict(x) == y).double().mean().item())
    assert clean.acc == pytest.approx((models["ens_u"].predict(x) == y).double().mean().item())
    assert clean.source_acc != clean.acc  # (these two differ on this subset)


def test_white_box_list_gives_one_result_per_target(models, data):
    res = pc.robustness_curve([models["ens_u"], models["parl"]], *data, attacks=["fgsm"], eps=0.1)
    assert [r.settings["mode"] for r in res] == ["white-box"] * 2
    pd.testing.assert_frame_equal(res[1].table, pc.robustness_curve(
        models["parl"], *data, attacks=["fgsm"], eps=0.1).table)
    with pytest.raises(ValueError, match="at least one"):
        pc.robustness_curve([], *data, attacks=["fgsm"], eps=0.1)


def test_rows_per_pass_follows_the_budget(models, monkeypatch):
    x = pc.load_dataset("digits", "test").images[0]
    per = memory.bytes_per_row(models["ens_u"], x)
    assert per > x.numel() * 4  # every layer's output counts
    assert memory.rows_per_pass(models["ens_u"], x, grad=True, budget=int(per * 2 * 10)) == 10
    assert memory.rows_per_pass(models["ens_u"], x, grad=False, budget=int(per * 10)) == 10
    assert memory.rows_per_pass(models["ens_u"], x, budget=1) == 1  # at least one row
    assert memory.rows_per_pass(models["ens_u"], x, budget=10 ** 12, cap=64) == 64
    monkeypatch.setenv("PARL_EVAL_MEMORY_MB", "3")
    assert memory.memory_budget() == 3 * 2 ** 20
    monkeypatch.setenv("PARL_EVAL_MEMORY_MB", "lots")
    with pytest.raises(ValueError, match="PARL_EVAL_MEMORY_MB"):
        memory.memory_budget()
    with pytest.raises(ValueError, match="batch size"):
        memory.rows_per_pass(models["ens_u"], x, cap=0)


def test_cifar_resnet_rows_are_bounded():
    """3 × ResNet20 on CIFAR keeps megabytes per row: 1 GiB holds a few hundred rows."""
    ens = pc.Ensemble([pc.build_model("resnet20", 10, 3, seed=i) for i in range(3)])
    rows = memory.rows_per_pass(ens, torch.rand(3, 32, 32), grad=True, budget=2 ** 30)
    assert 50 <= rows <= 1000


def test_checkpoints_share_the_subset_and_the_cache_ignores_batch_size(ckpts, monkeypatch):
    kw = dict(surrogate=ckpts / "digits_surrogate.safetensors", n_examples=60,
              attacks=["fgsm"], eps=[0.1, 0.2], steps=1)
    targets = [ckpts / "digits_ens_u.safetensors", ckpts / "digits_parl.safetensors"]
    res = pc.evaluate_checkpoints(targets, **kw, batch_size=50)
    assert res[0].settings["indices"] == res[1].settings["indices"]
    assert res[0].settings["indices"] == pc.evaluation_subset(
        pc.load_dataset("digits", "test"), 60).info["indices"]
    assert res[0].settings["data_source"] and "batch_size" not in {
        k for k in res[0].settings if k == "batch_size" and res[0].settings[k] is not None}
    monkeypatch.setattr(checkpoint_eval, "robustness_curve", lambda *a, **k: pytest.fail("recomputed"))
    again = pc.evaluate_checkpoints(targets, **kw, batch_size=7)  # a memory knob, not a key
    for a, b in zip(res, again):
        pd.testing.assert_frame_equal(a.table, b.table)
    assert pc.cached_evaluation(targets[1], **kw) is not None


def test_cli_evaluates_several_targets_from_one_surrogate(ckpts, capsys):
    a, b = str(ckpts / "digits_ens_u.safetensors"), str(ckpts / "digits_parl.safetensors")
    rc = cli_main(["evaluate", "--target", a, "--target", b, "--surrogate",
                   str(ckpts / "digits_surrogate.safetensors"), "--n", "30", "--steps", "2",
                   "--eps", "0.1", "--attacks", "fgsm,bim", "--threads", "1",
                   "--csv", str(ckpts / "t.csv"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("black-box from") == 2 and "paired, same examples" in out
    table = pd.read_csv(ckpts / "t.csv")
    assert set(table.checkpoint) == {a, b} and len(table) == 2 * 4  # clean, fgsm, bim, worst-case
    assert cli_main(["evaluate", "--quiet"]) == 2 and "at least one" in capsys.readouterr().err


def test_progress_in_a_log_file_is_lines_not_carriage_returns():
    buf = io.StringIO()
    p = Progress("train", file=buf, every=0.0, tty=False)
    p.start(10)
    for i in range(1, 11):
        p.update_to(i, loss="1.0")
    p.note("epoch 1: loss 1.0")
    text = buf.getvalue()
    assert "\r" not in text and "train: 100% (10/10 steps)" in text and "epoch 1" in text
    quiet = io.StringIO()
    q = Progress("train", file=quiet, every=0.0, tty=False, quiet=True)
    q.start(5)
    q.update_to(5)
    q.note("epoch 1: kept")
    assert quiet.getvalue() == "epoch 1: kept\n"


def test_worst_case_rows_take_each_examples_strongest_attack(models, data):
    res = pc.robustness_curve(models["ens_u"], *data, **KW, surrogate=models["surrogate"])
    t = res.table
    for e in KW["eps"]:
        worst = t[(t.attack == "worst-case") & (t.eps == e)].iloc[0]
        each = t[(t.attack.isin(KW["attacks"])) & (t.eps == e)]
        assert worst.acc <= each.acc.min()
        both = res.verdict("fgsm", e) & res.verdict("pgd", e)
        assert worst.correct == both.sum() and (res.verdict("worst-case", e) == both).all()
    one = pc.robustness_curve(models["ens_u"], *data, attacks=["fgsm"], eps=0.1)
    assert "worst-case" not in set(one.table.attack)  # one attack: nothing to take the worst of


def test_a_cached_result_that_does_not_fit_is_not_computed(ckpts):
    kw = dict(surrogate=ckpts / "digits_surrogate.safetensors", n_examples=30, attacks=["fgsm"],
              eps=[0.1], steps=1)
    target = ckpts / "digits_ens_u.safetensors"
    pc.evaluate_checkpoint(target, **kw)
    (file,) = (ckpts / ".cache").glob("eval_*.json")
    good = file.read_text()
    file.write_text(good[: len(good) // 2])  # truncated
    assert pc.cached_evaluation(target, **kw) is None
    import json
    forged = json.loads(good)
    for r in forged["table"]:
        r["acc"] = 0.99
    forged["settings"]["checkpoint_hash"] = "0" * 64  # claims another checkpoint
    file.write_text(json.dumps(forged))
    assert pc.cached_evaluation(target, **kw) is None
    forged = json.loads(good)
    forged["table"][1]["acc"] = 7.0  # not an accuracy
    file.write_text(json.dumps(forged))
    assert pc.cached_evaluation(target, **kw) is None
    file.write_text(good)
    assert pc.cached_evaluation(target, **kw) is not None
    res = pc.evaluate_checkpoint(target, **kw)  # a bad file is recomputed and replaced
    assert res.table.acc.between(0, 1).all()
