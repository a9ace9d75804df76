"""Sentences about "What R measures" (the Gradients page): PARL's R/K under a chosen
definition of the layer outputs F^k beside the loss-gradient cosine that attacks follow,
computed from the numbers (pure functions, no Streamlit; the conventions of
`dashboard.findings`: the numbers, and plainly when the expected effect is absent or when
R and the loss-gradient cosine part ways)."""
from __future__ import annotations

import math

import numpy as np

from .findings import CLOSE, _fmt_list, _pair

__all__ = ["FEATURE_WORDS", "CONSTANT_TOL", "r_at_k", "floor", "r_table", "r_measure_finding"]

FEATURE_WORDS = {"pre_bn": "before batch norm (PARL's default)", "post_bn": "after batch norm",
                 "post_relu": "after ReLU"}
CONSTANT_TOL = 1e-4  # a layer's cosine that moves less than this over the examples is "the same"


def _check_feature(feature) -> str:
    if feature not in FEATURE_WORDS:
        raise ValueError(f"feature must be one of {', '.join(map(repr, FEATURE_WORDS))}, got {feature!r}")
    return feature


def _per_layer(result, label="result") -> np.ndarray:
    if not isinstance(result, dict) or "per_layer" not in result or "members" not in result:
        raise ValueError(f"{label} must be a layer-cosine result with 'per_layer' and 'members', got {result!r}")
    v = np.asarray(result["per_layer"], dtype=float)
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"{label}['per_layer'] must be a non-empty finite (L,) array, got {v!r}")
    return v


def r_at_k(result: dict, k: int | None) -> tuple[float, int]:
    """(R/K, K used): the mean of the first k per-layer cosines (all L when k is None; at
    most L)."""
    v = _per_layer(result)
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k must be None (all layers) or an int >= 1, got {k!r}")
    used = len(v) if k is None else min(int(k), len(v))
    return float(v[:used].mean()), used


def floor(members) -> float:
    """−1/(M−1): the lowest mean pairwise cosine M vectors can have."""
    if isinstance(members, bool) or not isinstance(members, (int, np.integer)) or members < 2:
        raise ValueError(f"members must be an int >= 2, got {members!r}")
    return -1.0 / (int(members) - 1)


def _layers(used: int) -> str:
    return "layer 1" if used == 1 else f"layers 1–{used}"


def r_table(results: dict, loss_cos: dict, k: int | None) -> str:
    """A markdown table: per ensemble, R/K at k and the mean pairwise loss-gradient cosine."""
    rows = []
    for lab, res in results.items():
        r, used = r_at_k(res, k)
        rows.append(f"| {lab} | {r:+.2f} ({_layers(used)}) | {floor(res['members']):+.2f} | "
                    f"{float(loss_cos[lab]):+.2f} |")
    return ("| ensemble | R/K (mean pairwise layer-gradient cosine) | floor −1/(M−1) | "
            "loss-gradient cosine (∇x CE) |\n|---|---|---|---|\n" + "\n".join(rows))


def r_measure_finding(results: dict, loss_cos: dict, k: int | None, feature: str,
                      methods: dict | None = None, trained_feature: str | None = None) -> str:
    """What R/K under `feature` and the loss-gradient cosine say about one or two ensembles.

    results: {label: {"per_layer": (L,) mean pairwise layer-gradient cosine, "spread": (L,)
    its range over the examples, "members": M, "n": examples}}; loss_cos: {label: mean
    pairwise loss-gradient cosine}; k: PARL's K (None: all layers); methods: {label:
    method} (PARL vs ENS_U is judged when both are there); trained_feature: the definition
    the PARL ensemble was trained with, when known. Says which R/K is lower and by how
    much, whether the loss-gradient cosine moves the same way — plainly when it does not
    — which ensembles sit at the floor, and what layer 1's cosine is.
    """
    _check_feature(feature)
    if not isinstance(results, dict) or not 1 <= len(results) <= 2:
        raise ValueError(f"results must map one or two labels to layer-cosine results, got {results!r}")
    missing = [lab for lab in results if lab not in loss_cos]
    if missing:
        raise ValueError(f"loss_cos has no loss-gradient cosine for {missing}")
    loss = {lab: float(loss_cos[lab]) for lab in results}
    bad = [lab for lab, v in loss.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"loss_cos must be finite numbers, got {[loss_cos[lab] for lab in bad]} for {bad}")
    r = {lab: r_at_k(res, k) for lab, res in results.items()}
    n = next(iter(results.values())).get("n")
    words = FEATURE_WORDS[feature]
    text = (f"With F^k = each layer's outputs {words}, the members' mean pairwise layer-gradient cosine "
            f"averaged over the first K layers (R/K) on {n:,} test examples — "
            + ", ".join(f"{lab}: {v:+.2f} over {_layers(used)}" for lab, (v, used) in r.items())
            + ". Mean pairwise loss-gradient cosine (∇x CE, what attacks follow) — "
            + ", ".join(f"{lab}: {v:+.2f}" for lab, v in loss.items()) + ".")
    at_floor = [lab for lab, (v, _) in r.items() if v <= floor(results[lab]["members"]) + CLOSE]
    if at_floor:
        text += (f" {_fmt_list(at_floor)} {'sits' if len(at_floor) == 1 else 'sit'} at the floor −1/(M−1) "
                 "(as far apart as that many gradients can point on average), so R cannot go lower.")
    if len(results) == 2:
        text += " " + _comparison(r, loss)
    text += _expected(r, methods or {}, feature, trained_feature)
    return (text + " " + _layer_one(results, feature)).rstrip()


