"""Widgets for any registered training method, built from its constructor's signature,
so the baselines (ADP, GAL, DVERGE) appear on the Train page as soon as they register."""
from __future__ import annotations

import inspect

import streamlit as st

from parl_core.losses import METHODS

from . import state

NICE = {"gamma1": "γ₁ (accuracy weight)", "gamma2": "γ₂ (diversity weight)",
        "layers": "K (layers regularised)", "alpha": "α", "beta": "β", "lam": "λ", "eps": "ε",
        "step_size": "step size", "layer": "feature layer"}
HELP = {"gamma1": "Weight of the members' cross-entropy in Eq. (1).",
        "gamma2": "Weight of the pairwise gradient similarity R in Eq. (1): higher = more diverse.",
        "layers": "PARL penalises gradient similarity at the first K layers (auto: min(7, L)).",
        "layer": "auto: a layer drawn at random every epoch."}
PRIMARY = 3  # the first parameters are shown; the rest sit under "more parameters"


def method_options() -> list[str]:
    order = ["parl", "ce_only", "adp", "gal", "dverge"]
    return sorted(METHODS, key=lambda m: (order.index(m) if m in order else 99, m))


def signature(method: str) -> list[inspect.Parameter]:
    return [p for n, p in inspect.signature(METHODS[method].__init__).parameters.items()
            if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _widget(method: str, p: inspect.Parameter, n_layers: int):
    key = f"{state.KEEP}tr_{method}_{p.name}"
    label, help_ = NICE.get(p.name, p.name.replace("_", " ")), HELP.get(p.name)
    d = p.default
    if d is None and "int" in str(p.annotation):  # a layer index or count, None = auto
        state.default(key, "auto")
        v = st.selectbox(label, ["auto", *range(1, n_layers + 1)], key=key, help=help_)
        return None if v == "auto" else int(v)
    if isinstance(d, bool):
        state.default(key, d)
        return st.checkbox(label, key=key, help=help_)
    if isinstance(d, int):
        state.default(key, d)
        return int(st.number_input(label, min_value=0, step=1, key=key, help=help_))
    if isinstance(d, float):
        state.default(key, d)
        return float(st.number_input(label, min_value=0.0, format="%g", step=0.1 if d >= 0.1 else d or 0.01,
                                     key=key, help=help_))
    if isinstance(d, str):
        state.default(key, d)
        return st.text_input(label, key=key, help=help_)
    return d


def param_widgets(method: str, n_layers: int) -> dict:
    """Widgets for the method's parameters; returns {name: value}."""
    params = signature(method)
    if not params:
        st.caption("This method has no parameters: every member is trained on its own cross-entropy.")
        return {}
    out = {}
    cols = st.columns(min(PRIMARY, len(params)))
    for c, p in zip(cols, params[:PRIMARY]):
        with c:
            out[p.name] = _widget(method, p, n_layers)
    if len(params) > PRIMARY:
        with st.expander("more parameters"):
            for p in params[PRIMARY:]:
                out[p.name] = _widget(method, p, n_layers)
    return out
