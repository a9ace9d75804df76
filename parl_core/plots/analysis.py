"""Figures of the diversity analysis (paper Figures 1-6): arrays in, go.Figure out.

Figure 1: `angle_matrix_figure`, `directions_3d_figure`, `cosine_histogram_figure`
(the input and its gradient maps: `images.py`). Figure 2/6: `cka_heatmap_figure`,
`cka_curves_figure`. Figures 3-5: `accuracy_vs_eps_figure`. Nothing here trains, computes gradients or shows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..gradients import cosine_to_angle, embed_directions

__all__ = ["angle_matrix_figure", "directions_3d_figure",
           "cosine_histogram_figure", "cka_heatmap_figure", "cka_curves_figure",
           "accuracy_vs_eps_figure", "reduce_channels"]

PALETTE = qualitative.Plotly
MODES = ("signed", "magnitude")
ESTIMATOR_TEXT = {"minibatch": "unbiased minibatch estimator (Nguyen et al. 2021)",
                  "full": "full biased estimator (Kornblith et al. 2019)"}


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _color(k: int) -> str:
    return PALETTE[k % len(PALETTE)]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


# --------------------------------------------------------------------------- Figure 1
def reduce_channels(grads, mode: str = "signed") -> np.ndarray:
    """(M, C, H, W) or (M, H, W) gradients -> (M, H, W) maps.
    signed: sum over channels (the loss change for brightening a pixel in every channel);
    magnitude: Euclidean norm over channels."""
    g = _np(grads)
    if g.ndim == 3:
        g = g[:, None]
    if g.ndim != 4:
        raise ValueError(f"grads must have shape (M, C, H, W) or (M, H, W), got {g.shape}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return g.sum(1) if mode == "signed" else np.sqrt((g ** 2).sum(1))


def _cos_matrix(cos) -> np.ndarray:
    c = _np(cos)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"cos must be a square (M, M) matrix, got shape {c.shape}")
    return c


def angle_matrix_figure(cos, names, title: str = "Angles between input gradients") -> go.Figure:
    """Heatmap of pairwise angles (degrees, 0-180) with cosine and angle in each cell."""
    c = _cos_matrix(cos)
    if len(names) != len(c):
        raise ValueError(f"names must name each of the {len(c)} models, got {len(names)}")
    deg = cosine_to_angle(c)
    text = [[f"{deg[i, j]:.1f}°<br>cos {c[i, j]:.2f}" for j in range(len(c))]
            for i in range(len(c))]
    names = [str(n) for n in names]
    fig = go.Figure(go.Heatmap(z=deg, x=names, y=names, zmin=0, zmax=180, colorscale="Viridis",
                               text=text, texttemplate="%{text}", name="angle",
                               colorbar={"title": {"text": "angle (°)"}},
                               hovertemplate="%{y} vs %{x}: %{text}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="model", yaxis_title="model", height=380)
    fig.update_yaxes(autorange="reversed")
    return fig


def directions_3d_figure(cos, names, title: str = "Gradient directions", *, webgl: bool = False,
                         views: int = 36, elevation: float = 40.0) -> go.Figure:
    """Figure 1(e): unit gradient directions drawn in 3-D, the true angles written on.

    The directions come from `embed_directions` (exact for M <= 3; the title states
    whether the drawing is exact or its largest angle distortion). Each model is a ray
    from the origin; an arc joins every pair of rays, labelled with the pair's true angle.

    webgl=False (default): an orthographic projection drawn in SVG, inside the unit
    sphere's outline and its equator (dotted behind), with a slider that turns the view
    about the vertical axis in `views` steps at `elevation` degrees. The slider animates
    on the client (no server round trip), and SVG costs a few tens of milliseconds to
    draw where a WebGL scene takes ~0.4 s without a GPU (headless chromium here). It
    opens at the view whose rays lie furthest apart on screen. Rays behind the sphere's
    centre are drawn faint; angles on screen are foreshortened, the labels are not.
    webgl=True: a plotly 3-D scene (free rotation by dragging).
    """
    c = _cos_matrix(cos)
    if len(names) != len(c):
        raise ValueError(f"names must name each of the {len(c)} models, got {len(names)}")
    if not isinstance(views, (int, np.integer)) or views < 1:
        raise ValueError(f"views must be a positive integer, got {views!r}")
    if not -90 <= elevation <= 90:
        raise ValueError(f"elevation must be in [-90, 90] degrees, got {elevation}")
    coords, distortion = embed_directions(c)
    deg = cosine_to_angle(c)
    names = [str(n) for n in names]
    note = ("angles exact in 3-D" if len(c) <= 3 and distortion < 0.05 else
            f"best 3-D approximation: angles off by up to {distortion:.1f}°")
    listing = "<br>".join(f"{names[i]}–{names[j]}: {deg[i, j]:.1f}°"
                          for i in range(len(c)) for j in range(i + 1, len(c)))
    arcs, tips, labels = _angle_arcs(coords, deg)
    if webgl:
        fig = _directions_webgl(coords, names, arcs, tips, labels)
        sub = f"unit vectors; arcs labelled with the true angles; {note}"
    else:
        fig = _directions_svg(coords, names, arcs, tips, labels, int(views), float(elevation))
        sub = f"unit vectors in 3-D, turned by the slider<br>arcs labelled with the true angles; {note}"
    fig.update_layout(title={"text": f"{title}<br><sup>{sub}</sup>"}, margin={"t": 100},
                      annotations=[{"text": "true angles<br>" + listing, "showarrow": False,
                                    "xref": "paper", "yref": "paper", "x": 0, "y": 1,
                                    "xanchor": "left", "yanchor": "top", "align": "left"}],
                      height=500)
    return fig


def _angle_arcs(coords, deg, radius: float = 0.35):
    """An arc between every pair of non-zero rays (one polyline, pairs separated by
    NaN rows), the points just beyond each arc's middle, and the pairs' angle labels."""
    arcs, tips, labels = [], [], []
    t = np.linspace(0, 1, 16)[:, None]
    for i in range(len(coords)):
        for j in range(i + 1, len(coords)):
            if not (coords[i].any() and coords[j].any()):
                continue
            path = (1 - t) * coords[i] + t * coords[j]  # chord, pushed onto the sphere
            norm = np.linalg.norm(path, axis=1, keepdims=True)
            path = radius * path / np.where(norm > 1e-9, norm, 1)
            arcs += [path, np.full((1, 3), np.nan)]
            tips.append(path[len(path) // 2] * 1.6)
            labels.append(f"{deg[i, j]:.1f}°")
    if not arcs:
        return np.zeros((0, 3)), np.zeros((0, 3)), []
    return np.concatenate(arcs), np.array(tips), labels


def _directions_webgl(coords, names, arcs, tips, labels) -> go.Figure:
    fig = go.Figure()
    for k, (p, n) in enumerate(zip(coords, names)):
        fig.add_trace(go.Scatter3d(x=[0, p[0]], y=[0, p[1]], z=[0, p[2]], mode="lines+markers+text",
                                   text=["", n], name=n, line={"color": _color(k), "width": 6},
                                   marker={"size": [2, 5], "color": _color(k)}))
    if labels:
        fig.add_trace(go.Scatter3d(x=arcs[:, 0], y=arcs[:, 1], z=arcs[:, 2], mode="lines",
                                   name="angle arcs", line={"color": "grey", "width": 3}, hoverinfo="skip"))
        fig.add_trace(go.Scatter3d(x=tips[:, 0], y=tips[:, 1], z=tips[:, 2], mode="text", text=labels,
                                   name="true angles", textfont={"size": 12}))
    axis = {"range": [-1.05, 1.05], "title": "", "showticklabels": False}
    fig.update_layout(scene={"xaxis": axis, "yaxis": axis, "zaxis": axis, "aspectmode": "cube",
                             "camera": {"eye": {"x": 1.1, "y": 1.1, "z": 0.8}}},
                      margin={"t": 80, "l": 10, "r": 10, "b": 10})
    return fig


def _view(azimuth: float, elevation: float):
    """Orthographic camera at (azimuth, elevation) degrees about the z axis: the screen's
    right and up vectors and the direction towards the viewer."""
    a, e = np.radians(azimuth), np.radians(elevation)
    right = np.array([-np.sin(a), np.cos(a), 0.0])
    up = np.array([-np.sin(e) * np.cos(a), -np.sin(e) * np.sin(a), np.cos(e)])
    toward = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    return right, up, toward


def _upright(coords: np.ndarray) -> np.ndarray:
    """The (3, 3) rotation (apply as `p @ rot.T`) that makes the plane through the origin
    fitting the (M, 3) directions best the equator: its normal, the least-spread axis of
    coords^T coords, becomes +z (towards the side most rays lean to), and the first
    non-zero ray lies in the x-z plane. Bundled and fanned-out rays alike then spread
    around the vertical axis the slider turns about."""
    live = coords[np.abs(coords).sum(1) > 0]
    if len(live) == 0:
        return np.eye(3)
    _, vec = np.linalg.eigh(live.T @ live)
    up = vec[:, 0] * (1.0 if (live @ vec[:, 0]).sum() >= 0 else -1.0)
    first = live[0] - (live[0] @ up) * up
    if np.linalg.norm(first) < 1e-9:  # the first ray is the normal itself (a single ray)
        first = np.eye(3)[np.argmin(np.abs(up))] - up * up[np.argmin(np.abs(up))]
    e1 = first / np.linalg.norm(first)
    return np.stack([e1, np.cross(up, e1), up])  # right-handed


def _directions_svg(coords, names, arcs, tips, labels, views: int, elevation: float) -> go.Figure:
    rot = _upright(coords)
    coords, arcs, tips = coords @ rot.T, arcs @ rot.T, tips @ rot.T
    ring = np.linspace(0, 2 * np.pi, 73)
    equator = np.stack([np.cos(ring), np.sin(ring), np.zeros_like(ring)], 1)
    live = [k for k in range(len(coords)) if coords[k].any()]

    def frame(az: float) -> list[dict]:  # what moves when the view turns (float32: a small figure)
        right, up, toward = _view(az, elevation)
        xy = lambda p: {"x": (p @ right).astype(np.float32), "y": (p @ up).astype(np.float32)}  # noqa: E731
        traces = [{**xy(np.stack([np.zeros(3), p])), "opacity": 1.0 if p @ toward >= -1e-9 else 0.45}
                  for p in coords]
        return traces + ([xy(arcs), xy(tips)] if labels else [])

    def spread(az: float) -> float:  # smallest on-screen distance between two ray tips
        right, up, _ = _view(az, elevation)
        pts = coords[live] @ np.stack([right, up], 1)
        d = [np.linalg.norm(pts[i] - pts[j]) for i in range(len(pts)) for j in range(i + 1, len(pts))]
        return min(d, default=0.0)

    angles = [round(360.0 * k / views, 6) for k in range(views)]
    start = max(angles, key=spread)
    first = frame(start)
    grey = {"color": "lightgrey", "width": 1}
    traces = [dict(type="scatter", x=np.cos(ring), y=np.sin(ring), mode="lines", name="unit sphere",
                   line=grey, hoverinfo="skip")]
    # Turning about the vertical axis maps the equator onto itself: its ellipse is the same in
    # every view, near half (towards the viewer, below the centre) solid, far half dotted.
    right, up, toward = _view(0.0, elevation)
    near = equator @ toward >= 0
    for part, dash, name in ((near, "solid", "equator"), (~near, "dot", "equator (behind)")):
        traces.append(dict(type="scatter", x=np.where(part, equator @ right, np.nan),
                           y=np.where(part, equator @ up, np.nan), mode="lines", name=name,
                           hoverinfo="skip", line={**grey, "dash": dash}))
    for k, (tr, n) in enumerate(zip(first, names)):
        zero = not coords[k].any()
        traces.append(dict(type="scatter", **tr, mode="lines+markers+text", name=n,
                           text=["", n + (" (zero gradient)" if zero else "")],
                           textposition="top center", line={"color": _color(k), "width": 4},
                           marker={"size": [4, 14], "color": _color(k), "angleref": "previous",
                                   "symbol": ["circle", "circle" if zero else "arrow"]},
                           hovertemplate=f"{n}<extra></extra>"))
    if labels:
        traces += [dict(type="scatter", **first[-2], mode="lines", name="angle arcs", hoverinfo="skip",
                        line={"color": "grey", "width": 2}),
                   dict(type="scatter", **first[-1], mode="text", text=labels, name="true angles",
                        textfont={"size": 12}, hoverinfo="skip")]
    moving = list(range(3, len(traces)))
    step = {"mode": "immediate", "frame": {"duration": 0, "redraw": False}, "transition": {"duration": 0}}
    layout = dict(
        sliders=[{"active": angles.index(start), "len": 0.9, "x": 0.05, "pad": {"t": 10},
                  "currentvalue": {"prefix": "view from azimuth ", "suffix": "°"},
                  "steps": [{"label": f"{a:g}", "method": "animate", "args": [[f"{a:g}"], step]}
                            for a in angles]}],
        xaxis={"range": [-1.3, 1.3], "visible": False},
        yaxis={"range": [-1.3, 1.3], "visible": False, "scaleanchor": "x"},
        showlegend=False, margin={"t": 80, "l": 10, "r": 10, "b": 10}, plot_bgcolor="white")
    # Plain dicts, unvalidated: plotly's validation of the 36 views cost 5x the rest of the
    # figure (the tests rebuild it with validation on, so a bad property still fails there).
    return go.Figure(data=traces, layout=layout, _validate=False,
                     frames=[{"name": f"{a:g}", "data": frame(a), "traces": moving} for a in angles])


def cosine_histogram_figure(distributions: dict, title: str = "Loss-gradient cosine "
                            "between members", bins: int = 40) -> go.Figure:
    """Overlaid histograms of every pair's gradient cosine over a dataset, one per
    ensemble (`cosine_distribution` results keyed by label, e.g. ENS_U and PARL)."""
    if not distributions:
        raise ValueError("distributions must map a label to a cosine_distribution result, got none")
    fig = go.Figure()
    for k, (label, d) in enumerate(distributions.items()):
        vals = _np(d["all"])
        s = d["summary"]["all"]
        fig.add_trace(go.Histogram(x=vals, name=f"{label} (mean {s['mean']:.2f}, median "
                                   f"{s.get('q50', float('nan')):.2f})",
                                   xbins={"start": -1, "end": 1, "size": 2 / bins},
                                   histnorm="percent", opacity=0.6, marker_color=_color(k)))
    first = next(iter(distributions.values()))
    what = first.get("gradient", "loss")
    sub = f"{what} gradient; all member pairs pooled, n = {first.get('n')} examples per pair"
    fig.update_layout(barmode="overlay", title={"text": f"{title}<br><sup>{sub}</sup>"},
                      xaxis_title="cosine similarity (−1 … 1)",
                      yaxis_title="share of example-pairs (%)", height=380)
    fig.update_xaxes(range=[-1, 1])
    return fig


# --------------------------------------------------------------------------- CKA
def cka_heatmap_figure(matrix, title: str = "Layer-wise linear CKA",
                       estimator: str = "minibatch", names=("model A", "model B")) -> go.Figure:
    """Layer x layer CKA of one pair (values written in cells, colour scale 0-1)."""
    m = _np(matrix)
    if m.ndim != 2:
        raise ValueError(f"matrix must be (La, Lb), got shape {m.shape}")
    la, lb = m.shape
    fig = go.Figure(go.Heatmap(z=m, x=list(range(1, lb + 1)), y=list(range(1, la + 1)),
                               zmin=0, zmax=1, colorscale="Viridis", texttemplate="%{z:.2f}",
                               name="CKA", colorbar={"title": {"text": "CKA"}},
                               hovertemplate="layer %{y} vs %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title={"text": f"{title}<br><sup>{ESTIMATOR_TEXT.get(estimator, estimator)}"
                                      f"</sup>"},
                      xaxis_title=f"layer of {names[1]} (1 = first)",
                      yaxis_title=f"layer of {names[0]} (1 = first)", height=460)
    fig.update_yaxes(autorange="reversed", dtick=1)
    fig.update_xaxes(dtick=1)
    return fig


def cka_curves_figure(results, title: str = "Layer-wise linear CKA per member pair") -> go.Figure:
    """Figure 2 style: the same-layer CKA curve of every member pair, the pair's overall
    average (mean over layers) in braces in the legend. results: one `ensemble_cka`
    result, or a dict label -> result (e.g. {"ENS_U": ..., "PARL": ...})."""
    if isinstance(results, dict) and "pairs" in results:
        results = {"": results}
    if not results:
        raise ValueError("results must be an ensemble_cka result or a dict of them, got none")
    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot"]
    ests = set()
    for g, (label, res) in enumerate(results.items()):
        ests.add(res.get("estimator", "?"))
        for k, p in enumerate(res["pairs"].values()):
            d = _np(p["diagonal"])
            name = f"{label + ' ' if label else ''}{p['label']} {{{p['overall']:.3f}}}"
            fig.add_trace(go.Scatter(x=list(range(1, len(d) + 1)), y=d, mode="lines+markers",
                                     name=name, legendgroup=str(label),
                                     line={"color": _color(k), "dash": dashes[g % len(dashes)]}))
    sub = "; ".join(f"{lab or 'ensemble'}: mean {r['overall']:.3f}" for lab, r in results.items())
    est = ", ".join(ESTIMATOR_TEXT.get(e, e) for e in sorted(ests))
    fig.update_layout(title={"text": f"{title}<br><sup>{sub}; {est}</sup>"},
                      xaxis_title="layer (1 = first conv)", yaxis_title="linear CKA (0–1)",
                      height=420, legend_title_text="pair {overall average}")
    fig.update_yaxes(range=[0, 1.02])
    fig.update_xaxes(dtick=1)
    return fig


# --------------------------------------------------------------------------- Figures 3-5
TABLE_COLUMNS = ("attack", "eps", "acc", "ci_low", "ci_high")


def _check_table(df, label):
    missing = [c for c in TABLE_COLUMNS if c not in getattr(df, "columns", ())]
    if missing:
        raise ValueError(f"table {label!r} must be a DataFrame with columns {TABLE_COLUMNS}; "
                         f"missing {missing}")


def _curve(tables, attack):
    """(eps, y, lo, hi, band) of one attack: one table -> its accuracy and 95 % CI;
    several (seeds) -> mean ± std. A 'clean' row becomes the point at ε = 0."""
    rows = []
    for df in tables:
        part = df[df["attack"] == attack][["eps", "acc", "ci_low", "ci_high"]]
        clean = df[df["attack"] == "clean"]
        if len(clean) and not (part["eps"] == 0).any():
            start = clean[["acc", "ci_low", "ci_high"]].iloc[:1].assign(eps=0.0)
            part = pd.concat([start, part], ignore_index=True)
        rows.append(part.sort_values("eps").set_index("eps"))
    if len(rows) == 1:
        r = rows[0]
        return r.index.to_numpy(), r["acc"].to_numpy(), r["ci_low"].to_numpy(), \
            r["ci_high"].to_numpy(), "95 % CI"
    acc = pd.concat([r["acc"] for r in rows], axis=1)
    mean, std = acc.mean(axis=1), acc.std(axis=1, ddof=0)  # population std, as np.std
    return acc.index.to_numpy(), mean.to_numpy(), (mean - std).to_numpy(), \
        (mean + std).to_numpy(), f"± std over {len(rows)} seeds"


def accuracy_vs_eps_figure(tables: dict, attacks=None,
                           title: str = "Ensemble accuracy under attack", *,
                           per255: bool = False) -> go.Figure:
    """Accuracy vs ε, one subplot per attack, one line per ensemble (Figures 3-5).

    tables: label -> DataFrame (columns attack, eps, acc, ci_low, ci_high; fractions),
    or label -> list of DataFrames (several seeds: mean line, band ± population std). Rows with
    attack "clean" are drawn at ε = 0. attacks: which attacks, in order (default all).
    per255: also label every ε tick in /255 units (8-bit images such as CIFAR).
    """
    if not tables:
        raise ValueError("tables must map a label to a DataFrame (or a list of them), got none")
    norm = {lab: (list(t) if isinstance(t, (list, tuple)) else [t]) for lab, t in tables.items()}
    for lab, ts in norm.items():
        if not ts:
            raise ValueError(f"table list for {lab!r} is empty")
        for t in ts:
            _check_table(t, lab)
    found = list(dict.fromkeys(a for ts in norm.values() for t in ts for a in t["attack"]
                               if a != "clean"))
    attacks = found if attacks is None else list(attacks)
    if not attacks:
        raise ValueError("no attack rows to plot (only 'clean' rows or empty tables)")
    cols = min(3, len(attacks))
    rows = -(-len(attacks) // cols)
    fig = make_subplots(rows, cols, subplot_titles=[str(a).upper() for a in attacks],
                        shared_yaxes=True, horizontal_spacing=0.05, vertical_spacing=0.15)
    bands = set()
    for a_i, attack in enumerate(attacks):
        r, c = a_i // cols + 1, a_i % cols + 1
        for k, (lab, ts) in enumerate(norm.items()):
            eps, y, lo, hi, band = _curve(ts, attack)
            bands.add(band)
            color = _color(k)
            fig.add_trace(go.Scatter(x=np.r_[eps, eps[::-1]], y=100 * np.r_[hi, lo[::-1]],
                                     mode="lines", fill="toself", fillcolor=_rgba(color, 0.18),
                                     line={"width": 0}, hoverinfo="skip", showlegend=False,
                                     legendgroup=str(lab), name=f"{lab} band"), r, c)
            fig.add_trace(go.Scatter(x=eps, y=100 * y, mode="lines+markers", name=str(lab),
                                     legendgroup=str(lab), showlegend=a_i == 0,
                                     line={"color": color},
                                     customdata=255 * eps, hovertemplate="ε=%{x:g}"
                                     + (" (%{customdata:.1f}/255)" if per255 else "")
                                     + ": %{y:.1f} %<extra>" + str(lab) + "</extra>"), r, c)
    fig.update_xaxes(title_text="ε (pixel units)")
    if per255:  # a tick at every ε of the grid, written both ways
        grid = sorted({float(e) for ts in norm.values() for t in ts for e in t["eps"]} | {0.0})
        fig.update_xaxes(title_text="ε (pixel units; /255 below)", tickvals=grid, tickfont={"size": 10},
                         ticktext=[f"{e:g}<br>{e * 255:.1f}/255" if e else "0" for e in grid])
    fig.update_yaxes(range=[0, 100])
    for rr in range(1, rows + 1):
        fig.update_yaxes(title_text="accuracy (%)", row=rr, col=1)
    fig.update_layout(title={"text": f"{title}<br><sup>bands: {', '.join(sorted(bands))}; "
                                      f"ε = 0 is clean accuracy</sup>"},
                      height=360 * rows, margin={"t": 90})
    return fig
