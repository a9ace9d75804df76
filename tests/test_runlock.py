"""One writer per output (parl_core/runlock.py): a live holder, in this process or another,
is refused with its pid; the lock of a dead run is taken over; racing threads get exactly
one lock; the CLI refuses a second `train` writing the same --out."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from parl_core import runlock
from parl_core.runlock import RunLock, RunLockedError, lock_holder, lock_path

REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_second_lock_in_this_process_is_refused_and_release_frees(tmp_path):
    target = tmp_path / "a.safetensors"
    a = RunLock(target, owner="first run").acquire()
    assert lock_path(target) == tmp_path / ".a.safetensors.lock" and lock_path(target).is_file()
    assert not target.exists()  # the lock never creates the file it guards
    with pytest.raises(RunLockedError, match=rf"being written by first run \(pid {os.getpid()}"):
        RunLock(target).acquire()
    assert lock_holder(target)["owner"] == "first run"
    a.release()
    assert not lock_path(target).exists() and lock_holder(target) is None
    a.release()  # idempotent
    with RunLock(target) as b:
        assert b.held and b.taken_over is None
    assert not lock_path(target).exists()


def test_a_live_holder_in_another_process_is_refused_and_its_lock_taken_over_when_it_dies(tmp_path):
    target = tmp_path / "b.safetensors"
    code = ("import sys; from parl_core.runlock import RunLock; "
            f"l = RunLock({str(target)!r}, owner='the other run').acquire(); print('held', flush=True); "
            "sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"the other run \(pid {proc.pid}"):
            RunLock(target).acquire()
        assert lock_holder(target)["pid"] == proc.pid
    finally:
        proc.kill()  # killed: no release, the lock file stays behind
        proc.wait()
    assert lock_path(target).is_file() and lock_holder(target) is None  # stale
    with RunLock(target, owner="me") as lock:
        assert lock.taken_over["pid"] == proc.pid
        assert json.loads(lock_path(target).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("content", ["dead", "garbage", "empty"])
def test_stale_or_unreadable_lock_files_are_taken_over(tmp_path, content):
    target = tmp_path / "c.safetensors"
    text = {"dead": json.dumps({"pid": _dead_pid(), "owner": "a killed run"}),
            "garbage": "\x00not json", "empty": ""}[content]
    lock_path(target).write_text(text)
    with RunLock(target) as lock:
        assert lock.held
        assert lock.taken_over == ({"pid": json.loads(text)["pid"], "owner": "a killed run"}
                                   if content == "dead" else {})


def test_racing_threads_get_exactly_one_lock(tmp_path):
    target = tmp_path / "d.safetensors"
    lock_path(target).write_text(json.dumps({"pid": _dead_pid()}))  # a stale one to fight over
    won, refused, errors = [], [], []
    go = threading.Barrier(8)

    def attempt():
        go.wait()
        lock = RunLock(target)
        try:
            lock.acquire()
            won.append(lock)
        except RunLockedError:
            refused.append(1)
        except Exception as e:  # noqa: BLE001  (any other failure fails the test below)
            errors.append(e)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(won) == 1 and len(refused) == 7
    won[0].release()


def test_without_flock_the_pid_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "fcntl", None)
    target = tmp_path / "e.safetensors"
    lock_path(target).write_text(json.dumps({"pid": os.getpid(), "owner": "alive"}))
    with pytest.raises(RunLockedError, match="alive"):
        RunLock(target).acquire()
    lock_path(target).write_text(json.dumps({"pid": _dead_pid(), "owner": "dead"}))
    with RunLock(target) as lock:
        assert lock.taken_over["owner"] == "dead"


def test_bad_arguments_name_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="owner must be a string"):
        RunLock(tmp_path / "x.safetensors", owner=3)
    with pytest.raises(ValueError, match="target must name a file"):
        lock_path("")
    lock = RunLock(tmp_path / "x.safetensors").acquire()
    with pytest.raises(RuntimeError, match="already held"):
        lock.acquire()
    lock.release()


def test_cli_refuses_a_second_train_writing_the_same_out(tmp_path, capsys):
    from parl_core.cli import main
    out = tmp_path / "run.safetensors"
    with RunLock(out, owner="python -m parl_core train"):
        with pytest.raises(SystemExit, match=r"--out: .*run.safetensors is being written by "
                                             r"python -m parl_core train \(pid \d+"):
            main(["train", "--epochs", "1", "--train-subset", "64", "--out", str(out)])
    assert not out.exists()
