"""The Playground in a real browser: the dashboard's navigation reaches it, Step trains an
epoch, Play keeps training until Pause, clicking a point picks it for the attack, the
split screen draws ENS_U and PARL, and at projector size nothing is cut off."""
import pytest

import parl_core as pc
from browser_helpers import act, goto_page, wait_for_app
from browser_projector import SIZES, buttons_fit, small_figure_texts, truncated_texts

SMALL = "n=120&w=16&d=2"
CANVAS = "canvas.parl-playground"
EPOCH = f"+document.querySelector('{CANVAS}').dataset.epoch"


def _open(page, app_url, query=SMALL):
    goto_page(page, app_url)  # the app first, so its st.navigation owns the routes
    goto_page(page, app_url, f"playground?{query}")
    page.locator('[data-testid="stSidebarNav"] a', has_text="Playground").first.wait_for()
    page.wait_for_function(f"() => document.querySelector('{CANVAS}')?.dataset.epoch !== undefined")
    wait_for_app(page)


def _epoch(page) -> int:
    return page.evaluate(f"() => {EPOCH}")


def _button(page, label):
    return page.get_by_role("button", name=label).filter(has_text=label).first


def test_playground_steps_and_plays_in_the_browser(app_url, page):
    _open(page, app_url)
    assert _epoch(page) == 0
    act(page, _button(page, "Step").click, until=f"() => {EPOCH} === 1")
    # Play mode reruns the fragment on a timer and the script is nearly always running,
    # so Play and Pause are clicked without `act`; the canvas must move on by itself.
    _button(page, "Play").click()
    _button(page, "Pause").wait_for()
    page.wait_for_function(f"() => {EPOCH} >= 4", timeout=60_000)
    _button(page, "Pause").click()
    _button(page, "Play").wait_for()
    wait_for_app(page)
    page.wait_for_timeout(300)  # a paused page must stay where it is: nothing moves it on
    paused = _epoch(page)
    page.wait_for_timeout(700)
    assert _epoch(page) == paused >= 4
    assert f"**Epoch {paused}**".strip("*") in page.locator('[data-testid="stMain"]').inner_text()
    act(page, _button(page, "Step").click, until=f"() => {EPOCH} === {paused + 1}")
    assert "n=120" in page.url  # the settings are in the link


def test_clicking_a_point_picks_it_for_the_attack(app_url, page):
    _open(page, app_url)
    target = 57
    ds = pc.load_dataset("moons", "train", n_samples=120, seed=0)
    x, y = ds.images[target].tolist()
    # the point's pixel position in the first member's plot, from the canvas's own layout
    px = page.evaluate(f"""([x, y]) => {{
        const c = document.querySelector('{CANVAS}'), r = c.getBoundingClientRect(), L = c.parlLayout;
        const cell = L.rows[0].cells[0], b = L.bounds[0], top = cell.y + L.titleH;
        return [r.left + cell.x + (x - b[0]) / (b[1] - b[0]) * cell.w,
                r.top + top + cell.h - (y - b[2]) / (b[3] - b[2]) * cell.h]; }}""", [x, y])
    act(page, lambda: page.mouse.click(*px), until=f"() => location.search.includes('pt={target}')")
    box = page.locator('[data-testid="stNumberInput"] input').last
    assert box.input_value() == str(target)
    label = page.locator(CANVAS).get_attribute("aria-label")
    assert label.startswith("Epoch ") and "Fooled:" in label


def test_split_screen_draws_both_ensembles(app_url, page):
    _open(page, app_url, SMALL + "&vs=1")
    label = page.locator(CANVAS).get_attribute("aria-label")
    assert "ENS_U:" in label and "PARL:" in label
    rows = page.evaluate(f"() => document.querySelector('{CANVAS}').parlLayout.rows.length")
    assert rows == 2


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_projector_sizes_cut_nothing(app_url, browser, size):
    ctx = browser.new_context(viewport={"width": size[0], "height": size[1]})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    try:
        _open(page, app_url, SMALL + "&vs=1")
        assert buttons_fit(page, ["Play", "Step", "Reset"]) == {"Play": True, "Step": True, "Reset": True}
        assert truncated_texts(page) == []
        assert small_figure_texts(page) == []
        width = page.evaluate(f"() => document.querySelector('{CANVAS}').getBoundingClientRect().right")
        assert width <= size[0]  # the canvas fits the window: nothing off screen to the right
    finally:
        ctx.close()
