"""The Playground in a real browser: the dashboard's navigation reaches it, Step trains
an epoch, Play keeps training until Pause, and clicking a point picks it for the attack."""
import re

import parl_core as pc
from browser_helpers import act, goto_page, wait_for_app

EPOCH = re.compile(r"Epoch (\d+)")
SMALL = "n=120&w=16&d=2"
_MAIN_TEXT = "document.querySelector('[data-testid=\"stMain\"]').innerText"


def _open(page, app_url, query=SMALL):
    goto_page(page, app_url)  # the app first, so its st.navigation owns the routes
    goto_page(page, app_url, f"playground?{query}")
    page.locator('[data-testid="stSidebarNav"] a', has_text="Playground").first.wait_for()
    page.locator(".js-plotly-plot").nth(3).wait_for()  # members, alignment, layers, history
    wait_for_app(page)


def _epoch(page) -> int:
    return int(EPOCH.search(page.get_by_text(EPOCH).first.inner_text()).group(1))


def test_playground_steps_and_plays_in_the_browser(app_url, page):
    _open(page, app_url)
    assert _epoch(page) == 0
    act(page, page.get_by_role("button", name="Step").click, until=page.get_by_text("Epoch 1"))
    # Play mode reruns the fragment on a timer and the script is nearly always running,
    # so Play and Pause are clicked without `act`; the counter must move on by itself.
    page.get_by_role("button", name="Play").click()
    page.get_by_role("button", name="Pause").wait_for()
    page.wait_for_function(f"() => /Epoch ([3-9]|\\d\\d+)/.test({_MAIN_TEXT})", timeout=60_000)
    page.get_by_role("button", name="Pause").click()
    page.get_by_role("button", name="Play").wait_for()
    wait_for_app(page)
    paused = _epoch(page)
    assert paused >= 3
    act(page, page.get_by_role("button", name="Step").click,
        until=page.get_by_text(f"Epoch {paused + 1}"))
    assert "n=120" in page.url and "method=" in page.url  # the settings are in the link


def test_clicking_a_point_picks_it_for_the_attack(app_url, page):
    _open(page, app_url)
    target = 57
    ds = pc.load_dataset("moons", "train", n_samples=120, seed=0)
    x, y = ds.images[target].tolist()
    # the point's pixel position in the first member's plot, from plotly's own axes
    px = page.evaluate("""([x, y]) => {
        const gd = document.querySelector('.js-plotly-plot'), r = gd.getBoundingClientRect();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return [r.left + xa._offset + xa.l2p(x), r.top + ya._offset + ya.l2p(y)]; }""", [x, y])
    box = page.locator('[data-testid="stNumberInput"] input').last
    act(page, lambda: page.mouse.click(*px),
        until=f"() => document.querySelectorAll('[data-testid=\"stNumberInput\"] input')"
              f"[document.querySelectorAll('[data-testid=\"stNumberInput\"] input').length - 1]"
              f".value === '{target}'")
    assert box.input_value() == str(target) and f"pt={target}" in page.url
