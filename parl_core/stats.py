"""Statistics of accuracies: proportions over n examples with their 95 % intervals."""
from __future__ import annotations

import math

__all__ = ["Z95", "wilson_interval", "mcnemar_p", "paired_difference", "paired_comparison"]

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n (fractions; (0, 1) when n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # The exact ends at k = 0 and k = n (the formula leaves rounding crumbs there).
    return (0.0 if k == 0 else max(0.0, mid - half)), (1.0 if k == n else min(1.0, mid + half))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test: the binomial probability, under "both ensembles are
    equally accurate", of discordant pairs at least this unbalanced."""
    from math import comb
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_difference(a_correct, b_correct, z: float = Z95) -> dict:
    """Accuracy difference of B over A on the same examples (boolean arrays): {"n", "acc_a",
    "acc_b", "diff", "diff_low", "diff_high" (paired Wald interval of the difference, the
    standard one for matched proportions), "only_a", "only_b" (discordant pairs),
    "p_value" (exact McNemar)}."""
    import numpy as np
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired verdicts must be two 1-D arrays of equal length, got "
                         f"{a.shape} and {b.shape}")
    n = len(a)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    diff = (only_b - only_a) / n if n else float("nan")
    se = math.sqrt(max(0.0, only_a + only_b - (only_b - only_a) ** 2 / n)) / n if n else float("nan")
    return {"n": n, "acc_a": float(a.mean()) if n else float("nan"),
            "acc_b": float(b.mean()) if n else float("nan"), "diff": diff,
            "diff_low": max(-1.0, diff - z * se), "diff_high": min(1.0, diff + z * se),
            "only_a": only_a, "only_b": only_b, "p_value": mcnemar_p(only_a, only_b)}


def paired_comparison(res_a, res_b):
    """Row by row, B − A for two RobustnessResults on the same examples (same evaluation
    subset and attack settings, e.g. ENS_U and PARL from one surrogate) -> DataFrame with
    attack, eps and the fields of `paired_difference`. Rows without verdicts (restart rule
    "mean") are left out."""
    import pandas as pd
    ia, ib = res_a.settings.get("indices"), res_b.settings.get("indices")
    if (ia is not None and ib is not None and ia != ib) or \
            int(res_a.table.n.iloc[0]) != int(res_b.table.n.iloc[0]):
        raise ValueError("paired comparison needs both evaluations on the same examples "
                         "(same dataset, n_examples and evaluation subset)")
    rows = []
    for r in res_a.table.itertuples():
        va, vb = res_a.verdict(r.attack, r.eps), res_b.verdict(r.attack, r.eps)
        if va is not None and vb is not None:
            rows.append({"attack": r.attack, "eps": r.eps, **paired_difference(va, vb)})
    return pd.DataFrame(rows)
