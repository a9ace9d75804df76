"""Playground: watch an ensemble's decision boundaries (and gradients) form, live, on 2-D
data, and see whether an attack crafted on one member fools the others — one run, or
ENS_U and PARL side by side on the same seed.

Runs through the app's st.navigation and standalone (`streamlit run pages/playground.py`).
Every setting is in the URL (dashboard/state.py), so a teacher can prepare links.

How it stays responsive: training runs in a background thread (parl_core.playground_live)
up to AHEAD epochs ahead of the screen; while playing, a fragment reruns every BATCH_S and
hands every epoch trained since its last run to a canvas component
(dashboard/components/playground_canvas), which plays them one per FRAME_MS on its own
timer and repaints in place: the frame rate is set by training, not by rerun latency. Play, Pause, Step and Reset act in their
callbacks (a flag for the thread, or one epoch), before anything is drawn again. The
plotly analysis charts below are drawn in full reruns only (Play, Pause, Step, a
setting), so the browser spends play mode on the canvas.
"""
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # standalone `streamlit run pages/playground.py`
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

import parl_core as pc  # noqa: E402
from dashboard import state  # noqa: E402
from dashboard.components.playground_canvas import frames_payload, playground_canvas  # noqa: E402
from dashboard.state import Param, fmt_bool, parse_bool, parse_optional  # noqa: E402
from dashboard.ui import chart  # noqa: E402
from parl_core.playground import ATTACKS_2D, PlaygroundConfig, playground_methods  # noqa: E402
from parl_core.playground_live import LiveRun, fooled_text  # noqa: E402
from parl_core.plots.playground import alignment_figure, layer_cosine_figure, transfer_figure  # noqa: E402

BATCH_S = 0.4   # play mode: the fragment collects the epochs trained since its last run this often
FRAME_MS = 100  # the canvas draws at most one epoch per FRAME_MS (10 per second)
AHEAD = 10      # epochs the background run may train beyond what the page has taken
PER_BATCH = 8   # epochs handed to the canvas per rerun: about what it shows until the next one, so
                # training waits for the screen (no epoch dropped) and the canvas keeps a few in hand
DEFAULT = PlaygroundConfig()
P = "k_pg_"  # widget keys (state.KEEP prefix: kept while another page is shown)
S = st.session_state
URL = {"ds": Param(P + "dataset", str, DEFAULT.dataset), "n": Param(P + "n_samples", int, DEFAULT.n_samples),
       "noise": Param(P + "noise", parse_optional(float), DEFAULT.noise),
       "m": Param(P + "members", int, DEFAULT.members), "method": Param(P + "method", str, DEFAULT.method),
       "g2": Param(P + "gamma2", float, DEFAULT.gamma2), "k": Param(P + "layers", parse_optional(int), DEFAULT.layers),
       "w": Param(P + "width", int, DEFAULT.width), "d": Param(P + "depth", int, DEFAULT.depth),
       "seed": Param(P + "seed", int, DEFAULT.seed), "lr": Param(P + "lr", float, DEFAULT.lr),
       "vs": Param(P + "split", parse_bool, False, fmt_bool),
       "atk": Param(P + "attack", str, "pgd"), "eps": Param(P + "eps", float, 0.3),
       "src": Param(P + "src", int, 0), "pt": Param(P + "point", int, 0)}
CONFIG_FIELDS = [f for f in DEFAULT.to_dict() if f != "batch_size"]
LRS = [0.001, 0.003, 0.01, 0.03, 0.1]
state.through_app()  # a shared /playground link on a fresh server still gets app.py's sidebar


# --------------------------------------------------------------------------- URL <-> state
def init_state() -> None:
    """Defaults, then the link's settings (once per browser session); a link whose settings
    do not make a valid run falls back to the defaults, with a warning."""
    for p in URL.values():
        state.default(p.key, p.default)
    bad = state.url_to_state("playground", URL)
    try:
        current_config()
        ok = (S[P + "attack"] in ATTACKS_2D and 0.05 <= S[P + "eps"] <= 1.5 and S[P + "lr"] in LRS
              and S[P + "src"] >= 0 and S[P + "point"] >= 0)
        if not ok:
            raise ValueError("the attack settings or the learning rate are out of range")
    except (ValueError, TypeError) as e:
        S.pg_url_error = f"The link's settings were not valid ({e}); using the defaults."
        for p in URL.values():
            S[p.key] = p.default
    if bad:
        S.pg_url_error = f"Ignored unreadable link parameters: {', '.join(bad)}."


def current_config() -> PlaygroundConfig:
    return PlaygroundConfig.from_dict({f: S[P + f] for f in CONFIG_FIELDS})


