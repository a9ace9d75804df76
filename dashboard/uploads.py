"""Checkpoint file operations behind the Checkpoints page: upload, rename, delete.
No Streamlit here. Every path is resolved inside the checkpoint folder; nothing is
ever unpickled, and a file becomes visible only once it has loaded as a checkpoint."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import parl_core as pc
from parl_core.checkpoints import CheckpointError, sanitize_name
from parl_core.resume_state import resume_path
from parl_core.runlock import RunLock

from . import config

PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def target_path(name: str, folder: Path | None = None) -> Path:
    """folder/<sanitised name>.safetensors, guaranteed to lie directly in the folder."""
    if any(sep in str(name) for sep in ("/", "\\")) or str(name).strip().startswith(".."):
        raise ValueError(f"the name {name!r} contains a path; give a plain name such as 'my_ensemble'")
    folder = (folder or config.checkpoint_dir()).resolve()
    path = (folder / f"{sanitize_name(name)}.safetensors").resolve()
    if path.parent != folder:
        raise ValueError(f"the name {name!r} would leave the checkpoint folder")
    return path


def save_upload(data: bytes, name: str, *, overwrite: bool = False, folder: Path | None = None) -> Path:
    """Validate uploaded bytes as a PARL Lab checkpoint and store them under `name`.

    Raises ValueError (CheckpointError) saying why a file is refused: too large, a
    pickle, truncated, not a PARL Lab checkpoint, weights that do not fit; or
    FileExistsError when the name is taken and overwrite is off."""
    limit = config.max_upload_bytes()
    if len(data) > limit:
        raise ValueError(f"the file is {len(data) / 2**20:.1f} MB; this server accepts up to "
                         f"{limit / 2**20:.0f} MB (PARL_MAX_UPLOAD_MB)")
    if config.readonly():
        raise PermissionError("uploads are off in classroom (read-only) mode")
    if data[:2] in PICKLE_MAGIC or data[:4] == b"PK\x03\x04":
        raise CheckpointError("the file is a pickle / torch.save file, not a safetensors checkpoint; "
                              "PARL Lab never unpickles files (they can run code). Convert it with "
                              "parl_core.save_checkpoint.")
    path = target_path(name, folder)
    if path.exists() and not overwrite:
        raise FileExistsError(f"a checkpoint named {path.stem!r} already exists")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-upload-", suffix=".safetensors", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        pc.read_metadata(tmp)    # header: refuses pickles, truncation, foreign safetensors
        pc.load_checkpoint(tmp)  # weights: every member must rebuild and load strictly
        os.chmod(tmp, 0o644)
        with RunLock(path, owner="an upload"):  # a training run reserving or writing the name wins
            if path.exists() and not overwrite:
                raise FileExistsError(f"a checkpoint named {path.stem!r} already exists")
            os.replace(tmp, path)
    except CheckpointError as e:  # say which upload, not which temporary file
        raise CheckpointError(str(e).replace(tmp, "the uploaded file")) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def rename(path: Path, new_name: str) -> Path:
    if config.readonly():
        raise PermissionError("renaming is off in classroom (read-only) mode")
    path = Path(path)
    new = target_path(new_name, path.parent)
    if new == path:
        raise FileExistsError(f"the checkpoint is already named {new.stem!r}")
    with RunLock(path, owner="a rename"), RunLock(new, owner="a rename"):  # no run writes either name
        if new.exists():
            raise FileExistsError(f"a checkpoint named {new.stem!r} already exists")
        os.replace(path, new)
        if resume_path(path).exists():  # a partial run's resume state follows its checkpoint
            os.replace(resume_path(path), resume_path(new))
    return new


def delete(path: Path) -> None:
    if config.readonly():
        raise PermissionError("deleting is off in classroom (read-only) mode")
    folder = config.checkpoint_dir()
    path = Path(path).resolve()
    if path.parent != folder or path.suffix != ".safetensors":
        raise ValueError(f"{path} is not a checkpoint in {folder}")
    with RunLock(path, owner="a delete"):  # never under a run that is writing it
        path.unlink()
        resume_path(path).unlink(missing_ok=True)


def import_members_upload(files: list[tuple[str, bytes]], name: str, *, layout: str, arch: str,
                          dataset: str, method: str, normalize=None, overwrite: bool = False,
                          folder: Path | None = None) -> tuple[Path, dict]:
    """Member weight files (.pth/.pt uploads, as (file name, bytes)) -> a checkpoint in
    the folder, through parl_core.importers: torch.load(weights_only=True) only, so a
    file with code in it is refused and nothing in it runs. User-defined models
    (`--model` on the command line) are not offered here: they would import code.

    Returns (path, metadata). Raises ValueError saying why a file is refused (too
    large, code inside, keys that do not map, shapes that do not fit), FileExistsError
    when the name is taken and overwrite is off, PermissionError in classroom mode."""
    from parl_core.importers import import_members
    if config.readonly():
        raise PermissionError("uploads are off in classroom (read-only) mode")
    if not files:
        raise ValueError("choose one or more member files (.pth or .pt)")
    limit, total = config.max_upload_bytes(), sum(len(d) for _, d in files)
    if total > limit:
        raise ValueError(f"the files hold {total / 2**20:.1f} MB; this server accepts up to "
                         f"{limit / 2**20:.0f} MB (PARL_MAX_UPLOAD_MB)")
    path = target_path(name, folder)
    if path.exists() and not overwrite:
        raise FileExistsError(f"a checkpoint named {path.stem!r} already exists")
    ens, meta = import_members(files, layout, arch, dataset, normalize, method=method)
    with RunLock(path, owner="an import"):  # a training run reserving or writing the name wins
        if path.exists() and not overwrite:
            raise FileExistsError(f"a checkpoint named {path.stem!r} already exists")
        pc.save_checkpoint(path, ens, meta)  # atomic, with the loader's checks
    return path, pc.read_metadata(path)
