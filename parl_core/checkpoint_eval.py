"""Robustness of checkpoints, cached: `evaluate_checkpoint(s)` and `cached_evaluation`.

Every checkpoint of a dataset is evaluated on the same examples: the first n of the
test split in `parl_core.data.evaluation_order` (their indices are recorded in the
result). A result is cached as JSON in `<checkpoint folder>/.cache/`, keyed by the
checkpoint's (and surrogate's) file hash, a fingerprint of the evaluation images and
every setting that changes the numbers; the batch size and the library version are
recorded but are not part of the key (they do not change results; CACHE_VERSION is
bumped when a change of the code does). Black-box evaluations of several targets from
one surrogate craft the examples once.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from .attacks import ATTACKS
from .evaluate import RobustnessResult, _validate, resolve_restart_select, robustness_curve

__all__ = ["evaluate_checkpoint", "evaluate_checkpoints", "cached_evaluation", "evaluation_data"]

CACHE_VERSION = 3  # part of every cache key: bump when a change alters evaluation results


def evaluation_data(meta: dict, n_examples: int, data_root=None):
    """The evaluation subset for a checkpoint's dataset (metadata `meta`): the first
    `n_examples` test examples in the canonical order, and its fingerprint (sha256 of
    images and labels). Cached per dataset, data folder state and n."""
    from .data import find_data_root
    info = meta.get("dataset_info", {}) or {}
    extra = tuple(sorted((k, info[k]) for k in ("n_samples", "noise", "seed") if k in info))
    root = find_data_root(data_root).resolve()
    try:
        stamp = max((f.stat().st_mtime_ns for f in root.rglob("*test*")), default=0)
    except OSError:
        stamp = 0
    return _evaluation_data(meta["dataset"], n_examples, str(root), stamp, extra)


@functools.lru_cache(maxsize=8)
def _evaluation_data(dataset, n, root, _stamp, extra):
    from .data import evaluation_subset, load_dataset
    test = evaluation_subset(load_dataset(dataset, "test", root, **dict(extra)), n)
    h = hashlib.sha256(test.images.numpy().tobytes())
    h.update(test.labels.numpy().tobytes())
    return test, h.hexdigest()[:20]


def _resolve(path, surrogate, n_examples, seed, attacks, eps, steps, step_size, restarts, decay,
             early_stop, loss, batch_size, data_root, restart_select=None,
             convergence=False) -> tuple[dict, Path]:
    """The settings that identify an evaluation and its cache file (no weights loaded).
    Options added after the shipped caches (MI-DI's transform, the "more steps" check)
    enter the key only when they are used, so every earlier key stays what it was."""
    from .checkpoints import file_hash, read_metadata
    from .data import default_eps_grid
    if surrogate is not None and not isinstance(surrogate, (str, os.PathLike)):
        raise ValueError(f"surrogate must be None or one checkpoint path, got "
                         f"{type(surrogate).__name__}; for several surrogates use "
                         "parl_core.surrogates.transfer_suite(targets, surrogates)")
    if not isinstance(convergence, bool):
        raise ValueError(f"convergence must be True or False, got {convergence!r}")
    meta, smeta = read_metadata(path), None
    if surrogate is not None:
        smeta = read_metadata(surrogate)
        if smeta.get("dataset") != meta.get("dataset") or \
                smeta["model"].get("num_classes") != meta["model"].get("num_classes"):
            raise ValueError(f"surrogate {surrogate} is for {smeta.get('dataset')} "
                             f"({smeta['model'].get('num_classes')} classes), the checkpoint for "
                             f"{meta.get('dataset')} ({meta['model'].get('num_classes')} classes)")
    if not isinstance(n_examples, int) or isinstance(n_examples, bool) or n_examples < 1:
        raise ValueError(f"n_examples must be an int >= 1, got {n_examples!r}")
    attacks, eps = _validate(attacks, default_eps_grid(meta["dataset"]) if eps is None else eps,
                             batch_size)
    _, fingerprint = evaluation_data(meta, n_examples, data_root)
    key = {"checkpoint_hash": file_hash(path),
           "surrogate_hash": file_hash(surrogate) if surrogate is not None else None,
           "n_examples": n_examples, "data_fingerprint": fingerprint, "seed": seed,
           "attacks": list(attacks), "eps": [float(e) for e in eps], "steps": steps,
           "step_size": step_size, "restarts": restarts,
           "restart_select": resolve_restart_select(restart_select, surrogate is not None),
           "decay": decay, "early_stop": early_stop, "loss": loss, "cache_version": CACHE_VERSION}
    if "mi-di" in attacks:
        from .midi import current_options
        key["mi_di"] = current_options()
    if convergence:
        key["convergence"] = True
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(path)
    return {**key, "meta": meta, "smeta": smeta}, path.parent / ".cache" / f"eval_{path.stem}_{digest}.json"


def evaluate_checkpoints(paths, *, surrogate=None, n_examples=1000, seed=0, attacks=ATTACKS,
                         eps=None, steps=50, step_size=None, restarts=1, decay=0.01,
                         early_stop=False, loss="ensemble", batch_size=None, data_root=None,
                         device=None, cache=True, on_progress=None, cancel=None,
                         restart_select=None, convergence=False) -> list:
    """Evaluate every checkpoint in `paths` -> one RobustnessResult each, in order.

    Black-box (a surrogate checkpoint path): the examples are crafted on the surrogate
    once and scored on every target that is not cached yet. White-box: each target
    attacks itself. Settings as in `evaluate_checkpoint`. cache: True (use and write the
    cache), "read" (use it, never write: a read-only server) or False (neither).
    One surrogate per call: for several (per-surrogate and worst-over-surrogates results)
    see `parl_core.surrogates.transfer_suite`.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("paths: give at least one checkpoint")
    if cache not in (True, False, "read"):
        raise ValueError(f"cache must be True, False or 'read', got {cache!r}")
    args = (surrogate, n_examples, seed, attacks, eps, steps, step_size, restarts, decay,
            early_stop, loss, batch_size, data_root, restart_select, convergence)
    resolved = [_resolve(p, *args) for p in paths]
    out = [_load_cached(f, key) if cache else None for key, f in resolved]
    todo = [i for i, r in enumerate(out) if r is None]
    if not todo:
        return out
    from .checkpoints import load_checkpoint
    from .train import default_device
    device = torch.device(device) if device is not None else default_device()
    key0 = resolved[todo[0]][0]
    test, _ = evaluation_data(key0["meta"], n_examples, data_root)
    targets = [load_checkpoint(paths[i], device=device)[0] for i in todo]
    sur = load_checkpoint(surrogate, device=device)[0] if surrogate is not None else None
    res = robustness_curve(targets, test.images, test.labels, attacks=key0["attacks"],
                           eps=key0["eps"], surrogate=sur, steps=steps, step_size=step_size,
                           restarts=restarts, decay=decay, seed=seed, bounds=test.bounds, loss=loss,
                           early_stop=early_stop, batch_size=batch_size, on_progress=on_progress,
                           cancel=cancel, restart_select=key0["restart_select"],
                           convergence=convergence)
    for i, r in zip(todo, res):
        key, file = resolved[i]
        r.settings.update({k: v for k, v in key.items() if k not in ("meta", "smeta")})
        r.settings.update({"checkpoint": str(paths[i]),
                           "surrogate": None if sur is None else str(surrogate),
                           "dataset": key["meta"]["dataset"], "method": key["meta"].get("method"),
                           "surrogate_method": (key["smeta"] or {}).get("method"),
                           "data_source": test.info.get("source", f"{test.name} test split"),
                           "indices": test.info.get("indices")})
        if test.info.get("note"):
            r.warnings.append(test.info["note"])
        if cache is True and not r.cancelled:
            try:
                _write_atomic(file, r.to_json())
            except OSError as e:  # a read-only folder: the result is still good, only not kept
                r.warnings.append(f"could not cache the result in {file.parent}: {e}")
        out[i] = r
    return out


def evaluate_checkpoint(path, *, surrogate=None, n_examples=1000, seed=0, attacks=ATTACKS, eps=None,
                        steps=50, step_size=None, restarts=1, decay=0.01, early_stop=False,
                        loss="ensemble", batch_size=None, data_root=None, device=None, cache=True,
                        on_progress=None, cancel=None, restart_select=None,
                        convergence=False) -> RobustnessResult:
    """Evaluate the ensemble in checkpoint `path` (black-box from `surrogate`, a checkpoint
    path, when given) on the first `n_examples` test examples of the canonical evaluation
    order (`parl_core.data.evaluation_order`; fewer when fewer exist: a warning says so).

    eps None: the dataset's default grid. seed: the PGD starts. restart_select: how PGD's
    restarts combine (`parl_core.robustness_curve`; default "source" black-box, "target"
    white-box). convergence: add the "more steps" check (`parl_core.diagnostics`; PGD at
    the largest ε with 4× the steps). The result is cached as
    JSON in `<checkpoint folder>/.cache/` (see the module docstring); with cache=True a
    cached result is returned without computing. A cancelled evaluation is never cached.
    """
    return evaluate_checkpoints(
        [path], surrogate=surrogate, n_examples=n_examples, seed=seed, attacks=attacks, eps=eps,
        steps=steps, step_size=step_size, restarts=restarts, decay=decay, early_stop=early_stop,
        loss=loss, batch_size=batch_size, data_root=data_root, device=device, cache=cache,
        on_progress=on_progress, cancel=cancel, restart_select=restart_select,
        convergence=convergence)[0]


def cached_evaluation(path, *, surrogate=None, n_examples=1000, seed=0, attacks=ATTACKS, eps=None,
                      steps=50, step_size=None, restarts=1, decay=0.01, early_stop=False,
                      loss="ensemble", batch_size=None, data_root=None, restart_select=None,
                      convergence=False, **_ignored) -> RobustnessResult | None:
    """The cached result of `evaluate_checkpoint` with these arguments, or None; never computes."""
    key, file = _resolve(path, surrogate, n_examples, seed, attacks, eps, steps, step_size,
                         restarts, decay, early_stop, loss, batch_size, data_root, restart_select,
                         convergence)
    return _load_cached(file, key)


_COLUMNS = {"attack", "eps", "mode", "n", "correct", "acc", "ci_low", "ci_high", "clean_acc",
            "source_acc", "steps", "step_size", "restarts"}


def _load_cached(file: Path, key: dict) -> RobustnessResult | None:
    """The cached result in `file` if it is readable and is what it claims to be: the
    settings it records match every field of `key` (the checkpoint's and surrogate's hashes,
    the data fingerprint, every attack setting), its table has the expected columns, one
    row per attack × ε plus the clean row, accuracies in [0, 1] and n as asked. Otherwise
    None ("not computed"): a truncated or edited file is recomputed, never shown."""
    if not file.is_file():
        return None
    try:
        res = RobustnessResult.from_json(file)
        s, t = res.settings, res.table
        if any(s.get(k) != v for k, v in key.items() if k not in ("meta", "smeta")):
            return None
        if not _COLUMNS <= set(t.columns) or res.cancelled:
            return None
        want = {("clean", 0.0)} | {(a, float(e)) for a in key["attacks"] for e in key["eps"]}
        got = {(a, float(e)) for a, e in zip(t.attack, t.eps) if a != "worst-case"}
        if got != want or not t.acc.between(0, 1).all() or not (t.n == s.get("n")).all():
            return None
        return res
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_atomic(file: Path, text: str) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=file.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is an ordinary file
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
