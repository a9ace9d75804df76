"""Diversity (the paper's Figure 2): layer-wise linear CKA between the members of two
ensembles (the active one and, by default, its ENS_U/PARL counterpart): the same-layer
curves of every member pair, and their heatmaps side by side on one colour scale, with
captions computed from both."""
import streamlit as st

import parl_core.plots as pp

from dashboard import cache, compute, findings, state, ui, views

state.through_app()

K = state.KEEP
st.title("Diversity: layer-wise CKA")
st.caption("CKA compares what two networks compute at a layer: 1 = the same representation "
           "(up to rotation and scale), 0 = unrelated. Members that represent their inputs "
           "differently are less likely to share adversarial weaknesses.")

active, dataset = state.active_with_data()
n_test = len(compute.test_set(dataset))
same = state.ranked([n for n, p in cache.checkpoints().items() if cache.metadata(p).get("dataset") == dataset])
other = [x for x in same if x != active.stem]
default_b = state.counterpart(active.stem, dataset)  # PARL beside ENS_U, ENS_U beside the rest
default_b = default_b if default_b in other else "(none)"
BATCHES = [32, 64, 128, 256, 512]
PARAMS = {"n": state.Param(f"{K}dv_n", int, min(450, n_test)),
          "batch": state.Param(f"{K}dv_batch", int, 128),
          "estimator": state.Param(f"{K}dv_est", str, "minibatch"),
          "cmp": state.Param(f"{K}dv_cmp", str, default_b),
          "pair": state.Param(f"{K}dv_pair", str, "mean")}
state.url_to_state("diversity", PARAMS)

c = st.columns(4)
state.default(f"{K}dv_n", min(450, n_test))
st.session_state[f"{K}dv_n"] = min(max(50, int(st.session_state[f"{K}dv_n"])), n_test)  # another dataset
state.default_choice(f"{K}dv_batch", BATCHES, 128)
state.default_choice(f"{K}dv_est", ["minibatch", "full"], "minibatch")
n = c[0].slider("Test examples", 50, n_test, step=50, key=f"{K}dv_n")
batch = c[1].select_slider("Minibatch size", BATCHES, key=f"{K}dv_batch",
                           help="The unbiased minibatch estimator averages over batches of this size.")
estimator = c[2].radio("Estimator", ["minibatch", "full"], key=f"{K}dv_est", horizontal=True,
                       help="minibatch: unbiased (Nguyen et al. 2021), memory-bounded; "
                            "full: Kornblith's biased estimator on all examples at once.")
state.default_choice(f"{K}dv_cmp", ["(none)", *other], default_b)
compare = c[3].selectbox("Compare with", ["(none)", *other], key=f"{K}dv_cmp")
shown = [active.stem] + ([compare] if compare != "(none)" else [])
paths = cache.checkpoints()
keys = {name: ("cka", compute.ref(paths[name]), dataset, n, batch, estimator) for name in shown}
have = {name: compute.stored(k) for name, k in keys.items()}
if any(v is None for v in have.values()):
    if st.button("Compute CKA", type="primary", icon=":material/grid_on:", key="dv_go"):
        bar = st.progress(0.0, "Computing layer-wise CKA…")
        for i, (name, k) in enumerate(keys.items()):
            if have[name] is None:
                have[name] = compute.store(k, compute.ensemble_cka(k[1], dataset, n, batch, estimator))
            bar.progress((i + 1) / len(keys), f"{name} done")
        st.rerun()  # draw again from the store, without the button
    else:
        st.caption("Computed on request (seconds on digits); results are kept for everyone.")
        state.state_to_url(PARAMS)
        st.stop()

meta = {name: cache.metadata(paths[name]) for name in shown}
label = {name: views.ckpt_label(name) for name in shown}
prov = ui.provenance([paths[x] for x in shown], {"dataset": dataset, "split": "test", "n": n,
                                                  "order": "evaluation order", "batch_size": batch,
                                                  "estimator": estimator},
                     command=f"python -c \"import parl_core as pc; ens, _ = pc.load_checkpoint('{active}'); "
                             f"x = pc.evaluation_subset(pc.load_dataset('{dataset}', 'test'), {n}).images; "
                             f"print(pc.ensemble_cka(ens, x, batch_size={batch}, "
                             f"estimator='{estimator}')['overall'])\"")
k = views.regularised_k(shown, have)

# ------------------------------------------------------------------- heatmaps side by side
side = views.ordered(shown)
st.subheader(" vs ".join(label[x] for x in side))
pairs = views.pair_options(have)
state.default_choice(f"{K}dv_pair", pairs, "mean")
p = st.radio("Member pair", pairs, key=f"{K}dv_pair", horizontal=True,
             format_func=lambda q: "mean of the pairs" if q == "mean" else f"members {q.replace('-', ' and ')}")
views.cka_heatmaps(have, p, k, estimator, key="dv_heat", prov=prov)
for col, x in zip(st.columns(len(side)), side):
    col.markdown(f"**{label[x]}** — overall average CKA **{have[x]['overall']:.3f}**")
st.markdown(findings.cka_finding({label[x]: have[x] for x in shown}, {label[x]: meta[x]["method"] for x in shown}, k))
st.caption("Scale: " + "; ".join(findings.scale_note(x, meta[x]) for x in shown) + ".")

# ------------------------------------------------------------------- the diagonals
ui.show_figure(views.compact_curves(pp.cka_curves_figure({label[x]: have[x] for x in shown}),
                                    {label[x]: have[x] for x in shown}, estimator),
               "Same-layer CKA of every member pair, layer by layer; the legend gives each pair's "
               "average over layers. Lower curves = members that compute more differently "
               f"(the paper's Figure 2 has PARL's below ENS_U's in the first {k} layers it regularises; "
               "the sentence above says whether these checkpoints show it). "
               f"Test images: {compute.data_caption(dataset, n)}; {have[active.stem]['estimator']} estimator.",
               key="dv_curves", prov=prov, title="cka_curves")
state.state_to_url(PARAMS)
