"""Analysis results kept on disk beside their checkpoint (CKA, gradient-cosine
distributions, member-to-member transfer, per-layer layer-gradient cosines), so they
survive a restart and can ship.

One JSON file per result: `<checkpoint folder>/.cache/<kind>_<stem>_<digest>.json`,
holding {"key": record, "value": encoded value}. The record is the kind, the
checkpoint's file hash (not its path: copies share results), the fingerprint of the test
images used and every setting, in order; the digest is a hash of the record. JSON only,
never pickle: arrays, tensors, tuples and dicts with non-string keys are encoded
explicitly. A file that does not decode, or whose recorded key differs from the one asked
for, counts as not computed; so does a "layercos" value that is not a consistent result
for its settings (`check_layercos`).

The dashboard (dashboard/persist.py) and `python -m parl_core prepare` both go through
here, so a result prepared ahead of a lecture is the one a page looks for.
Robustness evaluations have their own cache (parl_core/checkpoint_eval.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["KINDS", "encode", "decode", "result_file", "load_result", "save_result",
           "layercos_value", "check_layercos"]

KINDS = ("cka", "cosdist", "transfer", "layercos")
VERSION = 1  # part of every record: bump when a change alters what a kind stores


def encode(v):
    """A value as JSON-ready data (arrays keep their dtype and shape)."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return {"__nd__": v.tolist(), "dtype": str(v.dtype), "shape": list(v.shape)}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        return {"__tuple__": [encode(x) for x in v]}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: encode(x) for k, x in v.items()}
        return {"__map__": [[encode(k), encode(x)] for k, x in v.items()]}
    if isinstance(v, list):
        return [encode(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"cannot store a {type(v).__name__}")


def decode(v):
    """The inverse of `encode`."""
    if isinstance(v, list):
        return [decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "__nd__" in v:
        return np.asarray(v["__nd__"], dtype=v["dtype"]).reshape(v["shape"])
    if "__tuple__" in v:
        return tuple(decode(x) for x in v["__tuple__"])
    if "__map__" in v:
        return {decode(k): decode(x) for k, x in v["__map__"]}
    return {k: decode(x) for k, x in v.items()}


def result_file(kind: str, checkpoint, checkpoint_hash: str, fingerprint: str,
                settings) -> tuple[Path, dict]:
    """(the file, the record it must carry) for a result of `kind` computed from the
    checkpoint file `checkpoint` (its sha256 `checkpoint_hash`) on the test images with
    `fingerprint`, with `settings` (a list/tuple, in the order the caller defines)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(checkpoint_hash, str) or not checkpoint_hash:
        raise ValueError(f"checkpoint_hash must be a non-empty string, got {checkpoint_hash!r}")
    path = Path(checkpoint)
    record = {"kind": kind, "checkpoint_hash": checkpoint_hash, "data": fingerprint,
              "settings": encode(list(settings)), "version": VERSION}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]
    return path.parent / ".cache" / f"{kind}_{path.stem}_{digest}.json", record


def load_result(kind, checkpoint, checkpoint_hash, fingerprint, settings):
    """The stored value, or None (absent, unreadable or not what the key asks)."""
    file, record = result_file(kind, checkpoint, checkpoint_hash, fingerprint, settings)
    if not file.is_file():
        return None
    try:
        d = json.loads(file.read_text())
        if d.get("key") != json.loads(json.dumps(record)):
            return None
        value = decode(d["value"])
        if kind == "layercos":
            check_layercos(value, *list(settings)[1:3])
        return value
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None


def save_result(kind, checkpoint, checkpoint_hash, fingerprint, settings, value) -> Path | None:
    """Write atomically; returns the file, or None when it could not be written (a
    read-only folder only means the result is not kept)."""
    file, record = result_file(kind, checkpoint, checkpoint_hash, fingerprint, settings)
    tmp = None
    try:
        text = json.dumps({"key": record, "value": encode(value)})
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=file.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
        return file
    except (OSError, TypeError):
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        return None


# ----------------------------------------------------------------------- "layercos"
def layercos_value(models, x, feature: str) -> dict:
    """What the kind "layercos" stores (settings [dataset, n, feature]), the Gradients
    page's "What R measures" and `python -m parl_core prepare` alike: per layer k = 1..L
    the mean pairwise layer-gradient cosine of `models` (an Ensemble or >= 2 modules) on
    the images `x` (N, *input) with PARL's F^k read as `feature`, and its range over the
    examples (0 where the cosine is the same at every input, e.g. layer 1 under "pre_bn"):
    {"per_layer": (L,), "spread": (L,), "members": M, "n": N, "feature": feature}."""
    from .train import layer_cosines
    per = layer_cosines(models, x, feature=feature, per_example=True).numpy()  # (L, N); validates
    members = len(models.members) if hasattr(models, "members") else len(models)
    return {"per_layer": per.mean(1), "spread": np.ptp(per, axis=1), "members": int(members),
            "n": int(per.shape[1]), "feature": feature}


def check_layercos(value, n: int, feature: str) -> dict:
    """`value` if it is a "layercos" result for n examples under `feature`, else a
    ValueError naming what is wrong (a stored file edited by hand or by another version)."""
    if not isinstance(value, dict):
        raise ValueError(f"a layercos result must be a dict, got {type(value).__name__}")
    missing = {"per_layer", "spread", "members", "n", "feature"} - set(value)
    if missing:
        raise ValueError(f"a layercos result needs {sorted(missing)}")
    per, spread = value["per_layer"], value["spread"]
    for name, a in (("per_layer", per), ("spread", spread)):
        if not isinstance(a, np.ndarray) or a.ndim != 1 or len(a) == 0 or a.dtype.kind != "f" \
                or not np.isfinite(a).all():
            raise ValueError(f"layercos {name} must be a non-empty 1-D float array of finite values, got {a!r}")
    if spread.shape != per.shape:
        raise ValueError(f"layercos spread has {len(spread)} layers, per_layer {len(per)}")
    if (np.abs(per) > 1 + 1e-5).any() or (spread < 0).any() or (spread > 2 + 1e-5).any():
        raise ValueError("layercos per_layer must be cosines in [-1, 1] and spread ranges in [0, 2]")
    m = value["members"]
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise ValueError(f"layercos members must be an int >= 2, got {m!r}")
    floor = -1.0 / (m - 1)
    if (per < floor - 1e-5).any():
        raise ValueError(f"layercos per_layer is below the floor -1/(M-1) = {floor:.3f} of {m} members")
    if value["n"] != n or isinstance(value["n"], bool):
        raise ValueError(f"layercos result is for n={value['n']!r}, its key says n={n!r}")
    if value["feature"] != feature:
        raise ValueError(f"layercos result is for feature {value['feature']!r}, its key says {feature!r}")
    return value
