"""Reproduction: the reports of `python -m parl_core reproduce` — the verdict on each of the
paper's claims, Tables 1 and 2 beside the paper's numbers, the figures, the sanity checks
of every evaluation — and their ensembles opened in the other pages."""
import time

import streamlit as st

from parl_core.report import wide_table
from parl_core.report_figures import label, order_roles, report_figures

from dashboard import config, reports, state, ui

state.through_app()

st.title("Reproduction")
st.caption("Does PARL hold up? `python -m parl_core reproduce --scale {smoke, cpu-small, paper}` "
           "trains and evaluates the paper's protocol at a scale your hardware allows and writes a "
           "report; this page shows the reports found here.")

found = reports.find_reports()
if not found:
    st.info("No reproduction report here yet. Make one (the smoke scale takes about a minute):")
    st.code("python -m parl_core reproduce --scale smoke --out reports/smoke/", language="bash")
    st.caption("Reports are looked for in docs/reproduction/, reports/ and the folders in PARL_REPORTS.")
    st.stop()

names = [r.name for r in found]
wanted = st.query_params.get("report")
state.default("k_rp_report", wanted if wanted in names else names[0])
if st.session_state["k_rp_report"] not in names:
    st.session_state["k_rp_report"] = names[0]
choice = st.selectbox("Report", names, key="k_rp_report", format_func=lambda n: found[names.index(n)].label)
if choice == names[0]:
    st.query_params.pop("report", None)
else:
    st.query_params["report"] = choice
rep = found[names.index(choice)]
tables, problems = reports.load_tables(rep.path)
cmd = reports.command(rep.path)
when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rep.written))
st.markdown(f"**{rep.name}** · `{rep.path}` · {'written' if rep.finished else 'last unit finished'} {when}")
if cmd:
    st.code(cmd, language="bash")
if not rep.finished:
    st.warning(f"This run is not finished: {rep.units_done} units are done and the report is written "
               "once every unit has finished. Run its command again to continue where it stopped; "
               "finished units are reused.", icon=":material/hourglass_top:")
    st.stop()
for name, why in problems.items():
    st.warning(f"`{name}`: {why}. What it holds is not shown.", icon=":material/broken_image:")

# ------------------------------------------------------------------ verdicts
st.header("The paper's claims")
verdicts = tables.get("verdicts")
if verdicts is not None and len(verdicts):
    counts = verdicts["verdict"].value_counts()
    st.markdown(f"At this report's scale, **{counts.get('holds', 0)}** of {len(verdicts)} claims hold, "
                f"**{counts.get('does not hold', 0)}** do not, and "
                f"**{len(verdicts) - counts.get('holds', 0) - counts.get('does not hold', 0)}** are "
                "inconclusive (the verdicts are computed from the numbers by the rules shown; they are "
                "about this scale, not the paper's).")
    icons = {"holds": ":material/check_circle:", "does not hold": ":material/cancel:"}
    for i, v in enumerate(verdicts.to_dict("records")):
        with st.expander(f"{v['claim']} — **{v['verdict']}**", icon=icons.get(v["verdict"], ":material/help:")):
            st.markdown(f"Rule: {v['rule']}.")
            st.markdown("\n".join(f"- {x.strip()}" for x in str(v["numbers"]).split(" | ") if x.strip()))

# ------------------------------------------------------------------ tables
for key, title in (("table1", "Table 1: clean and black-box accuracy (%)"),
                   ("table2", "Table 2: the PARL/K ablation, clean and black-box accuracy (%)")):
    t = tables.get(key)
    st.header(title)
    if t is None or not len(t):
        st.info("Not in this report (its plan has no such rows)." if t is not None else "Not readable.")
        continue
    eps = sorted(e for e in t["eps"].unique() if e > 0)
    seeds = sorted(t["seeds"].unique())
    ui.show_table(wide_table(t), f"Ours: mean ± std over {', '.join(map(str, seeds))} seed(s) "
                  f"[95 % Wilson interval of the counts pooled over seeds]; attacks at ε = "
                  f"{', '.join(f'{e:g}' for e in eps)}; '(paper)' columns: the paper's published numbers "
                  "(– where the paper has none). Long form with every seed: the CSV download.",
                  key=f"rp_{key}", title=f"{rep.name}-{key}", hide_index=True)

# ------------------------------------------------------------------ figures


def _curve_caption(curves, ds: str, mode: str, roles: list[str]) -> str:
    """What the accuracy-vs-ε figure shows at its largest ε, from its own rows."""
    c = curves[(curves.dataset == ds) & (curves["mode"] == mode) & curves.role.isin(roles)
               & ~curves.attack.isin(["clean", "worst-case"])]
    if not len(c):
        return ""
    eps = c.eps.max()
    attack = "pgd" if "pgd" in set(c.attack) else sorted(set(c.attack))[-1]
    at = c[(c.eps == eps) & (c.attack == attack)].groupby("role").acc.mean()
    at = at.reindex([r for r in order_roles(at.index)])
    parts = ", ".join(f"{label(r)} {100 * a:.1f} %" for r, a in at.items())
    best = at.idxmax()
    ties = [r for r, a in at.items() if abs(a - at[best]) < 1e-9]
    lead = ("tied at the top: " + ", ".join(label(r) for r in ties)) if len(ties) > 1 else \
        f"{label(best)} is highest"
    note = "."
    if "parl" in at.index and best != "parl":
        note = " — PARL is not the most robust here."
    return (f"{mode.capitalize()} {attack.upper()} at ε = {eps:g}, mean over seeds: {parts}; {lead}{note} "
            "Whether a gap is more than noise: the verdicts above (paired tests).")


