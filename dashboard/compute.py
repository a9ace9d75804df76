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
from parl_core.stored_results import layercos_value

from . import cache, config, persist

Ref = tuple  # (path as str, sha256): a checkpoint, hashable for st.cache_data


def ref(path) -> Ref:
    return (str(path), cache.checkpoint_hash(path))


def members_of(refs_members) -> list:
    """[(ref, member index)] -> the member modules (from the shared ensemble cache)."""
    return [cache._ensemble(r[0], r[1])[0].members[i] for r, i in refs_members]


def test_set(dataset: str):
    return cache.load_dataset(dataset, "test")


DISPLAY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "digits": "Digits"}


def data_caption(dataset: str, used: int | None) -> str:
    """Which test set a view uses and how many of its images, e.g. "CIFAR-10: embedded
    sample of 1,000 test images (a JPEG re-encoding of the originals), 450 used"."""
    ds = test_set(dataset)
    source = ds.info.get("source")
    if source is None:
        what = f"test split of {len(ds):,} images"
    elif ds.info.get("sample"):
        jpeg = "JPEG" in str(ds.info.get("provenance", ""))
        what = f"embedded sample of {len(ds):,} test images" + (" (a JPEG re-encoding of the originals)"
                                                              if jpeg else "")
    else:
        what = f"full test set of {len(ds):,} images read from {source}"
    return f"{DISPLAY.get(dataset, dataset)}: {what}" + (f", {int(used):,} used" if used is not None else "")


def evaluation_examples(dataset: str, n: int):
    """The first n test examples in the canonical evaluation order: the same examples on
    every page and for every checkpoint, so numbers compare."""
    return pc.evaluation_subset(test_set(dataset), int(n))


def _seconds(fn, dev) -> float:
    """Median wall time of fn() over three calls after a warm-up (first-call allocations)."""
    import time
    fn()
    times = []
    for _ in range(3):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@st.cache_data(show_spinner=False, max_entries=64)
def seconds_per_example(r: Ref, dataset: str, what: str, batch: int = 16) -> float:
    """Seconds per example, timed on `batch` test examples on this machine, of one attack
    step (what="step") or one forward pass (what="forward") of the checkpoint's ensemble.
    The step is timed through the attack itself (two BIM steps, halved), so it includes
    what an evaluation's step costs besides the gradient. Measured on CIFAR ResNet20s on a
    busy 2-core CPU: the cost per example was nearly the same from 16 to 256 examples, and
    an evaluation's step about 1.4x this, so estimates err on the short side."""
    ens, _ = cache._ensemble(*r)
    ds = test_set(dataset)
    dev = pc.default_device()
    x, y = ds.images[:batch].to(dev), ds.labels[:batch].to(dev)
    if what == "step":
        return _seconds(lambda: pc.attack("bim", ens, x, y, 0.03, steps=2, bounds=ds.bounds), dev) / (2 * len(x))
    with torch.no_grad():
        return _seconds(lambda: ens(x), dev) / len(x)


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


@st.cache_data(show_spinner=False, max_entries=64)
def adversarial_example(source: Ref, target: Ref, dataset: str, index: int, attack: str, eps: float,
                        steps: int) -> dict:
    """One test example attacked on `source` (the surrogate, or the target itself):
    images (C, H, W) and the target's member logits (M, 1, K) before and after."""
    ds = test_set(dataset)
    x, y = ds.images[index:index + 1], ds.labels[index:index + 1]
    src, ens = cache._ensemble(*source)[0], cache._ensemble(*target)[0]
    dev = pc.default_device()
    x_adv = pc.attack(attack, src, x.to(dev), y.to(dev), eps, steps=steps, seed=0, bounds=ds.bounds).cpu()
    with torch.no_grad():
        clean, adv = ens.member_logits(x.to(dev)).cpu(), ens.member_logits(x_adv.to(dev)).cpu()
    return {"x": x[0].numpy(), "x_adv": x_adv[0].numpy(), "y": int(y[0]), "clean": clean, "adv": adv}


# ----------------------------------------------------------------- on-request results
@st.cache_resource(show_spinner=False)
def _store() -> tuple[OrderedDict, threading.Lock]:
    return OrderedDict(), threading.Lock()


def _fingerprint(key: tuple) -> str | None:
    """The test images a persisted result was computed on: keys ("kind", ref, dataset, n, ...)."""
    if len(key) < 4 or not isinstance(key[2], str) or not isinstance(key[3], int):
        return None
    return _images_fingerprint(key[2], key[3])


@st.cache_data(show_spinner=False, max_entries=32)
def _images_fingerprint(dataset: str, n: int) -> str:
    import hashlib
    ds = evaluation_examples(dataset, n)
    h = hashlib.sha256(ds.images.numpy().tobytes())
    h.update(ds.labels.numpy().tobytes())
    return h.hexdigest()[:20]


def stored(key: tuple):
    """A heavy result computed earlier on this server (any session) or kept on disk beside
    its checkpoint (dashboard/persist.py), or None."""
    d, lock = _store()
    with lock:
        if key in d:
            return d[key]
    fp = _fingerprint(key)
    value = persist.load(key, fp) if fp is not None else None
    if value is not None:
        _remember(key, value)
    return value


def store(key: tuple, value, limit: int = 64):
    """Keep `value` for every session, and on disk unless the server is read-only."""
    _remember(key, value, limit)
    fp = _fingerprint(key)
    if fp is not None and not config.readonly():
        persist.save(key, fp, value)
    return value


def _remember(key: tuple, value, limit: int = 64):
    d, lock = _store()
    with lock:
        d[key] = value
        d.move_to_end(key)
        while len(d) > limit:
            d.popitem(last=False)


def cosine_distribution(r: Ref, dataset: str, n: int, layer: int | None) -> dict:
    ds = evaluation_examples(dataset, n)
    ens, _ = cache._ensemble(*r)
    return pc.cosine_distribution(ens, ds.images, ds.labels, layer=layer)


def ensemble_cka(r: Ref, dataset: str, n: int, batch_size: int, estimator: str) -> dict:
    ds = evaluation_examples(dataset, n)
    ens, _ = cache._ensemble(*r)
    return pc.ensemble_cka(ens, ds.images, batch_size=batch_size, estimator=estimator)


def layer_cosines(r: Ref, dataset: str, n: int, feature: str) -> dict:
    """Per layer k = 1..L, the checkpoint's mean pairwise layer-gradient cosine on the first n
    test examples (evaluation order) with PARL's F^k read as `feature`, and its range over
    the examples (0 where the cosine is the same at every input, e.g. layer 1 "pre_bn").
    The value of the persisted kind "layercos" (parl_core.stored_results.layercos_value),
    the one `python -m parl_core prepare` stores at the page's defaults."""
    ds = evaluation_examples(dataset, n)
    ens, _ = cache._ensemble(*r)
    return layercos_value(ens, ds.images, feature)
