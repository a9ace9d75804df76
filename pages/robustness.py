"""Robustness (the paper's Figures 3-5 and Table 1): accuracy under attack as ε grows,
white-box or black-box from a surrogate, with the sanity checks, the transferability
between members and an adversarial-example viewer."""
import numpy as np
import pandas as pd
import streamlit as st

import parl_core as pc
import parl_core.plots as pp

from dashboard import cache, compute, findings, robust, robust_suite, state, ui

state.through_app()

K = state.KEEP
st.title("Robustness under attack")
st.caption("An attack nudges every pixel by at most ε (the L∞ budget) in the direction that "
           "raises the loss. White-box: crafted on the ensemble itself. Black-box: crafted on a "
           "separately trained surrogate and transferred, the paper's main threat model.")
active, dataset = state.active_with_data()
paths = cache.checkpoints()
same = [n for n, p in paths.items() if cache.metadata(p).get("dataset") == dataset]
n_test = len(compute.test_set(dataset))
p255 = robust.per255(dataset)
opening = robust.defaults(dataset, n_test, pc.default_device().type == "cpu")


def key(name: str) -> str:  # settings are kept per dataset: each opens on its own defaults
    return f"{K}rb_{name}_{dataset}"


def eps_label(e: float) -> str:
    return findings.eps_text(e, p255)


def paper_defaults():
    st.session_state.update({key("attacks"): list(robust.PAPER["attacks"]), key("steps"): robust.PAPER["steps"],
                             key("restarts"): robust.PAPER["restarts"], key("n"): min(robust.PAPER["n"], n_test)})


# ------------------------------------------------------------------- settings
for name in ("attacks", "steps", "restarts", "n"):
    state.default(key(name), opening[name])
state.default(key("convergence"), False)
st.session_state[key("n")] = min(st.session_state[key("n")], n_test)  # the test set changed
grid = pc.default_eps_grid(dataset)
c = st.columns([2, 3, 2])
attacks = c[0].multiselect("Attacks", list(pc.ALL_ATTACKS), key=key("attacks"), format_func=str.upper,
                           help=robust.ATTACK_HELP)
state.default(f"{K}rb_eps_{dataset}", ", ".join(f"{e:g}" for e in grid))
eps_text = c[1].text_input("ε grid (pixel units, comma-separated)", key=f"{K}rb_eps_{dataset}",
                           help=f"Default for {dataset}: {grid}. The paper's CIFAR grid is 0.01 … 0.07 "
                                "(2.55/255 … 17.85/255).")
mode = c[2].radio("Adversary", ["black-box (surrogate)", "white-box"], key=f"{K}rb_mode",
                  help="Black-box: the attacker trains its own model and transfers its examples.")
c = st.columns([3, 2, 2, 2, 2], vertical_alignment="bottom")
sur_opts = [n for n in same if n != active.stem]
sur_default = next((n for n in sur_opts if "surrogate" in n), sur_opts[0] if sur_opts else None)
surrogate = None
if mode.startswith("black"):
    if not sur_opts:
        st.warning("Black-box needs a second checkpoint of this dataset as the surrogate.")
        st.stop()
    state.default_choice(f"{K}rb_sur", sur_opts, sur_default)
    surrogate = c[0].selectbox("Surrogate", sur_opts, key=f"{K}rb_sur")
n = c[1].number_input("Examples", 10, n_test, key=key("n"), step=50,
                      help="The first n test examples of the canonical evaluation order: the same "
                           "examples for every checkpoint.")
steps = c[2].number_input("Steps", 1, 500, key=key("steps"),
                          help="Paper: 50. On a CPU 10 is a good start (a few seconds on digits).")
restarts = c[3].number_input("PGD restarts", 1, 20, key=key("restarts"))
c[4].button("Paper", on_click=paper_defaults, icon=":material/restart_alt:", width="stretch",
            help="The paper's defaults: all four attacks, 50 steps, 10 PGD restarts, 1000 examples "
                 "(slow on a CPU).")
try:
    eps = sorted({float(e) for e in eps_text.replace(";", ",").split(",") if e.strip()})
    if not eps or min(eps) < 0:
        raise ValueError("need at least one ε ≥ 0")
except ValueError as e:
    ui.show_error("The ε grid cannot be read", e, "Write numbers separated by commas, e.g. 0.1, 0.2, 0.3.")
    st.stop()
if p255:
    st.caption("ε in /255 units: " + ", ".join(eps_label(e) for e in eps) + ".")
if not attacks:
    st.info("Pick at least one attack.")
    st.stop()
cmp_opts = [n for n in same if n not in (active.stem, surrogate)]
state.default(f"{K}rb_cmp_{active.stem}", [state.counterpart(active.stem, dataset)])
state.default_choice(f"{K}rb_cmp_{active.stem}", cmp_opts, [])
compare = st.multiselect("Also show (same settings, computed too)", cmp_opts, key=f"{K}rb_cmp_{active.stem}")
c = st.columns(2, vertical_alignment="bottom")  # half the width each: nothing cut at 1024x768
extra = []
if surrogate:
    more_opts = [s for s in sur_opts if s != surrogate]
    state.default_choice(f"{K}rb_more_{active.stem}", more_opts, [])
    extra = c[0].multiselect("Also attack from", more_opts, key=f"{K}rb_more_{active.stem}",
                             help="More surrogates of this dataset: the active ensemble is attacked from each, "
                                  "and an example counts as robust only if no surrogate's example fools it "
                                  "(the worst over surrogates). Other seeds, another architecture and the "
                                  "defence itself make the strongest set.")
