"""Transfer from several surrogates: one black-box result per surrogate and the worst over
surrogates, per example (robust only if no surrogate's examples fool the target — the
rule of the "worst-case" rows over attacks, `parl_core.evaluate._worst`).

    transfer_suite(targets, surrogates, ...)      checkpoints (cached per surrogate, as
                                                  `evaluate_checkpoints`) -> [SurrogateSuite]
    surrogate_curves(target, x, y, surrogates)    models in memory -> SurrogateSuite
    worst_over_surrogates(results)                RobustnessResults of one target -> one

Each surrogate's evaluation is exactly `evaluate_checkpoints(targets, surrogate=s)`: its
cache entry, settings and checks are that call's, so one surrogate gives today's result.

Picking surrogates. Any checkpoint of the target's dataset (same classes) can serve; a
transfer claim is as strong as its strongest surrogate, so a reviewer asks for several
kinds, and `SurrogateSuite.summary` names the kinds present and missing:
  - other seeds: plain ensembles (ENS_U) trained like the target from other seeds
    (`python -m parl_core train --method ce_only --seed 100 ...`, the shipped
    `*_surrogate` checkpoints);
  - another architecture: `train --arch ...` or another `--width` (a transfer across
    architectures is the adversary A_Z's usual situation);
  - the defence itself: an ensemble trained with the target's method from another seed
    (e.g. `train --method parl --seed 1`), whose examples know what the defence does.
A surrogate with the target's own file hash is the target: its examples are white-box,
and a warning says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .result import RobustnessResult, _pack, verdict_key
from .stats import wilson_interval

__all__ = ["SurrogateSuite", "transfer_suite", "surrogate_curves", "worst_over_surrogates",
           "surrogate_kinds", "KINDS"]

KINDS = ("other seed", "other architecture", "same method")
_PER_SURROGATE = ("surrogate", "surrogate_hash", "surrogate_method", "surrogate_members")


# --------------------------------------------------------------------------- combining
def _check_results(results, names):
    for i, r in enumerate(results):
        if not isinstance(r, RobustnessResult):
            raise ValueError(f"results[{i}] must be a RobustnessResult, got {type(r).__name__}")
        if r.cancelled:
            raise ValueError(f"results[{i}] ({names[i]}) was cancelled: it holds only some attacks")
        if r.settings.get("mode", "black-box") != "black-box":
            raise ValueError(f"results[{i}] ({names[i]}) must be a black-box result, got mode "
                             f"{r.settings.get('mode')!r}")
    first = results[0]
    rows = {(a, float(e)) for a, e in zip(first.table.attack, first.table.eps)}
    for i, r in enumerate(results[1:], 1):
        if int(r.table.n.iloc[0]) != int(first.table.n.iloc[0]) or \
                r.settings.get("indices") != first.settings.get("indices"):
            raise ValueError(f"results[{i}] ({names[i]}) is on other examples than results[0] "
                             f"({names[0]}): give evaluations on the same examples")
        other = {(a, float(e)) for a, e in zip(r.table.attack, r.table.eps)}
        if other != rows:
            raise ValueError(f"results[{i}] ({names[i]}) has other rows than results[0] "
                             f"({names[0]}): {sorted(other ^ rows)} differ; evaluate every "
                             "surrogate with the same attacks and ε")
        if r.verdict("clean", 0.0) is not None and first.verdict("clean", 0.0) is not None and \
                not np.array_equal(r.verdict("clean", 0.0), first.verdict("clean", 0.0)):
            raise ValueError(f"results[{i}] ({names[i]}) scores another target than results[0] "
                             f"({names[0]}): their clean verdicts differ")


def worst_over_surrogates(results, names=None) -> RobustnessResult:
    """Per example, the worst over surrogates -> one RobustnessResult: each attack × ε row
    counts an example as robust only if the target withstands that attack's examples from
    every surrogate (`results`: black-box results of one target on the same examples, with
    the same rows; names: one label per result, default its settings' surrogate).
    Columns: attack, eps, mode, n, correct, acc, ci_low, ci_high (Wilson), clean_acc, steps,
    step_size, restarts, surrogates (how many), weakest (the surrogate whose examples alone
    fool the target most; ties: the first). Member accuracies are not kept per example,
    so they are not here. Needs per-example verdicts (restart rule "source" or "target")."""
    if not isinstance(results, (list, tuple)) or not results:
        raise ValueError(f"results must be a non-empty list of RobustnessResult, got {results!r}")
    names = [str(getattr(r, "settings", {}).get("surrogate") or f"surrogate {i}")
             for i, r in enumerate(results)] if names is None else [str(v) for v in names]
    if len(names) != len(results):
        raise ValueError(f"names must give one label per result ({len(results)}), got {len(names)}")
    _check_results(results, names)
    first = results[0]
    tables = [r.table.set_index(["attack", "eps"]) for r in results]
    rows, verdicts = [], {}
    for r in first.table.itertuples():
        vs = [res.verdict(r.attack, r.eps) for res in results]
        if any(v is None for v in vs):
            raise ValueError(f"row {r.attack} ε {r.eps:g} has no per-example verdicts (restart rule "
                             "'mean' keeps shares): evaluate with restart_select 'source' or 'target'")
        v = np.logical_and.reduce(vs)
        accs = [float(t.loc[(r.attack, r.eps), "acc"]) for t in tables]
        lo, hi = wilson_interval(int(v.sum()), len(v))
        rows.append({"attack": r.attack, "eps": float(r.eps), "mode": "black-box", "n": len(v),
                     "correct": int(v.sum()), "acc": float(v.mean()) if len(v) else float("nan"),
                     "ci_low": lo, "ci_high": hi, "clean_acc": float(r.clean_acc),
                     "steps": int(r.steps), "step_size": float(r.step_size),
                     "restarts": int(r.restarts), "surrogates": len(results),
                     "weakest": "" if r.attack == "clean" else names[int(np.argmin(accs))]})
        verdicts[verdict_key(r.attack, r.eps)] = _pack(torch.from_numpy(v))
    settings = {k: v for k, v in first.settings.items() if k not in _PER_SURROGATE}
    settings.update(surrogate=f"the worst of {len(results)} surrogates ({', '.join(names)})",
                    surrogates=names, combined="worst over surrogates",
                    surrogate_hashes=[r.settings.get("surrogate_hash") for r in results])
    return RobustnessResult(pd.DataFrame(rows), [], settings, [], False, verdicts)


# --------------------------------------------------------------------------- the suite
@dataclass
class SurrogateSuite:
    """One target attacked from several surrogates: `per_surrogate` (label -> its black-box
    RobustnessResult), `worst` (`worst_over_surrogates`; None when cancelled), `kinds`
    (label -> the kinds of `surrogate_kinds`, when known), `warnings`, `cancelled`."""
    target: str
    per_surrogate: dict
    worst: RobustnessResult | None
    kinds: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    cancelled: bool = False

    def table(self) -> pd.DataFrame:
        """attack, eps, one accuracy column per surrogate, then the worst's acc, ci_low,
        ci_high and weakest surrogate."""
        base = next(iter(self.per_surrogate.values())).table[["attack", "eps"]].copy()
        rows = pd.MultiIndex.from_frame(base)
        for name, r in self.per_surrogate.items():
            base[name] = r.table.set_index(["attack", "eps"]).acc.reindex(rows).to_numpy()
        if self.worst is not None:
            w = self.worst.table
            base["worst"], base["ci_low"], base["ci_high"] = w.acc.to_numpy(), \
                w.ci_low.to_numpy(), w.ci_high.to_numpy()
            base["weakest"] = w.weakest.to_numpy()
        return base

    def summary(self) -> str:
        """Every surrogate's own summary (with its checks), then the per-surrogate and
        worst-over-surrogates table, and the kinds of surrogate present and missing."""
        parts = [r.summary() for r in self.per_surrogate.values()]
        head = (f"{self.target}: black-box from {len(self.per_surrogate)} surrogates, accuracy "
                "per surrogate and the worst over surrogates (per example; 95 % interval)")
        body = self.table().to_string(index=False, float_format=lambda v: f"{v:.3f}")
        lines = [head, body]
        for name, kinds in self.kinds.items():
            lines.append(f"  surrogate {name}: " + (", ".join(kinds) if kinds else
                                                    "same seed and architecture, another method"))
        present = {k for ks in self.kinds.values() for k in ks}
        if self.kinds and set(KINDS) - present:
            lines.append(f"  [note] no surrogate of kind: {', '.join(k for k in KINDS if k not in present)} "
                         "(see parl_core.surrogates on picking surrogates)")
        lines += [f"  [note] {w}" for w in self.warnings]
        return "\n\n".join(parts + ["\n".join(lines)])

    def to_dict(self) -> dict:
        return {"target": self.target, "cancelled": self.cancelled, "warnings": list(self.warnings),
                "kinds": self.kinds, "per_surrogate": {k: r.to_dict() for k, r in self.per_surrogate.items()},
                "worst": self.worst.to_dict() if self.worst is not None else None}


def surrogate_kinds(target_meta: dict, surrogate_meta: dict) -> list:
    """Which of KINDS a surrogate is for a target, from their checkpoint metadata:
    "other seed" (training seed differs), "other architecture" (arch or width differs),
    "same method" (the target's: for a defended target, the defence being evaluated)."""
    tm, sm = target_meta.get("model") or {}, surrogate_meta.get("model") or {}
    kinds = []
    if surrogate_meta.get("seed") != target_meta.get("seed"):
        kinds.append("other seed")
    if (sm.get("arch"), sm.get("width")) != (tm.get("arch"), tm.get("width")):
        kinds.append("other architecture")
    if surrogate_meta.get("method") == target_meta.get("method"):
        kinds.append("same method")
    return kinds


def _labels(paths) -> list:
    """Short, distinct labels: file stems, or the full paths when stems collide."""
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def _paths(value, what):
    items = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(items, (list, tuple)) or not items or \
            not all(isinstance(p, (str, os.PathLike)) for p in items):
        raise ValueError(f"{what} must be a checkpoint path or a non-empty list of them, got {value!r}")
    items = [str(p) for p in items]
    dup = {p for p in items if items.count(p) > 1}
    if dup:
        raise ValueError(f"{what} must be distinct, got {sorted(dup)} more than once")
    return items


def transfer_suite(targets, surrogates, *, on_progress=None, cancel=None, **kw) -> list:
    """Every target in `targets` (a checkpoint path or a list) attacked black-box from every
    checkpoint in `surrogates` -> one SurrogateSuite per target, in order. kw: the settings
    of `parl_core.evaluate_checkpoints` (n_examples, attacks, eps, steps, restarts, cache,
    ...), the same for every surrogate. Each surrogate crafts once for all targets and its
    results are cached as that call caches them. on_progress gets that call's events with
    "surrogate" (its label), "surrogate_index" and "surrogates" added."""
    from .checkpoint_eval import evaluate_checkpoints
    from .checkpoints import file_hash, read_metadata
    if "surrogate" in kw:
        raise ValueError("give the surrogates as `surrogates` (a list), not surrogate=")
    targets, surrogates = _paths(targets, "targets"), _paths(surrogates, "surrogates")
    labels = _labels(surrogates)
    per = {t: {} for t in targets}
    cancelled = False
    for i, (s, label) in enumerate(zip(surrogates, labels)):
        def tagged(ev, label=label, i=i):
            if on_progress is not None:
                on_progress({**ev, "surrogate": label, "surrogate_index": i, "surrogates": len(surrogates)})
        res = evaluate_checkpoints(targets, surrogate=s, on_progress=tagged, cancel=cancel, **kw)
        for t, r in zip(targets, res):
            per[t][label] = r
        if any(r.cancelled for r in res):
            cancelled = True
            break
    shash = {label: file_hash(s) for s, label in zip(surrogates, labels)}
    smeta = {label: read_metadata(s) for s, label in zip(surrogates, labels)}
    suites = []
    for t in targets:
        tmeta, thash = read_metadata(t), file_hash(t)
        warnings = [f"surrogate {label} is the target itself: its examples are white-box, not "
                    "a transfer" for label, h in shash.items() if h == thash]
        kinds = {label: surrogate_kinds(tmeta, m) for label, m in smeta.items()}
        worst = None if cancelled else worst_over_surrogates(list(per[t].values()), list(per[t]))
        if worst is not None:
            worst.settings.update(checkpoint=t)
        suites.append(SurrogateSuite(t, per[t], worst, kinds, warnings, cancelled))
    return suites


def surrogate_curves(target, x, y, surrogates, *, names=None, **kw):
    """`robustness_curve(target, x, y, surrogate=s, **kw)` for every model in `surrogates`
    -> a SurrogateSuite (a list of them for a list of targets). names: one label per
    surrogate (default "surrogate 0", ...)."""
    from .evaluate import robustness_curve
    if not isinstance(surrogates, (list, tuple)) or not surrogates:
        raise ValueError(f"surrogates must be a non-empty list of models, got {type(surrogates).__name__}")
    if "surrogate" in kw:
        raise ValueError("give the surrogates as `surrogates` (a list), not surrogate=")
    names = list(names) if names is not None else [f"surrogate {i}" for i in range(len(surrogates))]
    if len(names) != len(surrogates) or len(set(names)) != len(names):
        raise ValueError(f"names must be {len(surrogates)} distinct labels, got {names!r}")
    many = isinstance(target, (list, tuple))
    targets = list(target) if many else [target]
    per = [{} for _ in targets]
    cancelled = False
    for s, label in zip(surrogates, names):
        res = robustness_curve(targets, x, y, surrogate=s, **kw)
        for d, r in zip(per, res):
            r.settings["surrogate"] = label
            d[label] = r
        if any(r.cancelled for r in res):
            cancelled = True
            break
    suites = [SurrogateSuite(f"target {i}" if many else "target", d,
                             None if cancelled else worst_over_surrogates(list(d.values()), list(d)),
                             cancelled=cancelled) for i, d in enumerate(per)]
    return suites if many else suites[0]
