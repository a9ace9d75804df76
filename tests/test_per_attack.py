"""Per-attack evaluations (parl_core.per_attack): merged, they give the table one evaluation
of all the attacks gives; each attack is cached on its own, so a longer list reuses the
finished ones; parts of different targets or examples are refused; the CLI's --per-attack."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import parl_core as pc
from parl_core import checkpoint_eval
from parl_core.per_attack import evaluate_per_attack, merge_results

REPO = Path(__file__).resolve().parents[1]
COLS = ["attack", "eps", "n", "correct", "acc", "ci_low", "ci_high"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def ckpts(tmp_path):
    for n in ("ens_u", "parl", "surrogate"):
        shutil.copy2(REPO / "checkpoints" / f"digits_{n}.safetensors", tmp_path)
    return {n: str(tmp_path / f"digits_{n}.safetensors") for n in ("ens_u", "parl", "surrogate")}


KW = dict(n_examples=60, eps=[0.1, 0.25], steps=4, seed=1)


def test_merged_parts_equal_one_evaluation_of_every_attack(ckpts):
    attacks = ["fgsm", "pgd", "pgd-vote", "square"]
    targets = [ckpts["parl"], ckpts["ens_u"]]
    for surrogate in (None, ckpts["surrogate"]):
        one = pc.evaluate_checkpoints(targets, surrogate=surrogate, attacks=attacks, cache=False, **KW)
        per = evaluate_per_attack(targets, surrogate=surrogate, attacks=attacks, cache=False, **KW)
        for a, b in zip(one, per):
            assert a.table[COLS].equals(b.table[COLS])
            assert set(b.table.attack) == {"clean", *attacks, "worst-case"}
            for e in KW["eps"]:
                assert (a.verdict("worst-case", e) == b.verdict("worst-case", e)).all()
            assert b.settings["attacks"] == attacks and b.settings["per_attack"]
            same = [c for c in a.checks if c["check"] != "largest eps"]  # see the module docstring
            assert same == [c for c in b.checks if c["check"] != "largest eps"]
            if surrogate is None:
                assert a.checks == b.checks
    # the paired comparison reads the merged verdicts
    cmp = pc.paired_comparison(per[1], per[0])
    assert "worst-case" in set(cmp.attack)


def test_each_attack_is_cached_on_its_own_and_reused(ckpts, monkeypatch):
    target = [ckpts["parl"]]
    evaluate_per_attack(target, attacks=["fgsm", "pgd"], **KW)
    calls = []
    real = checkpoint_eval.robustness_curve
    monkeypatch.setattr(checkpoint_eval, "robustness_curve",
                        lambda *a, **k: calls.append(k["attacks"]) or real(*a, **k))
    seen = []
    (res,) = evaluate_per_attack(target, attacks=["fgsm", "pgd", "bim"], **KW,
                                 on_attack=lambda a, i, k, s: seen.append((a, i, k)))
    assert calls == [["bim"]]  # fgsm and pgd came from their own cache files
    assert seen == [("fgsm", 0, 3), ("pgd", 1, 3), ("bim", 2, 3)]
    assert list(dict.fromkeys(res.table.attack)) == ["clean", "fgsm", "pgd", "bim", "worst-case"]
    # a one-attack evaluation made elsewhere shares the key: no new work
    calls.clear()
    pc.evaluate_checkpoints(target, attacks=["pgd"], **KW)
    assert calls == []


def test_merge_refuses_what_does_not_belong_together(ckpts):
    a = pc.evaluate_checkpoints([ckpts["parl"]], attacks=["fgsm"], cache=False, **KW)[0]
    b = pc.evaluate_checkpoints([ckpts["ens_u"]], attacks=["pgd"], cache=False, **KW)[0]
    c = pc.evaluate_checkpoints([ckpts["parl"]], attacks=["pgd"], cache=False, **dict(KW, n_examples=50))[0]
    with pytest.raises(ValueError, match="'checkpoint'"):
        merge_results([a, b])
    with pytest.raises(ValueError, match="'n'"):
        merge_results([a, c])
    with pytest.raises(ValueError, match="more than one part"):
        merge_results([a, a])
    with pytest.raises(ValueError, match="RobustnessResult"):
        merge_results([])
    with pytest.raises(ValueError, match="convergence"):
        evaluate_per_attack([ckpts["parl"]], attacks=["fgsm"], convergence=True, **KW)


def test_cli_per_attack(ckpts, capsys):
    from parl_core.cli import main
    args = ["evaluate", ckpts["parl"], "--target", ckpts["ens_u"], "--surrogate", ckpts["surrogate"],
            "--n", "40", "--steps", "3", "--eps", "0.2", "--attacks", "fgsm,pgd-vote", "--per-attack",
            "--loss", "margin", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pgd-vote" in out and "worst-case" in out and "paired, same examples" in out
    with pytest.raises(SystemExit, match="one --surrogate"):
        main(args + ["--surrogate", ckpts["surrogate"]])
