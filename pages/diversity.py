"""Diversity (the paper's Figure 2): layer-wise linear CKA between the members of an
ensemble, pair by pair, and two ensembles compared side by side."""
import streamlit as st

import parl_core as pc
import parl_core.plots as pp

from dashboard import cache, compute, findings, state, ui

state.through_app()

K = state.KEEP
st.title("Diversity: layer-wise CKA")
st.caption("CKA compares what two networks compute at a layer: 1 = the same representation "
           "(up to rotation and scale), 0 = unrelated. Members that represent their inputs "
           "differently are less likely to share adversarial weaknesses.")

active, dataset = state.active_with_data()
n_test = len(compute.test_set(dataset))
same = [n for n, p in cache.checkpoints().items() if cache.metadata(p).get("dataset") == dataset]

c = st.columns(4)
state.default(f"{K}dv_n", min(450, n_test))
st.session_state[f"{K}dv_n"] = min(st.session_state[f"{K}dv_n"], n_test)  # another dataset
state.default_choice(f"{K}dv_batch", [32, 64, 128, 256, 512], 128)
n = c[0].slider("Test examples", 50, n_test, step=50, key=f"{K}dv_n")
batch = c[1].select_slider("Minibatch size", [32, 64, 128, 256, 512], key=f"{K}dv_batch",
                           help="The unbiased minibatch estimator averages over batches of this size.")
estimator = c[2].radio("Estimator", ["minibatch", "full"], key=f"{K}dv_est", horizontal=True,
                       help="minibatch: unbiased (Nguyen et al. 2021), memory-bounded; "
                            "full: Kornblith's biased estimator on all examples at once.")
other = [x for x in same if x != active.stem]
default_b = state.counterpart(active.stem, dataset)  # PARL beside ENS_U, ENS_U beside the rest
state.default_choice(f"{K}dv_cmp", ["(none)", *other], default_b if default_b in other else "(none)")
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
        st.stop()

meta = {name: cache.metadata(paths[name]) for name in shown}
label = {name: f"{pc.method_label(meta[name]['method'])} ({name})" for name in shown}
prov = ui.provenance([paths[x] for x in shown], {"dataset": dataset, "split": "test", "n": n,
                                                  "order": "evaluation order", "batch_size": batch,
                                                  "estimator": estimator},
                     command=f"python -c \"import parl_core as pc; ens, _ = pc.load_checkpoint('{active}'); "
                             f"x = pc.evaluation_subset(pc.load_dataset('{dataset}', 'test'), {n}).images; "
                             f"print(pc.ensemble_cka(ens, x, batch_size={batch}, "
                             f"estimator='{estimator}')['overall'])\"")
ui.show_figure(pp.cka_curves_figure({label[x]: have[x] for x in shown}),
               "Same-layer CKA of every member pair, layer by layer; the legend gives each pair's "
               "average over layers. Lower curves = members that compute more differently "
               "(the paper's Figure 2 has PARL's below ENS_U's in the early layers it regularises). "
               f"Test images: {compute.data_caption(dataset, n)}; {have[active.stem]['estimator']} estimator.",
               key="dv_curves", prov=prov, title="cka_curves")
parl = next((x for x in shown if meta[x]["method"] == "parl"), None)
k = min([int((meta[parl].get("params") or {}).get("layers") or 7) if parl else 7]
        + [len(p["diagonal"]) for x in shown for p in have[x]["pairs"].values()])
st.markdown(findings.cka_finding({label[x]: have[x] for x in shown},
                                 {label[x]: meta[x]["method"] for x in shown}, k))
st.caption("Scale: " + "; ".join(findings.scale_note(x, meta[x]) for x in shown) + ".")
cols = st.columns(len(shown))
for col, name in zip(cols, shown):
    with col:
        r = have[name]
        st.markdown(f"**{label[name]}** — overall average CKA **{r['overall']:.3f}**")
        tabs = st.tabs([p["label"] for p in r["pairs"].values()])
        for tab, ((i, j), p) in zip(tabs, r["pairs"].items()):
            with tab:
                ui.show_figure(pp.cka_heatmap_figure(p["matrix"], estimator=estimator,
                                                     names=(f"member {i + 1}", f"member {j + 1}"),
                                                     title=f"{name}: members {i + 1} and {j + 1}"),
                               "Every layer of one member against every layer of the other. The "
                               "diagonal compares the same depth; bright = similar.",
                               key=f"dv_heat_{name}_{i}_{j}", prov=prov, title=f"cka_{name}_{i}{j}")
