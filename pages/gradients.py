"""Gradients (the paper's Figure 1): one example's input gradient in every member of two
ensembles, one row each on one colour scale (ENS_U above PARL by default); the angles
between chosen members; and the distribution of gradient cosines over the test set.
Loss gradient, or PARL's layer-k gradient (labelled as such everywhere it is shown)."""
import numpy as np
import streamlit as st

import parl_core.plots as pp

from dashboard import cache, compute, findings, findings_r, state, ui, views

state.through_app()

K = state.KEEP
st.title("Gradients")
st.caption("An adversarial example moves the input along the loss gradient. If two models' "
           "gradients point the same way, an attack on one also fools the other; PARL trains "
           "members whose gradients point apart.")

active, dataset = state.active_with_data()
meta = cache.metadata(active)
test = compute.test_set(dataset)
same = {n: p for n, p in cache.checkpoints().items() if cache.metadata(p).get("dataset") == dataset}
names_all = state.ranked(same)
ens_u0, parl0 = state.paper_pair(dataset)
row1_default = ens_u0 or active.stem
row2_default = parl0 if parl0 and parl0 != row1_default else next(
    (n for n in names_all if n != row1_default), "(none)")
KINDS = ["loss ∇x CE", "PARL layer-k"]
FEATURES = list(findings_r.FEATURE_WORDS)  # PARL's F^k: "pre_bn" (its default), "post_bn", "post_relu"
PARAMS = {
    "grad": state.Param(f"{K}gr_kind", lambda t: KINDS[["loss", "layer"].index(t.strip().lower())], KINDS[0],
                        fmt=lambda v: "layer" if v == KINDS[1] else "loss"),
    "layer": state.Param(f"{K}gr_layer", int, 1),
    "top": state.Param(f"{K}gr_row1", str, row1_default),
    "bottom": state.Param(f"{K}gr_row2", str, row2_default),
    "feature": state.Param(f"{K}gr_feature", lambda t: FEATURES[FEATURES.index(t.strip().lower())], FEATURES[0]),
}
state.url_to_state("gradients", PARAMS)


def model_options() -> list[str]:
    return [o for n in names_all for o in views.members_of(n)]


def default_models() -> list[str]:
    """Two members of ENS_U and two of PARL (the paper's Figure 1: a similar pair and a
    diverse pair) when the active checkpoint is one of them; else the active one's members."""
    pair = [n for n in (ens_u0, parl0) if n is not None]
    if active.stem in pair and len(pair) == 2 and all(cache.metadata(same[n])["members"] >= 2 for n in pair):
        return [f"{n}:{i}" for n in pair for i in (0, 1)]
    return [f"{active.stem}:{i}" for i in range(min(3, meta["members"]))]


# ------------------------------------------------------------------- the example
n_test = len(test)
if "example" not in st.session_state:
    st.session_state["example"] = state.query_int("example", 0)
st.session_state["example"] = min(max(0, int(st.session_state["example"])), n_test - 1)


def set_example(i: int) -> None:
    st.session_state["example"] = int(i)


c = st.columns([2, 3, 2])
mode = c[0].radio("Pick an example", ["by index", "by class", "at random", "misclassified"],
                  key=f"{K}gr_mode", horizontal=False)
with c[1]:
    if mode == "by index":
        st.session_state["gr_index"] = st.session_state["example"]
        st.number_input(f"Test example (0–{n_test - 1})", 0, n_test - 1, key="gr_index",
                        on_change=lambda: set_example(st.session_state["gr_index"]))
    elif mode == "by class":
        state.default_choice(f"{K}gr_class", range(len(test.classes)), 0)
        cls = st.selectbox("Class", range(len(test.classes)), format_func=lambda k: str(test.classes[k]),
                           key=f"{K}gr_class")
        idx = np.flatnonzero(test.labels.numpy() == cls)
        state.default(f"{K}gr_nth", 1)
        st.session_state[f"{K}gr_nth"] = min(st.session_state[f"{K}gr_nth"], len(idx))
        nth = st.slider("Which one of this class", 1, len(idx), key=f"{K}gr_nth")
        set_example(idx[nth - 1])
    elif mode == "at random":
        if st.button("Another random example", icon=":material/casino:"):
            draws = st.session_state.get("gr_draws", 0) + 1
            st.session_state["gr_draws"] = draws
            set_example(np.random.default_rng(draws).integers(n_test))
    else:
        pred = compute.predictions(compute.ref(active), dataset)
        wrong = np.flatnonzero(pred["vote"] != pred["labels"])
        if len(wrong) == 0:
            st.info(f"{active.stem} classifies every test example correctly.")
        else:
            i = st.selectbox(f"{len(wrong)} examples the ensemble {active.stem} gets wrong", wrong,
                             format_func=lambda i: f"#{i}: true {test.classes[pred['labels'][i]]}, "
                                                   f"voted {test.classes[pred['vote'][i]]}")
            set_example(i)
