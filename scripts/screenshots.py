"""Refresh docs/screenshots/*.png: one full-page browser screenshot per dashboard page.

Starts `streamlit run app.py` on a temporary copy of checkpoints/, opens each page in
Playwright's chromium (Debian's, /usr/bin/chromium), presses each page's compute button
so the figures show, and waits on Streamlit's own signals before every shot.

    python scripts/screenshots.py [--out docs/screenshots] [--width 1400]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from browser_helpers import act, goto_page  # noqa: E402
from conftest import CHROMIUM, copy_checkpoints, start_app, stop_app  # noqa: E402


def _press(page, button: str, until, timeout=300_000):
    btn = page.get_by_role("button", name=button, exact=True)
    if btn.count():
        act(page, btn.first.click, until, timeout=timeout)


def _train(page):
    box = page.get_by_label("Epochs", exact=True)
    act(page, lambda: (box.fill("8"), box.press("Enter")), page.get_by_text("--epochs 8 --batch-size"))
    _press(page, "Start training", page.get_by_text("Finished: 8 epoch(s)"))


def _gradients(page):
    _press(page, "Compute the distributions", page.get_by_text("How aligned the members' gradients are"))


def _diversity(page):
    _press(page, "Compute CKA", page.locator('[data-testid="stPlotlyChart"] .heatmaplayer'))


def _robustness(page):
    _press(page, "Run the evaluation", page.get_by_text("Majority-vote accuracy as the attack budget"))
    _press(page, "Compute the matrix", page.get_by_text("Accuracy of each member (column)"))


def _shoot(page, path: Path, width: int) -> None:
    """Streamlit scrolls inside its main block, so a "full page" shot would show one
    screen: grow the window to the content's height instead, then shoot."""
    main = '[data-testid="stMain"]'
    height = page.evaluate(f"() => document.querySelector('{main}').scrollHeight")
    page.set_viewport_size({"width": width, "height": min(int(height) + 40, 8000)})
    page.evaluate(f"() => document.querySelector('{main}').scrollTo(0, 0)")
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(state="attached")
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": width, "height": 1000})


SHOTS = [  # (file, url path, what to do before the shot)
    ("home", "", None),
    ("train", "train", _train),
    ("gradients", "gradients?checkpoint=digits_parl&example=8", _gradients),
    ("diversity", "diversity?checkpoint=digits_parl", _diversity),
    ("robustness", "robustness?checkpoint=digits_parl", _robustness),
    ("checkpoints", "checkpoints?checkpoint=digits_parl", None),
    ("playground", "playground", None),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    ap.add_argument("--width", type=int, default=1400)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright
    folder = copy_checkpoints(Path(tempfile.mkdtemp()) / "checkpoints")
    proc, url = start_app(folder)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
            page = browser.new_context(viewport={"width": args.width, "height": 1000}).new_page()
            for name, path, prepare in SHOTS:
                if name == "playground" and not (REPO / "pages" / "playground.py").exists():
                    continue
                goto_page(page, url, path, timeout=120_000)
                if prepare:
                    prepare(page)
                _shoot(page, out / f"{name}.png", args.width)
                print(f"wrote {out / f'{name}.png'}")
            browser.close()
    finally:
        stop_app(proc)


if __name__ == "__main__":
    main()
