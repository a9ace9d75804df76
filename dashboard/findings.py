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
VERDICT_TEXT = {
    "worse": "**PARL is not more robust than ENS_U here.**",
    "better": "**PARL is more robust than ENS_U here.**",
    "mixed": "**The comparison is mixed: PARL is higher at some ε and lower at others.**",
    "noise": ("**PARL is higher on average, but within the uncertainty of this many examples: "
              "it is not shown to be more robust than ENS_U here.**"),
}


def _verdict(mean: float, up, down) -> str:
    """'worse' (mean difference ≤ 0), 'better' (higher and apart at some ε, never lower),
    'mixed' (apart both ways) or 'noise' (higher on average, never apart)."""
    if mean <= 0:
        return "worse"
    if up and not down:
        return "better"
    return "mixed" if up and down else "noise"


def robustness_verdict(text: str) -> str | None:
    """The verdict code ('better', 'worse', 'mixed', 'noise') a `robustness_finding`
    sentence ends with, or None when it holds no comparison."""
    return next((k for k, v in VERDICT_TEXT.items() if v in text), None)


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
    text += VERDICT_TEXT[_verdict(mean, up, down)]
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
def lower(a: float, b: float) -> bool:
    """Whether similarity a is below b by more than CLOSE (else "about the same" or higher)."""
    return a < b - CLOSE


def first_k_cka(result: dict, k: int) -> float:
    """Mean over member pairs of the same-layer CKA of the first k layers."""
    return float(np.mean([np.mean(p["diagonal"][:k]) for p in result["pairs"].values()]))


def _pair_range(result: dict, k: int) -> tuple[float, float]:
    """(lowest, highest) first-k mean same-layer CKA over the member pairs."""
    v = [float(np.mean(p["diagonal"][:k])) for p in result["pairs"].values()]
    return min(v), max(v)


def cka_finding(results: dict, methods: dict, k: int) -> str:
    """Mean same-layer CKA of the first k layers (those PARL regularises) and of all
    layers; PARL vs ENS_U when both are shown: the difference, in how many of the k layers
    PARL is lower, whether the member pairs' ranges overlap, and plainly whether PARL's
    CKA is lower. results: {label: ensemble_cka result}."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1 (the first k layers), got {k!r}")
    parl, ens_u = _pair(methods)
    vals = {lab: (first_k_cka(r, k), float(r["overall"])) for lab, r in results.items()}
    listing = "; ".join(f"{lab}: {a:.2f} over the first {k} layers, {b:.2f} over all"
                        for lab, (a, b) in vals.items())
    text = f"Mean same-layer CKA of the member pairs — {listing}."
    if parl is None or ens_u is None:
        return text
    rng = {lab: _pair_range(results[lab], k) for lab in (parl, ens_u)}
    if len(results[parl]["pairs"]) > 1 or len(results[ens_u]["pairs"]) > 1:
        text += (f" Over the first {k} layers the member pairs range "
                 + " and ".join(f"{lo:.2f}–{hi:.2f} in {lab}" for lab, (lo, hi) in rng.items()) + ".")
    per_layer = {lab: np.mean([p["diagonal"][:k] for p in results[lab]["pairs"].values()], axis=0)
                 for lab in (parl, ens_u)}
    n = min(len(per_layer[parl]), len(per_layer[ens_u]))
    fewer = int(np.sum(per_layer[parl][:n] < per_layer[ens_u][:n] - CLOSE))
    a, b = vals[parl][0], vals[ens_u][0]
    if lower(a, b):
        overlap = rng[parl][1] >= rng[ens_u][0]
        return text + (f" **In the first {k} layers, the ones PARL regularises, PARL's members are "
                       f"less similar than ENS_U's ({a - b:+.2f}), lower in {fewer} of {n} layers"
                       + ("; the member pairs' ranges overlap." if overlap else ".") + "**")
    return text + (f" **PARL's members are not less similar than ENS_U's in the first {k} layers "
                   f"here ({a - b:+.2f}; lower by more than {CLOSE} in {fewer} of {n} layers).**")


def cka_heatmap_caption(matrices: dict, methods: dict, k: int, what: str) -> str:
    """Caption of CKA heatmaps shown side by side (one (L, L) matrix per checkpoint, for
    `what`, e.g. "members 1 and 2" or "the mean of the 3 member pairs"): the mean of the
    first k diagonal cells of each and plainly whether PARL's is lower."""
    diag = {lab: float(np.mean(np.diag(np.asarray(m, dtype=float))[:k])) for lab, m in matrices.items()}
    text = (f"Every layer of one member against every layer of the other ({what}); bright = similar, "
            f"one colour scale (0–1) for both. Mean of the first {k} diagonal cells: "
            + ", ".join(f"{lab} {v:.2f}" for lab, v in diag.items()) + ".")
    parl, ens_u = _pair(methods)
    if parl is None or ens_u is None:
        return text
    d = diag[parl] - diag[ens_u]
    if lower(diag[parl], diag[ens_u]):
        return text + f" PARL's diagonal is darker (less similar) here ({d:+.2f})."
    return text + f" PARL's diagonal is not darker than ENS_U's here ({d:+.2f}): the expected effect is absent."