def _cka_caption(cka, ds: str) -> str:
    d = cka[cka.dataset == ds]
    m = d.groupby("role").cka.mean()
    if "ce_only" not in m.index or "parl" not in m.index:
        return "Mean same-layer CKA over every layer, pair and seed per ensemble in the legend."
    diff = m["parl"] - m["ce_only"]
    how = ("lower than" if diff < -0.005 else "higher than" if diff > 0.005 else "about the same as")
    verdict = "." if how == "lower than" else " — the lower CKA the paper reports is absent here."
    return (f"Mean same-layer CKA over every layer, member pair and seed: PARL {m['parl']:.3f}, "
            f"ENS_U {m['ce_only']:.3f}: PARL's is {how} ENS_U's ({diff:+.3f}){verdict}")


st.header("Figures")
curves, cka = tables.get("curves"), tables.get("cka")
if curves is None or cka is None:
    st.info("The figures' tables (accuracy_vs_eps.csv, cka_layers.csv) are not readable.")
else:
    for i, (title, fig) in enumerate(report_figures(curves, cka)):
        ds = title.split(":")[0]
        if "CKA" in title:
            cap = _cka_caption(cka, ds)
        else:
            mode = "white-box" if "white-box" in title else "black-box"
            pick = (lambda r: r.startswith("parl/K")) if "ablation" in title else (lambda r: "/" not in r)
            cap = _curve_caption(curves, ds, mode, [r for r in curves.role.unique() if pick(r)])
        st.subheader(title)
        ui.show_figure(fig, cap, key=f"rp_fig{i}", title=f"{rep.name}-{title}")

# ------------------------------------------------------------------ sanity checks
st.header("Sanity checks of every evaluation")
sanity = tables.get("sanity")
if sanity is not None and len(sanity):
    bad = sanity[sanity["failed checks and notes"].fillna("–") != "–"]
    st.markdown(f"{len(sanity) - len(bad)} of {len(sanity)} evaluations pass every check with no note"
                + (f"; {len(bad)} have failed checks or notes (below)." if len(bad) else "."))
    ui.show_table(sanity, "Per evaluation and target: the checks passed (white-box ≤ black-box, "
                  "more steps never help the defender, …) and any failure or note.",
                  key="rp_sanity", title=f"{rep.name}-sanity", hide_index=True)

# ------------------------------------------------------------------ ensembles
st.header("Its ensembles")
ens = reports.ensembles(rep.path, tables.get("units"))
present = [e for e in ens if e.path is not None]
if not ens:
    st.info("units.csv lists no trained ensembles.")
elif not present:
    st.info(f"The {len(ens)} ensembles of this report are not in its folder (committed reports carry no "
            "checkpoints). Run its command to make them; finished units are reused.")
else:
    st.caption(f"{len(present)} of {len(ens)} trained ensembles are in the report folder. Opening one "
               "copies it (after checking its hash against the report) into the checkpoint folder, "
               "where every page can use it.")
    c = st.columns([3, 2, 1], vertical_alignment="bottom")
    pick = c[0].selectbox("Ensemble", range(len(present)), key="rp_ens",
                          format_func=lambda i: f"{present[i].roles} · seed {present[i].seed} · {present[i].unit}")
    where = c[1].selectbox("Open in", ["Gradients", "Diversity", "Robustness"], key="rp_where")
    if c[2].button("Open", key="rp_open", icon=":material/open_in_new:", disabled=config.readonly(),
                   help="Read-only server: ensembles cannot be added" if config.readonly() else None):
        try:
            name = reports.open_in_lab(rep.name, present[pick])
        except (OSError, ValueError) as e:
            ui.show_error("Could not open this ensemble", e, "Check the report folder, or open the file "
                          "from the Checkpoints page's upload.")
        else:
            state.set_checkpoint(name)
            st.switch_page(f"pages/{where.lower()}.py")
    if config.readonly():
        st.caption("This server is read-only: its checkpoint folder cannot take new ensembles.")

# ------------------------------------------------------------------ files
st.header("Files")
files = [f for f in ("report.html", "report.md") if (rep.path / f).is_file()]
cols = st.columns(len(files) or 1)
for col, f in zip(cols, files):
    col.download_button(f, data=lambda f=f: (rep.path / f).read_bytes(), file_name=f"{rep.name}-{f}",
                        key=f"rp_dl_{f}", on_click="ignore", icon=":material/download:")
st.caption("report.html is self-contained (plotly inlined); the CSV tables are in the report folder.")
