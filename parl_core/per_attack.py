"""Long evaluations that resume: every attack evaluated and cached on its own, then merged.

An evaluation of many attacks (the paper's four, APGD-CE, APGD-DLR, the vote attack,
Square) on a CIFAR-10 ensemble takes hours on a CPU, and `evaluate_checkpoints` caches a
result only once the whole attack list has finished. `evaluate_per_attack` runs one
`evaluate_checkpoints` call per attack instead: each is cached under its own key (the
same key a one-attack evaluation has anywhere else), so an interrupted run resumes at the
first attack not finished, and attacks added later cost only themselves. `merge_results`
then builds the table a single call would have shown, as AutoAttack reports it:

- the clean row once, every attack's rows, and per ε a **worst-case** row: an example is
  robust only if no attack fools it, from the per-example verdicts each result keeps
  (its interval is Wilson's, like every row's). The worst-case row's per-member and
  surrogate columns are left empty (NaN): the results keep per-example verdicts of the
  vote only;
- the checks read off the table (`parl_core.sanity.table_checks`: monotone in ε,
  iterative ≥ FGSM, the largest ε fools, gradient-free not stronger) recomputed on the
  merged table; the checks that needed the models (ε = 0, zero gradients, more steps)
  taken from the parts, a failed one where any part failed. Black-box, "the largest ε
  fools the surrogate" reads the attacks' rows (the worst-case row has no surrogate
  column here), so it can name a weaker attack than a single evaluation would.

Every part must share the examples (n, indices), the mode, the ε grid, the checkpoint and
the surrogate; `merge_results` refuses parts that differ and says which setting.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch

from .attacks import ATTACKS
from .result import RobustnessResult, _pack, verdict_key
from .sanity import table_checks
from .stats import wilson_interval

__all__ = ["evaluate_per_attack", "merge_results"]

_SHARED = ("mode", "n", "indices", "checkpoint", "surrogate", "dataset", "seed", "restart_select")


def evaluate_per_attack(paths, *, attacks=ATTACKS, surrogate=None, convergence=False,
                        on_attack=None, **kw) -> list:
    """`evaluate_checkpoints(paths, attacks=[a], ...)` for each attack a, cached one by one,
    merged per target (`merge_results`) -> one RobustnessResult per path, in order.

    kw: every other setting of `parl_core.evaluate_checkpoints` (n_examples, eps, steps,
    restarts, restart_select, cache, cancel, on_progress, ...). convergence: the "more
    steps" check runs once, with the PGD part (PGD must be among the attacks).
    on_attack(name, index, total, seconds): called after each attack (seconds ≈ 0: it came
    from the cache).
    A cancelled part stops the run: the merged results hold the attacks that finished
    and are marked cancelled (the finished attacks stay cached)."""
    from .checkpoint_eval import evaluate_checkpoints
    attacks = [attacks] if isinstance(attacks, str) else list(attacks)
    if not attacks or len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks must be a non-empty list of distinct names, got {attacks!r}")
    if convergence and "pgd" not in attacks:
        raise ValueError("convergence=True reruns PGD with more steps: add 'pgd' to the attacks")
    if on_attack is not None and not callable(on_attack):
        raise ValueError(f"on_attack must be callable or None, got {on_attack!r}")
    paths = [paths] if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__") else list(paths)
    parts, cancelled = [], False
    for i, name in enumerate(attacks):
        t0 = time.perf_counter()
        res = evaluate_checkpoints(paths, surrogate=surrogate, attacks=[name],
                                   convergence=bool(convergence and name == "pgd"), **kw)
        parts.append(res)
        if on_attack is not None:
            on_attack(name, i, len(attacks), time.perf_counter() - t0)
        if any(r.cancelled for r in res):
            cancelled = True
            break
    merged = [merge_results([p[j] for p in parts]) for j in range(len(paths))]
    for r in merged:
        r.cancelled = r.cancelled or cancelled
    return merged


def merge_results(parts) -> RobustnessResult:
    """One RobustnessResult from evaluations of one target on the same examples (one or
    more attacks each): the clean row, every attack's rows, a worst-case row per ε, the
    table checks recomputed (see the module docstring)."""
    parts = list(parts)
    if not parts or not all(isinstance(p, RobustnessResult) for p in parts):
        raise ValueError("parts: give one or more RobustnessResult")
    first = parts[0]
    for p in parts[1:]:
        for k in _SHARED:
            if p.settings.get(k) != first.settings.get(k):
                raise ValueError(f"parts differ in {k!r}: {first.settings.get(k)!r} vs "
                                 f"{p.settings.get(k)!r}; merge only evaluations of one target "
                                 f"on the same examples")
    rows, verdicts, seen = [first.table[first.table.attack == "clean"].iloc[:1]], {}, []
    verdicts.update({k: v for k, v in first.verdicts.items() if k.startswith("clean@")})
    for p in parts:
        t = p.table[~p.table.attack.isin(["clean", "worst-case"])]
        dup = sorted(set(t.attack) & set(seen))
        if dup:
            raise ValueError(f"attack(s) {dup} appear in more than one part")
        seen += list(dict.fromkeys(t.attack))
        rows.append(t)
        verdicts.update({k: v for k, v in p.verdicts.items()
                         if not k.startswith(("clean@", "worst-case@"))})
    table = pd.concat(rows, ignore_index=True)
    warnings = [w for p in parts for w in p.warnings]
    eps_sets = {a: set(table[table.attack == a].eps) for a in seen}
    if len(seen) > 1 and not first.cancelled:
        worst, missing = _worst_rows(table, seen, eps_sets, parts, verdicts)
        table = pd.concat([table, pd.DataFrame(worst)], ignore_index=True) if worst else table
        if missing:
            warnings.append("no worst-case row where a part kept no per-example verdicts "
                            f"(restart rule 'mean'): {', '.join(missing)}")
    mode = first.settings.get("mode", "white-box")
    model = _model_checks(parts)  # in run_checks' order: ε = 0, the table's, the rest
    checks = [c for c in model if c["check"] == "eps = 0"] + table_checks(table, mode) + \
        [c for c in model if c["check"] != "eps = 0"]
    details = {c["detail"] for c in checks if not c["ok"]}
    warnings = list(dict.fromkeys([w for w in warnings if w not in
                                   {c["detail"] for p in parts for c in p.checks}] + sorted(details)))
    settings = dict(first.settings, attacks=seen, per_attack=True,
                    **{"convergence": any(p.settings.get("convergence") for p in parts)})
    return RobustnessResult(table, warnings, settings, checks,
                            any(p.cancelled for p in parts), verdicts)


def _worst_rows(table, attacks, eps_sets, parts, verdicts):
    common = sorted(set.intersection(*eps_sets.values()))
    n = int(table.n.iloc[0])
    out, missing = [], []
    clean = table[table.attack == "clean"].iloc[0]
    for e in common:
        packed = [verdicts.get(verdict_key(a, e)) for a in attacks]
        if any(v is None for v in packed):
            missing.append(f"ε {e:g}")
            continue
        ok = np.ones(n, bool)
        for v in packed:
            ok &= np.unpackbits(np.frombuffer(bytes.fromhex(v), np.uint8))[:n].astype(bool)
        k = int(ok.sum())
        lo, hi = wilson_interval(k, n) if n else (0.0, 1.0)
        row = {c: math.nan for c in table.columns}
        row.update({"attack": "worst-case", "eps": float(e), "mode": clean["mode"], "n": n,
                    "correct": k, "acc": k / n if n else math.nan, "ci_low": lo, "ci_high": hi,
                    "clean_acc": clean["clean_acc"], "steps": 0, "step_size": 0.0, "restarts": 0})
        out.append(row)
        verdicts[verdict_key("worst-case", e)] = _pack(torch.from_numpy(ok))
    return out, missing


def _model_checks(parts) -> list:
    """The checks that needed the models (not recomputable from the table), one per name:
    a failed one where any part failed it, else the first part's."""
    recomputed = {"monotone in eps", "iterative >= fgsm", "largest eps", "gradient-free <= gradient"}
    by_name: dict = {}
    for p in parts:
        for c in p.checks:
            if c["check"] in recomputed:
                continue
            if c["check"] not in by_name or (by_name[c["check"]]["ok"] and not c["ok"]):
                by_name[c["check"]] = c
    return list(by_name.values())
