"""Five people at once on one server (issue 16): two train, three analyse, in five browser
sessions of one headless chromium. Each session keeps its own state (checkpoint, page), a
third training start gets the job limit's message, no page shows an exception, and both
trainings keep their finished epochs when cancelled. Page-render times are printed
(pytest -s shows them)."""
import time

import pytest

from browser_helpers import act, goto_page, wait_for_app
from conftest import copy_checkpoints, start_app, stop_app

CHART = '[data-testid="stPlotlyChart"] .main-svg'
ANALYSIS = [("gradients", "digits_parl"), ("diversity", "digits_ens_u"), ("robustness", "digits_parl")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import _require_browser
    _require_browser()
    folder = copy_checkpoints(tmp_path_factory.mktemp("load") / "checkpoints")
    for f in folder.glob("cifar10_*"):  # the digits path: every page computes in seconds
        f.unlink()
    proc, url = start_app(folder, env={"PARL_MAX_JOBS": "2", "PARL_DEBUG": "0"})
    yield url, folder
    stop_app(proc)


def _no_exception(page, who, errors=True):
    """No traceback; with `errors`, no error box either (the Train form rightly shows one
    once the name it still holds has been saved)."""
    sel = '[data-testid="stException"]' + (', [data-testid="stAlertContentError"]' if errors else "")
    assert page.locator(sel).count() == 0, f"{who}: " + page.locator(sel).first.inner_text()


def _start_training(page, url, name):
    goto_page(page, url)
    goto_page(page, url, "train")
    page.get_by_role("heading", name="Train an ensemble").wait_for()
    for label, value, until in (("Epochs", 200, "--epochs 200 --batch-size"),):
        box = page.get_by_label(label, exact=True)
        act(page, lambda box=box, value=value: (box.fill(str(value)), box.press("Enter")),
            page.get_by_text(until), timeout=120_000)
    box = page.get_by_label("Checkpoint name", exact=True)
    act(page, lambda: (box.fill(name), box.press("Enter")),
        page.get_by_text(f"Will be saved as {name}.safetensors"), timeout=120_000)
    act(page, page.get_by_role("button", name="Start training", exact=True).click, timeout=120_000)


def test_five_sessions_at_once(server, browser):
    url, folder = server
    ctxs = [browser.new_context(viewport={"width": 1280, "height": 900}) for _ in range(6)]
    pages = [c.new_page() for c in ctxs]
    for p in pages:
        p.set_default_timeout(180_000)
    try:
        t0 = time.monotonic()
        _start_training(pages[0], url, "load_a")
        _start_training(pages[1], url, "load_b")
        times = {}
        for p, (path, ckpt) in zip(pages[2:5], ANALYSIS):  # three analysts, each on their own checkpoint
            t = time.monotonic()
            goto_page(p, url, f"{path}?checkpoint={ckpt}")
            wait_for_app(p, 180_000)
            times[path] = time.monotonic() - t
        # a sixth person asks for a third training while two run: the job limit answers
        _start_training(pages[5], url, "load_c")
        pages[5].get_by_text("The server is busy").wait_for()
        assert "PARL_MAX_JOBS=2" in pages[5].locator('[data-testid="stMain"]').inner_text()
        for p, (path, ckpt) in zip(pages[2:5], ANALYSIS):  # independent state: each kept its own
            sel = p.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input').first
            assert sel.input_value().startswith(ckpt), (path, sel.input_value())
            _no_exception(p, path)
        for p, name in ((pages[0], "load_a"), (pages[1], "load_b")):  # both still running: cancel
            act(p, p.get_by_role("button", name="Cancel").click, p.get_by_text("Cancelled; kept"),
                timeout=180_000)
            p.get_by_text(f"saved as {name}.safetensors").first.wait_for(timeout=180_000)
            _no_exception(p, name, errors=False)
            assert (folder / f"{name}.safetensors").is_file()
        assert not (folder / "load_c.safetensors").exists()
        print("\nfive sessions: page render (s) while two trainings run: "
              + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
              + f"; both trainings cancelled and kept after {time.monotonic() - t0:.0f} s")
    finally:
        for c in ctxs:
            c.close()
