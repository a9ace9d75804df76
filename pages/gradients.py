"""Gradients (the paper's Figure 1): one example's input gradient in up to three models,
the angles between them, and the distribution of gradient cosines over the test set."""
import numpy as np
import streamlit as st

import parl_core as pc
import parl_core.plots as pp

from dashboard import cache, compute, findings, state, ui

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


def model_options() -> list[str]:
    return [f"{n}:{i}" for n, p in same.items() for i in range(cache.metadata(p)["members"])]


def model_label(opt: str) -> str:
    n, i = opt.rsplit(":", 1)
    return f"{pc.method_label(cache.metadata(same[n])['method'])} {n} · member {int(i) + 1}"


def default_models() -> list[str]:
    """Two members of ENS_U and two of PARL (the paper's Figure 1: a similar pair and a
    diverse pair) when the active checkpoint is one of them; else the active one's members."""
    pair = [n for n in state.paper_pair(dataset) if n is not None]
    if active.stem in pair and len(pair) == 2 and all(cache.metadata(same[n])["members"] >= 2 for n in pair):
        return [f"{n}:{i}" for n in pair for i in (0, 1)]
    return [f"{active.stem}:{i}" for i in range(min(3, meta["members"]))]


opts = model_options()
key = f"{K}gr_models"
if not st.session_state.get(key) or any(o not in opts for o in st.session_state[key]):
    st.session_state[key] = default_models()
picked = st.multiselect("Models (up to four, from any checkpoint of this dataset)", opts,
                        key=key, max_selections=4, format_func=model_label)
if not picked:
    st.info("Pick at least one model above.")
    st.stop()
refs = tuple((compute.ref(same[o.rsplit(":", 1)[0]]), int(o.rsplit(":", 1)[1])) for o in picked)
names = [f"{pc.method_label(cache.metadata(same[o.rsplit(':', 1)[0]])['method'])} M{int(o.rsplit(':', 1)[1]) + 1}"
         for o in picked]
if len(set(names)) < len(names):
    names = [f"{o.rsplit(':', 1)[0]} M{int(o.rsplit(':', 1)[1]) + 1}" for o in picked]

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
    grad_kind = st.radio("Gradient", ["loss ∇x CE", "PARL layer-k"], key=f"{K}gr_kind",
                         help="The loss gradient is what attacks follow. PARL's layer-k gradient is "
                              "∇x of the sum of layer k's outputs, what PARL makes dissimilar.")
    n_layers = min(m.num_layers for m in compute.members_of(refs))
    layer = None
    if grad_kind != "loss ∇x CE":
        state.default(f"{K}gr_layer", 1)
        if st.session_state[f"{K}gr_layer"] > n_layers:
            st.session_state[f"{K}gr_layer"] = 1
        layer = st.slider("Layer k", 1, n_layers, key=f"{K}gr_layer")
example = st.session_state["example"]
st.query_params["example"] = str(example)

# ------------------------------------------------------------------- figures
res = compute.example_gradients(refs, dataset, example, layer)
what = "loss gradient ∇x CE" if layer is None else f"layer-{layer} gradient (PARL's)"
preds = ", ".join(f"{n}: {test.classes[p]}" for n, p in zip(names, res["preds"]))
st.markdown(f"**Test example #{example}** — true class **{test.classes[res['y']]}**; predictions {preds}.")
st.caption(f"Test image from {compute.data_caption(dataset, None)}.")
prov = ui.provenance([same[o.rsplit(":", 1)[0]] for o in dict.fromkeys(picked)],
                     {"models": picked, "dataset": dataset, "split": "test", "example": example,
                      "gradient": what},
                     command=f"python -c \"import parl_core as pc; ens, _ = pc.load_checkpoint('{active}'); "
                             f"ds = pc.load_dataset('{dataset}', 'test'); "
                             f"print(pc.input_gradients(ens, ds.images[{example}:{example + 1}], "
                             f"ds.labels[{example}:{example + 1}], layer={layer}).shape)\"")
