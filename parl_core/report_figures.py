"""Figures of a reproduction report, drawn from its CSV tables alone.

`accuracy_vs_eps.csv` (one row per attack, ε, seed, mode and role) and `cka_layers.csv`
(one row per layer, member pair, seed and role) hold everything the figures show, so the
report (`parl_core.report`) and the dashboard's Reproduction page draw the same figures,
and a committed report — without its unit markers or checkpoints — can be redrawn.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["METHOD_ORDER", "PALETTE", "label", "order_roles", "cka_figure", "report_figures"]

METHOD_ORDER = ("ce_only", "adp", "gal", "dverge", "parl")
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_CURVE_COLUMNS = {"attack", "eps", "n", "correct", "acc", "ci_low", "ci_high", "dataset", "seed",
                  "mode", "role"}
_CKA_COLUMNS = {"dataset", "seed", "role", "pair", "layer", "cka"}


def label(role: str) -> str:
    """The name a table or legend shows for a report role ("parl/K3" → "PARL/3")."""
    from .losses import method_label
    return f"PARL/{role[6:]}" if role.startswith("parl/K") else method_label(role)


def order_roles(roles) -> list[str]:
    """Methods in the paper's table order, then the PARL/K ablation by K, then the rest."""
    def key(r):
        if r in METHOD_ORDER:
            return (0, METHOD_ORDER.index(r), r)
        if r.startswith("parl/K") and r[6:].isdigit():
            return (1, int(r[6:]), r)
        return (2, 0, r)
    return sorted(dict.fromkeys(roles), key=key)


def _check(df: pd.DataFrame, needed: set, name: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = needed - set(df.columns)
    if missing and len(df):
        raise ValueError(f"{name} lacks the columns {sorted(missing)} (has {list(df.columns)})")


def _same_values(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    cols = ["seed", "pair", "layer", "cka"]
    return len(a) == len(b) and a[cols].sort_values(cols[:3]).round(6).values.tolist() \
        == b[cols].sort_values(cols[:3]).round(6).values.tolist()


def cka_figure(cka: pd.DataFrame, dataset: str):
    """Same-layer linear CKA per layer, mean over member pairs and seeds with a ± std band,
    for ENS_U, PARL and the PARL/K ablation (Figures 2 and 6); None when there is none.
    PARL is left out when one of the ablation's roles holds the same ensembles."""
    import plotly.graph_objects as go
    _check(cka, _CKA_COLUMNS, "cka")
    d = cka[cka.dataset == dataset] if len(cka) else cka
    roles = [r for r in order_roles(d.role.unique() if len(d) else [])
             if r in ("ce_only", "parl") or r.startswith("parl/K")]
    if "parl" in roles and any(_same_values(d[d.role == "parl"], d[d.role == r])
                               for r in roles if r.startswith("parl/K")):
        roles.remove("parl")
    if not roles:
        return None
    fig = go.Figure()
    for n, role in enumerate(roles):
        g = d[d.role == role]
        diags = g.pivot_table(index=["seed", "pair"], columns="layer", values="cka").to_numpy()
        x, m, s = np.arange(1, diags.shape[1] + 1), np.nanmean(diags, 0), np.nanstd(diags, 0)
        color = PALETTE[n % len(PALETTE)]
        fig.add_trace(go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[m + s, (m - s)[::-1]], fill="toself",
                                 fillcolor=color, opacity=0.15, line={"width": 0}, showlegend=False,
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=m, mode="lines+markers", line={"color": color},
                                 name=f"{label(role)} {{{m.mean():.3f}}}"))
    fig.update_layout(title=f"{dataset}: same-layer linear CKA, mean over member pairs and seeds "
                            f"(band ± std; overall average in braces)",
                      xaxis_title="layer", yaxis_title="linear CKA", yaxis_range=[0, 1.02], height=420,
                      xaxis_dtick=1)
    return fig


def report_figures(curves: pd.DataFrame, cka: pd.DataFrame) -> list[tuple[str, object]]:
    """[(title, plotly figure)] per dataset: CKA per layer (Figures 2/6), black-box accuracy
    vs ε for the methods (Figure 3) and the K ablation (Figure 5), white-box (Figure 4)."""
    from .plots import accuracy_vs_eps_figure
    _check(curves, _CURVE_COLUMNS, "curves")
    datasets = list(dict.fromkeys([*(curves.dataset if len(curves) else []),
                                   *(cka.dataset if len(cka) else [])]))
    figs = []
    for ds in datasets:
        fig = cka_figure(cka, ds)
        if fig is not None:
            figs.append((f"{ds}: CKA per layer (Figures 2 and 6)", fig))
        c = curves[(curves.dataset == ds) & (curves.attack != "worst-case")] if len(curves) else curves
        attacks = [a for a in dict.fromkeys(c.attack if len(c) else []) if a != "clean"]
        for mode, pick, what in (("black-box", lambda r: r in METHOD_ORDER, "black-box (Figure 3)"),
                                 ("black-box", lambda r: r.startswith("parl/K"),
                                  "black-box, K ablation (Figure 5)"),
                                 ("white-box", lambda r: r in METHOD_ORDER, "white-box (Figure 4)")):
            m = c[c["mode"] == mode] if len(c) else c
            roles = [r for r in order_roles(m.role.unique() if len(m) else []) if pick(r)]
            tables = {label(r): [g.drop(columns=["dataset", "seed", "mode", "role"]).reset_index(drop=True)
                                 for _, g in m[m.role == r].groupby("seed", sort=True)] for r in roles}
            if tables and attacks:
                figs.append((f"{ds}: {what}", accuracy_vs_eps_figure(
                    tables, attacks=attacks, title=f"{ds}: accuracy vs ε, {what}",
                    per255=ds.startswith("cifar"))))
    return figs