# --------------------------------------------------------------------------- widgets
def config_widgets() -> dict:
    """The sidebar settings; a change of any of them starts new runs. Returns the runs
    to show: {name: PlaygroundConfig} (two, same seed, in the split screen)."""
    with st.sidebar:
        st.subheader("Playground")
        split = st.toggle("ENS_U vs PARL, split screen", key=P + "split",
                          help="Train a plain ensemble and a PARL ensemble side by side: same data, "
                               "same seed, same initial weights; only the loss differs.")
        st.selectbox("Data", pc.TOY_2D, key=P + "dataset")
        c1, c2 = st.columns(2)
        c1.number_input("Points", 50, 2000, step=50, key=P + "n_samples")
        c2.number_input("Noise", 0.0, 5.0, step=0.05, key=P + "noise", placeholder="default",
                        help="Empty: the data set's default noise.")
        st.slider("Members", 2, 5, key=P + "members")
        st.selectbox("Method", playground_methods(), key=P + "method", format_func=pc.method_label,
                     disabled=split, help="In the split screen: ENS_U above, PARL below.")
        method = "parl" if split else S[P + "method"]
        weighted = set(PlaygroundConfig(method=method).method_params()) & {"gamma2", "lam"}
        st.slider("Diversity weight γ2", 0.0, 2.0, step=0.05, key=P + "gamma2",
                  disabled=not weighted, help="PARL's γ2 (GAL's λ); other methods keep theirs.")
        c1, c2 = st.columns(2)
        c1.slider("Hidden width", 2, 64, key=P + "width")
        c2.slider("Hidden layers", 1, 6, key=P + "depth")
        if S[P + "layers"] is not None and S[P + "layers"] > S[P + "depth"]:
            S[P + "layers"] = None
        # 0 stands for None (min(7, L)): a selectbox shows None as "no choice".
        k = st.selectbox("PARL's K (layers)", range(S[P + "depth"] + 1), index=S[P + "layers"] or 0,
                         format_func=lambda k: "all (min(7, L))" if k == 0 else str(k),
                         disabled=method != "parl", key=f"pg_k_{S[P + 'depth']}")
        S[P + "layers"] = k or None
        c1, c2 = st.columns(2)
        c1.number_input("Seed", 0, 10_000, key=P + "seed")
        c2.select_slider("Learning rate", LRS, key=P + "lr")
    cfg = current_config()
    if split:
        return {"ENS_U": replace(cfg, method="ce_only"), "PARL": replace(cfg, method="parl")}
    return {pc.method_label(cfg.method): cfg}


def live_for(configs: dict) -> LiveRun:
    """The runs in st.session_state; new ones when the settings changed."""
    live = S.get("pg_live")
    if live is None or live.configs != configs:
        if live is not None:
            live.pause()
        live = S.pg_live = LiveRun(configs, ahead=AHEAD)
    return live


def _play():
    S.pg_live.play()


def _pause():
    S.pg_live.pause()


def _step():
    S.pg_live.step()


def _reset():
    S.pg_live.reset()


def controls(live: LiveRun) -> None:
    """Play/Pause, Step, Reset: each acts in its callback, before the page is drawn again.
    Sized to their labels (never truncated, also at 1024 px)."""
    playing = live.playing
    with st.container(horizontal=True, gap="small"):
        st.button("Pause" if playing else "Play", key="pg_play", on_click=_pause if playing else _play,
                  type="primary", icon=":material/pause:" if playing else ":material/play_arrow:",
                  width="content")
        st.button("Step", key="pg_step", on_click=_step, icon=":material/skip_next:", width="content",
                  help="Train one epoch (pauses first).")
        st.button("Reset", key="pg_reset", on_click=_reset, icon=":material/restart_alt:", width="content",
                  help="New initial weights (same seed): epoch 0.")


def attack_widgets(live: LiveRun) -> None:
    m = min(c.members for c in live.configs.values())
    n = len(live.train_points)
    S[P + "src"] = min(S[P + "src"], m - 1)
    S[P + "point"] = min(S[P + "point"], n - 1)
    c = st.columns([1, 2, 1, 1])
    c[0].selectbox("Attack", ATTACKS_2D, key=P + "attack", format_func=str.upper)
    c[1].slider("ε (input units)", 0.05, 1.5, step=0.05, key=P + "eps",
                help="L∞ budget; no pixel range here (bounds=None).")
    c[2].selectbox("Crafted on", list(range(m)), key=P + "src", format_func=lambda i: f"M{i + 1}")
    c[3].number_input("Point #", 0, n - 1, key=P + "point", help="Or click a point in the plots.")
    live.set_attack(int(S[P + "point"]), int(S[P + "src"]), S[P + "attack"], float(S[P + "eps"]))


# --------------------------------------------------------------------------- the live view
def _pick_point(live: LiveRun, click: dict) -> None:
    """The training point nearest a click on any plot becomes the attacked point."""
    x = live.train_points
    d = (x[:, 0] - float(click["x"])) ** 2 + (x[:, 1] - float(click["y"])) ** 2
    S[P + "point"] = int(d.argmin())


