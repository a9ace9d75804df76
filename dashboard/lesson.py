"""The guided lesson's data (pages/lesson.py draws it): which ensembles it is about, and
the numbers of each step, from the same stores and caches as the analysis pages, so the
lesson paints at once wherever `python -m parl_core prepare` (or the shipped results)
left them. Nothing here computes on its own; `compute_*` do it on request.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import parl_core as pc
from parl_core.prepare import analysis_settings

from . import cache, compute, findings, robust, state

STEPS = ("Train", "Gradients", "CKA", "Attack", "Explain")


@dataclass
class Cast:
    """The ensembles a lesson is about: ENS_U, PARL and the attacker's surrogate (names)."""
    dataset: str
    ens_u: str
    parl: str
    surrogate: str | None

    @property
    def pair(self) -> list[str]:
        return [self.ens_u, self.parl]


def cast() -> Cast | None:
    """CIFAR-10's ENS_U and PARL when both are here (the shipped ensembles), else those of
    the active checkpoint's dataset; None when there is no such pair. The surrogate is the
    Robustness page's default: a checkpoint of that dataset whose name says "surrogate",
    else another one."""
    names = cache.checkpoints()
    active = state.active_checkpoint()
    datasets = ["cifar10"] + ([cache.metadata(names[active])["dataset"]] if active in names else [])
    for ds in dict.fromkeys(datasets):
        ens_u, parl = state.paper_pair(ds)
        if ens_u and parl and cache.test_available(ds):
            others = [n for n in state.ranked(names) if n not in (ens_u, parl)
                      and cache.metadata(names[n]).get("dataset") == ds]
            sur = next((n for n in others if "surrogate" in n), others[0] if others else None)
            return Cast(ds, ens_u, parl, sur)
    return None


def label(name: str) -> str:
    return f"{pc.method_label(cache.metadata(cache.checkpoints()[name])['method'])} ({name})"


def methods(names) -> dict:
    return {label(n): cache.metadata(cache.checkpoints()[n])["method"] for n in names}


def members(c: Cast) -> int:
    return int(cache.metadata(cache.checkpoints()[c.parl])["members"])


# --------------------------------------------------------------------------- step 1
def histories(c: Cast) -> dict:
    """{label: per-epoch history} of the pair (empty lists when not recorded)."""
    return {label(n): list(cache.metadata(cache.checkpoints()[n]).get("history") or []) for n in c.pair}


def final_rk(c: Cast) -> dict:
    """{label: mean pairwise R/K at the end of training, or None}."""
    out = {}
    for n in c.pair:
        m = cache.metadata(cache.checkpoints()[n])
        hist = m.get("history") or []
        v = m.get("r_mean", hist[-1].get("r_mean") if hist else None)
        out[label(n)] = None if v is None else float(v)
    return out


def clean_acc(c: Cast) -> dict:
    return {label(n): cache.metadata(cache.checkpoints()[n]).get("clean_acc") for n in c.pair}


# --------------------------------------------------------------------------- steps 2 and 3
def _n(c: Cast) -> int:
    return len(compute.test_set(c.dataset))


def analysis_key(c: Cast, kind: str, name: str) -> tuple:
    """The store key of the analysis pages' opening result (what prepare stores)."""
    return (kind, compute.ref(cache.checkpoints()[name]), *analysis_settings(c.dataset, _n(c))[kind])


def stored(c: Cast, kind: str) -> dict:
    """{name: the stored result or None} of the pair, kind "cosdist" or "cka"."""
    return {n: compute.stored(analysis_key(c, kind, n)) for n in c.pair}


def compute_missing(c: Cast, kind: str, on_step=None) -> dict:
    """Compute (and store for everyone) what `stored` lacks; on_step(i, total) after each."""
    have = stored(c, kind)
    for i, (n, v) in enumerate(have.items()):
        if v is None:
            key = analysis_key(c, kind, n)
            if kind == "cosdist":
                have[n] = compute.store(key, compute.cosine_distribution(key[1], *key[2:]))
            else:
                have[n] = compute.store(key, compute.ensemble_cka(key[1], *key[2:]))
        if on_step:
            on_step(i + 1, len(have))
    return have


