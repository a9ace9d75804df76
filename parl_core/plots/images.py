"""Example images as people recognise them: colour images in colour, enlarged without
blurring, labelled with their class (Figure 1's input and gradient maps, the
adversarial-example viewer). Arrays in, go.Figure out; nothing here computes.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .analysis import _np, reduce_channels

__all__ = ["gradient_maps_figure", "adversarial_example_figure", "image_trace", "upscale",
           "nice_magnification", "MIN_IMAGE_PX"]

MIN_IMAGE_PX = 160  # a colour image is enlarged to at least this many pixels a side


def upscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W, ...) array by an integer factor: every
    pixel becomes a factor x factor block, so a 32x32 image stays sharp when drawn big."""
    if not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be an int >= 1, got {factor!r}")
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def _factor(h: int, w: int) -> int:
    return max(1, math.ceil(MIN_IMAGE_PX / max(h, w)))


def _hwc(x_image) -> np.ndarray:
    """(C, H, W) with C in (1, 3), or (H, W) -> (H, W, 3) for colour, (H, W) for grey."""
    img = _np(x_image)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (C, H, W) with C in (1, 3) or (H, W), got {_np(x_image).shape}")
    return img


def image_trace(x_image, *, name: str = "input"):
    """A colour image as a go.Image, enlarged by nearest-neighbour upscaling to at least
    MIN_IMAGE_PX a side but kept in pixel coordinates (hover and axes say the original
    row and column, aligned with gradient heatmaps of the same image); a grey image as
    a grey heatmap (plotly already draws heatmap cells as sharp blocks)."""
    img = _hwc(x_image)
    if img.ndim == 3:
        f = _factor(*img.shape[:2])
        z = upscale(np.clip(img * 255, 0, 255).round().astype(np.uint8), f)
        off = -0.5 + 0.5 / f  # the block of original pixel j spans j - 0.5 ... j + 0.5
        return go.Image(z=z, x0=off, y0=off, dx=1 / f, dy=1 / f, name=name,
                        hovertemplate="%{x:.0f}, %{y:.0f}: RGB %{z}<extra></extra>")
    return go.Heatmap(z=img, colorscale="gray", zmin=0, zmax=1, showscale=False, name=name,
                      hovertemplate="x=%{x}, y=%{y}<br>pixel %{z:.2f}<extra></extra>")


def _square(fig: go.Figure, cols: int) -> None:
    """Square pixels in every subplot of a one-row figure (a heatmap otherwise stretches
    to fill its cell; an image trace is square by itself)."""
    for c in range(1, cols + 1):
        fig.update_yaxes(scaleanchor="x" if c == 1 else f"x{c}", constrain="domain", row=1, col=c)
        fig.update_xaxes(constrain="domain", row=1, col=c)


