"""Lesson: why diverse ensembles resist transfer attacks, in five steps (train, compare
gradients, compare CKA, attack, explain) on the shipped CIFAR-10 ensembles (else the
active dataset's ENS_U and PARL). Each step: its figure, one sentence of what to look
for, and the numbers computed from the checkpoints, saying so when the expected effect
is absent. The step is in the link (?step=3)."""
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

import parl_core as pc
import parl_core.plots as pp
from parl_core.plots.analysis import PALETTE

from dashboard import cache, compute, findings, lesson, robust, state, ui, views

state.through_app()

K = state.KEEP
STEP = f"{K}ls_step"
st.title("Lesson")
c = lesson.cast()
if c is None:
    st.info("The lesson needs an ENS_U and a PARL checkpoint of the same dataset: train them on the "
            "Train page (seconds on digits), or put the shipped CIFAR-10 checkpoints in the folder.")
    st.stop()
paths = cache.checkpoints()
test = compute.test_set(c.dataset)
PARAMS = {"step": state.Param(STEP, state.parse_int_in(1, len(lesson.STEPS)), 1),
          "ex": state.Param(f"{K}ls_ex", state.parse_int_in(0, len(test) - 1), 0)}
state.url_to_state("lesson", PARAMS)
state.default(STEP, 1)
state.default(f"{K}ls_ex", 0)
E, P = lesson.label(c.ens_u), lesson.label(c.parl)
M = lesson.members(c)
st.caption(f"Why diverse ensembles resist transfer attacks, in five steps, on {E} and {P} ({M} members each; "
           f"{compute.data_caption(c.dataset, None)}). "
           + "; ".join(findings.scale_note(n, cache.metadata(paths[n])) for n in c.pair) + ".")


def goto_step(step: int) -> None:
    st.session_state[STEP] = step


step = st.segmented_control("Step", list(range(1, len(lesson.STEPS) + 1)), key=STEP, required=True,
                            format_func=lambda i: f"{i} {lesson.STEPS[i - 1]}")
step = int(step or 1)


def look_for(text: str) -> None:
    st.markdown(f":material/visibility: **Look for:** {text}")


def missing_button(what: str, kind: str, key: str) -> dict:
    """The stored results of `kind`, or a button that computes them (and None values)."""
    have = lesson.stored(c, kind)
    if any(v is None for v in have.values()):
        st.caption(f"The {what} of these checkpoints is not prepared here (`python -m parl_core prepare "
                   f"{' '.join(str(paths[n]) for n in c.pair)}` prepares it ahead of a lecture).")
        if st.button(f"Compute the {what}", key=key, type="primary", icon=":material/calculate:"):
            bar = st.progress(0.0, f"Computing the {what}…")
            lesson.compute_missing(c, kind, lambda i, n: bar.progress(i / n))
            st.rerun()
    return have


# ------------------------------------------------------------------- 1 train
def train_step() -> None:
    st.subheader("1 · Train: two ensembles, one regularised")
    look_for(f"PARL's R/K (right) falling towards its floor −1/(M−1) = {-1 / (M - 1):+.2f} while ENS_U's "
             "stays near 0, at about the same test accuracy (left).")
    hist = lesson.histories(c)
    if all(hist.values()):
        cols = st.columns(2)
        for col, metric in zip(cols, ("test_acc", "r_mean")):
            fig = pp.compare_histories_figure(hist, metric, height=340)
            if metric == "r_mean":
                fig.add_hline(y=-1 / (M - 1), line_dash="dot", annotation_text="floor −1/(M−1)",
                              annotation_position="top right")
            fig.update_layout(title={"text": pp.TRAINING_METRICS.get(metric, metric)},
                              legend={"orientation": "h", "y": -0.3}, margin={"t": 50})
            with col:
                ui.show_figure(fig, "Test accuracy of the vote after each epoch." if metric == "test_acc" else
                                  "Mean pairwise R/K after each epoch: the members' layer-gradient cosine.",
                                  key=f"ls_hist_{metric}", title=f"lesson_{metric}",
                                  prov=ui.provenance([paths[n] for n in c.pair], {"metric": metric}))
    else:
        st.info("These checkpoints carry no per-epoch history; the numbers below are their final ones.")
    acc = lesson.clean_acc(c)
    st.markdown("Clean test accuracy — " + ", ".join(f"{lab}: {v:.1%}" if v is not None else f"{lab}: not recorded"
                                                     for lab, v in acc.items()) + ". "
                + findings.rk_finding(lesson.final_rk(c), lesson.methods(c.pair), M))
    if st.session_state.get("_app_seen"):
        st.page_link("pages/playground.py", label="Train an ENS_U and a PARL yourself, side by side, in the "
                     "Playground (2-D data, seconds)", icon=":material/scatter_plot:")


