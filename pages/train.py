"""Train: pick a dataset, architecture and method, estimate the run time, train in the
background with live progress, and save the result as a checkpoint.

The checkpoint is written after every finished epoch (dashboard/jobs.py); a run that a
server restart interrupted (or that was cancelled) is offered for resume at the top of the
page. A name that another run took meanwhile is replaced by the next free one, and a save
that fails keeps the ensemble in memory with Retry and Download buttons."""
import streamlit as st

import parl_core as pc
import parl_core.plots as pp
from parl_core.cli import DEFAULT_ARCH
from parl_core.data import TOY_2D
from parl_core.download import SOURCES, download_cifar

from dashboard import cache, config, jobs, methods, state, train_estimate, ui, warm_start

state.through_app()

K = state.KEEP
st.title("Train an ensemble")
st.caption("Training runs on the server in the background: you can visit other pages and come "
           "back. The checkpoint is saved after every finished epoch and appears in every page's list.")

DATASETS = ["digits", *TOY_2D, "cifar10", "cifar100"]


def _archs(ds: str) -> list[str]:
    return ["mlp"] if ds in TOY_2D else ["smallcnn", "resnet20"]


def _reset_arch():
    st.session_state[f"{K}tr_arch"] = DEFAULT_ARCH[st.session_state[f"{K}tr_dataset"]]


@st.cache_data(show_spinner=False)
def _n_layers(arch: str, in_ch: int) -> int:
    return pc.build_model(arch, 10, in_ch).num_layers


def _unique_name(base: str) -> str:
    """`base`, or `base_2`, `base_3`, ...: the first that is neither a checkpoint nor the
    name a running job (any session, or the command line) is writing."""
    names, n, name = cache.checkpoints(), 2, base
    while name in names or jobs.name_in_use(name):
        name, n = f"{base}_{n}", n + 1
    return name


def offer_resume(busy: bool) -> None:
    """The partial checkpoints of dashboard runs that stopped early (a server restart, a
    cancel), each with a Resume button that trains the remaining epochs."""
    runs = jobs.resumable()
    if not runs:
        return
    st.subheader("Unfinished runs")
    ro = config.readonly()
    for r in runs:
        how = "cancelled" if r["cancelled"] else "interrupted (the server stopped)"
        c = st.columns([5, 1], vertical_alignment="center")
        c[0].markdown(f"`{r['name']}`: {pc.method_label(r['method'])} on {r['dataset']}, {how} after "
                      f"epoch {r['epochs_done']} of {r['epochs']}. The checkpoint holds the finished "
                      f"epochs; Resume trains the remaining {r['epochs'] - r['epochs_done']} from there, "
                      "as the uninterrupted run would have.")
        if c[1].button("Resume", key=f"tr_resume_{r['name']}", icon=":material/play_circle:",
                       disabled=busy or ro):
            try:
                job = jobs.resume_job(r["name"])
            except jobs.JobLimitError as e:
                ui.show_error("The server is busy", e, "Wait for a running job to finish, then press "
                              "Resume again.")
            except (PermissionError, FileExistsError, FileNotFoundError, ValueError) as e:
                ui.show_error(f"`{r['name']}` cannot be resumed", e, "Its checkpoint can still be "
                              "used as it is, or train a new run below.")
            else:
                st.session_state["train_job"] = job.id
                st.rerun()
    if ro:
        st.caption("Resuming is off in classroom (read-only) mode: it replaces the partial checkpoint.")


def offer_download(ds: str) -> None:
    """A button that downloads a missing CIFAR set into the data root, with a progress bar
    (not in classroom mode or with training switched off)."""
    if config.readonly() or not config.training_allowed():
        return
    src = SOURCES[ds]
    if not st.button(f"Download {src['label']} (≈{src['mb']} MB)", icon=":material/download:",
                     key="tr_download", help=f"Fetches {src['url']}, checks its checksum and "
                                             f"extracts `{src['folder']}` into the data folder."):
        return
    bar = st.progress(0.0, text=f"Connecting to {src['url']}…")
    shown = [-1]

    def show(done: int, total: int | None) -> None:
        step = int(100 * done / total) if total else done // 10**6
        if step != shown[0]:  # one update per percent (or MB), not per chunk
            shown[0] = step
            of = f" / {total / 1e6:.1f}" if total else ""
            bar.progress(min(1.0, done / total) if total else 0.0,
                         text=f"Downloading {src['label']}: {done / 1e6:.1f}{of} MB")

    try:
        download_cifar(ds, config.data_root(), progress=show)
    except (OSError, ValueError) as e:  # ConnectionError (offline) is an OSError
        bar.empty()
        ui.show_error(f"The {src['label']} download failed", e,
                      "Press the button again to resume, or install the folder by hand as described above.")
        return
    cache.load_dataset.clear()  # a split read before (e.g. an embedded sample) is stale now
    st.rerun()


