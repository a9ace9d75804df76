"""Safe checkpoints: one `.safetensors` file per ensemble (DESIGN §5).

The file holds every member's weights (`member0.<name>`, `member1.<name>`, ...) and,
in the safetensors header's metadata, one JSON string under the key "parl" with
everything needed to rebuild the models (architecture, classes, input shape,
normalisation) plus method, hyperparameters, seed, epochs, history, library
version and creation time. Loading never unpickles: safetensors stores raw tensors
and the metadata is JSON, so a checkpoint from a stranger cannot run code.
Writes are atomic: a temporary file in the same folder, then a rename.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__
from .ensemble import Ensemble
from .models import ARCHS, build_model

__all__ = ["save_checkpoint", "load_checkpoint", "read_metadata", "file_hash", "FORMAT_VERSION",
           "list_checkpoints", "sanitize_name", "CheckpointError"]

FORMAT_VERSION = 1
_META_KEY = "parl"


class CheckpointError(ValueError):
    """A file that is not a valid PARL Lab checkpoint (the message says why)."""


def sanitize_name(name: str) -> str:
    """A safe checkpoint file stem: letters, digits, '-', '_' and '.', no path parts."""
    stem = Path(str(name)).name
    if stem.endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    if not stem:
        raise ValueError(f"checkpoint name {name!r} has no usable characters "
                         "(use letters, digits, '-', '_' or '.')")
    return stem[:80]


def file_hash(path) -> str:
    """sha256 of a file's bytes (hex); results computed from a checkpoint key on it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path, ens: Ensemble, meta: dict | None = None, *, overwrite: bool = True) -> Path:
    """Write `ens` and `meta` to `path` (.safetensors), atomically. Returns the path.

    meta: any JSON-serialisable dict (method, params, dataset, seed, history, ...);
    the model config, member count, format and library version and creation time are
    added. overwrite=False refuses to replace an existing file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors, got {path}")
    if not isinstance(ens, Ensemble):
        raise ValueError(f"ens must be a parl_core.Ensemble, got {type(ens).__name__}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"checkpoint {path} already exists (pass overwrite=True to replace it)")
    configs = [getattr(m, "config", None) for m in ens.members]
    if any(c is None for c in configs):
        raise ValueError("every member needs a .config (models from parl_core.build_model have one)")
    full = dict(meta or {})
    full.update({"format_version": FORMAT_VERSION, "library_version": __version__,
                 "members": len(ens.members), "model": configs[0], "member_configs": configs})
    full.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    try:
        meta_json = json.dumps(full)
    except TypeError as e:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {e}") from e
    tensors = {f"member{i}.{k}": v.detach().cpu().contiguous()
               for i, m in enumerate(ens.members) for k, v in m.state_dict().items()}
    data = st_save(tensors, metadata={_META_KEY: meta_json})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _refuse_pickle(head: bytes, where: str) -> None:
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{where} is a pickle/torch.save file, not a safetensors checkpoint; "
                              "PARL Lab never unpickles files (they can run code)")


def _header(raw: bytes, where: str) -> dict:
    _refuse_pickle(raw, where)
    if len(raw) < 8:
        raise CheckpointError(f"{where} is too short to be a safetensors file ({len(raw)} bytes)")
    n = int.from_bytes(raw[:8], "little")
    if n <= 0 or 8 + n > len(raw):
        raise CheckpointError(f"{where} is truncated or not a safetensors file "
                              f"(header of {n} bytes, file of {len(raw)} bytes)")
    try:
        header = json.loads(raw[8:8 + n])
    except ValueError as e:
        raise CheckpointError(f"{where}: unreadable safetensors header ({e})") from e
    meta = (header.get("__metadata__") or {}).get(_META_KEY)
    if meta is None:
        raise CheckpointError(f"{where} is a safetensors file but not a PARL Lab checkpoint "
                              f"(no '{_META_KEY}' metadata)")
    try:
        return json.loads(meta)
    except ValueError as e:
        raise CheckpointError(f"{where}: metadata is not valid JSON ({e})") from e


def _check_meta(meta: dict, where: str) -> None:
    v = meta.get("format_version")
    if not isinstance(v, int):
        raise CheckpointError(f"{where}: metadata has no format_version")
    if v > FORMAT_VERSION:
        raise CheckpointError(f"{where} was written by a newer PARL Lab (format {v}; this is "
                              f"{__version__}, format {FORMAT_VERSION}): upgrade parl_core to read it")
    cfgs = meta.get("member_configs")
    if not isinstance(cfgs, list) or not cfgs or len(cfgs) != meta.get("members"):
        raise CheckpointError(f"{where}: metadata lacks member_configs for its members")
    for c in cfgs:
        if not isinstance(c, dict) or c.get("arch") not in ARCHS:
            raise CheckpointError(f"{where}: unknown architecture {c.get('arch') if isinstance(c, dict) else c!r}"
                                  f" (this version knows {', '.join(ARCHS)})")


def read_metadata(path) -> dict:
    """The JSON metadata of a checkpoint, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    with open(path, "rb") as f:
        head = f.read(8)
        _refuse_pickle(head, str(path))
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        raw = head + (f.read(n) if 0 < n < 100_000_000 else f.read())
    size = path.stat().st_size
    if len(head) == 8 and 0 < n and 8 + n > size:
        raise CheckpointError(f"{path} is truncated (header of {n} bytes, file of {size} bytes)")
    meta = _header(raw if len(raw) >= 8 + n else raw + b"\0", str(path))
    _check_meta(meta, str(path))
    return meta


def load_checkpoint(path, *, device=None) -> tuple[Ensemble, dict]:
    """Rebuild the ensemble stored at `path`; returns (ens, meta), models in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    raw = path.read_bytes()
    meta = _header(raw, str(path))
    _check_meta(meta, str(path))
    try:
        tensors = st_load(raw)
    except (SafetensorError, Exception) as e:
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e}); "
                              "the file may be truncated or corrupt") from e
    members = []
    for i, cfg in enumerate(meta["member_configs"]):
        cfg = dict(cfg)
        kw = {k: cfg.pop(k) for k in ("width", "depth") if k in cfg}
        try:
            m = build_model(cfg["arch"], cfg["num_classes"], cfg["in_channels"],
                            mean=cfg.get("mean"), std=cfg.get("std"), **kw)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: member {i} config is invalid ({e})") from e
        prefix = f"member{i}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            m.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: member {i} weights do not fit a {cfg['arch']} "
                                  f"({str(e).splitlines()[0]})") from e
        members.append(m)
    ens = Ensemble(members).eval()
    if device is not None:
        ens.to(device)
    return ens, meta


def list_checkpoints(folder="checkpoints") -> list[Path]:
    """The .safetensors files in a folder, sorted by name (missing folder: empty list)."""
    folder = Path(folder)
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
