"""The resume state beside a checkpoint (parl_core/resume_state.py): written atomically (a
failed write leaves the previous state and no temporary file), and an unreadable file
gets a message naming it, in the API and in `python -m parl_core train --resume`."""
import errno
import pickle

import pytest
import torch

from parl_core import resume_state
from parl_core.resume_state import (ResumeStateError, is_partial, load_resume_state, resume_path,
                                    save_resume_state)


def _state(v: float) -> dict:
    return {"model": {"w": torch.full((3,), v)}, "optimizer": {"state": {}, "param_groups": []},
            "history": [{"epoch": 1, "loss": v}]}


def test_round_trip_and_the_path(tmp_path):
    ckpt = tmp_path / "run.safetensors"
    assert resume_path(ckpt) == tmp_path / "run.safetensors.resume.pt"
    f = save_resume_state(resume_path(ckpt), {"seed": 1}, _state(0.5))
    back = load_resume_state(f)
    assert back["settings"] == {"seed": 1} and torch.equal(back["state"]["model"]["w"], torch.full((3,), 0.5))
    assert [p.name for p in tmp_path.iterdir()] == ["run.safetensors.resume.pt"]


def test_a_write_that_fails_midway_keeps_the_previous_state(tmp_path, monkeypatch):
    f = save_resume_state(tmp_path / "r.resume.pt", {"seed": 1}, _state(1.0))
    before = f.read_bytes()

    def disk_full(obj, fh, *a, **k):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(resume_state.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_resume_state(f, {"seed": 1}, _state(2.0))
    assert f.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.resume.pt"]  # no .tmp-* left behind


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "pickle", "wrong shape"])
def test_unreadable_states_get_a_message_not_a_traceback(tmp_path, damage):
    f = save_resume_state(tmp_path / "r.resume.pt", {"seed": 1}, _state(1.0))
    data = f.read_bytes()
    if damage == "truncated":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        f.write_bytes(b"\x00\xff" * 100)
    elif damage == "empty":
        f.write_bytes(b"")
    elif damage == "pickle":  # an object weights_only refuses to build
        f.write_bytes(pickle.dumps(ResumeStateError("x")))
    else:
        torch.save({"settings": {}, "state": {"model": {}}}, f)
    with pytest.raises(ResumeStateError, match=r"the resume state .*r.resume.pt cannot be used.*"
                                               r"delete this file"):
        load_resume_state(f)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_resume_state(tmp_path / "absent.resume.pt")


def test_bad_arguments_and_is_partial(tmp_path):
    with pytest.raises(ValueError, match="settings must be a dict"):
        save_resume_state(tmp_path / "r.pt", [1], _state(1.0))
    with pytest.raises(ValueError, match="state must be a History.state"):
        save_resume_state(tmp_path / "r.pt", {}, {"model": {}})
    assert is_partial({"epochs_done": 3, "epochs": 40}) and not is_partial({"epochs_done": 40, "epochs": 40})
    assert not is_partial({"epochs": 40})
    with pytest.raises(ValueError, match="meta must be"):
        is_partial(None)


def test_cli_resume_from_a_truncated_state_says_so(tmp_path):
    from parl_core.cli import main
    out = tmp_path / "run.safetensors"
    resume_path(out).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(SystemExit, match=r"--resume: the resume state .*run.safetensors.resume.pt "
                                         r"cannot be used: it is truncated"):
        main(["train", "--epochs", "1", "--train-subset", "64", "--out", str(out), "--resume"])