converge = c[1 if surrogate else 0].checkbox(f"Check convergence ({robust_suite.FACTOR}× steps)", key=key("convergence"),
                          help=f"Masking check: PGD at the largest ε again with {robust_suite.FACTOR}× the steps on "
                               "the same examples; more steps must not leave more examples robust (exact McNemar "
                               "test). Part of the settings: computed and cached as its own evaluation.")
targets = [active.stem, *compare]
kw = dict(n_examples=int(n), seed=0, attacks=list(attacks), eps=eps, steps=int(steps),
          restarts=int(restarts), surrogate=str(paths[surrogate]) if surrogate else None,
          **({"convergence": True} if converge else {}))

results = {t: robust.lookup(paths[t], kw) for t in targets}
missing = [t for t, r in results.items() if r is None]
if missing:
    st.markdown(robust.estimate({t: compute.ref(paths[t]) for t in missing},
                                compute.ref(paths[surrogate]) if surrogate else None, dataset,
                                attacks=attacks, eps=eps, steps=int(steps), restarts=int(restarts), n=int(n),
                                convergence=converge))
    if st.button("Run the evaluation", type="primary", icon=":material/play_arrow:", key="rb_go"):
        if robust.run(paths, missing, kw):
            st.rerun()  # draw the page again from the cache, without the button
if any(r is None for r in results.values()):
    st.stop()

# ------------------------------------------------------------------- results
methods = {t: cache.metadata(paths[t])["method"] for t in targets}
label = {t: f"{pc.method_label(methods[t])} ({t})" for t in targets}
res = results[active.stem]
prov = ui.provenance([paths[t] for t in targets] + ([paths[surrogate]] if surrogate else []),
                     {**kw, **{k: v for k, v in res.settings.items() if k not in kw}},
                     command=f"python -c \"import parl_core as pc; r = pc.evaluate_checkpoints("
                             f"{[str(paths[t]) for t in targets]!r}, "
                             + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + "); print(r[0].summary())\"")
who = f"crafted on the surrogate {surrogate}" if surrogate else "crafted on the ensemble itself"
used = compute.data_caption(dataset, res.settings.get("n", n))
if res.settings.get("data_source") not in (None, compute.test_set(dataset).info.get("source")):
    # a cached result is found only for the same images (their fingerprint is in its key)
    used += f" (the result was computed on the same images, read from {res.settings['data_source']})"
ui.show_figure(pp.accuracy_vs_eps_figure({label[t]: results[t].table for t in targets}, per255=p255),
               f"Majority-vote accuracy as the attack budget ε grows (examples {who}, {int(steps)} steps, "
               f"{int(restarts)} PGD restart(s)); bands are 95 % confidence intervals over the examples. "
               f"A robust ensemble's curve falls slowly. Test images: {used}.",
               key="rb_curve", prov=prov, title="accuracy_vs_eps")
st.markdown(findings.robustness_finding({label[t]: results[t].table for t in targets},
                                        {label[t]: methods[t] for t in targets}, attacks, per255=p255,
                                        paired=robust.paired(results, methods)))
st.caption("Scale: " + "; ".join(findings.scale_note(t, cache.metadata(paths[t]))
                                  for t in targets + ([surrogate] if surrogate else [])) + ".")
for w in res.warnings:
    st.warning(w, icon=":material/warning:")
suite = robust_suite.find_suite(active.stem, paths, [surrogate, *extra], kw) if extra else None
check_sur = surrogate or st.session_state.get(f"{K}rb_sur", sur_default)
check_sur = check_sur if check_sur in sur_opts else sur_default
robust_suite.show_checks({label[t]: results[t] for t in targets},
                         robust_suite.white_black_lines(active.stem, paths[active.stem], kw, check_sur,
                                                        paths[check_sur] if check_sur else None,
                                                        suite[0] if suite else None), converge)
if suite:
    robust_suite.show_suite(active.stem, paths, suite, kw, dataset, p255, prov)

