"""Streamlit caching of everything the pages load or compute (the only caching layer).

Ensembles are cached as resources keyed by (path, sha256), so a checkpoint replaced
under the same name is reloaded; datasets and analyses are cached as data keyed by
their settings. Functions here return plain values; errors propagate to the page,
which shows them with `dashboard.ui.show_error`.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import streamlit as st
import torch

import parl_core as pc
from parl_core.checkpoints import CheckpointError, list_checkpoints

from . import config


def _stat_key(path: Path) -> tuple:
    s = path.stat()
    return (str(path), s.st_size, s.st_mtime_ns)


@st.cache_data(show_spinner=False, max_entries=256)
def _hash(key: tuple) -> str:
    return pc.file_hash(key[0])


def checkpoint_hash(path) -> str:
    """sha256 of a checkpoint, recomputed only when its size or mtime changes."""
    return _hash(_stat_key(Path(path)))


@st.cache_data(show_spinner=False, max_entries=256)
def _meta(key: tuple) -> dict:
    return pc.read_metadata(key[0])


def metadata(path) -> dict:
    """The checkpoint's metadata (cached until the file changes)."""
    return _meta(_stat_key(Path(path)))


def _listed() -> list[Path]:
    """The folder's checkpoint files, without hidden ones: `.tmp-*` files of a write in
    progress (or of one killed midway) and other dotfiles are never checkpoints."""
    return [p for p in list_checkpoints(config.checkpoint_dir()) if not p.name.startswith(".")]


def checkpoints() -> dict[str, Path]:
    """{stem: path} of the readable checkpoints in the checkpoint folder, sorted by name."""
    out = {}
    for p in _listed():
        try:
            metadata(p)
        except (CheckpointError, OSError, ValueError):
            continue  # a broken file is reported on the Checkpoints page, not everywhere
        out[p.stem] = p
    return out


def broken_checkpoints() -> dict[str, str]:
    """{file name: reason} for files in the folder that cannot be read as checkpoints."""
    bad = {}
    for p in _listed():
        try:
            metadata(p)
        except (CheckpointError, OSError, ValueError) as e:
            bad[p.name] = str(e)
    return bad


@st.cache_resource(show_spinner=False, max_entries=16)
def _ensemble(path: str, sha: str):
    ens, meta = pc.load_checkpoint(path, device=pc.default_device())
    return ens, meta


def load_ensemble(path):
    """(ens, meta) of a checkpoint, eval mode, on the default device; shared by sessions.
    Never mutate the returned ensemble (it is shared); copy it first."""
    path = Path(path)
    return _ensemble(str(path), checkpoint_hash(path))


@st.cache_resource(show_spinner=False, max_entries=8)
def load_dataset(name: str, split: str):
    """A parl_core Dataset (shared, read-only)."""
    return pc.load_dataset(name, split, config.data_root())


def dataset_available(name: str) -> bool:
    """Whether the dataset's folder is here (what training needs)."""
    if name.startswith("cifar"):
        from parl_core.data import cifar_available
        return cifar_available(name, config.data_root())
    return True


def test_available(name: str) -> bool:
    """Whether its test split can be read (what the analysis pages need): the folder, or
    the test sample embedded in parl_core (CIFAR-10)."""
    from parl_core.data import SAMPLE_PATH
    return dataset_available(name) or (name == "cifar10" and SAMPLE_PATH.is_file())


def data_hint(name: str) -> str:
    """What to do when a dataset's files are missing."""
    from parl_core.data import find_data_root
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}.get(name, name)
    root = find_data_root(config.data_root()).resolve()
    return (f"Put the canonical `{folder}` folder (the CIFAR 'python version') under `{root}` "
            f"or point the environment variable PARL_DATA at the folder that holds it, then reload.")


def device_label() -> str:
    dev = pc.default_device()
    if dev.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(0)})"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


_warm_started = threading.Event()


def warm_up() -> bool:
    """Once per server process, in a background thread: load the test set of every dataset
    the checkpoints in the folder use (when its files are there) and plotly's figure
    classes, so the first visitor of an analysis page does not wait for them (digits: the
    scikit-learn import and load, 0.6 s here; the first plotly Figure, 0.1 s). app.py calls
    it after a page has rendered. Returns whether this call started the thread."""
    if _warm_started.is_set():
        return False
    _warm_started.set()

    def work():
        try:
            import plotly.graph_objects as go
            go.Figure()
            for name in sorted({metadata(p).get("dataset") for p in checkpoints().values()} - {None}):
                if test_available(name):
                    load_dataset(name, "test")
        except Exception:  # a warm-up must never take the server down; pages report errors
            logging.getLogger("parl_lab").exception("warm-up failed")

    threading.Thread(target=work, name="parl-warm-up", daemon=True).start()
    return True
