"""Checkpoints: every ensemble with its metadata and history; upload, download, rename,
delete; and a side-by-side comparison (the paper's ablation, Table 2)."""
import pandas as pd
import streamlit as st

import parl_core as pc
import parl_core.plots as pp
from parl_core.checkpoints import CheckpointError

from dashboard import cache, compute, config, findings, robust, state, tables, ui, uploads

state.through_app()

K = state.KEEP
st.title("Checkpoints")
ro = config.readonly()
paths = cache.checkpoints()
df = tables.checkpoint_table()
if not df.empty:
    ui.show_table(df, "Every checkpoint in the folder; click a column to sort.", key="ck_all",
                  title="checkpoints", hide_index=True, column_config=tables.column_config(),
                  prov=ui.provenance(settings={"folder": str(config.checkpoint_dir())}))
for name, why in cache.broken_checkpoints().items():
    st.warning(f"`{name}` cannot be read and is hidden elsewhere: {why}", icon=":material/broken_image:")

tab_detail, tab_compare, tab_upload = st.tabs(["Details", "Compare (Table 2)", "Upload"], key="ck_tab",
                                              on_change="rerun")

# ------------------------------------------------------------------- one checkpoint
with tab_detail:
    if tab_detail.open:  # only the chosen tab is computed
        if not paths:
            st.info("No checkpoints yet: train one on the Train page or upload one.")
        else:
            names = list(paths)
            cur = state.active_checkpoint()
            sel = st.selectbox("Checkpoint", names, index=names.index(cur), format_func=state.label, key="ck_sel")
            path, meta = paths[sel], cache.metadata(paths[sel])
            c = st.columns(4)
            acc = meta.get("clean_acc")
            c[0].metric("Clean accuracy", f"{acc:.1%}" if acc is not None else "—")
            c[1].metric("Mean R/K", f"{meta['r_mean']:+.3f}" if meta.get("r_mean") is not None else "—")
            c[2].metric("Members", meta.get("members"))
            c[3].metric("Epochs", meta.get("epochs_done", meta.get("epochs")))
            if meta.get("history"):
                ui.show_figure(pp.history_figure(meta["history"]), "How training went, epoch by epoch: loss "
                               "terms, test accuracy of each member and of the vote, and the mean pairwise "
                               "gradient cosine R/K (lower = more diverse).", key="ck_hist",
                               prov=ui.provenance([path], {k: meta.get(k) for k in ("method", "params", "seed",
                                                                                   "epochs", "batch_size", "lr")},
                                                  command=meta.get("command")), title=f"history_{sel}")
            ui.lazy_expander("Metadata", "ck_meta", lambda: st.json(
                {k: v for k, v in meta.items() if k != "history"}, expanded=False))
            c = st.columns(4)
            c[0].download_button("Download", data=lambda p=path: p.read_bytes(), file_name=path.name,
                                 mime="application/octet-stream", on_click="ignore", icon=":material/download:",
                                 key="ck_dl")
            if c[1].button("Make active", key="ck_act", disabled=sel == cur):
                state.set_checkpoint(sel)
                st.rerun()
            with c[2].popover("Rename", disabled=ro, icon=":material/edit:"):
                new = st.text_input("New name", key="ck_new_name")
                if st.button("Rename", key="ck_rename_go", disabled=not new.strip()):
                    try:
                        moved = uploads.rename(path, new)
                        if sel == cur:
                            state.set_checkpoint(moved.stem)
                        st.rerun()
                    except (ValueError, OSError) as e:
                        ui.show_error("Could not rename", e, "Choose another name (letters, digits, - _ .).")
            with c[3].popover("Delete", disabled=ro, icon=":material/delete:"):
                st.markdown(f"Delete **{sel}** for good? This cannot be undone.")
                sure = st.checkbox(f"Yes, delete {sel}", key="ck_sure")
                if st.button("Delete", type="primary", key="ck_delete_go", disabled=not sure):
                    try:
                        uploads.delete(path)
                        st.session_state.pop("checkpoint", None)
                        st.rerun()
                    except (ValueError, OSError) as e:
                        ui.show_error("Could not delete", e, "Reload the page and try again.")
            if ro:
                st.caption("Classroom (read-only) mode: renaming and deleting are off.")

