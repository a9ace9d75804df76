"""Training curves and checkpoint comparisons (Train and Checkpoints pages).

Inputs are plain histories (lists of per-epoch dicts, parl_core.train's format), lists
of step losses, or DataFrames; outputs are plotly Figures.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["history_figure", "step_loss_figure", "compare_histories_figure",
           "checkpoint_comparison_figure", "transfer_matrix_figure", "TRAINING_METRICS"]

TRAINING_METRICS = {"test_acc": "ensemble test accuracy", "r_mean": "mean pairwise R/K",
                    "loss": "training loss", "ce": "cross-entropy (Σ members)"}
_LOSS_TERMS = ("loss", "ce", "reg")
_MEMBER_COLOURS = ("#8c8c8c", "#b07aa1", "#59a14f", "#f28e2b", "#76b7b2")


def _check_history(history, name="history"):
    if not isinstance(history, (list, tuple)) or not all(isinstance(r, dict) for r in history):
        raise ValueError(f"{name} must be a list of per-epoch dicts, got {type(history).__name__}")


def history_figure(history, *, title: str | None = None, height: int = 320) -> go.Figure:
    """Three panels over epochs: loss terms; ensemble and per-member test accuracy;
    mean pairwise R/K (with its floor −1/(M−1) when the member count is known)."""
    _check_history(history)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                        subplot_titles=("loss terms", "test accuracy", "mean pairwise R/K"))
    ep = [r.get("epoch", i + 1) for i, r in enumerate(history)]
    for key in _LOSS_TERMS:
        if any(r.get(key) is not None for r in history):
            fig.add_trace(go.Scatter(x=ep, y=[r.get(key) for r in history], name=key,
                                     mode="lines+markers", legendgroup="loss"), 1, 1)
    members = max((len(r.get("member_acc") or []) for r in history), default=0)
    for i in range(members):
        fig.add_trace(go.Scatter(x=ep, y=[(r.get("member_acc") or [None] * members)[i] for r in history],
                                 name=f"member {i + 1}", mode="lines", legendgroup="acc",
                                 line={"dash": "dot", "color": _MEMBER_COLOURS[i % 5]}), 1, 2)
    if any(r.get("test_acc") is not None for r in history):
        fig.add_trace(go.Scatter(x=ep, y=[r.get("test_acc") for r in history], name="ensemble (vote)",
                                 mode="lines+markers", line={"color": "#1f6feb", "width": 3},
                                 legendgroup="acc"), 1, 2)
    fig.add_trace(go.Scatter(x=ep, y=[r.get("r_mean") for r in history], name="mean R/K",
                             mode="lines+markers", line={"color": "#d62728"}, legendgroup="r"), 1, 3)
    if members > 1:
        fig.add_hline(y=-1 / (members - 1), line_dash="dash", line_color="#999", row=1, col=3,
                      annotation_text="floor −1/(M−1)", annotation_position="bottom right")
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(tickformat=".0%", row=1, col=2)
    fig.update_layout(height=height, title=title, margin={"t": 60 if title else 40, "b": 40},
                      legend={"orientation": "h", "y": -0.25}, template="plotly_white")
    return fig


def step_loss_figure(steps, steps_per_epoch: int | None = None, *, height: int = 260) -> go.Figure:
    """Per-step training loss terms. steps: [(global_step, loss, {term: value}), ...]."""
    fig = go.Figure()
    if steps:
        xs = [s[0] for s in steps]
        if steps_per_epoch:
            xs = [g / steps_per_epoch for g in xs]
        terms = [t for t in _LOSS_TERMS if any(t in s[2] for s in steps)]
        for t in terms:
            fig.add_trace(go.Scatter(x=xs, y=[s[2].get(t) for s in steps], name=t, mode="lines"))
    fig.update_layout(height=height, xaxis_title="epoch" if steps_per_epoch else "step",
                      yaxis_title="batch loss", template="plotly_white",
                      margin={"t": 30, "b": 40}, legend={"orientation": "h", "y": -0.3})
    return fig


def compare_histories_figure(histories: dict, metric: str = "test_acc", *, height: int = 320) -> go.Figure:
    """One curve per checkpoint of `metric` over epochs. histories: {label: history}."""
    if not isinstance(histories, dict):
        raise ValueError(f"histories must be a dict {{label: history}}, got {type(histories).__name__}")
    fig = go.Figure()
    for label, hist in histories.items():
        _check_history(hist, f"histories[{label!r}]")
        fig.add_trace(go.Scatter(x=[r.get("epoch", i + 1) for i, r in enumerate(hist)],
                                 y=[r.get(metric) for r in hist], name=str(label), mode="lines+markers"))
    fig.update_layout(height=height, xaxis_title="epoch",
                      yaxis_title=TRAINING_METRICS.get(metric, metric), template="plotly_white",
                      margin={"t": 30, "b": 40})
    if metric.endswith("acc"):
        fig.update_yaxes(tickformat=".0%")
    return fig


def checkpoint_comparison_figure(df, metrics=("clean_acc", "robust_acc", "mean_R", "avg_cka"),
                                 *, label: str = "checkpoint", height: int = 320) -> go.Figure:
    """Grouped bars, one panel per metric present in `df` (a row per checkpoint): the
    ablation view of Table 2."""
    present = [m for m in metrics if m in df.columns and df[m].notna().any()]
    if label not in df.columns:
        raise ValueError(f"df must have a {label!r} column, got columns {list(df.columns)}")
    fig = make_subplots(rows=1, cols=max(1, len(present)), subplot_titles=present or ["(no metrics)"])
    for c, m in enumerate(present, start=1):
        fig.add_trace(go.Bar(x=df[label], y=df[m], name=m, showlegend=False,
                             text=[f"{v:.3f}" if v == v else "" for v in df[m]],
                             textposition="outside"), 1, c)
        if m.endswith("acc"):
            fig.update_yaxes(tickformat=".0%", range=[0, 1.1], row=1, col=c)
    fig.update_layout(height=height, template="plotly_white", margin={"t": 40, "b": 40})
    return fig


def transfer_matrix_figure(matrix, names=None, *, attack: str = "pgd", eps: float | None = None,
                           per255: bool = False, height: int = 380) -> go.Figure:
    """(M, M) accuracy of member j (column) on examples crafted on member i (row), as
    `parl_core.transferability_matrix` returns it; the diagonal is white-box. per255: ε
    also in /255 units in the title (8-bit images)."""
    import numpy as np
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square (M, M), got shape {m.shape}")
    names = [f"member {i + 1}" for i in range(len(m))] if names is None else [str(n) for n in names]
    if len(names) != len(m):
        raise ValueError(f"names must name each of the {len(m)} members, got {len(names)}")
    fig = go.Figure(go.Heatmap(z=m, x=names, y=names, zmin=0, zmax=1, colorscale="RdYlGn",
                               texttemplate="%{z:.0%}", colorbar={"title": {"text": "accuracy"}},
                               hovertemplate="crafted on %{y}, scored on %{x}: %{z:.1%}<extra></extra>"))
    what = f"{attack.upper()}" + (f", ε = {eps:g}" if eps is not None else "") \
        + (f" (≈ {eps * 255:.1f}/255)" if eps is not None and per255 else "")
    fig.update_layout(title=f"Transferability between members ({what})", height=height,
                      xaxis_title="scored on", yaxis_title="crafted on", template="plotly_white",
                      yaxis={"autorange": "reversed"})
    return fig
