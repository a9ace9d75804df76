"""The Playground in a real browser: the dashboard's navigation reaches it, Step trains
an epoch, Play keeps training until Pause."""
import re

from browser_helpers import act, goto_page, wait_for_app

EPOCH = re.compile(r"Epoch (\d+)")


def _epoch(page) -> int:
    text = page.get_by_text(EPOCH).first.inner_text()
    return int(EPOCH.search(text).group(1))


def test_playground_steps_and_plays_in_the_browser(app_url, page):
    goto_page(page, app_url)  # the app first, so its st.navigation owns the routes
    goto_page(page, app_url, "playground?n=120&w=16&d=2")
    page.locator('[data-testid="stSidebarNav"] a', has_text="Playground").first.wait_for()
    page.get_by_text("Epoch 0").first.wait_for()
    page.locator(".js-plotly-plot").nth(3).wait_for()  # members, alignment, layers, history
    act(page, page.get_by_role("button", name="Step").click)
    page.get_by_text("Epoch 1").first.wait_for()
    # Play mode reruns the fragment on a timer and the script is nearly always running,
    # so Play and Pause are clicked without `act`; the counter must move on by itself.
    page.get_by_role("button", name="Play").click()
    page.get_by_role("button", name="Pause").wait_for()
    page.wait_for_function(
        "() => /Epoch ([3-9]|\\d\\d+)/.test(document.querySelector('[data-testid=\"stMain\"]').innerText)",
        timeout=60_000)
    page.get_by_role("button", name="Pause").click()
    page.get_by_role("button", name="Play").wait_for()
    wait_for_app(page)
    paused = _epoch(page)
    assert paused >= 3
    act(page, page.get_by_role("button", name="Step").click)
    assert _epoch(page) == paused + 1
    assert "n=120" in page.url and "method=" in page.url  # the settings are in the link
