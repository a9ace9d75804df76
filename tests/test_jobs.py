"""Dashboard training jobs keep what they trained (dashboard/jobs.py): a checkpoint after
every epoch, marked partial until the last; a reserved name (the next free one when it is
taken); a save that fails keeps the ensemble for a retry or a download; an interrupted run
resumes exactly; start_job enforces no-train and read-only modes itself."""
import errno
import json
import threading

import pytest
import torch

import parl_core as pc
from dashboard import jobs
from parl_core.resume_state import resume_path
from parl_core.runlock import RunLock, lock_holder, lock_path


@pytest.fixture
def folder(tmp_path, monkeypatch, one_torch_thread):
    d = tmp_path / "checkpoints"
    d.mkdir()
    monkeypatch.setenv("PARL_CHECKPOINTS", str(d))
    monkeypatch.setattr(jobs, "_JOBS", {})  # this test's jobs only
    for k in ("PARL_READONLY", "PARL_NO_TRAIN", "PARL_MAX_JOBS"):
        monkeypatch.delenv(k, raising=False)
    yield d
    for job in list(jobs._JOBS.values()):  # nothing keeps running into the next test
        job.cancel()
        _join(job)


def _tiny(name: str, epochs: int = 2, **kw) -> jobs.TrainSettings:
    return jobs.TrainSettings(members=2, epochs=epochs, batch_size=32, train_subset=64, name=name,
                              method="parl", params={"gamma2": 0.5}, **kw)


def _join(job, timeout=180):
    for t in threading.enumerate():
        if t.name == f"parl-train-{job.id}":
            t.join(timeout)
    assert not job.active


def _record_writes(monkeypatch, fail=None):
    """Every checkpoint the jobs write, as (epochs_done, epochs, cancelled); `fail(n)` True
    makes the n-th write (1-based) raise a full disk."""
    seen, real = [], jobs._write

    def write(path, ens, meta):
        seen.append((meta["epochs_done"], meta["epochs"], meta["cancelled"]))
        if fail is not None and fail(len(seen)):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, ens, meta)
    monkeypatch.setattr(jobs, "_write", write)
    return seen


def test_every_epoch_is_saved_and_marked_partial_until_the_last(folder, monkeypatch):
    seen = _record_writes(monkeypatch)
    job = jobs.start_job(_tiny("every_epoch", epochs=3))
    assert lock_holder(folder / "every_epoch.safetensors")["owner"] == "a dashboard training job"
    _join(job)
    assert job.status == "finished", job.error
    assert seen == [(1, 3, False), (2, 3, False), (3, 3, False)]
    meta = pc.read_metadata(folder / "every_epoch.safetensors")
    assert meta["epochs_done"] == 3 and meta["source"] == "dashboard" and not meta["cancelled"]
    assert not resume_path(folder / "every_epoch.safetensors").exists()  # finished: nothing to resume
    assert not lock_path(folder / "every_epoch.safetensors").exists()  # reservation released
    assert sorted(p.name for p in folder.iterdir()) == ["every_epoch.safetensors"]  # no .tmp-* left


def test_a_taken_name_saves_under_the_next_free_one(folder):
    pc.save_checkpoint(folder / "taken.safetensors", pc.build_ensemble(
        "smallcnn", 2, pc.load_dataset("digits", "test")), {})
    with RunLock(folder / "taken_2.safetensors", owner="another session's run"):  # running, no file yet
        job = jobs.start_job(_tiny("taken", epochs=1))
        assert job.settings.name == "taken_3" and job.requested_name == "taken"
        assert not jobs.name_in_use("taken_4") and jobs.name_in_use("taken_2")
        _join(job)
    assert job.status == "finished" and (folder / "taken_3.safetensors").is_file()
    # overwrite asks for that very file: refused while another live run writes it
    with RunLock(folder / "taken.safetensors"):
        with pytest.raises(FileExistsError, match="being written by another training run"):
            jobs.start_job(_tiny("taken", overwrite=True))


def test_two_starts_with_the_same_name_at_once_get_two_names(folder):
    a, b = jobs.start_job(_tiny("twin", epochs=1)), jobs.start_job(_tiny("twin", epochs=1))
    _join(a)
    _join(b)
    assert {a.settings.name, b.settings.name} == {"twin", "twin_2"}
    assert all(j.status == "finished" for j in (a, b))
    assert pc.read_metadata(folder / "twin.safetensors")["epochs_done"] == 1
    assert pc.read_metadata(folder / "twin_2.safetensors")["epochs_done"] == 1


