"""Playground: watch an ensemble's decision boundaries (and gradients) form, live, on 2-D
data, and see whether an attack crafted on one member fools the others.

Runs through the app's st.navigation and standalone (`streamlit run pages/playground.py`).
The whole configuration lives in the URL's query parameters, so a teacher can prepare
links; the trainer session lives in st.session_state (nothing trains at import time).
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # standalone `streamlit run pages/playground.py`
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

import parl_core as pc  # noqa: E402
from dashboard.state import through_app  # noqa: E402
from dashboard.ui import chart  # noqa: E402
from parl_core.playground import (ATTACKS_2D, MAX_EPOCHS, PlaygroundConfig,  # noqa: E402
                                  PlaygroundSession, playground_methods)
from parl_core.plots.playground import (alignment_figure, layer_cosine_figure,  # noqa: E402
                                        members_figure, playground_history_figure,
                                        transfer_figure)

FRAME_S = 0.1  # play mode: the members fragment reruns this often (an epoch and a redraw)
ANALYSIS_S = 1.0  # ... and the analysis charts this often
DEFAULT = PlaygroundConfig()
# URL parameter -> (widget key, parser). Config fields first, then the attack.
URL = {"ds": ("dataset", str), "n": ("n_samples", int), "noise": ("noise", float),
       "m": ("members", int), "method": ("method", str), "g2": ("gamma2", float),
       "k": ("layers", int), "w": ("width", int), "d": ("depth", int), "seed": ("seed", int),
       "lr": ("lr", float), "atk": ("attack", str), "eps": ("eps", float), "src": ("src", int),
       "pt": ("point", int)}
ATTACK_DEFAULTS = {"attack": "pgd", "eps": 0.3, "src": 0, "point": 0}
S = st.session_state
through_app()  # a shared /playground link on a fresh server still gets app.py's sidebar


# --------------------------------------------------------------------------- URL <-> state
def _defaults() -> dict:
    return {**DEFAULT.to_dict(), **ATTACK_DEFAULTS}


def init_from_url() -> None:
    """Once per browser session: widget state from the query parameters (bad ones ignored)."""
    if S.get("pg_init"):
        return
    S.pg_init = True
    values, bad = _defaults(), []
    for q, (key, parse) in URL.items():
        if q in st.query_params:
            try:
                values[key] = parse(st.query_params[q])
            except ValueError:
                bad.append(q)
    try:
        PlaygroundConfig.from_dict(values)
    except ValueError as e:
        S.pg_url_error = f"The link's settings were not valid ({e}); using the defaults."
        values = _defaults()
    if bad:
        S.pg_url_error = f"Ignored unreadable link parameters: {', '.join(bad)}."
    for key, v in values.items():
        S[f"pg_{key}"] = v


def write_url(cfg: PlaygroundConfig) -> None:
    """Mirror the current settings into the URL (only our keys; others are left alone)."""
    values = {**cfg.to_dict(), **{k: S[f"pg_{k}"] for k in ATTACK_DEFAULTS}}
    for q, (key, _) in URL.items():
        v = values[key]
        if v is None:
            st.query_params.pop(q, None)
        elif st.query_params.get(q) != str(v):
            st.query_params[q] = str(v)


# --------------------------------------------------------------------------- widgets
def config_widgets() -> PlaygroundConfig:
    """The sidebar settings; a change of any of them starts a new run."""
    methods = playground_methods()
    with st.sidebar:
        st.subheader("Playground")
        st.selectbox("Data", pc.TOY_2D, key="pg_dataset")
        c1, c2 = st.columns(2)
        c1.number_input("Points", 50, 2000, step=50, key="pg_n_samples")
        c2.number_input("Noise", 0.0, 5.0, step=0.05, key="pg_noise", placeholder="default",
                        help="Empty: the data set's default noise.")
        st.slider("Members", 2, 5, key="pg_members")
        st.selectbox("Method", methods, key="pg_method", format_func=pc.method_label)
        weighted = set(PlaygroundConfig(method=S.pg_method).method_params()) & {"gamma2", "lam"}
        st.slider("Diversity weight γ2", 0.0, 2.0, step=0.05, key="pg_gamma2",
                  disabled=not weighted, help="PARL's γ2 (GAL's λ); other methods keep theirs.")
        c1, c2 = st.columns(2)
        c1.slider("Hidden width", 2, 64, key="pg_width")
        c2.slider("Hidden layers", 1, 6, key="pg_depth")
        if S.pg_layers is not None and S.pg_layers > S.pg_depth:
            S.pg_layers = None
        # 0 stands for None (min(7, L)): a selectbox shows None as "no choice".
        k = st.selectbox("PARL's K (layers)", range(S.pg_depth + 1), index=S.pg_layers or 0,
                         format_func=lambda k: "all (min(7, L))" if k == 0 else str(k),
                         disabled=S.pg_method != "parl", key=f"pg_k_{S.pg_depth}")
        S.pg_layers = k or None
        c1, c2 = st.columns(2)
        c1.number_input("Seed", 0, 10_000, key="pg_seed")
        c2.select_slider("Learning rate", [0.001, 0.003, 0.01, 0.03, 0.1], key="pg_lr")
    return PlaygroundConfig.from_dict({f: S[f"pg_{f}"] for f in DEFAULT.to_dict()})


def session_for(cfg: PlaygroundConfig) -> PlaygroundSession:
    """The run in st.session_state; a new one when the settings changed."""
    sess = S.get("pg_session")
    if sess is None or sess.config != cfg:
        sess = S.pg_session = PlaygroundSession(cfg)
        S.pg_playing = False
    return sess


def _set_playing(on: bool):
    # Set, never toggle: a click folded into a queued rerun must not undo itself.
    S.pg_playing = on


def _step():
    S.pg_playing = False
    S.pg_session.step()


def _reset():
    S.pg_playing = False
    S.pg_session = PlaygroundSession(S.pg_session.config)


def controls(sess: PlaygroundSession) -> None:
    c = st.columns([1, 1, 1, 4])
    playing = S.get("pg_playing", False)
    c[0].button("Pause" if playing else "Play", key="pg_play", on_click=_set_playing, args=(not playing,),
                type="primary",
                icon=":material/pause:" if playing else ":material/play_arrow:",
                use_container_width=True)
    c[1].button("Step", key="pg_step", on_click=_step, icon=":material/skip_next:",
                use_container_width=True, help="Train one epoch.")
    c[2].button("Reset", key="pg_reset", on_click=_reset, icon=":material/restart_alt:",
                use_container_width=True, help="New initial weights (same seed): epoch 0.")


# --------------------------------------------------------------------------- the live view
def _clicked_point(sess: PlaygroundSession) -> None:
    """A click on the member plots picks the nearest training point for the attack."""
    event = S.get("pg_chart")
    points = (event or {}).get("selection", {}).get("points", [])
    if not points or "x" not in points[0]:
        return
    sig = (points[0]["x"], points[0]["y"])
    if sig == S.get("pg_last_click"):
        return  # already applied; the number box may have moved on since
    S.pg_last_click = sig
    x = sess.train_ds.images
    d = (x[:, 0] - float(sig[0])) ** 2 + (x[:, 1] - float(sig[1])) ** 2
    S.pg_point = int(d.argmin())


def attack_widgets(sess: PlaygroundSession) -> None:
    m, n = sess.config.members, len(sess.train_ds)
    S.pg_src = min(S.pg_src, m - 1)
    S.pg_point = min(S.pg_point, n - 1)
    c = st.columns([1, 2, 1, 1])
    c[0].selectbox("Attack", ATTACKS_2D, key="pg_attack", format_func=str.upper)
    c[1].slider("ε (input units)", 0.05, 1.5, step=0.05, key="pg_eps",
                help="L∞ budget; no pixel range here (bounds=None).")
    c[2].selectbox("Crafted on", list(range(m)), key="pg_src", format_func=lambda i: f"M{i + 1}")
    c[3].number_input("Point #", 0, n - 1, key="pg_point",
                      help="Or click a point in the member plots.")


def status_line(sess: PlaygroundSession, ms: float) -> None:
    h = sess.history[-1] if sess.history else None
    now = time.perf_counter()
    last, S.pg_last_frame = S.get("pg_last_frame"), now
    fps = f" · {1 / (now - last):.1f} frames/s" if S.get("pg_playing") and last else ""
    text = f"**Epoch {sess.epoch}**"
    if h:
        text += (f" · test acc (vote) {h['test_acc']:.1%} · members "
                 + ", ".join(f"{a:.0%}" for a in h["member_acc"])
                 + f" · mean pairwise R/K {h['r_mean']:+.2f} (floor {-1 / (sess.config.members - 1):+.2f})")
    st.markdown(text + f" · frame {ms:.0f} ms{fps}")


def transfer_view(sess: PlaygroundSession) -> None:
    """Whole-test-set transfer of the chosen attack (computed while paused)."""
    key = (id(sess), sess.epoch, S.pg_attack, S.pg_eps)
    if not S.get("pg_playing") and S.get("pg_transfer_key") != key:
        S.pg_transfer = sess.transfer(attack=S.pg_attack, eps=S.pg_eps, steps=10)
        S.pg_transfer_key = key
    if S.get("pg_transfer_key", (None,))[0] != id(sess) or "pg_transfer" not in S:
        st.caption("Pause to measure transfer on the test set.")
        return
    t = S.pg_transfer
    chart(transfer_figure(t["rates"], t["vote"]), key="pg_fig_transfer")
    st.caption(f"{S.pg_attack.upper()} ε={S.pg_eps:g} on the {len(sess.test_ds)} test points "
               f"(epoch {S.pg_transfer_key[1]}). The diagonal is the white-box success; off it, "
               f"transfer: mean **{t['transfer']:.0%}**. Lower transfer is what diversity buys.")


def members_view(sess: PlaygroundSession) -> None:
    """Train one epoch when playing, then redraw the members, the vote and the attack."""
    t0 = time.perf_counter()
    if S.get("pg_playing"):
        if sess.epoch >= MAX_EPOCHS:
            S.pg_playing = False
        else:
            sess.step()
    _clicked_point(sess)
    attack_widgets(sess)
    write_url(sess.config)  # the attack settings change in fragment-only reruns too
    frame = S.pg_frame = sess.frame()
    attack = sess.attack_path(int(S.pg_point), member=int(S.pg_src), attack=S.pg_attack,
                              eps=float(S.pg_eps))
    h = sess.history[-1] if sess.history else None
    fig = members_figure(frame, attack, accuracies=h["member_acc"] + [h["test_acc"]] if h else None)
    status_line(sess, 1000 * (time.perf_counter() - t0))
    chart(fig, key="pg_chart", on_select="rerun", selection_mode="points")
    fooled = ", ".join(f"M{i + 1}" for i, c in enumerate(attack["crossed"]) if c) or "none"
    st.caption(f"Each plot is one member: shading is its confidence, the black line its "
               f"boundary, the arrows the way its loss rises (toward its boundary). The "
               f"{attack['attack'].upper()} path is crafted on **M{attack['member'] + 1}** only "
               f"and drawn on every plot; a red ✗ means it crossed that boundary. Fooled: "
               f"**{fooled}**. Where the members' boundaries coincide, an attack on one fools them "
               f"all; compare ENS_U and PARL on the same seed (switch the method, same link).")


def analysis_view(sess: PlaygroundSession) -> None:
    """Alignment map, per-layer cosines, training curves and transfer of the latest frame."""
    frame = S.pg_frame
    c1, c2, c3 = st.columns(3)
    chart(alignment_figure(frame), key="pg_fig_align", where=c1)
    c1.caption("Red: the members' loss gradients point alike, so an attack on one member "
               "moves the point toward the others' boundaries too. Blue: they disagree.")
    chart(layer_cosine_figure(frame.layer_cos, frame.floor), key="pg_fig_layers", where=c2)
    c2.caption(f"PARL drives each layer's mean pairwise cosine toward the floor "
               f"−1/(M−1) = {frame.floor:.2f}: at the floor the regulariser is saturated, "
               f"{sess.config.members} vectors cannot spread further. In 2-D that can happen while "
               f"the loss gradients (left) still agree: diverse layer gradients do not by "
               f"themselves make the boundaries differ.")
    chart(playground_history_figure(frame.history), key="pg_fig_history", where=c3)
    with c3:
        transfer_view(sess)


def live_view() -> None:
    """Two fragments: while playing, the members redraw every frame and the slower-moving
    analysis charts once a second, so the browser spends its time on what moves most."""
    playing = S.get("pg_playing", False)
    st.fragment(members_view, run_every=FRAME_S if playing else None)(S.pg_session)
    st.fragment(analysis_view, run_every=ANALYSIS_S if playing else None)(S.pg_session)


# --------------------------------------------------------------------------- page
st.set_page_config(layout="wide")  # standalone runs; the app sets the same
st.title("Playground")
st.caption("Train a small ensemble on 2-D data and watch each member's decision boundary and "
           "gradients form, epoch by epoch; then attack one member and see whether the others "
           "fall too. The link carries every setting.")
init_from_url()
if S.get("pg_url_error"):
    st.warning(S.pop("pg_url_error"))
cfg = config_widgets()
write_url(cfg)
controls(session_for(cfg))
live_view()