# ------------------------------------------------------------------- comparison
def comparison(chosen: list[str], ds: str) -> None:
    """Table 2 for checkpoints of one dataset: training numbers, and CKA and robust accuracy
    computed on request on the same test examples for every checkpoint."""
    grid = pc.default_eps_grid(ds)
    p255 = robust.per255(ds)
    n_cka, n_rob = min(450, len(compute.test_set(ds))), min(200, len(compute.test_set(ds)))
    c = st.columns(3)
    eps = c[0].select_slider("ε for robust accuracy", grid, value=grid[len(grid) // 2], key=f"ck_eps_{ds}",
                             format_func=lambda e: findings.eps_text(e, p255))
    sur_opts = ["(white-box)"] + [n for n in paths if cache.metadata(paths[n])["dataset"] == ds]
    sur = c[1].selectbox("Attack crafted on", sur_opts, key=f"ck_sur_{ds}",
                         index=next((i for i, n in enumerate(sur_opts) if "surrogate" in n), 0))
    c[2].caption(f"PGD, 10 steps, {n_rob} test examples; CKA: {n_cka} examples, minibatch 128.")
    ekw = dict(n_examples=n_rob, seed=0, attacks=["pgd"], eps=[eps], steps=10, restarts=1,
               surrogate=None if sur.startswith("(") else str(paths[sur]))
    cka_key = {n: ("cka", compute.ref(paths[n]), ds, n_cka, 128, "minibatch") for n in chosen}
    rows, todo = [], []
    for n in chosen:
        m = cache.metadata(paths[n])
        ev = robust.lookup(paths[n], ekw)
        ck = compute.stored(cka_key[n])
        if ev is None or ck is None:
            todo.append(n)
        rows.append({"checkpoint": n, "method": pc.method_label(m["method"]),
                     "K": (m.get("params") or {}).get("layers"), "clean_acc": m.get("clean_acc"),
                     "mean_R": m.get("r_mean"), "avg_cka": ck["overall"] if ck else None,
                     "robust_acc": ev.table[ev.table.attack == "pgd"].acc.iloc[0] if ev is not None else None})
    if todo and st.button(f"Compute CKA and robust accuracy for {len(todo)} checkpoint(s)",
                          key="ck_cmp_go", icon=":material/calculate:"):
        bar = st.progress(0.0)
        for i, n in enumerate(todo):
            bar.progress(i / len(todo), f"{n}…")
            if compute.stored(cka_key[n]) is None:
                compute.store(cka_key[n], compute.ensemble_cka(cka_key[n][1], ds, n_cka, 128, "minibatch"))
        robust.evaluate([paths[n] for n in todo], ekw)  # a surrogate crafts once
        st.rerun()
    table = pd.DataFrame(rows)
    ui.show_table(table, f"Clean accuracy and mean R/K come from training; average CKA and robust "
                  f"accuracy (PGD at ε = {findings.eps_text(eps, p255)}, "
                  f"{'white-box' if ekw['surrogate'] is None else 'from ' + sur}) are computed on request, "
                  f"on the same test images for every checkpoint ({compute.data_caption(ds, None)}). "
                  "Diverse ensembles: lower R and CKA, higher robust accuracy.",
                  key="ck_table2", title="comparison", hide_index=True, column_config=tables.column_config(),
                  prov=ui.provenance([paths[n] for n in chosen], {**ekw, "cka_n": n_cka, "cka_batch": 128}))
    ui.show_figure(pp.checkpoint_comparison_figure(table), "The same numbers as bars.", key="ck_bars",
                   title="comparison")
    hist = {n: cache.metadata(paths[n]).get("history") or [] for n in chosen}
    ui.show_figure(pp.compare_histories_figure(hist, "test_acc"), "Test accuracy while training.",
                   key="ck_hist_acc", title="history_test_acc")


with tab_compare:
    if tab_compare.open and paths:  # only the chosen tab is computed
        names = list(paths)
        home = cache.metadata(paths[state.active_checkpoint()])["dataset"]  # the active one's dataset
        same = [n for n in state.ranked(names) if cache.metadata(paths[n])["dataset"] == home]
        first = [n for n in state.paper_pair(home) if n is not None]  # ENS_U, PARL, then the rest
        rest = [n for n in same if n not in first and "surrogate" not in n]
        state.default(f"{K}ck_cmp_{home}", (first + rest)[:5])
        st.session_state[f"{K}ck_cmp_{home}"] = [n for n in st.session_state[f"{K}ck_cmp_{home}"] if n in names]
        chosen = st.multiselect("Checkpoints to compare", names, key=f"{K}ck_cmp_{home}",
                                format_func=state.label)
        datasets = {cache.metadata(paths[n])["dataset"] for n in chosen}
        if len(datasets) > 1:
            st.warning(f"These checkpoints are for different datasets ({', '.join(sorted(datasets))}): "
                       "their numbers do not compare. Choose checkpoints of one dataset.",
                       icon=":material/warning:")
        elif chosen:
            comparison(chosen, datasets.pop())
        else:
            st.info("Choose checkpoints to compare.")

# ------------------------------------------------------------------- upload
LAYOUT_LABELS = {"dverge": "DVERGE (zjysteven/DVERGE ResNet20)",
                 "trs": "TRS (AI-secure/Transferability-Reduced-Smooth-Ensemble ResNet20)",
                 "parl": "PARL Lab state dict (mean/std inside)",
                 "state-dict": "state dict with the lab's key names"}


def _numbers(text: str, what: str):
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None


def import_members_section():
    """Member weight files from other codebases (.pth/.pt) -> a checkpoint, with the same
    safe loader as `python -m parl_core import` (weights only; code is refused)."""
    from parl_core.importers import LAYOUTS
    st.subheader("Import member weights (.pth / .pt)")
    st.caption("State dicts of models trained elsewhere, one file per member (a DVERGE file may "
               "hold all members). Files are read as weights only: a file with code in it is "
               "refused. User-defined models are imported with the command line (`python -m parl_core "
               "import --model ...`); this server opens them only if whoever started it allow-listed "
               "their factory (PARL_MODEL_FACTORIES).")
    ups = st.file_uploader("Member files", type=["pth", "pt"], accept_multiple_files=True,
                           key="ck_imp_files")
    c = st.columns(4)
    layout = c[0].selectbox("Layout", LAYOUTS, format_func=LAYOUT_LABELS.get, key="ck_imp_layout")
    fixed = layout in ("dverge", "trs")
    arch = c[1].selectbox("Architecture", ["resnet20"] if fixed else list(pc.ARCHS), key="ck_imp_arch",
                          help="The DVERGE and TRS layouts are ResNet20s.")
    dataset = c[2].selectbox("Dataset", pc.DATASETS, index=pc.DATASETS.index("cifar10"), key="ck_imp_data")
    method = c[3].selectbox("Trained with", sorted(pc.METHODS), index=None, format_func=pc.method_label,
                            placeholder="choose the method", key="ck_imp_method",
                            help="Recorded for labels only; nothing is trained.")
    n = st.columns(2)
    mean = n[0].text_input("Normalisation mean (comma-separated)", key="ck_imp_mean",
                           placeholder="empty: from the file, else the layout's")
    std = n[1].text_input("Normalisation std (comma-separated)", key="ck_imp_std",
                          placeholder="empty: from the file, else the layout's")
    first = ups[0].name.rsplit(".", 1)[0] if ups else ""
    name = st.text_input("Save as", value=first, key="ck_imp_name")
    overwrite = st.checkbox("overwrite if it exists", key="ck_imp_over")
    if not st.button("Import members", disabled=not ups or method is None, key="ck_imp_go",
                     icon=":material/input:"):
        return
    try:
        norm = None
        if mean.strip() or std.strip():
            norm = (_numbers(mean, "the mean"), _numbers(std, "the std"))
        saved, meta = uploads.import_members_upload([(u.name, u.getvalue()) for u in ups], name or first,
                                                    layout=layout, arch=arch, dataset=dataset,
                                                    method=method, normalize=norm, overwrite=overwrite)
    except FileExistsError as e:
        ui.show_error("Not imported", e, "Choose another name or tick *overwrite if it exists*.")
        return
    except (CheckpointError, ValueError, PermissionError) as e:
        ui.show_error("These files were refused", e, "Check the layout, architecture and dataset, "
                      "or save the models' `state_dict()` (not the model objects).")
        return
    imp, cfg = meta["imported"], meta["model"]
    st.success(f"Imported `{saved.name}`: {meta['members']} x {cfg['arch']} "
               f"({pc.method_label(method)}, {dataset}); normalisation mean "
               f"{[round(v, 4) for v in cfg['mean']]}, std {[round(v, 4) for v in cfg['std']]} "
               f"({', '.join(sorted(set(imp['normalize_source'])))}).")
    st.dataframe(pd.DataFrame(imp["files"]), key="ck_imp_files_tbl", hide_index=True)
    st.dataframe(pd.DataFrame(imp["renames"], columns=["in the file", "in the lab model"]),
                 key="ck_imp_map", hide_index=True)
    st.caption(f"{len(imp['renames'])} modules mapped (every tensor's shape checked)"
               + (f"; {imp['filled_counters']} missing batch-norm counters set to 0"
                  if imp["filled_counters"] else "") + ".")


with tab_upload:
    if tab_upload.open:  # only the chosen tab is computed
        if ro:
            st.info("Classroom (read-only) mode: uploads are off.", icon=":material/lock:")
        else:
            st.caption(f"A `.safetensors` checkpoint written by PARL Lab (at most "
                       f"{config.max_upload_bytes() / 2**20:.0f} MB). Pickles are refused: they can run code.")
            up = st.file_uploader("Checkpoint file", type=["safetensors"], key="ck_upload")
            name = st.text_input("Save as", value=up.name.rsplit(".", 1)[0] if up else "", key="ck_up_name")
            overwrite = st.checkbox("overwrite if it exists", key="ck_up_over")
            if st.button("Add checkpoint", disabled=up is None, key="ck_up_go", icon=":material/upload:"):
                try:
                    saved = uploads.save_upload(up.getvalue(), name or up.name, overwrite=overwrite)
                    st.success(f"Added `{saved.name}`.")
                except FileExistsError as e:
                    ui.show_error("Not added", e, "Choose another name or tick *overwrite if it exists*.")
                except (CheckpointError, ValueError, PermissionError) as e:
                    ui.show_error("This file was refused", e, "Upload a checkpoint written by PARL Lab "
                                  "(`python -m parl_core train` or the Train page).")
            import_members_section()