def settings_form() -> tuple[jobs.TrainSettings | None, bool]:
    """The widgets; returns (settings or None if invalid, data available)."""
    state.default(f"{K}tr_dataset", "digits")
    state.default(f"{K}tr_arch", "smallcnn")
    c = st.columns(4)
    ds = c[0].selectbox("Dataset", DATASETS, key=f"{K}tr_dataset", on_change=_reset_arch,
                        help="digits: 8×8 handwritten digits, trains in seconds on a CPU. "
                             "2-D sets: two input features. CIFAR: needs its folder and a GPU.")
    if st.session_state[f"{K}tr_arch"] not in _archs(ds):
        _reset_arch()
    arch = c[1].selectbox("Architecture", _archs(ds), key=f"{K}tr_arch")
    for k, v in (("members", 3), ("epochs", 15), ("batch", 64), ("seed", 0), ("subset", 0)):
        state.default(f"{K}tr_{k}", v)
    state.default(f"{K}tr_lr", 1e-3)
    members = c[2].slider("Members", 2, 5, key=f"{K}tr_members")
    state.default(f"{K}tr_method", "parl")
    method = c[3].selectbox("Method", methods.method_options(), key=f"{K}tr_method",
                            format_func=pc.method_label)
    available = cache.dataset_available(ds)
    if not available:
        ui.show_error(f"The {ds} data is not on this server", "Its folder was not found.", cache.data_hint(ds))
        offer_download(ds)
    in_ch = 3 if ds.startswith("cifar") else (2 if ds in TOY_2D else 1)
    params = methods.param_widgets(method, _n_layers(arch, in_ch))
    init = warm_start_widget(method, ds, arch, int(members))
    if init is False:
        return None, available
    c = st.columns(5)
    epochs = c[0].number_input("Epochs", 1, 300, key=f"{K}tr_epochs")
    batch = c[1].number_input("Batch size", 2, 1024, key=f"{K}tr_batch")
    lr = c[2].number_input("Learning rate", 1e-5, 1.0, key=f"{K}tr_lr", format="%g", step=1e-4)
    subset = c[3].number_input("Training subset (0 = all)", 0, 100_000, key=f"{K}tr_subset", step=100)
    seed = c[4].number_input("Seed", 0, 10_000, key=f"{K}tr_seed")
    auto = _unique_name(f"{ds}_{method}_s{seed}")
    c = st.columns([3, 1])
    typed = c[0].text_input("Checkpoint name", key=f"{K}tr_name", placeholder=auto,
                            help="Letters, digits, '-', '_' and '.'; empty: the suggested name.")
    overwrite = c[1].checkbox("overwrite if it exists", key="tr_overwrite", disabled=config.readonly())
    try:
        path = jobs.checkpoint_path(typed.strip() or auto)  # refuses names with a path in them
        name = path.stem
    except ValueError as e:
        ui.show_error("That name cannot be used", e, "Choose a name made of letters and digits.")
        return None, available
    if path.exists() and not overwrite:
        ui.show_error(f"A checkpoint named `{name}` already exists", "Nothing is overwritten silently.",
                      "Choose another name, or tick *overwrite if it exists*.")
        return None, available
    st.caption(f"Will be saved as `{path.name}` in the checkpoint folder.")
    return jobs.TrainSettings(dataset=ds, arch=arch, members=int(members), method=method, params=params,
                              epochs=int(epochs), batch_size=int(batch), lr=float(lr),
                              train_subset=int(subset) or None, seed=int(seed), name=name,
                              overwrite=bool(overwrite and path.exists()), init=init), available


SCRATCH = "(from scratch)"


