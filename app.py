"""PARL Lab dashboard: `streamlit run app.py`.

Navigation over the pages in pages/, and the sidebar every page shares. Pages are thin:
they read widgets, call parl_core through the caches in dashboard/, and show figures
built by parl_core.plots.
"""
import logging
from pathlib import Path

import streamlit as st

from dashboard import cache, config, sidebar, state, ui

st.set_page_config(page_title="PARL Lab", page_icon=":material/hub:", layout="wide")
config.configure_torch()

HERE = Path(__file__).parent
PAGES = [
    ("pages/home.py", "Home", ":material/home:"),
    ("pages/lesson.py", "Lesson", ":material/school:"),
    ("pages/train.py", "Train", ":material/model_training:"),
    ("pages/gradients.py", "Gradients", ":material/gradient:"),
    ("pages/diversity.py", "Diversity", ":material/grid_on:"),
    ("pages/robustness.py", "Robustness", ":material/shield:"),
    ("pages/reproduction.py", "Reproduction", ":material/fact_check:"),
    ("pages/checkpoints.py", "Checkpoints", ":material/inventory_2:"),
    ("pages/playground.py", "Playground", ":material/scatter_plot:"),  # when it exists
]

pages = [st.Page(path, title=title, icon=icon, default=(i == 0))
         for i, (path, title, icon) in enumerate(PAGES) if (HERE / path).exists()]
current = st.navigation(pages)

# ?page=gradients opens that page (st.navigation also understands /gradients).
wanted = st.query_params.get("page")
if wanted and not st.session_state.get("_page_from_url"):
    st.session_state["_page_from_url"] = True
    state.remember_url()  # every page setting in the link, for the page switched to
    # switch_page drops the query parameters: keep what they asked for in session state
    if st.query_params.get("checkpoint"):
        st.session_state["checkpoint"] = st.query_params["checkpoint"]
    if st.query_params.get("example", "").isdigit():
        st.session_state["example"] = int(st.query_params["example"])
    for p in pages:
        if wanted.lower() in (p.url_path.lower(), p.title.lower()) and p.url_path != current.url_path:
            st.switch_page(p)

st.session_state["_app_seen"] = True
state.keep_widget_state()
sidebar.render()
try:
    current.run()
except Exception as e:  # a visitor gets what to do, never a traceback (it goes to the log)
    if config.debug():
        raise
    logging.getLogger("parl_lab").exception("page %s failed", current.url_path)
    ui.show_error("This view failed", f"{type(e).__name__}: {e}",
                  "Reload the page. If it fails again, check the active checkpoint on the "
                  "Checkpoints page, or choose another one in the sidebar.")
cache.warm_up()  # after the first page is drawn: data the analysis pages will need
