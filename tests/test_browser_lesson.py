"""The lesson in a real browser, as a teacher walks it on the shipped CIFAR-10 ensembles:
five steps by the Next button, each painting its figure at once (shipped results), the
step in the link; at 1600×1000 and at projector size 1024×768 no control or text is cut
off and no figure text is under 14 px — on the lesson and on the Gradients and Diversity
pages. At 1024×768 each step is saved (PARL_SCREENSHOTS=1: to docs/screenshots/lesson-1024x768-stepN.png)."""
import os
import re
import tempfile
from pathlib import Path

import pytest

from browser_helpers import act, goto_page, wait_for_app
from browser_projector import SIZES, buttons_fit, small_figure_texts, truncated_texts
from conftest import REPO

CHART = '[data-testid="stPlotlyChart"] .main-svg'
STEPS = ["Train", "Compare gradients", "Compare CKA", "Attack", "Explain"]
# The lesson's screenshots at 1024x768: into docs/screenshots/ when PARL_SCREENSHOTS=1 (to
# refresh the committed ones), else into a temporary folder, so a test run changes no file.
SHOTS = REPO / "docs" / "screenshots" if os.environ.get("PARL_SCREENSHOTS") == "1" else \
    Path(tempfile.mkdtemp(prefix="parl-shots-"))
SHIPPED = all((REPO / "checkpoints" / f"cifar10_{n}.safetensors").is_file() for n in ("ens_u", "parl", "surrogate"))

pytestmark = pytest.mark.skipif(not SHIPPED, reason="the shipped CIFAR-10 checkpoints are absent")


@pytest.fixture(params=SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def sized(browser, request):
    ctx = browser.new_context(viewport={"width": request.param[0], "height": request.param[1]})
    pg = ctx.new_page()
    pg.set_default_timeout(120_000)
    yield pg, request.param
    ctx.close()


def _heading(page, n: int):
    return page.get_by_role("heading", name=re.compile(rf"^{n} · {STEPS[n - 1]}"))


def _nothing_cut(page, where: str) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, where
    assert truncated_texts(page) == [], where
    assert small_figure_texts(page) == [], where


def test_lesson_walks_five_steps_and_nothing_is_cut_off(app_url, sized):
    page, (w, h) = sized
    goto_page(page, app_url)  # the app first, so its st.navigation owns the routes
    goto_page(page, app_url, "lesson")
    _heading(page, 1).wait_for()
    for n in range(1, len(STEPS) + 1):
        if n > 1:
            act(page, page.get_by_role("button", name="Next").click, until=_heading(page, n), timeout=180_000)
            assert f"step={n}" in page.url  # the step is in the link
        page.locator(CHART).first.wait_for()
        wait_for_app(page)
        page.wait_for_timeout(500)  # plotly lays out its text after the SVG appears
        _nothing_cut(page, f"step {n} at {w}x{h}")
        assert buttons_fit(page, ["Previous", "Next"]) == {"Previous": True, "Next": True}
        if (w, h) == (1024, 768):
            _heading(page, n).evaluate("e => e.scrollIntoView({block: 'start'})")
            page.mouse.move(5, h - 5)  # off the figures: no plotly toolbar in the picture
            page.wait_for_timeout(300)
            page.screenshot(path=str(SHOTS / f"lesson-1024x768-step{n}.png"))
    assert page.get_by_role("button", name="Next").is_disabled()
    page.get_by_text("Glossary").first.click()
    page.get_by_text("floor is −1/(M−1)").first.wait_for()
    goto_page(page, app_url, "lesson?step=3")  # a shared link opens on its step
    _heading(page, 3).wait_for()


@pytest.mark.parametrize("url_path,heading", [("gradients", "Gradients"),
                                              ("diversity", "Diversity: layer-wise CKA"),
                                              ("robustness", "Robustness under attack"),
                                              ("reproduction", "Reproduction")])
def test_analysis_pages_cut_nothing(app_url, sized, url_path, heading):
    page, (w, h) = sized
    goto_page(page, app_url)
    goto_page(page, app_url, url_path)
    page.get_by_role("heading", name=heading).wait_for()
    page.locator(CHART).first.wait_for()
    wait_for_app(page, 180_000)
    page.wait_for_timeout(500)
    _nothing_cut(page, f"{url_path} at {w}x{h}")