def _comparison(r: dict, loss: dict) -> str:
    (a, (ra, _)), (b, (rb, _)) = r.items()
    lo, hi = (a, b) if ra <= rb else (b, a)
    dr, dl = r[lo][0] - r[hi][0], loss[lo] - loss[hi]
    if dr >= -CLOSE:
        if abs(loss[a] - loss[b]) <= CLOSE:
            return f"R/K is about the same in both ({ra - rb:+.2f}), and so is the loss-gradient cosine."
        low = a if loss[a] < loss[b] else b
        return (f"R/K is about the same in both ({ra - rb:+.2f}), **but the loss-gradient cosine is lower in "
                f"{low} ({-abs(loss[a] - loss[b]):+.2f}): under this definition R does not see the difference "
                "attacks follow.**")
    head = f"{lo}'s R/K is lower than {hi}'s by {-dr:.2f}"
    if dl < -CLOSE and dl / dr >= 0.5:
        return (f"**{head}**; its loss-gradient cosine is lower too, by {-dl:.2f} ({dl / dr:.0%} of R/K's "
                "difference): here R and the gradient attacks follow move the same way.")
    if dl < -CLOSE:
        return (f"**{head}**; its loss-gradient cosine is lower too, but only by {-dl:.2f} ({dl / dr:.0%} of "
                "R/K's difference): **the gradient attacks follow moves far less than R.**")
    if dl <= CLOSE:
        return (f"**{head}, but the loss-gradient cosine does not differ ({dl:+.2f}): the gradient attacks "
                "follow is as aligned in both. R differs while the loss-gradient cosine does not — the gap "
                "between what PARL optimises and what attacks follow.**")
    return (f"**{head}, but its loss-gradient cosine is higher ({dl:+.2f}): the gradient attacks follow is "
            "more aligned in the ensemble whose R is lower — the opposite of what R suggests.**")


def _expected(r: dict, methods: dict, feature: str, trained_feature) -> str:
    parl, ens_u = _pair({lab: methods.get(lab) for lab in r})
    if parl is None or ens_u is None or parl == ens_u:
        return ""
    text = ""
    if trained_feature is not None:
        _check_feature(trained_feature)
        text += (f" {parl} was trained with R {FEATURE_WORDS[trained_feature]}"
                 + ("." if trained_feature == feature else "; this view reads R another way."))
    if not r[parl][0] < r[ens_u][0] - CLOSE:
        text += (f" **Under this definition PARL's R/K is not lower than ENS_U's ({r[parl][0] - r[ens_u][0]:+.2f}): "
                 "the expected effect is absent here.**")
    return text


def _layer_one(results: dict, feature: str) -> str:
    first = {lab: float(_per_layer(res)[0]) for lab, res in results.items()}
    spread = {lab: float(np.asarray(res.get("spread", [np.nan]), dtype=float)[0]) for lab, res in results.items()}
    values = ", ".join(f"{lab} {v:+.2f}" for lab, v in first.items())
    n = next(iter(results.values())).get("n")
    known = not any(math.isnan(s) for s in spread.values())  # results without a spread: not checked
    same = known and all(s <= CONSTANT_TOL for s in spread.values())
    if feature == "pre_bn":
        text = ("Under “before batch norm” layer 1's gradient does not depend on the input (the stem is linear "
                f"in the pixels), so layer 1's cosine ({values}) is a constant of the weights")
        if same:
            return text + f": the same at all {n:,} examples here."
        if not known:
            return text + "."
        return (text + f" — **yet here it varies over the {n:,} examples by up to {max(spread.values()):.2g}: "
                "this model's first layer is not linear in the input.**")
    if not known:
        return ""
    if same:
        why = (" (in eval mode batch norm is a fixed affine map, so layer 1 stays linear in the pixels)"
               if feature == "post_bn" else "")
        return (f"Layer 1's cosine ({values}) is the same at all {n:,} examples under this definition "
                f"too{why}: a constant of the weights.")
    return f"Layer 1's cosine ({values}) depends on the input under this definition."
