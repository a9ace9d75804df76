"""The sidebar shown on every page: active checkpoint, its dataset (and whether the data
is here), the compute device, classroom mode and running training jobs."""
from __future__ import annotations

import streamlit as st

import parl_core as pc

from . import cache, config, jobs, state


def _activate_finished_run() -> None:
    """A run this session started has been saved: make it the active checkpoint, once."""
    job = jobs.get_job(st.session_state.get("train_job"))
    if job is not None and not job.active and job.saved_path is not None \
            and st.session_state.get("_announced_job") != job.id:
        st.session_state["_announced_job"] = job.id
        state.set_checkpoint(job.saved_path.stem)


def render() -> None:
    _activate_finished_run()
    names = list(cache.checkpoints())
    with st.sidebar:
        if not names:
            st.warning("No checkpoints yet. Train one on the **Train** page.")
        else:
            cur = state.active_checkpoint()
            if st.session_state.get("_sb_checkpoint") != cur:  # changed elsewhere (URL, a page)
                st.session_state["_sb_checkpoint"] = cur
            st.selectbox("Active checkpoint", names, format_func=state.label, key="_sb_checkpoint",
                         on_change=lambda: state.set_checkpoint(st.session_state["_sb_checkpoint"]),
                         help="Used by every page; shared in the URL (?checkpoint=).")
            st.query_params["checkpoint"] = cur
            meta = cache.metadata(cache.checkpoints()[cur])
            ds = meta.get("dataset", "?")
            ok, sample = cache.dataset_available(ds), cache.test_available(ds)
            st.markdown(f"**Method** {pc.method_label(meta.get('method', '?'))} · "
                        f"**members** {meta.get('members')} · **{meta.get('model', {}).get('arch', '?')}**")
            st.markdown(f"**Dataset** `{ds}` " + (
                "· data available :material/check_circle:" if ok else
                "· embedded test sample :material/check_circle:" if sample else
                "· data missing :material/warning:"))
            if sample and not ok:
                st.caption(f"The analysis pages use the {len(cache.load_dataset(ds, 'test')):,} test images "
                           "that ship with PARL Lab; the full test set is used when its folder is here.")
            elif not ok:
                st.caption(cache.data_hint(ds))
        st.markdown(f"**Device** {cache.device_label()}")
        n = len(jobs.active_jobs())
        if n:
            st.markdown(f"**Training jobs** {n}/{config.max_jobs()} running")
        if config.readonly():
            st.info("Classroom mode: uploads, renames and deletes are off.", icon=":material/lock:")