with c[2]:
    state.default_choice(f"{K}gr_kind", KINDS, KINDS[0])
    grad_kind = st.radio("Gradient", KINDS, key=f"{K}gr_kind",
                         help="The loss gradient is what attacks follow. PARL's layer-k gradient is the "
                              "gradient of the sum of layer k's outputs (before batch norm) w.r.t. the "
                              "pixels: what PARL makes dissimilar between members.")
    layer_slot = st.container()
example = st.session_state["example"]
st.query_params["example"] = str(example)

# ------------------------------------------------------------------- two ensembles, one scale
c = st.columns(2)
state.default_choice(f"{K}gr_row1", names_all, row1_default)
state.default_choice(f"{K}gr_row2", ["(none)", *names_all], row2_default)
row1 = c[0].selectbox("Top row: every member of", names_all, key=f"{K}gr_row1", format_func=state.label)
row2 = c[1].selectbox("Bottom row: every member of", ["(none)", *names_all], key=f"{K}gr_row2",
                      format_func=lambda n: n if n == "(none)" else state.label(n))
rows = list(dict.fromkeys([row1] + ([row2] if row2 != "(none)" else [])))

key = f"{K}gr_models"
opts = model_options()
if not st.session_state.get(key) or any(o not in opts for o in st.session_state[key]):
    st.session_state[key] = default_models()
picked = list(st.session_state[key])
used = list(dict.fromkeys([o for r in rows for o in views.members_of(r)] + picked))
n_layers = min(m.num_layers for m in compute.members_of(
    tuple((compute.ref(same[o.rsplit(":", 1)[0]]), int(o.rsplit(":", 1)[1])) for o in used)))
layer = None
if grad_kind != KINDS[0]:
    state.default(f"{K}gr_layer", 1)
    if not 1 <= st.session_state[f"{K}gr_layer"] <= n_layers:
        st.session_state[f"{K}gr_layer"] = 1
    layer = layer_slot.slider("Layer k", 1, n_layers, key=f"{K}gr_layer")
words = findings.gradient_words(layer)

res = views.example_gradients(used, dataset, example, layer)
labels = res["labels"]
preds = ", ".join(f"{labels[o]}: {test.classes[p]}" for o, p in zip(used, res["preds"]))
st.markdown(f"**Test example #{example}** — true class **{test.classes[res['y']]}**; predictions {preds}.")
st.caption(f"Test image from {compute.data_caption(dataset, None)}.")
views.layer_one_note(layer)
prov = ui.provenance([same[r] for r in rows], {"rows": rows, "dataset": dataset, "split": "test",
                                               "example": example, "gradient": words["what"]},
                     command=f"python -c \"import parl_core as pc; ens, _ = pc.load_checkpoint('{same[rows[0]]}'); "
                             f"ds = pc.load_dataset('{dataset}', 'test'); "
                             f"print(pc.input_gradients(ens, ds.images[{example}:{example + 1}], "
                             f"ds.labels[{example}:{example + 1}], layer={layer}).shape)\"")
views.gradient_rows(rows, res, test, layer=layer, key="gr_maps", prov=prov)

# ------------------------------------------------------------------- angles between chosen members
st.subheader("Angles between chosen members")
picked = st.multiselect("Members (up to four, from any checkpoint of this dataset)", opts, key=key,
                        max_selections=4, format_func=lambda o: f"{views.ckpt_label(o.rsplit(':', 1)[0])} · "
                                                                 f"member {int(o.rsplit(':', 1)[1]) + 1}")
if not picked:
    st.info("Pick at least one member above.")
else:
    if any(o not in used for o in picked):  # changed just now: the gradients of the new picks
        used = list(dict.fromkeys(used + picked))
        res = views.example_gradients(used, dataset, example, layer)
    at = [res["options"].index(o) for o in picked]
    cos = np.asarray(res["cos"])[np.ix_(at, at)]
    names = [res["labels"][o] for o in picked]
    # one under the other: side by side, each is ~270 px wide on a 1024-pixel projector
    fig = pp.angle_matrix_figure(cos, names, title=f"Angles between {words['short']}")
    fig.update_traces(texttemplate="%{z:.0f}°", textfont={"size": ui.MIN_FONT_PX})  # cosines: hover
    ui.show_figure(fig, "Angle between every pair of gradients: 0° = same direction (an attack transfers), "
                   "90° = unrelated, 180° = opposite.", key="gr_angles", prov=prov, title="angles")
    if len(names) >= 2:
        state.default(f"{K}gr_webgl", False)
        webgl = st.session_state[f"{K}gr_webgl"]
        ui.show_figure(pp.directions_3d_figure(cos, names, webgl=webgl),
                       "The gradient directions as arrows in 3-D, arcs labelled with the true angles ("
                       + ("drag to rotate" if webgl else "the slider turns the view; faint arrows point "
                          "away from you") + "). Diverse members spread apart.", key="gr_3d", prov=prov,
                       title="directions")
        st.toggle("Free rotation (WebGL)", key=f"{K}gr_webgl",
                  help="A plotly 3-D scene you can drag in any direction. Slow without a GPU: drawing it "
                       "takes ~0.5 s in a browser without graphics acceleration, the default ~0.03 s.")
    groups, methods = {}, {}
    for k, o in enumerate(picked):
        g = o.rsplit(":", 1)[0]
        groups.setdefault(views.ckpt_label(g), []).append(k)
        methods[views.ckpt_label(g)] = views.method_of(g)
    st.markdown(findings.angle_finding(cos, groups, methods))

