"""Heavy results on disk beside their checkpoint, so they survive a server restart and can
ship with the checkpoints (CKA, gradient-cosine distributions, transferability).

The pages' store keys ("kind", (path, sha), settings...) mapped onto
parl_core.stored_results, the one file format (also written by
`python -m parl_core prepare`): `<checkpoint folder>/.cache/<kind>_<stem>_<digest>.json`,
keyed by the kind, the checkpoint's file hash, the fingerprint of the test images used
and every setting after the checkpoint in the key. A file that does not decode, or whose
recorded key differs, counts as not computed.
"""
from __future__ import annotations

from pathlib import Path

from parl_core.stored_results import KINDS, VERSION, decode, encode, load_result, result_file, save_result

from . import config

PERSISTED = KINDS
_enc, _dec = encode, decode  # the names earlier code used

__all__ = ["PERSISTED", "VERSION", "file_for", "load", "save"]


def _parts(key: tuple):
    """(kind, path, sha, settings) of a store key, or None for a key not persisted."""
    if not key or key[0] not in PERSISTED or len(key) < 2 or not isinstance(key[1], tuple):
        return None
    return key[0], Path(key[1][0]), key[1][1], list(key[2:])


def file_for(key: tuple, fingerprint: str) -> tuple[Path, dict] | None:
    """(the file, the recorded key) for a store key ("kind", (path, sha), settings...)."""
    parts = _parts(key)
    if parts is None:
        return None
    kind, path, sha, settings = parts
    return result_file(kind, path, sha, fingerprint, settings)


def load(key: tuple, fingerprint: str):
    """The stored value, or None (absent, unreadable or not what the key asks)."""
    parts = _parts(key)
    if parts is None:
        return None
    kind, path, sha, settings = parts
    return load_result(kind, path, sha, fingerprint, settings)


def save(key: tuple, fingerprint: str, value) -> Path | None:
    """Write atomically; returns the file, or None when nothing was written: classroom
    (read-only) mode (PARL_READONLY) never writes, whoever calls, and a read-only folder
    only means the result is not kept (the page still shows it, from memory)."""
    parts = _parts(key)
    if parts is None or config.readonly():
        return None
    kind, path, sha, settings = parts
    return save_result(kind, path, sha, fingerprint, settings, value)
