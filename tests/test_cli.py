import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import parl_core as pc
from parl_core.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_train_and_info(tmp_path, capsys):
    out = tmp_path / "run.safetensors"
    rc = main(["train", "--dataset", "digits", "--members", "2", "--epochs", "2", "--train-subset",
               "200", "--method", "parl", "--gamma2", "0.3", "--layers", "3", "--out", str(out),
               "--quiet"])
    assert rc == 0 and out.is_file()
    assert not out.with_name(out.name + ".resume.pt").exists()
    meta = pc.read_metadata(out)
    assert meta["method"] == "parl" and meta["params"]["gamma2"] == 0.3
    assert meta["params"]["layers"] == 3 and meta["epochs_done"] == 2 and meta["members"] == 2
    assert main(["info", str(out), "--eval"]) == 0
    text = capsys.readouterr().out
    assert "PARL" in text and "clean accuracy on 450 test examples" in text


def test_existing_output_is_protected(tmp_path):
    out = tmp_path / "run.safetensors"
    args = ["train", "--members", "2", "--epochs", "1", "--train-subset", "64", "--out", str(out), "--quiet"]
    assert main(args) == 0
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="--force"):
        main(args)
    assert out.read_bytes() == before


def test_bad_input_is_explained(tmp_path, capsys):
    with pytest.raises(SystemExit, match="unknown method 'nope'"):
        main(["train", "--method", "nope", "--out", str(tmp_path / "x.safetensors")])
    assert main(["info", str(tmp_path / "missing.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err


def test_ctrl_c_keeps_last_epoch_and_resume_finishes(tmp_path):
    out = tmp_path / "long.safetensors"
    cmd = [sys.executable, "-m", "parl_core", "train", "--members", "2", "--epochs", "8",
           "--train-subset", "200", "--eval-size", "100", "--out", str(out), "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not out.exists():  # wait for the first finished epoch's checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, "training ended too early"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    done = pc.read_metadata(out)["epochs_done"]
    assert 1 <= done < 8
    rc = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=600)
    assert rc.returncode == 0, rc.stderr
    meta = pc.read_metadata(out)
    assert meta["epochs_done"] == 8 and [r["epoch"] for r in meta["history"]] == list(range(1, 9))


def test_dverge_without_warm_start_is_refused(tmp_path):
    out = tmp_path / "dv.safetensors"
    with pytest.raises(SystemExit) as e:
        main(["train", "--method", "dverge", "--members", "2", "--out", str(out)])
    msg = str(e.value)
    for part in ("--method dverge needs --init CKPT", "trained plain ensemble (ENS_U)",
                 "python -m parl_core train --method ce_only --dataset digits --members 2",
                 "--init checkpoints/digits_ce_only_s0.safetensors", "--scratch"):
        assert part in msg
    assert not out.exists()
    with pytest.raises(SystemExit, match="--scratch and --init exclude each other"):
        main(["train", "--method", "dverge", "--scratch", "--init", "x.safetensors", "--out", str(out)])
    with pytest.raises(SystemExit, match="--scratch applies to --method dverge, got --method parl"):
        main(["train", "--method", "parl", "--scratch", "--out", str(out)])
    with pytest.raises(SystemExit, match="--dverge-features applies to --method dverge, got --method gal"):
        main(["train", "--method", "gal", "--dverge-features", "reference", "--out", str(out)])
    with pytest.raises(SystemExit, match="--feature applies to --method parl, got --method dverge"):
        main(["train", "--method", "dverge", "--scratch", "--feature", "post_bn", "--out", str(out)])


@pytest.mark.parametrize("method,extra,expected", [
    ("dverge", ["--scratch", "--dverge-features", "reference", "--plus-adv", "--param", "steps=1",
                "--param", "adv_steps=1"],
     {"feature_space": "reference", "plus_adv": True, "adv_steps": 1, "steps": 1}),
    ("parl", ["--feature", "post_relu", "--bn-grad", "batch", "--layers", "2"],
     {"feature": "post_relu", "bn_grad": "batch", "layers": 2}),
])
def test_method_options_reach_the_checkpoint(tmp_path, method, extra, expected):
    out = tmp_path / f"{method}.safetensors"
    rc = main(["train", "--method", method, "--members", "2", "--epochs", "1", "--train-subset", "64",
               "--eval-size", "50", "--width", "3", "--out", str(out), "--quiet", *extra])
    assert rc == 0
    params = pc.read_metadata(out)["params"]
    assert {k: params[k] for k in expected} == expected
    assert pc.make_method(method, **params).params == params


def test_evaluate_with_two_surrogates(tmp_path, capsys):
    import shutil

    import pandas as pd
    for f in ("digits_ens_u", "digits_surrogate", "digits_parl"):
        shutil.copy2(ROOT / "checkpoints" / f"{f}.safetensors", tmp_path / f"{f}.safetensors")
    target, s1, s2 = (str(tmp_path / f"digits_{n}.safetensors") for n in ("ens_u", "surrogate", "parl"))
    rc = main(["evaluate", target, "--surrogate", s1, "--surrogate", s2, "--n", "24", "--steps", "2",
               "--eps", "0.1,0.3", "--attacks", "fgsm,mi-di", "--quiet", "--csv",
               str(tmp_path / "o.csv"), "--json", str(tmp_path / "o.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "black-box from " + s1 in out and "black-box from " + s2 in out  # per surrogate
    assert "black-box from 2 surrogates" in out and "the worst over surrogates" in out
    table = out[out.index("black-box from 2 surrogates"):]
    assert "digits_surrogate" in table and "digits_parl" in table and "mi-di" in table
    csv = pd.read_csv(tmp_path / "o.csv")
    assert set(csv.surrogate) == {"digits_surrogate", "digits_parl", "worst"}
    assert len(csv[csv.surrogate == "worst"]) == 7  # clean, 2 x (fgsm, mi-di, worst-case)
    worst = csv[csv.surrogate == "worst"].set_index(["attack", "eps"]).acc
    each = csv[csv.surrogate != "worst"].groupby(["attack", "eps"]).acc.min()
    assert (worst <= each.loc[worst.index] + 1e-12).all()
    import json
    d = json.loads((tmp_path / "o.json").read_text())
    assert set(d["per_surrogate"]) == {"digits_surrogate", "digits_parl"} and d["worst"]["table"]


def test_evaluate_convergence_flag(tmp_path, capsys):
    import shutil
    shutil.copy2(ROOT / "checkpoints" / "digits_ens_u.safetensors", tmp_path / "t.safetensors")
    rc = main(["evaluate", str(tmp_path / "t.safetensors"), "--n", "24", "--steps", "2", "--eps",
               "0.1,0.3", "--attacks", "pgd", "--convergence", "--quiet", "--no-cache"])
    out = capsys.readouterr().out
    assert rc == 0 and "PGD at ε = 0.3: " in out and "after 2 steps" in out and "after 8" in out
