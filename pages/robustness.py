"""Robustness (the paper's Figures 3-5 and Table 1): accuracy under attack as ε grows,
white-box or black-box from a surrogate, with the sanity checks, the transferability
between members and an adversarial-example viewer."""
import numpy as np
import pandas as pd
import streamlit as st
import torch

import parl_core as pc
import parl_core.plots as pp

from dashboard import cache, compute, state, ui

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
on_cpu = pc.default_device().type == "cpu"


def paper_defaults():
    st.session_state.update({f"{K}rb_steps": 50, f"{K}rb_restarts": 1,
                             f"{K}rb_n": min(1000, n_test)})


# ------------------------------------------------------------------- settings
state.default(f"{K}rb_steps", 10 if on_cpu else 50)
state.default(f"{K}rb_restarts", 1)
state.default(f"{K}rb_attacks", ["fgsm", "pgd"] if on_cpu else list(pc.ATTACKS))
state.default(f"{K}rb_n", min(200 if on_cpu else 1000, n_test))
st.session_state[f"{K}rb_n"] = min(st.session_state[f"{K}rb_n"], n_test)  # another dataset
grid = pc.default_eps_grid(dataset)
c = st.columns([2, 3, 2])
attacks = c[0].multiselect("Attacks", list(pc.ATTACKS), key=f"{K}rb_attacks",
                           format_func=str.upper, help="FGSM: one step of ε. BIM: many small steps. "
                           "MIM: BIM with momentum. PGD: BIM from a random start, with restarts.")
state.default(f"{K}rb_eps_{dataset}", ", ".join(f"{e:g}" for e in grid))
eps_text = c[1].text_input("ε grid (pixel units, comma-separated)", key=f"{K}rb_eps_{dataset}",
                           help=f"Default for {dataset}: {grid}. The paper's CIFAR grid is 0.01 … 0.07.")
mode = c[2].radio("Adversary", ["black-box (surrogate)", "white-box"], key=f"{K}rb_mode",
                  help="Black-box: the attacker trains its own model and transfers its examples.")
c = st.columns(5)
sur_opts = [n for n in same if n != active.stem]
sur_default = next((n for n in sur_opts if "surrogate" in n), sur_opts[0] if sur_opts else None)
surrogate = None
if mode.startswith("black"):
    if not sur_opts:
        st.warning("Black-box needs a second checkpoint of this dataset as the surrogate.")
        st.stop()
    state.default_choice(f"{K}rb_sur", sur_opts, sur_default)
    surrogate = c[0].selectbox("Surrogate", sur_opts, key=f"{K}rb_sur")
n = c[1].number_input("Examples", 10, n_test, key=f"{K}rb_n", step=50)
steps = c[2].number_input("Steps", 1, 500, key=f"{K}rb_steps",
                          help="Paper: 50. On a CPU 10 is a good start (a few seconds on digits).")
restarts = c[3].number_input("PGD restarts", 1, 20, key=f"{K}rb_restarts")
c[4].button("Paper defaults", on_click=paper_defaults, help="50 steps, 1000 examples (slow on a CPU).")
try:
    eps = sorted({float(e) for e in eps_text.replace(";", ",").split(",") if e.strip()})
    if not eps or min(eps) < 0:
        raise ValueError("need at least one ε ≥ 0")
except ValueError as e:
    ui.show_error("The ε grid cannot be read", e, "Write numbers separated by commas, e.g. 0.1, 0.2, 0.3.")
    st.stop()
if not attacks:
    st.info("Pick at least one attack.")
    st.stop()
cmp_opts = [n for n in same if n not in (active.stem, surrogate)]
state.default(f"{K}rb_cmp", [n for n in [state.by_method("ce_only", dataset)] if n in cmp_opts])
state.default_choice(f"{K}rb_cmp", cmp_opts, [])
compare = st.multiselect("Also show (same settings, computed too)", cmp_opts, key=f"{K}rb_cmp")
targets = [active.stem, *compare]
kw = dict(n_examples=int(n), seed=0, attacks=list(attacks), eps=eps, steps=int(steps),
          restarts=int(restarts), surrogate=str(paths[surrogate]) if surrogate else None)


def run_evaluations(missing):
    bar = st.progress(0.0, "Starting…")
    for k, name in enumerate(missing):
        def tick(ev, k=k, name=name):
            frac = (k + ev.get("done", 0) / max(1, ev.get("total") or 1)) / len(missing)
            eta = ev.get("eta")
            bar.progress(min(1.0, frac), f"{name}: {ev.get('attack') or ''} "
                         + (f"· about {eta:.0f} s left" if eta else ""))
        try:
            pc.evaluate_checkpoint(str(paths[name]), on_progress=tick, **kw)
        except (ValueError, RuntimeError) as e:
            ui.show_error(f"The evaluation of {name} failed", e, "Check the settings above.")
            return False
    return True


results = {t: pc.cached_evaluation(str(paths[t]), **kw) for t in targets}
missing = [t for t, r in results.items() if r is None]
if missing:
    work = len(missing) * len(attacks) * len(eps) * int(n) * int(steps)
    st.caption(f"Not computed yet for {', '.join(missing)} ({work:,} attack-steps). Results are "
               "cached beside the checkpoint and shown at once next time.")
    if st.button("Run the evaluation", type="primary", icon=":material/play_arrow:", key="rb_go"):
        if run_evaluations(missing):
            st.rerun()  # draw the page again from the cache, without the button
if any(r is None for r in results.values()):
    st.stop()

