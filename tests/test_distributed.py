"""Data-parallel training under torchrun on CPU (gloo, 2 processes), started by the tests:
one DDP step gives the parameter gradients of one single-process step on the concatenated
batch (batch norm in eval mode), PARL's double backward included; a 2-process digits run
trains, saves every epoch from rank 0 only, and after being killed resumes to the end."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import parl_core as pc
from conftest import REPO

sys.path.insert(0, str(REPO / "tests"))
import ddp_worker  # noqa: E402


def _torchrun(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args], env


@pytest.mark.parametrize("method", ["parl", "ce_only"])
def test_one_ddp_step_equals_one_step_on_the_whole_batch(method, tmp_path):
    out = tmp_path / "grads.pt"
    cmd, env = _torchrun([str(REPO / "tests" / "ddp_worker.py"), method, str(out)])
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    ds, x, y = ddp_worker.batch()
    ens = ddp_worker.model(ds)
    loss, _ = pc.make_method(method, **ddp_worker.PARAMS[method])(ens, x, y)
    loss.backward()
    single = {n: p.grad for n, p in ens.named_parameters()}
    assert ddp.keys() == single.keys()
    for n in single:
        torch.testing.assert_close(ddp[n], single[n], rtol=1e-5, atol=1e-7, msg=n)


def _kill_all(text: str) -> None:
    """SIGKILL every process whose command line mentions `text` (torchrun starts its
    workers in sessions of their own: a process-group kill misses them)."""
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and text in (d / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(d.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
            text in (d / "cmdline").read_bytes().decode(errors="replace")
            for d in Path("/proc").iterdir() if d.name.isdigit() and (d / "cmdline").exists()):
        time.sleep(0.2)


def _train_cmd(out, epochs, *extra):
    return _torchrun(["-m", "parl_core", "train", "--dataset", "digits", "--method", "parl",
                      "--epochs", str(epochs), "--batch-size", "64", "--eval-size", "100",
                      "--layers", "2", "--out", str(out), "--quiet", *extra])


def test_two_process_run_trains_is_killed_and_resumes(tmp_path):
    out = tmp_path / "ddp.safetensors"
    epochs = 40
    cmd, env = _train_cmd(out, epochs)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert out.exists(), (proc.poll(), proc.stdout.read().decode()[-3000:] if proc.poll() is not None else "")
    _kill_all(str(out))  # torchrun and both workers (in sessions of their own) die at once, mid-epoch
    proc.wait(timeout=60)
    meta = pc.read_metadata(out)
    done = meta["epochs_done"]
    assert 1 <= done < epochs  # the last finished epoch, written atomically by rank 0
    assert not list(tmp_path.glob(".tmp-*"))
    cmd, env = _train_cmd(out, epochs, "--resume")
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("saved ") == 1  # rank 0 alone reports
    meta = pc.read_metadata(out)
    assert meta["epochs_done"] == epochs and [h["epoch"] for h in meta["history"]] == list(range(1, epochs + 1))
    assert meta["history"][-1]["test_acc"] > 0.5
    assert not (tmp_path / "ddp.safetensors.resume.pt").exists() and not list(tmp_path.glob(".*.lock"))


def test_batch_must_divide_by_processes_and_sync_bn_needs_torchrun(tmp_path):
    cmd, env = _train_cmd(tmp_path / "x.safetensors", 1)
    cmd[cmd.index("64")] = "63"
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "must divide by the 2 processes" in r.stdout + r.stderr
    from parl_core.cli import main
    with pytest.raises(SystemExit, match="start the command with torchrun"):
        main(["train", "--dataset", "digits", "--epochs", "1", "--sync-bn", "--out",
              str(tmp_path / "y.safetensors")])
