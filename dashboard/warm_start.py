"""Warm starts for dashboard training: DVERGE, like its reference trainer and the paper,
starts from a trained plain ensemble (ENS_U) of the same dataset, architecture and size.
`choices` lists the candidates in a checkpoint folder; `check_init` / `warm_start` check
and load the chosen one (jobs.TrainSettings.init)."""
from __future__ import annotations

from pathlib import Path

import parl_core as pc
from parl_core.checkpoints import CheckpointError, list_checkpoints, read_metadata


def _fits(meta: dict, dataset: str, arch: str, members: int) -> bool:
    return (meta.get("dataset") == dataset and (meta.get("model") or {}).get("arch") == arch
            and meta.get("members") == members)


def choices(folder, dataset: str, arch: str, members: int) -> list[str]:
    """Names of the folder's finished ENS_U checkpoints that fit a run (surrogates last)."""
    out = []
    for p in list_checkpoints(folder):
        try:
            m = read_metadata(p)
        except (CheckpointError, OSError, ValueError):
            continue
        done = not m.get("cancelled") and (m.get("epochs_done") in (None, m.get("epochs")))
        if m.get("method") == "ce_only" and done and _fits(m, dataset, arch, members):
            out.append(p.stem)
    return sorted(out, key=lambda n: ("surrogate" in n, n))


def check_init(s, path: Path) -> Path:
    """`path`, the warm-start checkpoint of settings `s` (jobs.TrainSettings), checked from
    its metadata: it must exist and have the run's dataset, architecture and number of
    members (ValueError saying which differs)."""
    if not isinstance(s.init, str) or not s.init:
        raise ValueError(f"init must be a checkpoint name, got {s.init!r}")
    if not path.is_file():
        raise ValueError(f"the warm-start checkpoint {s.init!r} is not in the checkpoint folder")
    meta = read_metadata(path)
    if not _fits(meta, s.dataset, s.arch, s.members):
        got = {"dataset": meta.get("dataset"), "arch": (meta.get("model") or {}).get("arch"),
               "members": meta.get("members")}
        want = {"dataset": s.dataset, "arch": s.arch, "members": s.members}
        diff = ", ".join(f"{k} {got[k]} (this run: {want[k]})" for k in want if got[k] != want[k])
        raise ValueError(f"the warm-start checkpoint {s.init!r} does not fit this run: {diff}")
    return path


def warm_start(ens, s, path: Path) -> None:
    """Load the warm-start checkpoint (checked by `check_init`) into `ens`."""
    init, _ = pc.load_checkpoint(check_init(s, path), device="cpu")
    ens.load_state_dict(init.state_dict())