st.subheader("Table 1 row")
e_sel = st.select_slider("ε", eps, value=eps[len(eps) // 2], key=f"rb_eps_row_{dataset}", format_func=eps_label)
rows = []
for t in targets:
    tb = results[t].table
    r = {"ensemble": label[t], "clean": float(tb[tb.attack == "clean"].acc.iloc[0])}
    for a in attacks:
        hit = tb[(tb.attack == a) & np.isclose(tb.eps, e_sel)]
        r[a.upper()] = float(hit.acc.iloc[0]) if len(hit) else None
    rows.append(r)
ui.show_table(pd.DataFrame(rows), f"Accuracy at ε = {eps_label(e_sel)} for each attack "
              f"({res.settings.get('mode')}), as in the paper's Table 1; download the full table for every ε "
              "and its intervals.",
              key="rb_table1", prov=prov, title=f"table1_eps{e_sel:g}", hide_index=True,
              column_config={c: st.column_config.NumberColumn(c, format="percent")
                             for c in ["clean", *[a.upper() for a in attacks]]})
st.download_button("Full table (CSV)", res.table.to_csv(index=False), f"robustness_{active.stem}.csv",
                   "text/csv", key="rb_full_csv", on_click="ignore", icon=":material/download:")

# ------------------------------------------------------------------- members
st.subheader("Transferability between members")
shown = targets[:2]  # the active ensemble and the first one compared, side by side
c = st.columns(2)
t_attack = c[0].selectbox("Attack", list(attacks), format_func=str.upper, key="rb_t_attack")
t_eps = c[1].select_slider("ε ", eps, value=eps[-1], key="rb_t_eps", format_func=eps_label)
t_n = min(int(n), 200)
t_keys = {t: ("transfer", compute.ref(paths[t]), dataset, t_n, t_attack, t_eps, int(steps)) for t in shown}
matrices = {t: compute.stored(k) for t, k in t_keys.items()}
todo = [t for t, m in matrices.items() if m is None]
if todo and st.button("Compute the matrix" if len(todo) == 1 else "Compute the matrices", key="rb_t_go",
                      icon=":material/grid_on:"):  # its own row: the label stays whole at 1024x768
    with st.spinner("Attacking each member and scoring the others…"):
        sub = compute.evaluation_examples(dataset, t_n)
        for t in todo:
            ens_t = cache.load_ensemble(paths[t])[0]
            compute.store(t_keys[t], pc.transferability_matrix(ens_t, sub.images, sub.labels, attack=t_attack,
                                                               eps=t_eps, steps=int(steps)))
    st.rerun()
done = {t: m for t, m in matrices.items() if m is not None}
for col, (t, m) in zip(st.columns(len(done)) if done else [], done.items()):
    with col:
        st.markdown(f"**{label[t]}**")
        ui.show_figure(pp.transfer_matrix_figure(m, attack=t_attack, eps=t_eps, per255=p255),
                       f"Accuracy of each member (column) on examples crafted on another member (row); "
                       f"the diagonal is white-box. Off the diagonal: {100 * findings.off_diagonal(m):.1f} % "
                       f"on average. Test images: {compute.data_caption(dataset, t_n)}.",
                       key=f"rb_transfer_{t}", prov=prov, title=f"transferability_{t}")
if len(done) == 2:
    st.markdown(findings.transfer_finding({label[t]: m for t, m in done.items()},
                                          {label[t]: methods[t] for t in done}, t_n))

st.subheader("An adversarial example")
ens = cache.load_ensemble(paths[active.stem])[0]
test = compute.test_set(dataset)
c = st.columns(3)
idx = c[0].number_input("Test example", 0, n_test - 1, value=min(state.query_int("example", 0), n_test - 1),
                        key="rb_ex")
v_attack = c[1].selectbox("Attack ", list(attacks), format_func=str.upper, key="rb_v_attack",
                          index=list(attacks).index("pgd") if "pgd" in attacks else 0)
v_eps = c[2].select_slider("ε  ", eps, value=eps[-1], key="rb_v_eps", format_func=eps_label)
src = paths[surrogate] if surrogate else paths[active.stem]
ex = compute.adversarial_example(compute.ref(src), compute.ref(paths[active.stem]), dataset, int(idx),
                                 v_attack, float(v_eps), int(steps))
names = test.classes


def _said(ml):  # each member's class, then the ensemble's vote
    return [names[int(k)] for k in ml.argmax(-1)[:, 0]] + [names[int(pc.Ensemble.vote(ml)[0])]]


clean_said, adv_said = _said(ex["clean"]), _said(ex["adv"])
pred = pd.DataFrame({"model": [f"member {i + 1}" for i in range(len(ens.members))] + ["ensemble vote"],
                     "clean": clean_said, "adversarial": adv_said})
c = st.columns([3, 2])
with c[0]:
    if test.is_image:
        mag = pp.nice_magnification(float(np.abs(ex["x_adv"] - ex["x"]).max()))
        ui.show_figure(pp.adversarial_example_figure(ex["x"], ex["x_adv"], magnify=mag,
                                                     labels=(f"voted {clean_said[-1]}", f"voted {adv_said[-1]}")),
                       f"Test example #{idx}, true class **{names[ex['y']]}**. The perturbation is at most "
                       f"ε = {eps_label(v_eps)} per pixel ({v_attack.upper()}, {who}); the right panel shows it "
                       f"× {mag:g}" + (" around grey (grey = unchanged)" if ex["x"].shape[0] == 3 else "")
                       + f". Image from {compute.data_caption(dataset, None)}.",
                       key="rb_adv", prov=prov, title=f"adversarial_{idx}")
with c[1]:
    st.dataframe(pred, hide_index=True)
    st.caption("Each member's and the ensemble's prediction before and after the attack.")