def status_line(view, live: LiveRun) -> None:
    """Paused: the epoch on screen and its numbers. Playing: how far training has got (the
    canvas plays the epochs in turn, its titles and curves carry each one's numbers)."""
    if live.playing:
        st.markdown(f"**Playing** · trained up to epoch {view.epoch}; the plots show each epoch in "
                    "turn, with its accuracies in the titles and the curves on the right.")
        return
    parts = []
    for r in view.runs:
        h = r.frame.history[-1] if r.frame.history else None
        if h:
            parts.append(f"{r.name}: test acc (vote) {h['test_acc']:.1%}, members "
                         + ", ".join(f"{a:.0%}" for a in h["member_acc"])
                         + f", mean pairwise R/K {h['r_mean']:+.2f}")
    floor = -1 / (view.runs[0].config.members - 1)
    st.markdown(f"**Epoch {view.epoch}**" + (" · " + " · ".join(parts) if parts else "")
                + (f" (floor {floor:+.2f})" if parts else ""))


def live_view() -> None:
    """The canvas and what it says; reruns every BATCH_S while playing."""
    live = S.pg_live
    playing = live.playing
    if live.error:
        st.error(f"Training stopped: {live.error}. Press Reset or change a setting.")
    views = live.next_views(PER_BATCH) if playing else [live.current()]
    view = views[-1]
    status_line(view, live)
    result = playground_canvas(frames_payload(views, playing=playing, frame_ms=FRAME_MS), key="pg_canvas",
                               on_click=lambda: None)
    atk = view.settings
    st.caption(f"Each plot is one member (last: the majority vote): shading is its confidence, the black "
               f"line its boundary, the arrows the way its loss rises. The {atk[2].upper()} path (ε = "
               f"{atk[3]:g}) starts at point #{atk[0]} and is crafted on **M{atk[1] + 1}** only; every plot "
               f"says what it did there: *holds* (still right), *fooled* (right before, wrong after, red ✗) "
               f"or *already wrong* (wrong before the attack, grey ✗). "
               + (" ".join(f"**{r.name}** at epoch {view.epoch} — {fooled_text(r.verdicts)}" for r in view.runs)
                  if not playing else "Pause to read the verdicts of the epoch on screen.")
               + " Click a plot to attack the nearest point.")
    click = getattr(result, "click", None)
    if click:
        _pick_point(live, click)
        st.rerun()  # the whole page: the point box and the attack follow
    if S.get("pg_drawn_playing") and not playing:
        S.pg_drawn_playing = False
        st.rerun()  # it stopped by itself (last epoch, nobody watching, an error): Play again
    S.pg_drawn_playing = playing


def analysis_view(live: LiveRun) -> None:
    """Alignment map, per-layer cosines and test-set transfer of each run (full reruns only)."""
    playing = live.playing
    view = live.shown() if playing else live.current()
    st.subheader("Analysis")
    if playing:
        st.caption(f"As at epoch {view.epoch}: these charts follow when you pause or step.")
    for r in view.runs:
        if len(view.runs) > 1:
            st.markdown(f"**{r.name}**")
        c1, c2, c3 = st.columns(3)
        chart(alignment_figure(r.frame), key=f"pg_fig_align_{r.name}", where=c1)
        chart(layer_cosine_figure(r.frame.layer_cos, r.frame.floor), key=f"pg_fig_layers_{r.name}", where=c2)
        with c3:
            transfer_view(live, r, view.epoch, playing)
    st.caption("Left: red where the members' loss gradients point alike (an attack on one moves the point "
               "toward the others' boundaries too), blue where they disagree. Middle: each layer's mean pairwise "
               "cosine of PARL's layer gradients against the floor −1/(M−1): at the floor M vectors cannot "
               "spread further. Diverse layer gradients do not by themselves make the boundaries differ.")


def transfer_view(live: LiveRun, run, epoch: int, playing: bool) -> None:
    key = (id(live), run.name, epoch, S[P + "attack"], S[P + "eps"])
    store = S.setdefault("pg_transfer", {})
    if not playing and key not in store:
        if len(store) > 8:
            store.clear()
        store[key] = live.transfer(run.name, attack=S[P + "attack"], eps=float(S[P + "eps"]), steps=10)
    t = store.get(key)
    if t is None:
        st.caption("Pause to measure transfer on the test set.")
        return
    chart(transfer_figure(t["rates"], t["vote"]), key=f"pg_fig_transfer_{run.name}")
    n = len(live.sessions[run.name].test_ds)
    st.caption(f"{S[P + 'attack'].upper()} ε = {S[P + 'eps']:g} on the {n} test points (epoch {epoch}): "
               f"diagonal = white-box success, off it = transfer, mean **{t['transfer']:.0%}**.")


# --------------------------------------------------------------------------- page
st.set_page_config(layout="wide")  # standalone runs; the app sets the same
st.title("Playground")
st.caption("Train a small ensemble on 2-D data and watch each member's decision boundary and gradients "
           "form, epoch by epoch; then attack one member and see whether the others fall too. The link "
           "carries every setting.")
init_state()
if S.get("pg_url_error"):
    st.warning(S.pop("pg_url_error"))
live = live_for(config_widgets())
controls(live)
attack_widgets(live)
state.state_to_url(URL)
st.fragment(live_view, run_every=BATCH_S if live.playing else None)()
analysis_view(live)