# ------------------------------------------------------------------- over the test set
st.subheader("Over the test set: ENS_U vs PARL")
c = st.columns(4)
state.default_choice(f"{K}gr_dist_a", names_all, ens_u0 or names_all[0])
state.default_choice(f"{K}gr_dist_b", names_all, parl0 or names_all[-1])
state.default(f"{K}gr_dist_n", min(450, n_test))
st.session_state[f"{K}gr_dist_n"] = min(st.session_state[f"{K}gr_dist_n"], n_test)  # another dataset
ca = c[0].selectbox("Ensemble A", names_all, key=f"{K}gr_dist_a")
cb = c[1].selectbox("Ensemble B", names_all, key=f"{K}gr_dist_b")
n = c[2].slider("Test examples", 50, n_test, step=50, key=f"{K}gr_dist_n")
c[3].caption(f"Gradient: {words['what']}.")
keys = {lab: ("cosdist", compute.ref(same[lab]), dataset, n, layer) for lab in dict.fromkeys([ca, cb])}
have = {lab: compute.stored(k) for lab, k in keys.items()}
if any(v is None for v in have.values()) and st.button("Compute the distributions", type="primary",
                                                        icon=":material/bar_chart:", key="gr_dist_go"):
    bar = st.progress(0.0, "Computing gradients over the test set…")
    for i, (lab, k) in enumerate(keys.items()):
        if have[lab] is None:
            have[lab] = compute.store(k, compute.cosine_distribution(k[1], dataset, n, layer))
        bar.progress((i + 1) / len(keys))
    st.rerun()  # draw again from the store, without the button
if all(v is not None for v in have.values()):
    views.distribution_view(have, dataset, n, layer, key="gr_hist",
                            prov=ui.provenance([same[x] for x in keys], {"n": n, "order": "evaluation order",
                                                                         "gradient": words["what"]}))
else:
    st.caption("Computed on request (a few seconds on digits); the result is then kept for everyone.")

# ------------------------------------------------------------------- what R measures (A and B, same n)
st.markdown("##### What R measures")
st.caption("PARL's regulariser R is the members' cosine between gradients of F^k, layer k's outputs summed, "
           "averaged over the first K layers. What \"layer k's outputs\" means changes R; attacks follow the "
           "loss gradient instead, shown beside it.")
state.default_choice(f"{K}gr_feature", FEATURES, FEATURES[0])
feature = st.radio("Layer outputs F^k, read", FEATURES, format_func=findings_r.FEATURE_WORDS.get,
                   key=f"{K}gr_feature", horizontal=True)
rkeys = {lab: (("layercos", compute.ref(same[lab]), dataset, n, feature),
               ("cosdist", compute.ref(same[lab]), dataset, n, None)) for lab in dict.fromkeys([ca, cb])}
rhave = {lab: [compute.stored(k) for k in ks] for lab, ks in rkeys.items()}
if (why := views.r_unavailable(list(rkeys), feature)):
    st.info(why, icon=":material/info:")
elif any(v is None for vs in rhave.values() for v in vs) and st.button(
        "Compute R per layer", type="primary", icon=":material/stacked_line_chart:", key="gr_rk_go"):
    bar = st.progress(0.0, "Computing layer and loss gradients over the test set…")
    for i, (lab, (k_layer, k_loss)) in enumerate(rkeys.items()):
        if rhave[lab][0] is None:
            compute.store(k_layer, compute.layer_cosines(k_layer[1], dataset, n, feature))
        if rhave[lab][1] is None:
            compute.store(k_loss, compute.cosine_distribution(k_loss[1], dataset, n, None))
        bar.progress((i + 1) / len(rkeys))
    st.rerun()  # draw again from the store, without the button
if not why and all(v is not None for vs in rhave.values() for v in vs):
    views.r_measure_view({lab: v[0] for lab, v in rhave.items()}, {lab: v[1]["mean"] for lab, v in rhave.items()},
                         feature, dataset, key="gr_rk")
elif not why:
    st.caption("Computed on request (a few seconds on digits); the result is then kept for everyone.")
state.state_to_url(PARAMS)