# --------------------------------------------------------------------------- Figure 1
def gradient_maps_figure(x_image, grads, names, mode: str = "signed",
                         clip_percentile: float = 99, shared_scale: bool = True,
                         title: str = "Input gradients", input_label: str = "input",
                         height: int = 390) -> go.Figure:
    """Input image and one gradient map per model (Figure 1 (a)-(d)).

    x_image: (C, H, W) or (H, W) in [0, 1] (colour drawn in colour, enlarged);
    grads: (M, C, H, W) for that image; input_label: the input's title (e.g. its class).
    Channels reduced by `reduce_channels(mode)`. The colour range is the
    clip_percentile-th percentile of |map| (outliers saturate), over all maps when
    shared_scale else per map; signed maps use a diverging scale centred at 0.
    """
    maps = reduce_channels(grads, mode)
    if len(names) != len(maps):
        raise ValueError(f"names must name each of the {len(maps)} models, got {len(names)}")
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    per = [float(np.percentile(np.abs(m), clip_percentile)) or 1e-12 for m in maps]
    shared = float(np.percentile(np.abs(maps), clip_percentile)) or 1e-12
    ranges = [shared] * len(maps) if shared_scale else per
    fig = make_subplots(1, len(maps) + 1, horizontal_spacing=0.03, subplot_titles=[
        str(input_label)] + [f"{n}<br>{'±' if mode == 'signed' else '0–'}{r:.2g}"
                             for n, r in zip(names, ranges)])
    fig.add_trace(image_trace(x_image), 1, 1)
    signed = mode == "signed"
    for k, (m, r) in enumerate(zip(maps, ranges)):
        fig.add_trace(go.Heatmap(
            z=np.clip(m, -r if signed else 0, r), zmin=-r if signed else 0, zmax=r,
            zmid=0 if signed else None, colorscale="RdBu_r" if signed else "Viridis",
            name=str(names[k]), showscale=shared_scale and k == len(maps) - 1,
            colorbar={"title": {"text": "∂loss/∂pixel" if signed else "|∇|"}},
            hovertemplate="x=%{x}, y=%{y}<br>%{z:.3g}<extra>" + str(names[k]) + "</extra>"),
            1, k + 2)
    how = "sum over channels (signed)" if signed else "L2 norm over channels"
    scale = "shared by all maps" if shared_scale else "per map (in each title)"
    _square(fig, len(maps) + 1)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(title={"text": f"{title}<br><sup>channels: {how}; colour range: "
                                      f"{clip_percentile:g}th percentile of |value|, {scale}; "
                                      f"values beyond it saturate</sup>"},
                      height=height, margin={"t": 110, "b": 20})
    return fig


# --------------------------------------------------------------------------- attacks
def nice_magnification(peak: float, target: float = 0.5) -> float:
    """The largest of 1, 2, 5, 10, 20, 50, ... that scales a perturbation of size `peak`
    to at most `target` (a round factor a person can read off the title)."""
    if peak <= 0:
        return 1.0
    best = 1.0
    for k in range(0, 7):
        for m in (1, 2, 5):
            f = m * 10.0 ** k
            if f * peak <= target:
                best = f
    return best


def adversarial_example_figure(x, x_adv, *, magnify: float | None = None, titles=None,
                               labels=None, height: int = 320) -> go.Figure:
    """Clean input, adversarial input and the perturbation, side by side, each square.

    x, x_adv: (C, H, W) or (H, W) images in [0, 1]. The perturbation is multiplied by
    `magnify` (default: a round factor from `nice_magnification`, stated in its title):
    colour images show 0.5 + magnify·δ per channel (grey = unchanged), grey images a
    diverging map of magnify·δ. labels: optional (clean, adversarial) texts for the first
    two titles, e.g. the class each is assigned."""
    a, b = _np(x), _np(x_adv)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"x and x_adv must be images of the same shape, got {a.shape} and {b.shape}")
    d = b - a
    peak = float(np.abs(d).max())
    magnify = nice_magnification(peak) if magnify is None else float(magnify)
    if titles is None:
        lab = list(labels) if labels is not None else ["", ""]
        titles = [f"clean{': ' + lab[0] if lab[0] else ''}",
                  f"adversarial{': ' + lab[1] if lab[1] else ''}",
                  f"perturbation × {magnify:g}<br>(max |δ| {peak:.3f} = {peak * 255:.1f}/255)"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.04)
    fig.add_trace(image_trace(a, name="clean"), 1, 1)
    fig.add_trace(image_trace(b, name="adversarial"), 1, 2)
    dz = _hwc(d)
    if dz.ndim == 3:  # colour: grey is no change, each channel's push shown in its colour
        fig.add_trace(image_trace(np.clip(0.5 + magnify * dz, 0, 1).transpose(2, 0, 1),
                                  name="perturbation"), 1, 3)
    else:
        fig.add_trace(go.Heatmap(z=dz * magnify, colorscale="RdBu_r", zmid=0, zmin=-1, zmax=1,
                                 showscale=False, name="perturbation"), 1, 3)
    _square(fig, 3)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(height=height, margin={"t": 70, "b": 10}, template="plotly_white")
    return fig
