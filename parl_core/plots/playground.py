"""Playground figures: a PlaygroundFrame (numpy arrays) in, plotly Figures out.

Trace names are part of the contract (tests and the page read them):
  "regions", "boundary M<i>" (one per member), "vote boundary", "train",
  "gradient M<i>", "attack path", "attack end".
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

__all__ = ["CLASS_COLORS", "members_figure", "alignment_figure", "layer_cosine_figure",
           "playground_history_figure", "transfer_figure", "arrow_segments"]

# TensorFlow Playground's orange and blue first, then distinct hues for more classes.
CLASS_COLORS = ["#f59322", "#0877bd", "#2ca02c", "#9467bd", "#d62728"]
_PALE = ["#fbd9ad", "#a9d3ee", "#b7e2b1", "#d5c6e8", "#f2b4b4"]
_HEIGHT = 290
# Streamlit (1.67) remounts a chart whenever its figure changes, so every Playground frame
# is a full Plotly.newPlot. Measured in headless chromium without a GPU (software WebGL):
# the 4-plot members figure draws in 250/460/520/930 ms as SVG and 550/650/610/690 ms as
# WebGL for 200/500/1000/2000 points; the alignment map in 40-155 ms as SVG, 240-310 ms
# as WebGL. So SVG up to this many markers in one figure, WebGL beyond.
SVG_MAX_MARKERS = 4000


def scatter_type(markers: int) -> str:
    """"scatter" (SVG) for a figure with up to SVG_MAX_MARKERS markers, else "scattergl"."""
    return "scatter" if markers <= SVG_MAX_MARKERS else "scattergl"


def _figure(traces, layout) -> go.Figure:
    """A Figure from plain dicts without plotly's per-property validation, which cost
    more than everything else in a Playground frame (bench/bench_playground.py); the
    tests rebuild every figure with validation on, so a bad property still fails there."""
    return go.Figure(data=traces, layout=layout, _validate=False)


def _region_trace(frame, probs, pred, k):
    """Binary: shade by p(class 1) (how sure, as TF Playground); else the winning class."""
    common = dict(x=frame.xs, y=frame.ys, showscale=False, name="regions",
                  xaxis=f"x{k}", yaxis=f"y{k}", hoverinfo="skip")
    if frame.num_classes == 2:
        scale = [[0, CLASS_COLORS[0]], [0.5, "#ffffff"], [1, CLASS_COLORS[1]]]
        # p(class 1) in 1/255 steps: a quarter of the bytes sent per frame, same picture.
        z = np.rint(probs[..., 1] * 255).astype(np.uint8)
        return dict(type="heatmap", z=z, zmin=0, zmax=255, colorscale=scale,
                    opacity=0.55, **common)
    c = frame.num_classes
    scale = [[v, _PALE[i]] for i in range(c) for v in (i / c, (i + 1) / c)]
    return dict(type="heatmap", z=pred.astype(np.uint8), zmin=-0.5, zmax=c - 0.5, colorscale=scale, **common)


def _class_colors(labels, c):
    """Labels as uint8 numbers with a stepped colour scale (far fewer bytes than names)."""
    scale = [[v, CLASS_COLORS[i % len(CLASS_COLORS)]] for i in range(c) for v in (i / c, (i + 1) / c)]
    return ((labels.astype(np.float32) + 0.5) / c).astype(np.float32), scale


def arrow_segments(points: np.ndarray, vecs: np.ndarray, length: float):
    """Arrows of equal `length` along `vecs` (A, 2) from `points` (A, 2), as one line:
    (px, py) with NaN breaks. A zero vector draws nothing."""
    norm = np.linalg.norm(vecs, axis=1, keepdims=True)
    ok = norm[:, 0] > 0
    p, u = points[ok], vecs[ok] / norm[ok]
    tip = p + length * u
    side = np.stack([-u[:, 1], u[:, 0]], 1)
    head_l = tip - 0.35 * length * u + 0.2 * length * side
    head_r = tip - 0.35 * length * u - 0.2 * length * side
    nan = np.full((len(p), 2), np.nan)
    pts = np.stack([p, tip, nan, head_l, tip, head_r, nan], 1).reshape(-1, 2)
    pts = pts.astype(np.float32)  # sent as binary float32 to the browser
    return pts[:, 0], pts[:, 1]


def _dom(a, b):
    return [min(1.0, max(0.0, round(a, 6))), min(1.0, max(0.0, round(b, 6)))]


def _axes_layout(n_plots, cols, bounds):
    rows = -(-n_plots // cols)
    layout, gap = {}, 0.04
    w, h = (1 - gap * (cols - 1)) / cols, (1 - 0.1 * (rows - 1)) / rows
    for k in range(1, n_plots + 1):
        r, c = divmod(k - 1, cols)
        top = 1 - r * (h + 0.1)
        layout[f"xaxis{k}"] = dict(domain=_dom(c * (w + gap), c * (w + gap) + w), anchor=f"y{k}",
                                   range=bounds[:2], showgrid=False, zeroline=False,
                                   constrain="domain")
        layout[f"yaxis{k}"] = dict(domain=_dom(top - h, top), anchor=f"x{k}", range=bounds[2:],
                                   showgrid=False, zeroline=False, scaleanchor=f"x{k}",
                                   constrain="domain")
    return layout, rows


def _title(k, cols, rows, text):
    r, c = divmod(k - 1, cols)
    w = (1 - 0.04 * (cols - 1)) / cols
    h = (1 - 0.1 * (rows - 1)) / rows
    return dict(text=text, x=c * (w + 0.04) + w / 2, y=1 - r * (h + 0.1), xref="paper",
                yref="paper", yanchor="bottom", showarrow=False, font=dict(size=12))


def _attack_traces(path, crossed, k, kind):
    ax = dict(xaxis=f"x{k}", yaxis=f"y{k}", showlegend=False)
    color = "#d62728" if crossed else "#222222"
    return [dict(type=kind, x=path[:, 0], y=path[:, 1], mode="lines+markers",
                 name="attack path", line=dict(color="#222222", width=2), marker=dict(size=4),
                 hoverinfo="skip", **ax),
            dict(type=kind, x=path[-1:, 0], y=path[-1:, 1], mode="markers",
                 name="attack end", customdata=[int(crossed)], hoverinfo="skip",
                 marker=dict(symbol="x", size=13, color=color, line=dict(width=1)), **ax)]


def _plot_traces(frame, i, k, cell, colors, colorscale, kind):
    """Regions, boundary, training points and (members only) gradient arrows of plot k."""
    m = frame.member_probs.shape[0]
    ax = dict(xaxis=f"x{k}", yaxis=f"y{k}", showlegend=False)
    if i < m:
        probs, pred, (bx, by) = frame.member_probs[i], frame.member_probs[i].argmax(-1), \
            frame.boundaries[i]
        name = f"boundary M{i + 1}"
    else:
        probs, pred, (bx, by) = frame.vote_probs, frame.vote, frame.vote_boundary
        name = "vote boundary"
    out = [_region_trace(frame, probs, pred, k),
           dict(type=kind, x=bx.astype(np.float32), y=by.astype(np.float32), mode="lines",
                name=name, hoverinfo="skip",
                line=dict(color="#111111", width=2), **ax),
           dict(type=kind, x=frame.train_x[:, 0], y=frame.train_x[:, 1], mode="markers",
                name="train", hovertemplate="point %{pointNumber}<extra></extra>",
                # no outline: 2,000 outlined SVG markers cost ~75 ms more per draw here
                marker=dict(size=5, color=colors, colorscale=colorscale, cmin=0, cmax=1), **ax)]
    if i < m:
        gx, gy = arrow_segments(frame.arrow_points, frame.arrow_grads[i], 0.45 * cell)
        out.append(dict(type=kind, x=gx, y=gy, mode="lines", name=f"gradient M{i + 1}",
                        hoverinfo="skip", line=dict(color="rgba(40,40,40,0.55)", width=1), **ax))
    return out


def members_figure(frame, attack: dict | None = None, *, cols: int = 3,
                   accuracies=None) -> go.Figure:
    """One plot per member (regions, boundary, training points, loss-gradient arrows)
    and the ensemble's majority vote last. `attack` (PlaygroundSession.attack_path)
    draws the path on every plot and marks where it crossed that plot's boundary.
    `accuracies`: M + 1 test accuracies (members, then the vote) for the titles."""
    m = frame.member_probs.shape[0]
    n_plots = m + 1
    cols = min(cols, n_plots)
    bounds = [float(frame.xs[0]), float(frame.xs[-1]), float(frame.ys[0]), float(frame.ys[-1])]
    layout, rows = _axes_layout(n_plots, cols, bounds)
    cell = (bounds[1] - bounds[0]) / np.sqrt(len(frame.arrow_points))
    colors, colorscale = _class_colors(frame.train_y, frame.num_classes)
    kind = scatter_type(len(frame.train_x) * n_plots)
    traces, titles = [], []
    for i in range(n_plots):
        traces.extend(_plot_traces(frame, i, i + 1, cell, colors, colorscale, kind))
        head = f"M{i + 1}" if i < m else "vote"
        if accuracies is not None:
            head += f" {accuracies[i]:.0%}"
        if attack is not None:
            from ..playground_live import attack_verdicts  # holds / fooled / already wrong
            verdict = attack_verdicts(attack)[i]
            crossed = verdict == "fooled"
            traces.extend(_attack_traces(attack["path"], crossed, i + 1, kind))
            head += f"{' · attacked' if i == attack['member'] else ''} · " \
                    f"{'<b>fooled</b>' if crossed else verdict}"
        titles.append(_title(i + 1, cols, rows, head))
    layout.update(height=_HEIGHT * rows, margin=dict(l=10, r=10, t=30, b=10),
                  annotations=titles, plot_bgcolor="white", dragmode=False,
                  uirevision="members")
    return _figure(traces, layout)


def alignment_figure(frame) -> go.Figure:
    """Local alignment: the mean pairwise cosine of the members' loss gradients over
    the plane (1: they point alike, an attack on one transfers), vote boundary on top."""
    scale = [[0, "#2166ac"], [0.5, "#f7f7f7"], [1, "#b2182b"]]
    kind = scatter_type(len(frame.train_x))
    traces = [
        dict(type="heatmap", x=frame.xs, y=frame.ys, z=frame.alignment, zmin=-1, zmax=1,
             colorscale=scale, name="alignment", colorbar=dict(title=dict(text="cos"), thickness=12),
             hovertemplate="x %{x:.2f}, y %{y:.2f}<br>mean cos %{z:.2f}<extra></extra>"),
        dict(type=kind, x=frame.vote_boundary[0], y=frame.vote_boundary[1], mode="lines",
             name="vote boundary", line=dict(color="#111111", width=1.5), hoverinfo="skip"),
        dict(type=kind, x=frame.train_x[:, 0], y=frame.train_x[:, 1], mode="markers",
             name="train", marker=dict(size=3, color="rgba(0,0,0,0.25)"), hoverinfo="skip")]
    layout = dict(height=360, margin=dict(l=10, r=10, t=30, b=10), showlegend=False,
                  title=dict(text=f"local gradient alignment (floor {frame.floor:.2f})",
                             font=dict(size=13)),
                  xaxis=dict(range=[float(frame.xs[0]), float(frame.xs[-1])], showgrid=False,
                             constrain="domain"),
                  yaxis=dict(range=[float(frame.ys[0]), float(frame.ys[-1])], showgrid=False,
                             scaleanchor="x", constrain="domain"), uirevision="alignment")
    return _figure(traces, layout)


def layer_cosine_figure(layer_cos, floor: float) -> go.Figure:
    """Per layer: the mean pairwise cosine of PARL's layer gradients, against its floor
    −1/(M−1) (a bar at the floor means the regulariser cannot push that layer further)."""
    names = [f"layer {k}" for k in range(1, len(layer_cos) + 1)]
    traces = [
        dict(type="bar", x=names, y=np.asarray(layer_cos), name="mean pairwise cos",
             marker=dict(color="#0877bd"), hovertemplate="%{x}: %{y:.3f}<extra></extra>"),
        dict(type="scatter", x=names, y=[floor] * len(names), mode="lines+markers",
             name="floor −1/(M−1)", line=dict(color="#d62728", dash="dash"))]
    layout = dict(height=360, margin=dict(l=10, r=10, t=30, b=10), yaxis=dict(range=[-1, 1]),
                  title=dict(text="layer-gradient cosine per layer", font=dict(size=13)),
                  legend=dict(orientation="h", y=-0.15), uirevision="layers")
    return _figure(traces, layout)


def playground_history_figure(history: list) -> go.Figure:
    """Test accuracy (vote) and mean pairwise R/K over the epochs so far."""
    ep = [r["epoch"] for r in history]
    traces = [
        dict(type="scatter", x=ep, y=[r.get("test_acc") for r in history], mode="lines",
             name="test acc (vote)", line=dict(color="#2ca02c")),
        dict(type="scatter", x=ep, y=[r.get("r_mean") for r in history], mode="lines",
             name="mean pairwise R/K", line=dict(color="#9467bd"))]
    layout = dict(height=360, margin=dict(l=10, r=10, t=30, b=10), yaxis=dict(range=[-1, 1.02]),
                  xaxis=dict(title=dict(text="epoch")), uirevision="history",
                  title=dict(text="training so far", font=dict(size=13)),
                  legend=dict(orientation="h", y=-0.25))
    return _figure(traces, layout)


def transfer_figure(rates, vote) -> go.Figure:
    """Attack success: rows = the member the attack was crafted on, columns = the member
    (or the vote) scored. Off the diagonal is transfer."""
    rates, vote = np.asarray(rates, dtype=float), np.asarray(vote, dtype=float)
    m = len(rates)
    z = np.concatenate([rates, vote[:, None]], 1)
    cols = [f"M{j + 1}" for j in range(m)] + ["vote"]
    rows = [f"on M{i + 1}" for i in range(m)]
    text = [[f"{v:.0%}" for v in row] for row in z]
    traces = [dict(type="heatmap", z=z, x=cols, y=rows, zmin=0, zmax=1, colorscale="Reds",
                   text=text, texttemplate="%{text}", showscale=False, name="transfer",
                   hovertemplate="crafted %{y}, scored %{x}: %{z:.0%}<extra></extra>")]
    layout = dict(height=80 + 45 * m, margin=dict(l=10, r=10, t=30, b=10),
                  yaxis=dict(autorange="reversed"),
                  title=dict(text="fooled (of those right before)", font=dict(size=13)))
    return _figure(traces, layout)