if test.is_image:
    ui.show_figure(pp.gradient_maps_figure(res["x"], res["grads"], names,
                                           input_label=f"input: {test.classes[res['y']]}"),
                   f"The input (true class {test.classes[res['y']]}) and each model's "
                   f"{what} for it. Red: raising the pixel raises the loss; blue: lowers it. Similar maps "
                   "mean an attack on one model works on the others.", key="gr_maps", prov=prov,
                   title=f"gradients_example{example}")
else:
    st.info("2-D data: gradient maps need images; the angles below still apply (see the Playground).")
c = st.columns(2)
with c[0]:
    ui.show_figure(pp.angle_matrix_figure(res["cos"], names), "Angle between every pair of gradients: "
                   "0° = same direction (an attack transfers), 90° = unrelated, 180° = opposite.",
                   key="gr_angles", prov=prov, title="angles")
with c[1]:
    if len(names) >= 2:
        state.default(f"{K}gr_webgl", False)
        webgl = st.session_state[f"{K}gr_webgl"]
        ui.show_figure(pp.directions_3d_figure(res["cos"], names, webgl=webgl),
                       "The gradient directions as arrows in 3-D, arcs labelled with the true angles ("
                       + ("drag to rotate" if webgl else "the slider turns the view; faint arrows point away "
                          "from you") + "). Diverse members spread apart.", key="gr_3d", prov=prov,
                       title="directions")
        st.toggle("Free rotation (WebGL; slow without a GPU)", key=f"{K}gr_webgl",
                  help="A plotly 3-D scene you can drag in any direction. Drawing it takes ~0.5 s "
                       "in a browser without graphics acceleration, the default drawing ~0.03 s.")
ckpt_label = {g: f"{pc.method_label(cache.metadata(same[g])['method'])} ({g})"
              for g in dict.fromkeys(o.rsplit(":", 1)[0] for o in picked)}
st.markdown(findings.angle_finding(
    res["cos"], {ckpt_label[g]: [k for k, o in enumerate(picked) if o.rsplit(":", 1)[0] == g] for g in ckpt_label},
    {ckpt_label[g]: cache.metadata(same[g])["method"] for g in ckpt_label}))

# ------------------------------------------------------------------- over the test set
st.subheader("Over the test set: ENS_U vs PARL")
names_all = list(same)
a0 = state.by_method("ce_only", dataset) or names_all[0]
b0 = state.by_method("parl", dataset) or names_all[-1]
c = st.columns(4)
state.default_choice(f"{K}gr_dist_a", names_all, a0)
state.default_choice(f"{K}gr_dist_b", names_all, b0)
state.default(f"{K}gr_dist_n", min(450, n_test))
st.session_state[f"{K}gr_dist_n"] = min(st.session_state[f"{K}gr_dist_n"], n_test)  # another dataset
ca = c[0].selectbox("Ensemble A", names_all, key=f"{K}gr_dist_a")
cb = c[1].selectbox("Ensemble B", names_all, key=f"{K}gr_dist_b")
n = c[2].slider("Test examples", 50, n_test, step=50, key=f"{K}gr_dist_n")
c[3].caption(f"Gradient: {what}.")
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
    dist_label = {lab: f"{pc.method_label(cache.metadata(same[lab])['method'])} ({lab})" for lab in have}
    dists = {dist_label[lab]: v for lab, v in have.items()}
    ui.show_figure(pp.cosine_histogram_figure(dists), "How aligned the members' gradients are, example by "
                   "example, for every member pair: 1 = the same direction (an attack transfers), 0 = "
                   f"perpendicular. Test images: {compute.data_caption(dataset, n)}.",
                   key="gr_hist", title="cosine_distribution",
                   prov=ui.provenance([same[x] for x in keys], {"n": n, "order": "evaluation order",
                                                                "gradient": what}))
    st.markdown(findings.cosine_finding(dists, {dist_label[lab]: cache.metadata(same[lab])["method"]
                                                for lab in have}))
else:
    st.caption("Computed on request (a few seconds on digits); the result is then kept for everyone.")