# --------------------------------------------------------------------------- training
def rk_finding(values: dict, methods: dict, members: int) -> str:
    """Mean pairwise R/K at the end of training (the members' layer-gradient cosine,
    averaged over layers; its floor is −1/(M−1) for M members) and plainly whether PARL's
    is lower than ENS_U's. values: {label: R/K or None (not recorded)}."""
    if not isinstance(members, (int, np.integer)) or members < 2:
        raise ValueError(f"members must be an int >= 2, got {members!r}")
    floor = -1 / (members - 1)
    have = {lab: float(v) for lab, v in values.items() if v is not None}
    text = (f"Mean pairwise R/K at the end of training (the members' layer-gradient cosine averaged "
            f"over layers; floor −1/(M−1) = {floor:+.2f} for {members} members) — "
            + ", ".join(f"{lab}: {have[lab]:+.2f}" if lab in have else f"{lab}: not recorded"
                        for lab in values) + ".")
    parl, ens_u = _pair(methods)
    if parl not in have or ens_u not in have:
        return text
    a, b = have[parl], have[ens_u]
    if lower(a, b):
        share = (b - a) / (b - floor) if b > floor else 1.0
        return text + (f" **PARL's members' layer gradients point further apart than ENS_U's ({a - b:+.2f}, "
                       f"{share:.0%} of the way from ENS_U's value to the floor).**")
    return text + (f" **PARL's R/K is not lower than ENS_U's here ({a - b:+.2f}): its regulariser did not "
                   "make the members' layer gradients point apart.**")


# --------------------------------------------------------------------------- gradients
def gradient_words(layer: int | None) -> dict:
    """How a view names the gradient it shows: `what` (a phrase), `bar` (colour-bar title),
    `short` (a plural noun), `title` (the histogram title), `sign` (what red means)."""
    if layer is None:
        return {"what": "loss gradient ∇x CE", "bar": "∂loss/∂pixel", "short": "loss gradients",
                "title": "Loss-gradient cosine between members",
                "sign": "red: raising the pixel raises the loss; blue: lowers it"}
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 1:
        raise ValueError(f"layer must be None (loss gradient) or an int >= 1, got {layer!r}")
    return {"what": f"gradient of layer {layer}'s summed pre-BN output w.r.t. the pixels (PARL's layer-{layer} "
                    "gradient)",
            "bar": f"∂Σ layer {layer}<br>/∂pixel", "short": f"layer-{layer} gradients",
            "title": f"Layer-{layer} gradient cosine between members",
            "sign": f"red: raising the pixel raises the sum of layer {layer}'s outputs; blue: lowers it"}


def constant_pairs(dist: dict, tol: float = 1e-4) -> dict | None:
    """{pair label: its cosine} when every member pair has the same cosine at every example
    (a degenerate distribution: a spike per pair, e.g. layer 1's input-independent
    gradient); None otherwise."""
    cos = dist.get("cosines") or {}
    if not cos or dist.get("n", 0) < 2:
        return None
    labels = dist.get("labels") or [f"M{i + 1}–M{j + 1}" for i, j in cos]
    out = {}
    for lab, v in zip(labels, cos.values()):
        v = np.asarray(v, dtype=float)
        if v.size == 0 or np.ptp(v) > tol:
            return None
        out[lab] = float(np.mean(v))
    return out