# ------------------------------------------------------------------- 2 gradients
def gradients_step() -> None:
    st.subheader("2 · Compare gradients: one example, every member")
    look_for("within ENS_U's row the maps look alike (its members would be fooled by the same change); "
             "within PARL's row they should differ.")
    cols = st.columns([1, 2], vertical_alignment="bottom")
    ex = cols[0].number_input(f"Test example (0–{len(test) - 1})", 0, len(test) - 1, key=f"{K}ls_ex")
    opts = [o for n in c.pair for o in views.members_of(n)]
    res = views.example_gradients(opts, c.dataset, int(ex), None)
    cols[1].markdown(f"**Test example #{int(ex)}**, true class **{test.classes[res['y']]}**.")
    views.gradient_rows(c.pair, res, test, layer=None, key="ls_maps",
                        prov=ui.provenance([paths[n] for n in c.pair], {"example": int(ex), "gradient": "loss"}))
    have = missing_button("gradient-cosine distribution", "cosdist", "ls_cos_go")
    if all(v is not None for v in have.values()):
        st.markdown("Over the test set: " + findings.cosine_finding(
            {lesson.label(n): v for n, v in have.items()}, lesson.methods(c.pair)))


# ------------------------------------------------------------------- 3 CKA
def cka_step() -> dict:
    st.subheader("3 · Compare CKA: do members compute differently?")
    have = missing_button("layer-wise CKA", "cka", "ls_cka_go")
    if any(v is None for v in have.values()):
        return have
    k = lesson.cka_k(c, have)
    look_for(f"in the first {k} layers (those PARL regularises) PARL's diagonal darker, i.e. lower CKA, "
             "than ENS_U's.")
    views.cka_heatmaps(have, "mean", k, have[c.parl].get("estimator", "minibatch"), key="ls_cka",
                       prov=ui.provenance([paths[n] for n in c.pair], {"n": have[c.parl].get("n")}))
    st.markdown(findings.cka_finding({lesson.label(n): v for n, v in have.items()}, lesson.methods(c.pair), k))
    return have


# ------------------------------------------------------------------- 4 attack
def attack_step() -> None:
    st.subheader("4 · Attack: transfer from a surrogate")
    if c.surrogate is None:
        st.info("A black-box attack needs a third checkpoint of this dataset as the attacker's surrogate.")
        return
    look_for(f"PARL's curve above ENS_U's: examples crafted on the surrogate {c.surrogate} (a model the "
             "attacker trained) should fool PARL less often.")
    kw = lesson.attack_settings(c)
    evals = lesson.evaluations(c)
    missing = [n for n, r in evals.items() if r is None]
    if missing:
        st.markdown(robust.estimate({n: compute.ref(paths[n]) for n in missing}, compute.ref(paths[c.surrogate]),
                                    c.dataset, attacks=kw["attacks"], eps=kw["eps"], steps=kw["steps"],
                                    restarts=kw["restarts"], n=kw["n_examples"]))
        if st.button("Run the black-box evaluation", key="ls_eval_go", type="primary",
                     icon=":material/play_arrow:") and robust.run(paths, missing, kw):
            st.rerun()
        return
    p255 = robust.per255(c.dataset)
    main = "pgd" if "pgd" in kw["attacks"] else kw["attacks"][-1]
    ui.show_figure(pp.accuracy_vs_eps_figure({lesson.label(n): evals[n].table for n in c.pair}, attacks=[main],
                                             title="Accuracy under a transferred attack", per255=p255),
                   f"Majority-vote accuracy as ε grows, on examples crafted by {main.upper()} on the surrogate "
                   f"{c.surrogate} ({kw['steps']} steps) and shown to each ensemble; bands: 95 % intervals. "
                   f"Test images: {compute.data_caption(c.dataset, kw['n_examples'])}. Every attack and ε: "
                   "the Robustness page.", key="ls_attack", title="lesson_attack",
                   prov=ui.provenance([paths[n] for n in [*c.pair, c.surrogate]], kw))
    st.markdown(lesson.attack_finding(c, evals))