def warm_start_widget(method: str, ds: str, arch: str, members: int):
    """DVERGE's warm start: the ENS_U checkpoint it starts from (its reference and the paper
    start from a trained plain ensemble), None from scratch, False when nothing can start."""
    if method != "dverge":
        return None
    options = warm_start.choices(config.checkpoint_dir(), ds, arch, members)
    if not options:
        st.warning(f"DVERGE starts from a trained plain ensemble (ENS_U) in its reference and the paper, "
                   f"and there is no finished ENS_U here for {ds}, {arch}, {members} members. Train one "
                   "first (method ENS_U, same settings), or start from scratch (not the paper's protocol).",
                   icon=":material/info:")
        if not st.checkbox("Start DVERGE from scratch anyway", key="tr_dv_scratch"):
            return False
        return None
    state.default_choice(f"{K}tr_init", [*options, SCRATCH], options[0])
    pick = st.selectbox("Warm start from (ENS_U)", [*options, SCRATCH], key=f"{K}tr_init",
                        help="DVERGE distils from a trained plain ensemble of the same dataset, "
                             "architecture and size, as its reference trainer and the paper do.")
    if pick == SCRATCH:
        st.caption("From scratch: not the paper's protocol (it warm-starts from ENS_U).")
        return None
    return pick


def estimate(s: jobs.TrainSettings) -> None:
    key = repr((s.dataset, s.arch, s.members, s.method, s.params, s.epochs, s.batch_size, s.train_subset))
    if st.button("Estimate run time", icon=":material/timer:",
                 help="Times a few real training steps and one evaluation on this server."):
        with st.spinner("Timing a few training steps…"):
            try:
                st.session_state["tr_estimate"] = (key, train_estimate.estimate_seconds(s))
            except (ValueError, RuntimeError) as e:
                ui.show_error("Could not time these settings", e, "Check the method parameters.")
    est = st.session_state.get("tr_estimate")
    if est and est[0] == key:
        e = est[1]
        st.info(f"Estimated run time ≈ **{e['total']:.0f} s**: {e['steps']} steps × "
                f"{1000 * e['step']:.0f} ms + {s.epochs} evaluations × {e['epoch_eval']:.2f} s.",
                icon=":material/timer:")


def start(s: jobs.TrainSettings) -> None:
    try:
        job = jobs.start_job(s)
    except jobs.JobLimitError as e:
        ui.show_error("The server is busy", e, "Wait for a running job to finish (the sidebar shows "
                      "how many run), then press Start again.")
        return
    except PermissionError as e:
        ui.show_error("Training is not allowed here", e, "Ask the server's administrator, or train "
                      "with the command line shown above on your own machine.")
        return
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        ui.show_error("Training could not start", e, "Change the settings above and try again.")
        return
    st.session_state["train_job"] = job.id


def _progress_text(last: dict) -> str:
    eta = last.get("eta")
    return (f"epoch {last.get('epoch', 0)}/{last.get('epochs', '?')} · step "
            f"{last.get('global_step', 0)}/{last.get('total_steps', '?')} · "
            f"{last.get('elapsed', 0):.1f} s elapsed" + (f" · about {eta:.0f} s left" if eta else ""))


def _history_figure(job_id: str, epochs: int, history: list):
    """Built once per finished epoch, not on every poll: figure building holds the GIL
    that the training thread needs between its (small) tensor operations."""
    key = (job_id, epochs)
    cached = st.session_state.get("_tr_hist_fig")
    if cached is None or cached[0] != key:
        cached = (key, pp.history_figure(history))
        st.session_state["_tr_hist_fig"] = cached
    return cached[1]


def show_unsaved(job: jobs.Job, snap: dict) -> None:
    """A finished run whose checkpoint could not be written: why, Retry, Download."""
    name = snap["settings"].name
    ui.show_error(f"Trained {len(snap['history'])} epoch(s), but the checkpoint `{name}.safetensors` "
                  "could not be saved", snap["save_error"] or "unknown error",
                  "The trained ensemble is kept in memory until the server restarts: free some disk "
                  "space (or fix the checkpoint folder's permissions) and press *Retry saving*, or "
                  "download the checkpoint." + (
                      f" The file on disk holds only the first {snap['saved_epochs']} epoch(s)."
                      if snap["saved_epochs"] else ""))
    c = st.columns(2)
    if c[0].button("Retry saving", icon=":material/save:", key="tr_retry_save"):
        jobs.retry_save(job)
        st.rerun(scope="app")  # saved: the success message; else the new reason
    try:
        data = jobs.checkpoint_bytes(job)
    except OSError as e:
        c[1].caption(f"Download unavailable: {e}")
    else:
        c[1].download_button("Download the checkpoint", data, file_name=f"{name}.safetensors",
                             mime="application/octet-stream", icon=":material/download:",
                             key="tr_download_unsaved")


