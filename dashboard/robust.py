"""The Robustness page's settings and estimates (app layer; parl_core evaluates).

DEFAULTS are the settings a page opens with per dataset. CIFAR-10's equal those of the
black-box results shipped beside the CIFAR checkpoints (checkpoints/.cache), so the page
shows them at once: change one and the cache key changes with it.

On a read-only server (PARL_READONLY) evaluations read the cache beside the checkpoints
but never write it: what a visitor computes is kept in this server's memory instead
(`lookup`, bounded by MEMORY_ENTRIES), so it is shown but leaves no file behind.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict

import streamlit as st

import parl_core as pc
from parl_core.attacks import RANDOM_ATTACKS
from parl_core.diagnostics import FACTOR

from . import cache, compute, config

MEMORY_ENTRIES = 64
_memory: OrderedDict = OrderedDict()
_memory_lock = threading.Lock()


def _memory_key(path, kw: dict) -> str:
    return json.dumps([cache.checkpoint_hash(path), str(path),
                       {k: v for k, v in kw.items() if k != "surrogate"},
                       cache.checkpoint_hash(kw["surrogate"]) if kw.get("surrogate") else None],
                      sort_keys=True, default=str)


def lookup(path, kw: dict):
    """The evaluation of checkpoint `path` with `pc.evaluate_checkpoints` keywords `kw`:
    from the cache on disk, else (read-only server) from memory; None when not computed."""
    res = pc.cached_evaluation(str(path), **kw)
    if res is None and config.readonly():
        with _memory_lock:
            res = _memory.get(_memory_key(path, kw))
    return res


def evaluate(paths: list, kw: dict, **more) -> list:
    """`pc.evaluate_checkpoints(paths, **kw)`, writing the cache only where the server may."""
    if not config.readonly():
        return pc.evaluate_checkpoints([str(p) for p in paths], **kw, **more)
    out = pc.evaluate_checkpoints([str(p) for p in paths], **kw, cache="read", **more)
    with _memory_lock:
        for p, r in zip(paths, out):
            if not r.cancelled:
                _memory[_memory_key(p, kw)] = r
        while len(_memory) > MEMORY_ENTRIES:
            _memory.popitem(last=False)
    return out

DEFAULTS = {
    "cifar10": {"attacks": list(pc.ATTACKS), "steps": 20, "restarts": 1, "n": 1000},
    "cifar100": {"attacks": list(pc.ATTACKS), "steps": 20, "restarts": 1, "n": 1000},
}
CPU_DEFAULTS = {"attacks": ["fgsm", "pgd"], "steps": 10, "restarts": 1, "n": 200}  # seconds on digits
GPU_DEFAULTS = {"attacks": list(pc.ATTACKS), "steps": 50, "restarts": 1, "n": 1000}
ATTACK_HELP = ("The paper's four — FGSM: one step of ε. BIM: many small steps. MIM: BIM with momentum. "
               "PGD: BIM from a random start, with restarts. Beside them — APGD-CE / APGD-DLR: "
               "AutoAttack's PGD with its own step-size schedule, on cross-entropy / on the DLR margin. "
               "Square: gradient-free random search (a masking check: it should not beat the gradient "
               "attacks). MI-DI: MIM through a random resize-and-pad of the image at each step (Xie et "
               "al. 2019), a transfer attack made not to over-fit the surrogate. APGD-T: AutoAttack's "
               "targeted APGD, each restart aimed at the next most likely wrong class. PGD-vote: PGD on "
               "the vote loss, pushing a majority of members to one wrong class (an attack on the vote "
               "itself).")
PAPER = {"attacks": list(pc.ATTACKS), "steps": 50, "restarts": 10, "n": 1000}  # Section 5.1


def defaults(dataset: str, n_test: int, on_cpu: bool) -> dict:
    """Opening settings for a dataset, n capped by the test-set size."""
    d = dict(DEFAULTS.get(dataset) or (CPU_DEFAULTS if on_cpu else GPU_DEFAULTS))
    return {**d, "attacks": list(d["attacks"]), "n": min(int(d["n"]), n_test)}


def per255(dataset: str) -> bool:
    """ε is also written in /255 units for 8-bit images."""
    return dataset.startswith("cifar")


# --------------------------------------------------------------------------- estimates
def attack_work(attacks, eps, steps: int, restarts: int, n: int, convergence: bool = False) -> int:
    """Attack steps of one crafting (example × step): Σ over attacks of its steps (FGSM:
    1; Square: its queries) × its restarts (the random attacks: PGD, APGD, Square, MI-DI)
    × |ε| × n; with the "more steps" check, PGD at the largest ε with 4× the steps too
    (and with the evaluation's steps when PGD is not among the attacks)."""
    work = sum((1 if a == "fgsm" else steps) * (restarts if a in RANDOM_ATTACKS else 1) * len(eps) * n
               for a in attacks)
    if convergence:
        work += (FACTOR * steps + (0 if "pgd" in attacks else steps)) * restarts * n
    return work


def adversarial_rows(attacks, eps, restarts: int, n: int, convergence: bool = False) -> int:
    """Adversarial examples one crafting produces (each is scored on every target)."""
    rows = sum((restarts if a in RANDOM_ATTACKS else 1) * len(eps) * n for a in attacks)
    return rows + ((1 if "pgd" in attacks else 2) * restarts * n if convergence else 0)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{int(seconds // 3600)} h {round(seconds % 3600 / 60)} min"


def estimate(missing: dict, surrogate, dataset: str, *, attacks, eps, steps: int, restarts: int,
             n: int, convergence: bool = False) -> str:
    """The work and the time still to do, as a sentence. missing: {target name: Ref} not
    computed yet; surrogate: its Ref in black-box mode (one crafting for every missing
    target), None in white-box mode (one crafting per target). Time: the work times one
    attack step per example, timed on this machine, plus a forward pass of every scored
    model (each target; in black-box mode the surrogate too) per adversarial example.
    convergence: the "more steps" check is part of it (PGD at the largest ε, 4× the steps)."""
    work = attack_work(attacks, eps, steps, restarts, n, convergence)
    rows = adversarial_rows(attacks, eps, restarts, n, convergence)
    t = lambda r, what: compute.seconds_per_example(r, dataset, what)  # noqa: E731
    if surrogate is not None:
        runs, timed = 1, surrogate
        seconds = work * t(surrogate, "step") + rows * sum(t(r, "forward") for r in [surrogate, *missing.values()])
        how = "crafted once on the surrogate" + (f", scored on all {len(missing)} targets"
                                                 if len(missing) > 1 else "")
    else:
        runs, timed = len(missing), next(iter(missing.values()))
        seconds = sum(work * t(r, "step") + rows * t(r, "forward") for r in missing.values())
        how = "crafted on each ensemble itself" if runs > 1 else "crafted on the ensemble itself"
    return (f"Not computed yet for {', '.join(missing)}: {runs * work:,} attack steps ({how}; "
            f"Σ over attacks of steps × restarts × {len(eps)} ε × {n:,} examples"
            + (f", and PGD at the largest ε with {FACTOR}× the steps for the convergence check"
               if convergence else "") + "), "
            f"**about {duration(seconds)} on this machine** (timed here: one attack step took "
            f"{1000 * t(timed, 'step'):.2g} ms per example). Results are cached beside the "
            "checkpoint and shown at once next time.")


# --------------------------------------------------------------------------- running
def run(paths: dict, missing: list, kw: dict) -> bool:
    """Evaluate the missing targets with a progress bar: black-box in one call (the
    surrogate's examples are crafted once for all of them), white-box one by one."""
    from . import ui
    bar = st.progress(0.0, "Starting…")
    groups = [missing] if kw.get("surrogate") else [[t] for t in missing]
    for k, group in enumerate(groups):
        def tick(ev, k=k, group=group):
            frac = (k + ev.get("done", 0) / max(1, ev.get("total") or 1)) / len(groups)
            eta = ev.get("eta")
            bar.progress(min(1.0, frac), f"{', '.join(group)}: {(ev.get('attack') or '').upper()} "
                         + (f"· about {duration(eta)} left" if eta else ""))
        try:
            evaluate([paths[t] for t in group], kw, on_progress=tick)
        except (ValueError, RuntimeError) as e:
            ui.show_error(f"The evaluation of {', '.join(group)} failed", e, "Check the settings above.")
            return False
    return True


def paired(results: dict, methods: dict):
    """PARL − ENS_U row by row on the same examples (pc.paired_comparison), or None when the
    two are not both there or were not evaluated on the same examples with verdicts."""
    parl = next((t for t, m in methods.items() if m == "parl"), None)
    ens_u = next((t for t, m in methods.items() if m == "ce_only"), None)
    if parl is None or ens_u is None:
        return None
    try:
        return pc.paired_comparison(results[ens_u], results[parl])
    except (ValueError, KeyError):
        return None
