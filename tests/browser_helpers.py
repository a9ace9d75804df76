"""Waiting on Streamlit's own signals in a real browser (Playwright), never on sleeps.

The app root `[data-testid="stApp"]` carries two attributes the Streamlit frontend keeps
current: `data-test-connection-state` ("CONNECTED" once the websocket is up) and
`data-test-script-state` ("initial", "running", "notRunning", ...). A page is ready when
it is connected and no script run is in progress.
"""
from __future__ import annotations

APP = '[data-testid="stApp"]'
READY = f'{APP}[data-test-connection-state="CONNECTED"][data-test-script-state="notRunning"]'

# Installed before an action: remembers whether the script state went to "running" since,
# so that `act` cannot mistake the quiet moment *before* a rerun for its end.
_WATCH_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  window.__parlSawRun = false;
  if (window.__parlObs) window.__parlObs.disconnect();
  window.__parlObs = new MutationObserver(() => {
    if (app.getAttribute('data-test-script-state') === 'running') window.__parlSawRun = true;
  });
  window.__parlObs.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""


def wait_for_app(page, timeout: float = 30_000) -> None:
    """Block until the app is connected and its script is not running (ms timeout)."""
    page.wait_for_selector(READY, state="attached", timeout=timeout)


def act(page, action, until=None, timeout: float = 30_000) -> None:
    """Do `action()` (a click, a fill...) that triggers a rerun, then wait for its result.

    until: what the rerun shows when it is done: a Playwright Locator (waited for until
    attached) or a JavaScript predicate string; then the app must be idle again. This is
    the robust form. Without `until`, waits to see the script state go to "running" and
    back; a very fast rerun can be rendered without its "running" state ever reaching the
    DOM, so prefer `until` wherever the rerun changes something visible."""
    wait_for_app(page, timeout)
    if until is None:
        page.evaluate(_WATCH_JS)
    action()
    if until is None:
        page.wait_for_function("() => window.__parlSawRun === true", timeout=timeout)
    elif isinstance(until, str):
        page.wait_for_function(until, timeout=timeout)
    else:
        until.first.wait_for(state="attached", timeout=timeout)
    wait_for_app(page, timeout)


def goto_page(page, base_url: str, url_path: str = "", timeout: float = 30_000) -> None:
    """Open `base_url/url_path` (a page of st.navigation) and wait for its first render."""
    page.goto(base_url.rstrip("/") + "/" + url_path.lstrip("/"))
    wait_for_app(page, timeout)


def click_sidebar_link(page, label: str, until=None, timeout: float = 30_000) -> None:
    """Navigate with the sidebar's st.navigation link named `label`; `until` as in `act`
    (e.g. the page's heading)."""
    link = page.locator('[data-testid="stSidebarNav"] a', has_text=label).first
    act(page, link.click, until, timeout)