def show_job(job: jobs.Job, polling: bool) -> None:
    snap = job.snapshot()
    s, last = snap["settings"], snap["last"]
    st.subheader(f"Run `{s.name}` — {pc.method_label(s.method)} on {s.dataset}")
    if snap["requested_name"]:
        st.info(f"`{snap['requested_name']}` was taken (a checkpoint or another running job has that "
                f"name), so this run is saved as `{s.name}`.", icon=":material/info:")
    if job.active:
        frac = last.get("global_step", 0) / max(1, last.get("total_steps") or 1)
        st.progress(min(1.0, frac), text=_progress_text(last))
        if st.button("Cancel", icon=":material/stop_circle:", key="tr_cancel"):
            job.cancel()
            st.toast("Cancelling… the last finished epoch is kept.")
        if snap["save_error"]:
            st.warning(f"Saving after the last epoch failed: {snap['save_error']}. Training goes on; "
                       "the next finished epoch tries again.", icon=":material/warning:")
        elif snap["saved_epochs"]:
            st.caption(f"Saved after every finished epoch: `{s.name}.safetensors` holds "
                       f"{snap['saved_epochs']} of {s.epochs}. If the server stops, this page offers "
                       "to resume from there.")
    elif snap["status"] == "failed":
        kept = (f" The checkpoint `{snap['saved_path'].name}` keeps the {snap['saved_epochs']} epoch(s) "
                "finished before." if snap["saved_path"] is not None else "")
        ui.show_error("Training failed", snap["error"], "Change the settings (e.g. a smaller batch or "
                      "learning rate) and start again." + kept)
    elif snap["pending"]:
        show_unsaved(job, snap)
    elif snap["saved_path"] is not None:
        word = "Cancelled; kept" if snap["status"] == "cancelled" else "Finished:"
        st.success(f"{word} {len(snap['history'])} epoch(s), saved as `{snap['saved_path'].name}`.",
                   icon=":material/check_circle:")
    else:
        st.warning("Cancelled before the first epoch finished: nothing was saved.")
    steps = snap["steps"][:: max(1, len(snap["steps"]) // 300)]  # a few hundred points are enough
    ui.chart(pp.step_loss_figure(steps, snap["steps_per_epoch"]), key="tr_steps")
    st.caption("Batch loss terms as training runs (ce: the members' summed cross-entropy; reg: "
               "PARL's pairwise gradient similarity, which falls as members diversify).")
    if snap["history"]:
        ui.chart(_history_figure(job.id, len(snap["history"]), snap["history"]), key="tr_hist")
        st.caption("Per epoch: loss terms; test accuracy of each member and of the ensemble's vote; "
                   "mean pairwise gradient cosine R/K (lower = more diverse).")
    if polling and not job.active:  # just finished: rerun the app, which makes it active
        if snap["saved_path"] is not None:  # here: the app rerun below does not update the URL
            st.query_params["checkpoint"] = snap["saved_path"].stem
        st.rerun(scope="app")


if not config.training_allowed():
    st.info("Training is switched off on this server (PARL_NO_TRAIN=1).")
    st.stop()
job = jobs.get_job(st.session_state.get("train_job"))
busy = job is not None and job.active
offer_resume(busy)
settings, available = settings_form()
if settings is not None:
    st.caption("Equivalent command line:")
    st.code(settings.command(config.checkpoint_dir()), language="bash")
    estimate(settings)
    if st.button("Start training", type="primary", icon=":material/play_arrow:",
                 disabled=busy or not available, key="tr_start"):
        start(settings)
        job = jobs.get_job(st.session_state.get("train_job"))
if job is not None:
    st.fragment(run_every=1.0 if job.active else None)(show_job)(job, job.active)
