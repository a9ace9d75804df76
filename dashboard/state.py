"""Shared selections: st.session_state, mirrored in the URL's query parameters
(`checkpoint`, `example`, `page`) so that a view can be shared and reloaded.

Pages stand alone: every getter falls back to a sensible default when the shared
state is absent (a page opened directly, or run by AppTest by itself).
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from . import cache

# The dashboard opens on the paper's own setting when its CIFAR-10 ensembles are here, on
# the digits ensembles otherwise (a digits ensemble trains in seconds on the Train page).
PREFERRED = ("cifar10_parl", "cifar10_ens_u", "digits_parl", "digits_ens_u")


def default_checkpoint(names) -> str | None:
    names = list(names)
    for p in PREFERRED:
        if p in names:
            return p
    return names[0] if names else None


def active_checkpoint() -> str | None:
    """The stem of the active checkpoint: session state, else ?checkpoint=, else default."""
    names = cache.checkpoints()
    cur = st.session_state.get("checkpoint")
    if cur not in names:
        cur = st.query_params.get("checkpoint")
    if cur not in names:
        cur = default_checkpoint(names)
    st.session_state["checkpoint"] = cur
    return cur


def set_checkpoint(name: str) -> None:
    st.session_state["checkpoint"] = name
    st.query_params["checkpoint"] = name


def active_path() -> Path | None:
    name = active_checkpoint()
    return cache.checkpoints().get(name) if name else None


def active_with_data() -> tuple[Path, str]:
    """(active checkpoint, its dataset) for a page that needs both; otherwise says what is
    missing and what to do, and stops the page."""
    from . import ui
    active = active_path()
    if active is None:
        st.info("No checkpoint yet: train one on the Train page.")
        st.stop()
    dataset = cache.metadata(active)["dataset"]
    if not cache.test_available(dataset):
        ui.show_error(f"The {dataset} test data is not on this server", "Its folder was not found.",
                      cache.data_hint(dataset))
        st.stop()
    return active, dataset


def _rank(name: str) -> tuple:
    """Shipped checkpoints first (in PREFERRED order), surrogates last, then by name."""
    return (PREFERRED.index(name) if name in PREFERRED else len(PREFERRED), "surrogate" in name, name)


def ranked(names) -> list[str]:
    """Names in the order pages offer them by default (see `_rank`)."""
    return sorted(names, key=_rank)


def by_method(method: str, dataset: str | None = None) -> str | None:
    """A checkpoint trained with `method` (the shipped one first, a surrogate last), for
    paper-style pairs."""
    names = cache.checkpoints()
    for n in ranked(names):
        m = cache.metadata(names[n])
        if m.get("method") == method and (dataset is None or m.get("dataset") == dataset):
            return n
    return None


def paper_pair(dataset: str) -> tuple[str | None, str | None]:
    """(ENS_U, PARL) checkpoints of a dataset for the paper's comparisons (None if absent)."""
    return by_method("ce_only", dataset), by_method("parl", dataset)


def counterpart(name: str, dataset: str) -> str | None:
    """What to show beside `name` by default: ENS_U beside anything else, PARL beside ENS_U."""
    ens_u, parl = paper_pair(dataset)
    method = cache.metadata(cache.checkpoints()[name]).get("method")
    other = parl if method == "ce_only" else ens_u
    return other if other != name else None


def query_int(name: str, default: int) -> int:
    try:
        return int(st.query_params.get(name, default))
    except (TypeError, ValueError):
        return default


def label(name: str) -> str:
    """'digits_parl — PARL · digits · 3 members' for select boxes."""
    path = cache.checkpoints().get(name)
    if path is None:
        return name
    m = cache.metadata(path)
    import parl_core as pc
    return f"{name} — {pc.method_label(m.get('method', '?'))} · {m.get('dataset')} · {m.get('members')}×"


KEEP = "k_"  # widget keys with this prefix keep their value when the person changes page


def keep_widget_state() -> None:
    """Re-store persistent widget values so that Streamlit does not drop them while their
    page is not shown (app.py calls this before every page)."""
    for k in list(st.session_state.keys()):
        if isinstance(k, str) and k.startswith(KEEP):
            st.session_state[k] = st.session_state[k]


def default(key: str, value) -> None:
    """Give a persistent widget its initial value (widgets then take no value= argument)."""
    if key not in st.session_state:
        st.session_state[key] = value


