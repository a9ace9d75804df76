"""Showing results: figures and tables with a caption, provenance on demand and downloads;
errors as st.error with what to do.

Downloads: tables as CSV; figures as a self-contained HTML file (plotly.js inlined, so it
opens offline) generated only when the button is clicked, and as PNG through the camera
icon of the figure's own toolbar (rendered by the browser; no kaleido needed).
"""
from __future__ import annotations

import json
import platform
import re

import streamlit as st

import parl_core as pc
from parl_core.plots.analysis import PALETTE

from . import cache

_PNG_NOTE = "PNG: the camera icon at the top right of the figure."
_CONFIG = {"displaylogo": False}


# A deliberately small template: light, projector-friendly, Streamlit's font. Plotly's own
# templates carry defaults for every trace type, which the browser applies to every trace
# of every draw; without a GPU here the full "plotly_white" cost as much as Streamlit's
# theme, this one 0.2-0.3 s less per Playground render (see `chart`).
_AXIS = {"gridcolor": "#e8e8e8", "zerolinecolor": "#cccccc", "linecolor": "#cccccc", "automargin": True}
MIN_FONT_PX = 14  # projector-ready: no figure text smaller (issue 17)
TEMPLATE = {"layout": {"font": {"family": '"Source Sans", "Source Sans Pro", sans-serif', "color": "#31333F",
                                "size": MIN_FONT_PX},
                       "paper_bgcolor": "white", "plot_bgcolor": "white", "colorway": list(PALETTE),
                       "xaxis": _AXIS, "yaxis": _AXIS, "hoverlabel": {"align": "left"}}}


_FONT_KEYS = ("font", "tickfont", "textfont", "insidetextfont", "outsidetextfont")


def _raise_fonts(d, minimum: float) -> bool:
    """In a layout/trace JSON (dicts and lists), every explicit font size below `minimum`
    raised to it, in place; whether anything changed."""
    changed = False
    if isinstance(d, dict):
        for k, v in d.items():
            if k in _FONT_KEYS and isinstance(v, dict) and isinstance(v.get("size"), (int, float)) \
                    and v["size"] < minimum:
                v["size"] = minimum
                changed = True
            elif isinstance(v, (dict, list)) and k not in ("x", "y", "z", "text", "customdata"):
                changed |= _raise_fonts(v, minimum)
    elif isinstance(d, list):
        for v in d:
            if isinstance(v, (dict, list)):
                changed |= _raise_fonts(v, minimum)
    return changed


def projector_fonts(fig, minimum: float = MIN_FONT_PX):
    """Every text of `fig` at least `minimum` px (titles, annotations, ticks, legends,
    colour bars, heatmap labels): figures are read from the back of a lecture room. Text
    without an explicit size takes the template's (MIN_FONT_PX)."""
    layout = fig.layout.to_plotly_json()
    if _raise_fonts(layout, minimum):
        fig.update_layout(layout)
    for tr in fig.data:
        for name in ("textfont", "colorbar", "marker", "title"):
            part = getattr(tr, name, None) if name in tr else None
            if part is None:
                continue
            j = {name: part.to_plotly_json()}
            if _raise_fonts(j, minimum):
                tr.update(j)
    return fig


def chart(fig, *, key: str, where=None, config: dict | None = None, **kwargs):
    """`st.plotly_chart` in the small light `TEMPLATE` instead of Streamlit's theme.

    Streamlit (1.67) draws a chart from scratch whenever its figure changes, and re-styles
    a themed figure in the browser each time. Measured on the Playground page (5 charts,
    headless chromium without a GPU, median of 8 loads): Streamlit's theme 1.78 s, plotly's
    "plotly_white" template 1.83 s, this template 1.59 s; in a fresh browser 3.38, 3.07 and
    2.76 s. The template is set on `fig` itself, so its HTML download looks the same.
    Every text is at least MIN_FONT_PX (`projector_fonts`).
    `where`: the container to draw in (default: the page)."""
    fig.update_layout(template=TEMPLATE)
    projector_fonts(fig)
    return (where or st).plotly_chart(fig, key=key, theme=None, config={**_CONFIG, **(config or {})},
                                      **kwargs)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:60] or "figure"


def versions() -> dict:
    import plotly
    import torch
    return {"parl_core": pc.__version__, "torch": torch.__version__, "streamlit": st.__version__,
            "plotly": plotly.__version__, "python": platform.python_version()}


def provenance(checkpoints=(), settings: dict | None = None, command: str | None = None) -> dict:
    """Everything needed to reproduce a view: checkpoint names and hashes, settings,
    library versions and the equivalent command line."""
    ck = []
    for p in checkpoints:
        try:
            ck.append({"name": p.name, "sha256": cache.checkpoint_hash(p)})
        except OSError:
            ck.append({"name": str(p), "sha256": None})
    out = {"checkpoints": ck, "settings": settings or {}, "versions": versions()}
    if command:
        out["command"] = command
    return out


def lazy_expander(label: str, key: str, fill) -> None:
    """An expander whose content is built (by `fill()`) only while it is open: opening it
    reruns the page. Closed, it costs the browser nothing: no code highlighter or JSON
    viewer to load at first paint (~0.2 s each here without a GPU)."""
    box = st.expander(label, key=key, on_change="rerun")
    if box.open:
        with box:
            fill()


def _provenance_block(prov: dict | None, key: str) -> None:
    if not prov:
        return

    def fill():
        if prov.get("command"):
            st.code(prov["command"], language="bash")
        st.json({k: v for k, v in prov.items() if k != "command"}, expanded=False)
    lazy_expander("Provenance", f"prov_{key}", fill)


def _tools_row():
    """A figure's or table's download button and provenance on one line, each as wide as its
    content (fixed-width columns cut the button off in a narrow, side-by-side column)."""
    return st.container(horizontal=True, vertical_alignment="top", gap="small")


def show_figure(fig, caption: str, *, key: str, prov: dict | None = None, title: str | None = None,
                height: int | None = None) -> None:
    """A plotly figure, its caption, its provenance (expander) and an HTML download."""
    name = _slug(title or key)
    chart(fig, key=f"fig_{key}", config={"toImageButtonOptions": {"format": "png", "filename": name, "scale": 2}})
    st.caption(caption)
    with _tools_row():
        st.download_button("HTML", data=lambda: fig.to_html(include_plotlyjs=True, full_html=True),
                           file_name=f"{name}.html", mime="text/html", key=f"dl_{key}",
                           on_click="ignore", icon=":material/download:", help=_PNG_NOTE)
        _provenance_block(prov, key)


def show_table(df, caption: str, *, key: str, prov: dict | None = None, title: str | None = None,
               **kwargs) -> None:
    """A dataframe, its caption, a CSV download and its provenance."""
    st.dataframe(df, key=f"tbl_{key}", **kwargs)
    st.caption(caption)
    with _tools_row():
        st.download_button("CSV", data=lambda: df.to_csv(index=False), file_name=f"{_slug(title or key)}.csv",
                           mime="text/csv", key=f"dl_{key}", on_click="ignore",
                           icon=":material/download:")
        _provenance_block(prov, key)


def show_error(what: str, err: BaseException | str, todo: str) -> None:
    """An error a person can act on: what failed, why, and what to do (no traceback)."""
    st.error(f"**{what}.** {err}\n\n{todo}", icon=":material/error:")


def meta_json(meta: dict) -> str:
    return json.dumps(meta, indent=1, default=str)
