"""Safe checkpoints: one `.safetensors` file per ensemble (DESIGN §5).

The file holds every member's weights (`member0.<name>`, `member1.<name>`, ...) and,
in the safetensors header's metadata, one JSON string under the key "parl" with
everything needed to rebuild the models (architecture, classes, input shape,
normalisation) plus method, hyperparameters, seed, epochs, history, library
version and creation time. Loading never unpickles: safetensors stores raw tensors
and the metadata is JSON, so a checkpoint from a stranger cannot run code.
Writes are atomic: a temporary file in the same folder, then a rename.

Reading and writing go through one validation (parl_core.schema): the header, its
metadata and its tensor table are checked against the declared architecture before
anything is allocated, and weights must be finite. Every refusal is a CheckpointError.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__
from .ensemble import Ensemble
from .models import build_model
from .hooked import build_from_config
from .schema import (FORMAT_VERSION, HOOKED_ARCH, META_KEY, CheckpointError, check_finite,
                     header_length, parse_header, validate_metadata)

__all__ = ["save_checkpoint", "load_checkpoint", "read_metadata", "file_hash", "FORMAT_VERSION",
           "list_checkpoints", "sanitize_name", "CheckpointError", "validate_metadata"]

_META_KEY = META_KEY


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
    added. overwrite=False refuses to replace an existing file. The result must pass
    the checks `load_checkpoint` applies (parl_core.schema): CheckpointError otherwise,
    e.g. for NaN weights or a non-finite hyperparameter, and nothing is written.
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
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint metadata must be JSON-serialisable: {e}") from e
    tensors = {f"member{i}.{k}": v.detach().cpu().contiguous()
               for i, m in enumerate(ens.members) for k, v in m.state_dict().items()}
    try:  # what is written must pass exactly the checks a reader applies
        validate_metadata(json.loads(meta_json))
        for i, m in enumerate(ens.members):
            check_finite(m, f"member {i}")
        data = st_save(tensors, metadata={_META_KEY: meta_json})
        parse_header(data[:8 + header_length(data[:8], len(data))], len(data))
    except CheckpointError as e:
        raise CheckpointError(f"not saving {path}: {e}") from None
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


def _read_header(f, path: Path) -> tuple[bytes, int, dict]:
    """(header bytes, file size, validated metadata) from an open file: reads 8 bytes,
    then at most MAX_HEADER_BYTES, and checks everything the header says, the tensor
    table against the declared architecture included, before any weight is read."""
    size = os.fstat(f.fileno()).st_size
    first = f.read(8)
    _refuse_pickle(first, str(path))
    try:
        n = header_length(first, size)
        head = first + f.read(n)
        _, meta = parse_header(head, size)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return head, size, meta


def read_metadata(path) -> dict:
    """The JSON metadata of a checkpoint, validated with its header, without loading its
    weights. Raises CheckpointError for anything that is not a valid checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    with open(path, "rb") as f:
        return _read_header(f, path)[2]


def load_checkpoint(path, *, device=None, allow_code: bool = False) -> tuple[Ensemble, dict]:
    """Rebuild the ensemble stored at `path`; returns (ens, meta), models in eval mode.

    The header is validated first (read_metadata's checks); only then are the weights
    read, loaded strictly and required finite. A member that is a user-defined module
    (parl_core.hooked) is rebuilt by importing the factory its metadata names, which runs
    that code: only with allow_code=True (a person's own scripts), never by default (the
    dashboard); otherwise a CheckpointError names the factory."""
    if device is not None:
        from .validate import device as check_device
        device = check_device(device)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    with open(path, "rb") as f:
        head, size, meta = _read_header(f, path)
        raw = head + f.read(size - len(head) + 1)
    if len(raw) != size:
        raise CheckpointError(f"{path}: the file changed while it was read ({len(raw)} bytes "
                              f"read, {size} expected)")
    try:
        tensors = st_load(raw)
    except (SafetensorError, Exception) as e:
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e}); "
                              "the file may be truncated or corrupt") from e
    del raw
    members = []
    for i, cfg in enumerate(meta["member_configs"]):
        cfg = dict(cfg)
        kw = {k: cfg.pop(k) for k in ("width", "depth") if k in cfg}
        try:
            if cfg["arch"] == HOOKED_ARCH:
                m = build_from_config(cfg, allow_code=allow_code)
            else:
                m = build_model(cfg["arch"], cfg["num_classes"], cfg["in_channels"],
                                mean=cfg.get("mean"), std=cfg.get("std"), **kw)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: member {i}: {e}") from None
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: member {i} config is invalid ({e})") from e
        prefix = f"member{i}."
        sd = {k[len(prefix):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
        try:
            with torch.no_grad():
                m.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: member {i} weights do not fit a {cfg['arch']} "
                                  f"({str(e).splitlines()[0]})") from e
        check_finite(m, f"{path}: member {i}")
        _check_normalisation(m, cfg, f"{path}: member {i}")
        members.append(m)
    ens = Ensemble(members).eval()
    if device is not None:
        ens.to(device)
    return ens, meta


def _check_normalisation(m, cfg: dict, where: str) -> None:
    """The mean/std buffers loaded from the file must be the ones the metadata declares
    (the pages show the metadata; the model uses the buffers)."""
    for key in ("mean", "std"):
        want = cfg.get(key)
        if want is None:
            continue
        got = getattr(m, key).flatten()
        if not torch.allclose(got, torch.tensor(want, dtype=got.dtype), rtol=1e-3, atol=1e-6):
            raise CheckpointError(f"{where}: tensor {key} {[round(x, 4) for x in got.tolist()][:8]} "
                                  f"differs from the metadata's {key} {want[:8]}")
    if not bool((m.std > 0).all()):
        raise CheckpointError(f"{where}: tensor std must be positive")


def list_checkpoints(folder="checkpoints") -> list[Path]:
    """The .safetensors files in a folder, sorted by name (missing folder: empty list).
    Dotfiles are left out: `.tmp-*` files of a write in progress (or of one killed midway)
    and other hidden files are never checkpoints."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith(".")) \
        if folder.is_dir() else []
