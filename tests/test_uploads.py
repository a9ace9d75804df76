"""Checkpoint file operations (dashboard.uploads) against training runs: a run's lock on a
name keeps uploads, renames and deletes off it; a partial run's resume state follows its
checkpoint when renamed and goes with it when deleted."""
import shutil

import pytest

from conftest import REPO
from dashboard import uploads
from parl_core.resume_state import resume_path
from parl_core.runlock import RunLock, RunLockedError

SRC = REPO / "checkpoints" / "digits_ens_u.safetensors"


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PARL_CHECKPOINTS", str(tmp_path))
    monkeypatch.delenv("PARL_READONLY", raising=False)
    return tmp_path.resolve()


def test_an_upload_never_lands_on_a_name_a_run_holds(folder):
    with RunLock(folder / "run.safetensors", owner="a dashboard training run"):
        with pytest.raises(RunLockedError, match="a dashboard training run"):
            uploads.save_upload(SRC.read_bytes(), "run")
    assert not (folder / "run.safetensors").exists() and not list(folder.glob(".tmp-*"))
    assert uploads.save_upload(SRC.read_bytes(), "run").read_bytes() == SRC.read_bytes()  # free again


def test_rename_moves_the_resume_state_and_respects_locks(folder):
    a = folder / "a.safetensors"
    shutil.copyfile(SRC, a)
    resume_path(a).write_bytes(b"state")
    b = uploads.rename(a, "b")
    assert b == folder / "b.safetensors" and b.is_file() and not a.exists()
    assert resume_path(b).read_bytes() == b"state" and not resume_path(a).exists()
    with pytest.raises(FileExistsError, match="already named"):
        uploads.rename(b, "b")
    with RunLock(folder / "c.safetensors"):  # a run has reserved c
        with pytest.raises(RunLockedError):
            uploads.rename(b, "c")
    with RunLock(b):  # a run is writing b
        with pytest.raises(RunLockedError):
            uploads.rename(b, "d")
    assert b.is_file() and not list(folder.glob(".*.lock"))


def test_delete_takes_the_resume_state_along_and_not_under_a_run(folder):
    a = folder / "a.safetensors"
    shutil.copyfile(SRC, a)
    resume_path(a).write_bytes(b"state")
    with RunLock(a):
        with pytest.raises(RunLockedError):
            uploads.delete(a)
    assert a.is_file()
    uploads.delete(a)
    assert not a.exists() and not resume_path(a).exists()
