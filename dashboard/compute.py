"""Cached computations for the analysis pages (app layer only; parl_core does the work).

Cheap per-example results are st.cache_data functions keyed by checkpoint (path, hash)
and settings. Heavy results (a distribution over the test set, CKA, evaluations) are
computed on request and kept in a server-wide store, so a page can show any result that
already exists at once, before anyone presses its button.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import streamlit as st
import torch

import parl_core as pc

from . import cache

Ref = tuple  # (path as str, sha256): a checkpoint, hashable for st.cache_data


def ref(path) -> Ref:
    return (str(path), cache.checkpoint_hash(path))


def members_of(refs_members) -> list:
    """[(ref, member index)] -> the member modules (from the shared ensemble cache)."""
    return [cache._ensemble(r[0], r[1])[0].members[i] for r, i in refs_members]


def test_set(dataset: str):
    return cache.load_dataset(dataset, "test")


@st.cache_data(show_spinner=False, max_entries=64)
def predictions(r: Ref, dataset: str) -> dict:
    """The ensemble's vote and each member's prediction on the whole test set."""
    ens, _ = cache._ensemble(*r)
    ds = test_set(dataset)
    dev = pc.default_device()
    with torch.no_grad():
        ml = torch.cat([ens.member_logits(ds.images[i:i + 1000].to(dev)).cpu()
                        for i in range(0, len(ds), 1000)], 1)  # (M, N, C)
    return {"vote": pc.Ensemble.vote(ml).numpy(), "members": ml.argmax(-1).numpy(),
            "labels": ds.labels.numpy()}


@st.cache_data(show_spinner=False, max_entries=512)
def example_gradients(refs_members: tuple, dataset: str, index: int, layer: int | None) -> dict:
    """Gradients of the chosen models at one test example: (M, *input), cosines (M, M)."""
    ds = test_set(dataset)
    x, y = ds.images[index:index + 1], ds.labels[index:index + 1]
    models = members_of(refs_members)
    g = pc.input_gradients(models, x, y, layer=layer)  # (M, 1, *input)
    cos = pc.gradient_cosines(g)[0]                      # (M, M)
    with torch.no_grad():
        preds = [int(m(x.to(next(m.parameters()).device)).argmax(-1)) for m in models]
    return {"grads": g[:, 0].cpu().numpy(), "cos": np.asarray(cos.cpu()), "x": x[0].numpy(),
            "y": int(y[0]), "preds": preds}


# ----------------------------------------------------------------- on-request results
@st.cache_resource(show_spinner=False)
def _store() -> tuple[OrderedDict, threading.Lock]:
    return OrderedDict(), threading.Lock()


def stored(key: tuple):
    """A heavy result computed earlier on this server (any session), or None."""
    d, lock = _store()
    with lock:
        return d.get(key)


def store(key: tuple, value, limit: int = 64):
    d, lock = _store()
    with lock:
        d[key] = value
        d.move_to_end(key)
        while len(d) > limit:
            d.popitem(last=False)
    return value


def cosine_distribution(r: Ref, dataset: str, n: int, layer: int | None, seed: int = 0) -> dict:
    ds = test_set(dataset).subset(n, seed=seed)
    ens, _ = cache._ensemble(*r)
    return pc.cosine_distribution(ens, ds.images, ds.labels, layer=layer)


def ensemble_cka(r: Ref, dataset: str, n: int, batch_size: int, estimator: str, seed: int = 0) -> dict:
    ds = test_set(dataset).subset(n, seed=seed)
    ens, _ = cache._ensemble(*r)
    return pc.ensemble_cka(ens, ds.images, batch_size=batch_size, estimator=estimator)