def cka_k(c: Cast, have: dict) -> int:
    """The first K layers PARL regularised (7 when not recorded), at most every result's depth."""
    k = (cache.metadata(cache.checkpoints()[c.parl]).get("params") or {}).get("layers") or 7
    return min([int(k)] + [len(p["diagonal"]) for r in have.values() for p in r["pairs"].values()])


# --------------------------------------------------------------------------- step 4
def attack_settings(c: Cast) -> dict:
    """The Robustness page's opening black-box settings for this dataset (those of the
    shipped results on CIFAR-10), as `pc.evaluate_checkpoints` keywords."""
    d = robust.defaults(c.dataset, _n(c), pc.default_device().type == "cpu")
    eps = sorted({float(f"{e:g}") for e in pc.default_eps_grid(c.dataset)})  # as the page reads its grid
    return {"n_examples": int(d["n"]), "seed": 0, "attacks": list(d["attacks"]), "eps": eps,
            "steps": int(d["steps"]), "restarts": int(d["restarts"]),
            "surrogate": str(cache.checkpoints()[c.surrogate])}


def evaluations(c: Cast) -> dict:
    """{name: cached black-box result or None} of the pair (never computes)."""
    if c.surrogate is None:
        return {n: None for n in c.pair}
    kw = attack_settings(c)
    return {n: pc.cached_evaluation(str(cache.checkpoints()[n]), **kw) for n in c.pair}


# --------------------------------------------------------------------------- step 5
@dataclass
class Link:
    """One link of the argument: what the paper expects, the two numbers, whether it holds."""
    step: str
    expects: str
    ens_u: float | None
    parl: float | None
    holds: bool | None  # None: not computed yet
    short: str = ""     # the quantity, with the direction PARL should move it


def links(c: Cast, cos: dict, cka: dict, evals: dict) -> list[Link]:
    """The four measurable links, from the same results the steps show (None where a
    result is missing)."""
    rk = final_rk(c)
    e, p = label(c.ens_u), label(c.parl)
    out = [Link("1 Train", "PARL's R/K lower (layer gradients apart)", rk[e], rk[p],
                None if None in (rk[e], rk[p]) else findings.lower(rk[p], rk[e]), "R/K ↓")]
    med = {n: None if v is None else float(np.median(v["all"])) for n, v in cos.items()}
    out.append(Link("2 Gradients", "PARL's loss-gradient cosine lower", med[c.ens_u], med[c.parl],
                    None if None in med.values() else findings.lower(med[c.parl], med[c.ens_u]), "cosine ↓"))
    if None in cka.values():
        ck = {n: None for n in c.pair}
    else:
        k = cka_k(c, cka)
        ck = {n: findings.first_k_cka(v, k) for n, v in cka.items()}
    out.append(Link("3 CKA", "PARL's early-layer CKA lower", ck[c.ens_u], ck[c.parl],
                    None if None in ck.values() else findings.lower(ck[c.parl], ck[c.ens_u]), "CKA ↓"))
    if None in evals.values():
        out.append(Link("4 Attack", "PARL more accurate under transferred PGD", None, None, None, "accuracy ↑"))
    else:
        text = attack_finding(c, evals)
        acc = {n: _mean_attack_acc(evals[n].table) for n in c.pair}
        out.append(Link("4 Attack", "PARL more accurate under transferred PGD", acc[c.ens_u], acc[c.parl],
                        findings.robustness_verdict(text) == "better", "accuracy ↑"))
    return out


def _main_attack(table) -> str:
    attacks = [a for a in dict.fromkeys(table["attack"]) if a not in ("clean", "worst-case")]
    return "pgd" if "pgd" in attacks else attacks[-1]


def _mean_attack_acc(table) -> float:
    """Mean accuracy over ε of the main attack (PGD when present)."""
    t = table[table["attack"] == _main_attack(table)]
    return float(t["acc"].mean())


def attack_finding(c: Cast, evals: dict) -> str:
    tables = {label(n): evals[n].table for n in c.pair}
    attacks = [a for a in dict.fromkeys(evals[c.parl].table["attack"]) if a not in ("clean", "worst-case")]
    return findings.robustness_finding(tables, methods(c.pair), attacks, per255=robust.per255(c.dataset),
                                       paired=robust.paired(evals, {n: cache.metadata(cache.checkpoints()[n])
                                                                    ["method"] for n in c.pair}))