# ------------------------------------------------------------------- 5 explain
def explain_step() -> None:
    st.subheader("5 · Explain: which links hold here?")
    look_for("which of the four links hold on these checkpoints; the paper's argument needs all four.")
    links = lesson.links(c, lesson.stored(c, "cosdist"), lesson.stored(c, "cka"), lesson.evaluations(c))
    df = pd.DataFrame([{"step": lk.step, "the paper expects": lk.expects, "ENS_U": lk.ens_u, "PARL": lk.parl,
                        "here": {True: "holds", False: "absent", None: "not computed"}[lk.holds]} for lk in links])
    done = [lk for lk in links if lk.holds is not None]
    if done:
        fig = make_subplots(rows=1, cols=len(done), horizontal_spacing=0.09, subplot_titles=[
            f"{lk.short}<br>{'holds' if lk.holds else 'absent'}" for lk in done])
        for i, lk in enumerate(done, start=1):
            fig.add_trace(go.Bar(x=["ENS_U", "PARL"], y=[lk.ens_u, lk.parl], marker_color=list(PALETTE[:2]),
                                 text=[f"{lk.ens_u:.2f}", f"{lk.parl:.2f}"], textposition="outside",
                                 cliponaxis=False, showlegend=False, name=lk.step), 1, i)
        fig.update_layout(height=360, margin={"t": 80, "b": 30, "l": 10, "r": 10})
        ui.show_figure(fig, "ENS_U and PARL on each measured link: R/K at the end of training, the median "
                       "loss-gradient cosine, the mean early-layer CKA (lower is more diverse for these "
                       "three) and the mean accuracy over ε under the transferred attack (higher is more "
                       "robust); above each panel, whether the expected effect is there.",
                       key="ls_summary", title="lesson_summary")
    ui.show_table(df, "Each link, its two numbers and whether the expected effect is there.", key="ls_links",
                  title="lesson_links", hide_index=True,
                  column_config={"ENS_U": st.column_config.NumberColumn(format="%.3f"),
                                 "PARL": st.column_config.NumberColumn(format="%.3f")})
    holds = [lk for lk in links if lk.holds]
    absent = [lk for lk in links if lk.holds is False]
    todo = [lk for lk in links if lk.holds is None]
    text = (f"**{len(holds)} of {len(links)} links hold on these checkpoints**"
            + (f"; absent: {', '.join(lk.step for lk in absent)}" if absent else "")
            + (f"; not computed yet: {', '.join(lk.step for lk in todo)}" if todo else "") + ". ")
    text += ("The argument: PARL penalises the cosine between members' layer gradients (R/K), so the members "
             "learn different early features (lower CKA); their loss gradients then point apart, so a change "
             "that raises one member's loss raises the others' less, and an attack crafted on a surrogate "
             "fools fewer members at once. ")
    if absent:
        text += ("Where a link is absent, these checkpoints do not show that part of the argument at their "
                 "scale; the paper's numbers come from longer training on all 50,000 images.")
    st.markdown(text)


{1: train_step, 2: gradients_step, 3: cka_step, 4: attack_step, 5: explain_step}[step]()

c1, _, c2 = st.columns([1, 3, 1])
c1.button("Previous", key="ls_prev", icon=":material/arrow_back:", disabled=step == 1,
          on_click=goto_step, args=(step - 1,), width="stretch")
c2.button("Next", key="ls_next", icon=":material/arrow_forward:", disabled=step == len(lesson.STEPS),
          on_click=goto_step, args=(step + 1,), width="stretch")

with st.expander("Glossary"):
    eps = pc.default_eps_grid(c.dataset)
    st.markdown(
        "- **ε (epsilon)**: the attack budget, the most an attack may change any pixel (the L∞ norm). Pixels "
        "are in [0, 1], so ε is in pixel units; 8-bit images have 255 steps, so ε = 0.03 is 0.03 × 255 ≈ "
        "7.6 of them, written 7.6/255. This lesson's grid: "
        + ", ".join(findings.eps_text(e, robust.per255(c.dataset)) for e in eps) + ".\n"
        "- **White box**: the attacker has the ensemble itself and follows its gradient. **Black box**: it "
        "does not; it attacks a model of its own and hopes the examples *transfer*.\n"
        f"- **Surrogate**: that model of the attacker's own, here {c.surrogate or '(none)'}, an ENS_U trained "
        "with another seed.\n"
        f"- **R/K**: PARL's measure of how aligned two members' layer gradients are: the cosine between their "
        f"gradients of layer k's summed output w.r.t. the pixels, summed over the first K layers (R) and "
        f"divided by K; shown as the mean over member pairs. 1 = same direction, 0 = perpendicular. Its floor "
        f"is −1/(M−1) ({-1 / (M - 1):+.2f} for {M} members): M directions cannot all point away from each "
        "other.\n"
        "- **CKA** (centred kernel alignment): how similar two layers' representations of the same inputs are, "
        "from 0 (unrelated) to 1 (the same up to rotation and scale).\n"
        "- **ENS_U**: an ensemble trained with cross-entropy only. **PARL**: the same plus the penalty on R.")
state.state_to_url(PARAMS)
