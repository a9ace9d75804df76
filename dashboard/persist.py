"""Heavy results on disk beside their checkpoint, so they survive a server restart and can
ship with the checkpoints (CKA, gradient-cosine distributions, transferability).

A result is stored as JSON in `<checkpoint folder>/.cache/<kind>_<stem>_<digest>.json`,
keyed by the kind, the checkpoint's file hash (not its path: copies share results), the
fingerprint of the test images used and every setting. JSON only (never pickle): arrays,
tensors, tuples and dicts with non-string keys are encoded explicitly. A file that does
not decode, or whose recorded key differs, counts as not computed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

PERSISTED = ("cka", "cosdist", "transfer")
VERSION = 1


def _enc(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return {"__nd__": v.tolist(), "dtype": str(v.dtype), "shape": list(v.shape)}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        return {"__tuple__": [_enc(x) for x in v]}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: _enc(x) for k, x in v.items()}
        return {"__map__": [[_enc(k), _enc(x)] for k, x in v.items()]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"cannot store a {type(v).__name__}")


def _dec(v):
    if isinstance(v, list):
        return [_dec(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "__nd__" in v:
        return np.asarray(v["__nd__"], dtype=v["dtype"]).reshape(v["shape"])
    if "__tuple__" in v:
        return tuple(_dec(x) for x in v["__tuple__"])
    if "__map__" in v:
        return {_dec(k): _dec(x) for k, x in v["__map__"]}
    return {k: _dec(x) for k, x in v.items()}


def file_for(key: tuple, fingerprint: str) -> tuple[Path, dict] | None:
    """(the file, the recorded key) for a store key ("kind", (path, sha), settings...)."""
    if not key or key[0] not in PERSISTED or not isinstance(key[1], tuple):
        return None
    path, sha = Path(key[1][0]), key[1][1]
    record = {"kind": key[0], "checkpoint_hash": sha, "data": fingerprint,
              "settings": _enc(list(key[2:])), "version": VERSION}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]
    return path.parent / ".cache" / f"{key[0]}_{path.stem}_{digest}.json", record


def load(key: tuple, fingerprint: str):
    """The stored value, or None (absent, unreadable or not what the key asks)."""
    found = file_for(key, fingerprint)
    if found is None or not found[0].is_file():
        return None
    file, record = found
    try:
        d = json.loads(file.read_text())
        if d.get("key") != json.loads(json.dumps(record)):
            return None
        return _dec(d["value"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(key: tuple, fingerprint: str, value) -> None:
    """Write atomically; a read-only folder only means the result is not kept."""
    found = file_for(key, fingerprint)
    if found is None:
        return
    file, record = found
    tmp = None
    try:
        text = json.dumps({"key": record, "value": _enc(value)})
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=file.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except (OSError, TypeError):
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