# ------------------------------------------------------------------- results
label = {t: f"{pc.method_label(cache.metadata(paths[t])['method'])} ({t})" for t in targets}
res = results[active.stem]
prov = ui.provenance([paths[t] for t in targets] + ([paths[surrogate]] if surrogate else []),
                     {**kw, **{k: v for k, v in res.settings.items() if k not in kw}},
                     command=f"python -c \"import parl_core as pc; r = pc.evaluate_checkpoint('{paths[active.stem]}', "
                             + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + "); print(r.table)\"")
who = f"crafted on the surrogate {surrogate}" if surrogate else "crafted on the ensemble itself"
ui.show_figure(pp.accuracy_vs_eps_figure({label[t]: results[t].table for t in targets}),
               f"Majority-vote accuracy as the attack budget ε grows (examples {who}); bands are 95 % "
               "confidence intervals over the examples. A robust ensemble's curve falls slowly.",
               key="rb_curve", prov=prov, title="accuracy_vs_eps")
for w in res.warnings:
    st.warning(w, icon=":material/warning:")
with st.expander("Sanity checks"):
    for chk in getattr(res, "checks", []):
        mark = ":material/check_circle:" if chk["ok"] else ":material/warning:"
        st.markdown(f"{mark} **{chk['check']}** — {chk['detail']}")

st.subheader("Table 1 row")
e_sel = st.select_slider("ε", eps, value=eps[len(eps) // 2], key=f"rb_eps_row_{dataset}")
rows = []
for t in targets:
    tb = results[t].table
    r = {"ensemble": label[t], "clean": float(tb[tb.attack == "clean"].acc.iloc[0])}
    for a in attacks:
        hit = tb[(tb.attack == a) & np.isclose(tb.eps, e_sel)]
        r[a.upper()] = float(hit.acc.iloc[0]) if len(hit) else None
    rows.append(r)
ui.show_table(pd.DataFrame(rows), f"Accuracy at ε = {e_sel:g} for each attack ({res.settings.get('mode')}), "
              "as in the paper's Table 1; download the full table for every ε and its intervals.",
              key="rb_table1", prov=prov, title=f"table1_eps{e_sel:g}", hide_index=True,
              column_config={c: st.column_config.NumberColumn(c, format="percent")
                             for c in ["clean", *[a.upper() for a in attacks]]})
st.download_button("Full table (CSV)", res.table.to_csv(index=False), f"robustness_{active.stem}.csv",
                   "text/csv", key="rb_full_csv", on_click="ignore", icon=":material/download:")

# ------------------------------------------------------------------- members
st.subheader("Transferability between members")
ens, meta = cache.load_ensemble(paths[active.stem])
c = st.columns(3)
t_attack = c[0].selectbox("Attack", list(attacks), format_func=str.upper, key="rb_t_attack")
t_eps = c[1].select_slider("ε ", eps, value=eps[-1], key="rb_t_eps")
t_key = ("transfer", compute.ref(paths[active.stem]), t_attack, t_eps, int(steps), min(int(n), 200))
matrix = compute.stored(t_key)
if matrix is None and c[2].button("Compute the matrix", key="rb_t_go", icon=":material/grid_on:"):
    with st.spinner("Attacking each member and scoring the others…"):
        sub = compute.test_set(dataset).subset(min(int(n), 200), seed=0)
        compute.store(t_key, pc.transferability_matrix(ens, sub.images, sub.labels, attack=t_attack,
                                                       eps=t_eps, steps=int(steps)))
    st.rerun()
if matrix is not None:
    ui.show_figure(pp.transfer_matrix_figure(matrix, attack=t_attack, eps=t_eps),
                   "Accuracy of each member (column) on examples crafted on another member (row). "
                   "The diagonal is white-box; high values off the diagonal mean attacks do not transfer.",
                   key="rb_transfer", prov=prov, title="transferability")

st.subheader("An adversarial example")
test = compute.test_set(dataset)
c = st.columns(3)
idx = c[0].number_input("Test example", 0, n_test - 1, value=min(state.query_int("example", 0), n_test - 1),
                        key="rb_ex")
v_attack = c[1].selectbox("Attack ", list(attacks), format_func=str.upper, key="rb_v_attack")
v_eps = c[2].select_slider("ε  ", eps, value=eps[-1], key="rb_v_eps")
src = cache.load_ensemble(paths[surrogate])[0] if surrogate else ens
x, y = test.images[idx:idx + 1], test.labels[idx:idx + 1]
dev = pc.default_device()
x_adv = pc.attack(v_attack, src, x.to(dev), y.to(dev), v_eps, steps=int(steps), seed=0, bounds=test.bounds).cpu()
with torch.no_grad():
    clean_ml, adv_ml = ens.member_logits(x.to(dev)).cpu(), ens.member_logits(x_adv.to(dev)).cpu()
names = test.classes


def _said(ml):  # each member's class, then the ensemble's vote
    return [names[int(k)] for k in ml.argmax(-1)[:, 0]] + [names[int(pc.Ensemble.vote(ml)[0])]]


pred = pd.DataFrame({"model": [f"member {i + 1}" for i in range(len(ens.members))] + ["ensemble vote"],
                     "clean": _said(clean_ml), "adversarial": _said(adv_ml)})
c = st.columns([3, 2])
with c[0]:
    if test.is_image:
        ui.show_figure(pp.adversarial_example_figure(x[0].numpy(), x_adv[0].numpy()),
                       f"True class {names[int(y)]}. The perturbation (right, magnified) is at most "
                       f"ε = {v_eps:g} per pixel, {who}.", key="rb_adv", prov=prov, title=f"adversarial_{idx}")
with c[1]:
    st.dataframe(pred, hide_index=True)
    st.caption("Each member's and the ensemble's prediction before and after the attack.")
