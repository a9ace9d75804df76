"""Sentences that describe a result, computed from that result: the numbers, and plainly
whether the effect the paper reports is there. Never a fixed claim.

Pure functions of results (no Streamlit); the pages show what they return. Each takes
{label: result} and {label: method}; the comparison and its verdict appear when the
results hold a PARL and an ENS_U ensemble, otherwise only the numbers.
"""
from __future__ import annotations

import numpy as np

from parl_core.gradients import cosine_to_angle

CLOSE = 0.02  # differences of similarity (CKA, cosine) below this are called "about the same"


def eps_text(eps: float, per255: bool) -> str:
    """'0.03 (≈ 7.6/255)' for 8-bit images, '0.3' otherwise."""
    return f"{eps:g} (≈ {eps * 255:.1f}/255)" if per255 else f"{eps:g}"


def _pair(methods: dict) -> tuple:
    """(PARL label, ENS_U label) among the results, None where absent."""
    first = lambda m: next((lab for lab, mm in methods.items() if mm == m), None)  # noqa: E731
    return first("parl"), first("ce_only")


def _fmt_list(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --------------------------------------------------------------------------- robustness
def _curve(table, attack) -> dict:
    t = table[table["attack"] == attack]
    return {float(r.eps): (float(r.acc), float(r.ci_low), float(r.ci_high)) for r in t.itertuples()}


def robustness_finding(tables: dict, methods: dict, attacks, *, per255: bool = False,
                       paired=None) -> str:
    """PARL vs ENS_U on the same attack: the accuracy difference at every ε, whether it is
    beyond noise, and the verdict. tables: {label: RobustnessResult.table}. paired: the
    paired comparison of the two on the same examples (`pc.paired_comparison(ens_u, parl)`,
    a DataFrame), when both results kept their verdicts: then "beyond noise" is the exact
    McNemar test at 5 %, else non-overlapping 95 % intervals."""
    parl, ens_u = _pair(methods)
    if parl is None or ens_u is None:
        return ("Add a PARL and an ENS_U ensemble of this dataset (as target or under *Also show*) "
                "to see them compared here.")
    attacks = list(attacks)
    main = "pgd" if "pgd" in attacks else attacks[-1]
    p, e = _curve(tables[parl], main), _curve(tables[ens_u], main)
    eps = sorted(set(p) & set(e))
    if not eps:
        return f"{main.upper()}: the two results share no ε to compare."
    diff = {x: p[x][0] - e[x][0] for x in eps}
    pv = {}
    if paired is not None and len(paired):
        rows = paired[paired["attack"] == main]
        pv = {float(r.eps): float(r.p_value) for r in rows.itertuples()}
    if pv and all(x in pv for x in eps):
        apart = [x for x in eps if pv[x] < 0.05]
    else:
        pv = {}
        apart = [x for x in eps if p[x][1] > e[x][2] or e[x][1] > p[x][2]]  # intervals apart
    up, down = [x for x in apart if diff[x] > 0], [x for x in apart if diff[x] < 0]
    mean = float(np.mean(list(diff.values())))
    text = (f"{main.upper()}: PARL − ENS_U accuracy at ε = "
            + ", ".join(f"{eps_text(x, per255)}: {100 * diff[x]:+.1f}" for x in eps)
            + f" points (mean {100 * mean:+.1f}). ")
    where = ("at every ε" if len(apart) == len(eps) else "" if not apart else
             f"at ε = {_fmt_list(f'{x:g}' for x in apart)} ({len(apart)} of {len(eps)})")
    if pv:
        text += ("Paired on the same examples (exact McNemar test): p = "
                 + ", ".join(f"{pv[x]:.2g}" for x in eps) + "; "
                 + ("no difference is significant at 5 %. " if not apart else
                    f"significant at 5 % {where}. "))
    elif not apart:
        text += "The 95 % intervals overlap at every ε. "
    else:
        text += (f"The 95 % intervals are apart {where}"
                 + (". " if len(apart) == len(eps) else " and overlap elsewhere. "))
    if mean <= 0:
        text += "**PARL is not more robust than ENS_U here.**"
    elif up and not down:
        text += "**PARL is more robust than ENS_U here.**"
    elif up and down:
        text += "**The comparison is mixed: PARL is higher at some ε and lower at others.**"
    else:
        text += ("**PARL is higher on average, but within the uncertainty of this many examples: "
                 "it is not shown to be more robust than ENS_U here.**")
    others = [a for a in attacks if a != main]
    if others:
        means = []
        for a in others:
            pa, ea = _curve(tables[parl], a), _curve(tables[ens_u], a)
            common = sorted(set(pa) & set(ea))
            if common:
                means.append(f"{a.upper()} {100 * np.mean([pa[x][0] - ea[x][0] for x in common]):+.1f}")
        if means:
            text += f" Mean difference over ε for the other attacks: {', '.join(means)} points."
    return text


# --------------------------------------------------------------------------- CKA
def first_k_cka(result: dict, k: int) -> float:
    """Mean over member pairs of the same-layer CKA of the first k layers."""
    return float(np.mean([np.mean(p["diagonal"][:k]) for p in result["pairs"].values()]))


def cka_finding(results: dict, methods: dict, k: int) -> str:
    """Mean same-layer CKA of the first k layers (those PARL regularises) and of all
    layers; PARL vs ENS_U when both are shown. results: {label: ensemble_cka result}."""
    parl, ens_u = _pair(methods)
    vals = {lab: (first_k_cka(r, k), float(r["overall"])) for lab, r in results.items()}
    listing = "; ".join(f"{lab}: {a:.2f} over the first {k} layers, {b:.2f} over all"
                        for lab, (a, b) in vals.items())
    text = f"Mean same-layer CKA of the member pairs — {listing}."
    if parl is None or ens_u is None:
        return text
    a, b = vals[parl][0], vals[ens_u][0]
    if a < b - CLOSE:
        return text + (f" **In the first {k} layers, the ones PARL regularises, PARL's members are "
                       f"less similar than ENS_U's ({a - b:+.2f}).**")
    return text + (f" **PARL's members are not less similar than ENS_U's in the first {k} layers "
                   f"here ({a - b:+.2f}).**")


# --------------------------------------------------------------------------- gradients
def cosine_finding(dists: dict, methods: dict) -> str:
    """Median pairwise gradient cosine of each ensemble over the examples; PARL vs ENS_U.
    dists: {label: cosine_distribution result}."""
    parl, ens_u = _pair(methods)
    med = {lab: float(np.median(d["all"])) for lab, d in dists.items()}
    n = next(iter(dists.values())).get("n")
    text = ("Median cosine between members' gradients, over every member pair and "
            f"{n:,} examples — " + ", ".join(f"{lab}: {m:+.2f}" for lab, m in med.items()) + ".")
    if parl is None or ens_u is None or parl == ens_u:
        return text
    a, b = med[parl], med[ens_u]
    if a < b - CLOSE:
        return text + (" **PARL's members' gradients are less aligned than ENS_U's: an attack "
                       "that follows one member's gradient moves the others less.**")
    return text + " **PARL's members' gradients are not less aligned than ENS_U's here.**"


def angle_finding(cos, groups: dict, methods: dict) -> str:
    """At one example: the mean angle between the gradients of the chosen members of each
    checkpoint (groups: {label: indices into cos}); PARL vs ENS_U when both have two."""
    deg = cosine_to_angle(np.asarray(cos, dtype=float))
    mean = {}
    for lab, idx in groups.items():
        pairs = [deg[i, j] for a, i in enumerate(idx) for j in idx[a + 1:]]
        if pairs:
            mean[lab] = float(np.mean(pairs))
    if not mean:
        return ""
    text = "At this example, the chosen members' gradients are on average " + ", ".join(
        f"{m:.0f}° apart in {lab}" for lab, m in mean.items()) + "."
    parl, ens_u = _pair({lab: methods[lab] for lab in mean})
    if parl is None or ens_u is None:
        return text
    if mean[parl] > mean[ens_u]:
        return text + " PARL's point further apart than ENS_U's here."
    return text + " PARL's do not point further apart than ENS_U's here."


def scale_note(name: str, meta: dict) -> str:
    """How big a checkpoint's training was, for numbers that depend on it."""
    epochs = meta.get("epochs_done", meta.get("epochs"))
    size = meta.get("train_size")
    arch = (meta.get("model") or {}).get("arch", "?")
    return (f"{name}: {meta.get('members')} × {arch}, trained "
            + (f"on {size:,} images " if size else "") + f"for {epochs} epochs")