def through_app() -> None:
    """Make sure this page runs inside app.py's navigation (sidebar, shared state).

    Streamlit runs the very first session after the server starts in its legacy
    "pages/ folder" mode when the URL names a page (e.g. a shared /gradients link):
    the page file runs alone, without app.py, until some run calls st.navigation. We
    do what st.navigation does (leave legacy mode, for the whole server) and rerun, which
    brings the page back inside app.py."""
    if st.session_state.get("_app_seen") or st.session_state.get("_legacy_rerun"):
        return
    from streamlit.runtime.scriptrunner import get_script_run_ctx
    ctx = get_script_run_ctx()
    main = getattr(getattr(ctx, "pages_manager", None), "main_script_path", "")
    if Path(str(main)).name == "app.py":  # started with `streamlit run app.py`
        from streamlit.runtime.pages_manager import PagesManager
        PagesManager.uses_pages_directory = False
        st.session_state["_legacy_rerun"] = True
        st.rerun()


def default_choice(key: str, options, value) -> None:
    """Like `default`, for a selection: also reset it when its value is no longer an option
    (a checkpoint deleted, another dataset). Lists are filtered instead."""
    opts = list(options)
    cur = st.session_state.get(key)
    if isinstance(value, list):
        st.session_state[key] = [v for v in (cur if isinstance(cur, list) else value) if v in opts]
    elif cur not in opts:
        st.session_state[key] = value


# --------------------------------------------------------------------------- shared links
class Param:
    """One page setting carried by the URL: query name -> session-state (widget) key.

    parse: str -> value (raises ValueError/TypeError on a bad value); fmt: value -> str.
    A value equal to `default` is left out of the URL, so links stay short."""

    def __init__(self, key: str, parse, default=None, fmt=str):
        self.key, self.parse, self.default, self.fmt = key, parse, default, fmt


def parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1/0, got {text!r}")


def fmt_bool(v) -> str:
    return "1" if v else "0"


def parse_int_in(lo: int, hi: int):
    """A parser of whole numbers from lo to hi (ValueError otherwise), e.g. a lesson's step."""
    if not isinstance(lo, int) or not isinstance(hi, int) or lo > hi:
        raise ValueError(f"lo and hi must be ints with lo <= hi, got {lo!r} and {hi!r}")

    def parse(text) -> int:
        v = int(str(text).strip())
        if not lo <= v <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}, got {v}")
        return v
    return parse


def parse_optional(parse):
    """A parser that also reads '' / 'none' as None."""
    return lambda text: None if str(text).strip().lower() in ("", "none") else parse(text)


def remember_url() -> None:
    """Keep the query parameters the app was opened with (app.py calls this before
    st.switch_page, which drops them), so the page it switches to can still read them."""
    if "_url_params" not in st.session_state:
        st.session_state["_url_params"] = {k: st.query_params.get(k) for k in st.query_params}


def _url_value(name: str):
    if name in st.query_params:
        return st.query_params.get(name)
    return (st.session_state.get("_url_params") or {}).get(name)


def url_to_state(page: str, params: dict) -> list[str]:
    """Once per browser session and page: widget state from the link's query parameters
    {name: Param}. Returns the names whose values could not be read (they are ignored);
    settings the link does not carry keep their state or default."""
    flag = f"_url_read_{page}"
    if st.session_state.get(flag):
        return []
    st.session_state[flag] = True
    bad = []
    for name, p in params.items():
        raw = _url_value(name)
        if raw is None:
            continue
        try:
            st.session_state[p.key] = p.parse(raw)
        except (ValueError, TypeError):
            bad.append(name)
    return bad


def state_to_url(params: dict) -> None:
    """Mirror the widget state into the URL (only these names; others are left alone)."""
    for name, p in params.items():
        v = st.session_state.get(p.key, p.default)
        if v is None or v == p.default:
            st.query_params.pop(name, None)
        elif st.query_params.get(name) != p.fmt(v):
            st.query_params[name] = p.fmt(v)


def share_link(url_path: str, params: dict) -> str:
    """The page's relative link with every setting that differs from its default, e.g.
    'diversity?dv_n=100&checkpoint=digits_parl' (what the address bar shows)."""
    from urllib.parse import urlencode
    q = {}
    if st.session_state.get("checkpoint"):
        q["checkpoint"] = st.session_state["checkpoint"]
    for name, p in params.items():
        v = st.session_state.get(p.key, p.default)
        if v is not None and v != p.default:
            q[name] = p.fmt(v)
    return url_path + (f"?{urlencode(q)}" if q else "")