def constant_text(label: str, dist: dict, values: dict) -> str:
    """'ENS_U: all 450 examples have cosine +0.12 for M1–M2, ...': a spike, said as one."""
    n = dist.get("n")
    return (f"{label}: all {n:,} examples have the same cosine for each member pair — "
            + ", ".join(f"{v:+.2f} for {lab}" for lab, v in values.items())
            + " — a spike per pair, not a distribution.")


def cosine_finding(dists: dict, methods: dict, layer: int | None = None,
                   parl_layers: int | None = None) -> str:
    """Median pairwise gradient cosine of each ensemble over the examples, the middle half
    of each distribution, PARL vs ENS_U and plainly whether PARL's are less aligned.
    dists: {label: cosine_distribution result}; layer: None (loss gradient) or k (PARL's
    layer-k gradient); parl_layers: the K PARL regularised (noted when k > K)."""
    parl, ens_u = _pair(methods)
    med = {lab: float(np.median(d["all"])) for lab, d in dists.items()}
    n = next(iter(dists.values())).get("n")
    text = ("Median cosine between members' gradients, over every member pair and "
            f"{n:,} examples — " + ", ".join(f"{lab}: {m:+.2f}" for lab, m in med.items()) + ".")
    text += " Middle half: " + "; ".join(
        f"{lab} {np.percentile(d['all'], 25):+.2f} … {np.percentile(d['all'], 75):+.2f}"
        for lab, d in dists.items()) + "."
    if parl is None or ens_u is None or parl == ens_u:
        return text
    a, b = med[parl], med[ens_u]
    if layer is not None and parl_layers is not None and layer > parl_layers:
        text += f" (Layer {layer} is beyond the first {parl_layers} layers PARL regularises.)"
    if lower(a, b):
        if layer is None:
            return text + (f" **PARL's members' gradients are less aligned than ENS_U's ({a - b:+.2f}): an "
                           "attack that follows one member's gradient moves the others less.**")
        return text + (f" **PARL's members' layer-{layer} gradients are less aligned than ENS_U's "
                       f"({a - b:+.2f}), as its regulariser asks.**")
    which = "gradients" if layer is None else f"layer-{layer} gradients"
    return text + f" **PARL's members' {which} are not less aligned than ENS_U's here ({a - b:+.2f}).**"


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


# --------------------------------------------------------------------------- member transfer
def off_diagonal(matrix) -> float:
    """Mean accuracy of a member on examples crafted on another member (transfer matrix
    without its white-box diagonal)."""
    m = np.asarray(matrix, dtype=float)
    return float(m[~np.eye(len(m), dtype=bool)].mean())


def transfer_finding(matrices: dict, methods: dict, n: int) -> str:
    """What two transfer matrices show, from their numbers: each ensemble's mean accuracy
    off the diagonal (higher = attacks transfer less between its members), which is higher
    and by how much; says plainly when PARL's members do not resist transfer better than
    ENS_U's. `matrices`/`methods`: label -> matrix / method name; n: examples per matrix."""
    if len(matrices) != 2:
        raise ValueError(f"transfer_finding compares two matrices, got {len(matrices)}")
    off = {lab: off_diagonal(m) for lab, m in matrices.items()}
    (a, va), (b, vb) = off.items()
    parts = f"{a} {100 * va:.1f} %, {b} {100 * vb:.1f} %"
    d = 100 * (va - vb)
    if abs(d) < 1.0:
        what = "about the same transfer between the members of both"
    else:
        hi, lo = (a, b) if d > 0 else (b, a)
        what = f"attacks transfer less between {hi}'s members ({abs(d):.1f} points higher than {lo})"
    text = (f"Mean accuracy of a member on examples crafted on another member: {parts} — {what}. "
            f"On {n} test examples each; a difference of a few points is within noise at this size.")
    parl, ens_u = _pair(dict(zip(matrices, [methods[k] for k in matrices])))
    if parl and ens_u and not off[parl] > off[ens_u] + 0.01:
        text += " **The expected effect — less transfer between PARL's members — is absent here.**"
    return text
