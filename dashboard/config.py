"""Server-wide settings, read from the environment (no Streamlit here).

PARL_CHECKPOINTS  folder of checkpoints (default ./checkpoints); tests point it at a copy.
PARL_READONLY     1/true: classroom mode, no uploads, renames, deletes (training still
                  allowed, up to PARL_MAX_JOBS at once; PARL_NO_TRAIN=1 turns it off too).
PARL_MAX_JOBS     training jobs running at once on this server (default 2).
PARL_MAX_UPLOAD_MB largest checkpoint accepted by the upload form (default 50).
PARL_TORCH_THREADS intra-op threads of the server (default 1 on CPU, see configure_torch).
PARL_DEBUG        1: unexpected exceptions propagate (tests) instead of an st.error.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _flag(name: str, default: bool = False) -> bool:
    v = os.environ.get(name)
    return default if v is None else v.strip().lower() in ("1", "true", "yes", "on")


def checkpoint_dir() -> Path:
    """The folder whose *.safetensors files are the app's checkpoints (created if missing)."""
    d = Path(os.environ.get("PARL_CHECKPOINTS") or REPO / "checkpoints").resolve()
    d.mkdir(parents=True, exist_ok=True)
    return d


def debug() -> bool:
    """PARL_DEBUG=1: let unexpected exceptions through (tests, development)."""
    return _flag("PARL_DEBUG")


def readonly() -> bool:
    return _flag("PARL_READONLY")


def training_allowed() -> bool:
    return not _flag("PARL_NO_TRAIN")


def max_jobs() -> int:
    try:
        return max(1, int(os.environ.get("PARL_MAX_JOBS", "2")))
    except ValueError:
        return 2


def max_upload_bytes() -> int:
    try:
        return int(float(os.environ.get("PARL_MAX_UPLOAD_MB", "50")) * 2**20)
    except ValueError:
        return 50 * 2**20


def data_root() -> Path | None:
    """Where CIFAR folders are looked for (PARL_DATA, else parl_core's default)."""
    v = os.environ.get("PARL_DATA")
    return Path(v) if v else None


def configure_torch() -> None:
    """Intra-op threads for this server (PARL_TORCH_THREADS, default 1 on CPU).

    One server process runs every session's analyses and the training jobs side by side;
    with several intra-op threads each, they oversubscribe the cores and OpenMP's
    spinning threads slow everything down by an order of magnitude (measured here: a
    2-epoch digits run took 30 s with 2 threads on a busy 2-core machine, 1.3 s with 1)."""
    import torch
    v = os.environ.get("PARL_TORCH_THREADS")
    if v:
        torch.set_num_threads(max(1, int(v)))
    elif not torch.cuda.is_available():
        torch.set_num_threads(1)
