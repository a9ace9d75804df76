"""The state that continues an interrupted training run: `<checkpoint>.resume.pt`.

Beside a checkpoint written after every epoch (`python -m parl_core train`, dashboard
training), `<name>.safetensors.resume.pt` holds {"settings": what must match to
continue, "state": History.state (weights, Adam's state, history so far)}, written by
`torch.save` and read with `torch.load(weights_only=True)` (tensors and plain types
only, never arbitrary pickles). The checkpoint itself never needs this file: it is the
optimiser's memory, kept so a resumed run continues exactly as the uninterrupted one.

`save_resume_state` writes atomically (a `.tmp-*` file in the same folder, fsync, then
os.replace, then the folder's fsync), so a kill or a full disk during the write leaves
the previous state intact, never a truncated file. `load_resume_state` turns any
unreadable, truncated or malformed file into a `ResumeStateError` whose message names
the file and what to do, never a traceback.

A checkpoint written after an epoch of a run that has not finished is *partial*: its
metadata's `epochs_done` is below its `epochs` (planned), fields the checkpoint schema
always had (`is_partial`); `cancelled` tells a cancelled run from an interrupted one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ["ResumeStateError", "resume_path", "save_resume_state", "load_resume_state", "is_partial"]


class ResumeStateError(ValueError):
    """A resume state file that cannot be used (the message says why and what to do)."""


def resume_path(checkpoint) -> Path:
    """`<checkpoint>.resume.pt`, beside the checkpoint."""
    checkpoint = Path(checkpoint)
    if not checkpoint.name:
        raise ValueError(f"checkpoint must name a file, got {str(checkpoint)!r}")
    return checkpoint.with_name(checkpoint.name + ".resume.pt")


def is_partial(meta: dict) -> bool:
    """Whether checkpoint metadata describes an unfinished run (epochs_done < epochs)."""
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a checkpoint's metadata dict, got {type(meta).__name__}")
    done, planned = meta.get("epochs_done"), meta.get("epochs")
    return isinstance(done, int) and isinstance(planned, int) and done < planned


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync folders; the rename is still atomic
    finally:
        os.close(fd)


def save_resume_state(path, settings: dict, state: dict) -> Path:
    """Write {"settings", "state"} to `path` atomically; returns the path. Raises OSError
    (e.g. disk full) with nothing changed at `path`."""
    path = Path(path)
    if not isinstance(settings, dict):
        raise ValueError(f"settings must be a dict, got {type(settings).__name__}")
    if not (isinstance(state, dict) and {"model", "optimizer", "history"} <= set(state)):
        raise ValueError("state must be a History.state dict with model, optimizer and history, "
                         f"got {type(state).__name__}"
                         + (f" with keys {sorted(state)}" if isinstance(state, dict) else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".resume.pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"settings": settings, "state": state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_resume_state(path) -> dict:
    """{"settings": dict, "state": History.state} from `path`, tensors on the CPU.
    FileNotFoundError when absent; ResumeStateError when unreadable or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume state {path} not found")
    what = (f"the resume state {path} cannot be used")
    fix = ("the checkpoint beside it still holds the last finished epoch; to train again from "
           "the start, delete this file and run without resuming")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage, a forbidden pickle: all the same to a person
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ResumeStateError(f"{what}: it is truncated, corrupt or not a resume state "
                               f"({type(e).__name__}: {reason}); {fix}") from None
    state = saved.get("state") if isinstance(saved, dict) else None
    if not (isinstance(saved, dict) and isinstance(saved.get("settings"), dict)
            and isinstance(state, dict) and isinstance(state.get("model"), dict)
            and isinstance(state.get("optimizer"), dict) and isinstance(state.get("history"), list)):
        raise ResumeStateError(f"{what}: it does not hold settings and a training state "
                               f"(model, optimizer, history); {fix}")
    return saved
