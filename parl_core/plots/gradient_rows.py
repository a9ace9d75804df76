"""Figure 1 for two ensembles at once: one example's input gradient in every member of
each ensemble, one row per ensemble, all maps on ONE colour scale so that their
strengths compare across rows (the input image at the left of the first row).

Arrays in, go.Figure out; nothing here computes gradients.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .analysis import reduce_channels
from .images import image_trace

__all__ = ["gradient_rows_figure"]


def _check_rows(rows) -> dict:
    if not isinstance(rows, dict) or not rows:
        raise ValueError("rows must map a row label to (grads (M, C, H, W), member names), got "
                         f"{type(rows).__name__ if not isinstance(rows, dict) else 'an empty dict'}")
    out = {}
    for label, value in rows.items():
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f"rows[{label!r}] must be (grads, names), got {type(value).__name__}")
        grads, names = np.asarray(value[0], dtype=float), [str(n) for n in value[1]]
        if grads.ndim != 4:
            raise ValueError(f"rows[{label!r}] grads must be (M, C, H, W), got shape {grads.shape}")
        if len(names) != len(grads):
            raise ValueError(f"rows[{label!r}] names must name each of its {len(grads)} members, "
                             f"got {len(names)}")
        out[str(label)] = (grads, names)
    shapes = {g.shape[2:] for g, _ in out.values()}
    if len(shapes) > 1:
        raise ValueError(f"every row must hold gradients of the same image size, got {sorted(shapes)}")
    return out


def gradient_rows_figure(x_image, rows: dict, *, mode: str = "signed", clip_percentile: float = 99,
                         input_label: str = "input", value_label: str = "∂loss/∂pixel",
                         title: str = "Input gradients, one row per ensemble") -> go.Figure:
    """The input image and one gradient map per member, a row per ensemble.

    x_image: (C, H, W) or (H, W) in [0, 1]; rows: {row label: (grads (M, C, H, W), member
    names)}, e.g. {"ENS_U": ..., "PARL": ...}; every subplot title is "<row label> · <name>".
    Channels are reduced by `reduce_channels(mode)`. One colour range for every map of
    every row: the clip_percentile-th percentile of |map| over all of them (outliers
    saturate), one colour bar titled `value_label` (what was differentiated, e.g.
    "∂loss/∂pixel"). Rows with fewer members leave their last cells empty.
    """
    rows = _check_rows(rows)
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    maps = {lab: reduce_channels(g, mode) for lab, (g, _) in rows.items()}
    pooled = np.concatenate([m.reshape(len(m), -1) for m in maps.values()], axis=None)
    r = float(np.percentile(np.abs(pooled), clip_percentile)) or 1e-12
    signed = mode == "signed"
    n_rows, n_cols = len(rows), 1 + max(len(g) for g, _ in rows.values())
    specs, titles = [], []
    for i, (lab, (g, names)) in enumerate(rows.items()):
        specs.append([{} if i == 0 else None] + [{} if j < len(g) else None for j in range(n_cols - 1)])
        titles += ([str(input_label)] if i == 0 else []) + [f"{lab} · {n}" for n in names]
    fig = make_subplots(n_rows, n_cols, specs=specs, subplot_titles=titles, horizontal_spacing=0.02,
                        vertical_spacing=0.12 if n_rows > 1 else 0.0)
    fig.add_trace(image_trace(x_image), 1, 1)
    last = (n_rows, 1 + len(next(reversed(maps.values()))))
    for i, (lab, m) in enumerate(maps.items()):
        for j, (mm, name) in enumerate(zip(m, rows[lab][1])):
            fig.add_trace(go.Heatmap(
                z=np.clip(mm, -r if signed else 0, r), zmin=-r if signed else 0, zmax=r,
                zmid=0 if signed else None, colorscale="RdBu_r" if signed else "Viridis",
                name=f"{lab} · {name}", showscale=(i + 1, j + 2) == last,
                colorbar={"title": {"text": value_label if signed else "|∇|"}, "len": 1.0, "y": 0.5,
                          "yanchor": "middle"},
                hovertemplate="x=%{x}, y=%{y}<br>%{z:.3g}<extra>" + f"{lab} · {name}</extra>"),
                i + 1, j + 2)
    for i, (g, _) in enumerate(rows.values()):
        for c in range(1, n_cols + 1):
            if (c == 1 and i > 0) or (c > 1 and c - 2 >= len(g)):
                continue
            x_ref = fig.get_subplot(i + 1, c).xaxis.plotly_name.replace("axis", "")
            bare = {"showticklabels": False, "ticks": "", "showgrid": False, "zeroline": False}
            fig.update_yaxes(scaleanchor=x_ref, constrain="domain", autorange="reversed", row=i + 1, col=c, **bare)
            fig.update_xaxes(constrain="domain", row=i + 1, col=c, **bare)
    how = "summed over channels" if signed else "L2 norm over channels"
    fig.update_layout(title={"text": f"{title}<br><sup>one colour scale for every map: "
                                      f"{'±' if signed else '0–'}{r:.2g} ({clip_percentile:g}th percentile "
                                      f"of |value|); {how}</sup>"},
                      height=130 + 170 * n_rows, margin={"t": 110, "b": 10, "l": 10, "r": 10})
    return fig