def test_a_failed_save_keeps_the_ensemble_for_retry_and_download(folder, monkeypatch, tmp_path):
    disk_full = {"on": True}
    _record_writes(monkeypatch, fail=lambda n: disk_full["on"])
    job = jobs.start_job(_tiny("full_disk", epochs=2))
    _join(job)
    assert job.status == "finished" and job.pending is not None
    assert "No space left on device" in job.save_error
    assert not (folder / "full_disk.safetensors").exists()
    assert lock_holder(folder / "full_disk.safetensors") is not None  # the name stays reserved
    data = jobs.checkpoint_bytes(job)
    (tmp_path / "dl.safetensors").write_bytes(data)
    ens, meta = pc.load_checkpoint(tmp_path / "dl.safetensors")
    assert meta["epochs_done"] == 2 and len(ens.members) == 2
    assert not jobs.retry_save(job) and job.pending is not None  # still full
    disk_full["on"] = False
    assert jobs.retry_save(job) and job.pending is None and job.save_error is None
    assert pc.read_metadata(folder / "full_disk.safetensors")["epochs_done"] == 2
    assert lock_holder(folder / "full_disk.safetensors") is None
    with pytest.raises(ValueError, match="no unsaved checkpoint"):
        jobs.retry_save(job)


def test_a_failed_epoch_save_is_retried_at_the_next_epoch(folder, monkeypatch):
    seen = _record_writes(monkeypatch, fail=lambda n: n == 1)
    job = jobs.start_job(_tiny("one_miss", epochs=2))
    _join(job)
    assert job.status == "finished" and job.pending is None and job.save_error is None
    assert [s[0] for s in seen] == [1, 2]
    assert pc.read_metadata(folder / "one_miss.safetensors")["epochs_done"] == 2


def _interrupted(folder, monkeypatch, name, epochs=3):
    """A run stopped after its first epoch, then the server 'restarts' (registry emptied)."""
    real = jobs.Job.on_progress

    def stop_after_first(self, ev):
        real(self, ev)
        if ev["event"] == "epoch":
            self.cancel()
    with monkeypatch.context() as m:
        m.setattr(jobs.Job, "on_progress", stop_after_first)
        job = jobs.start_job(_tiny(name, epochs=epochs))
        _join(job)
    monkeypatch.setattr(jobs, "_JOBS", {})
    return job


def test_an_interrupted_run_is_offered_and_resumes_exactly(folder, monkeypatch):
    job = _interrupted(folder, monkeypatch, "halfway")
    assert job.status == "cancelled"
    meta = pc.read_metadata(folder / "halfway.safetensors")
    assert meta["epochs_done"] == 1 and meta["epochs"] == 3 and meta["cancelled"]
    # a server killed mid-run leaves its lock file: stale, so the run is still offered
    lock_path(folder / "halfway.safetensors").write_text(json.dumps({"pid": 2**22 + 7}))
    (offer,) = jobs.resumable()
    assert offer == {"name": "halfway", "epochs_done": 1, "epochs": 3, "cancelled": True,
                     "method": "parl", "dataset": "digits"}
    resumed = jobs.resume_job("halfway")
    assert resumed.settings.name == "halfway" and resumed.resumed_from == 1
    assert jobs.resumable() == []  # being written: not offered twice
    _join(resumed)
    assert resumed.status == "finished" and len(resumed.history) == 3
    assert [r["epoch"] for r in pc.read_metadata(folder / "halfway.safetensors")["history"]] == [1, 2, 3]
    assert not resume_path(folder / "halfway.safetensors").exists()
    whole = jobs.start_job(_tiny("whole", epochs=3))
    _join(whole)
    a, _ = pc.load_checkpoint(folder / "halfway.safetensors")
    b, _ = pc.load_checkpoint(folder / "whole.safetensors")
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_resume_refuses_what_it_cannot_continue(folder, monkeypatch):
    _interrupted(folder, monkeypatch, "broken", epochs=2)
    resume_path(folder / "broken.safetensors").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="truncated, corrupt"):
        jobs.resume_job("broken")
    with pytest.raises(FileNotFoundError, match="not found"):
        jobs.resume_job("never_was")
    assert not lock_path(folder / "broken.safetensors").exists()  # a refused start keeps no lock


def test_start_job_enforces_the_server_modes_itself(folder, monkeypatch):
    monkeypatch.setenv("PARL_NO_TRAIN", "1")
    with pytest.raises(PermissionError, match="PARL_NO_TRAIN=1"):
        jobs.start_job(_tiny("no_train"))
    monkeypatch.delenv("PARL_NO_TRAIN")
    monkeypatch.setenv("PARL_READONLY", "1")
    with pytest.raises(PermissionError, match=r"read-only\) mode .*overwrite"):
        jobs.start_job(_tiny("ro", overwrite=True))
    with pytest.raises(PermissionError, match=r"read-only\) mode .*resume"):
        jobs.start_job(_tiny("ro", resume=True))
    with pytest.raises(ValueError, match="settings must be a jobs.TrainSettings"):
        jobs.start_job({"name": "x"})
    assert jobs._JOBS == {} and list(folder.iterdir()) == []
    job = jobs.start_job(_tiny("ro_new", epochs=1))  # a new name is still allowed in classroom mode
    _join(job)
    assert job.status == "finished"
