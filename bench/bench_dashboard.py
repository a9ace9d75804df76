"""Dashboard speed in a real browser (Playwright + Debian's chromium), issue 5's goals:

  startup      `streamlit run app.py` to the Home page fully rendered       goal <= 5 s
  first render each page opened by its URL on the shipped checkpoints,       goal <= 2 s
               until the heading and every figure and table of its first render
               are drawn; three ways: right after startup (cold server caches) in a
               fresh browser; again in a fresh browser (nothing cached: it also
               downloads and compiles Streamlit's frontend); and in a returning
               browser (one that has opened the app before: HTTP cache)
  page change  each page reached by the sidebar within one session           goal <= 2 s
  example      Gradients page: change the test example, new figures shown  goal <= 1 s
  training     default digits PARL run from the Train page, click to done  goal <= 30 s
               beside the same run by the CLI (`python -m parl_core train`), measured
               right after on the same machine: the ratio is the dashboard's overhead.

Times are wall-clock from the action to Streamlit's own "script finished" signal plus
the expected content (tests/browser_helpers.py). Prints a table; asserts nothing.

    python bench/bench_dashboard.py [--skip-training]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from browser_helpers import act, goto_page  # noqa: E402
from conftest import CHROMIUM, copy_checkpoints, start_app, stop_app  # noqa: E402

PAGES = {"": "PARL Lab", "train": "Train an ensemble", "gradients": "Gradients",
         "diversity": "Diversity: layer-wise CKA", "robustness": "Robustness under attack",
         "checkpoints": "Checkpoints", "playground": "Playground"}
# What each page draws at its first render on a fresh server (the rest is computed on
# request): plotly charts, tables. A render counts as done when all of them are drawn.
DRAWN = {"": (0, 1), "gradients": (3, 0), "checkpoints": (1, 1), "playground": (5, 0)}
GOALS = {"startup": 5.0, "page": 2.0, "example": 1.0, "training": 30.0}


def wait_drawn(page, path: str, timeout: float = 60_000) -> None:
    charts, tables = DRAWN.get(path, (0, 0))
    page.wait_for_function(
        """([c, t]) => document.querySelectorAll('[data-testid="stPlotlyChart"] .main-svg').length >= c
             && document.querySelectorAll('[data-testid="stDataFrame"] canvas').length >= t""",
        arg=[charts, tables], timeout=timeout)


def first_render(browser, url: str, path: str, title: str, returning: bool = False) -> float:
    """Open `path` by its URL, heading and every first-render figure drawn. A fresh browser
    has nothing cached: it also downloads and compiles Streamlit's frontend (~9.5 MB of
    JavaScript; its plotly chunk alone ~1 s to evaluate here). `returning`: the browser has
    opened the app before (another page), so those files come from its HTTP cache."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    if returning:
        goto_page(page, url, "train" if path == "gradients" else "gradients", timeout=120_000)
        wait_drawn(page, "train" if path == "gradients" else "gradients")
    t = time.perf_counter()
    goto_page(page, url, path, timeout=120_000)
    page.get_by_role("heading", name=title).first.wait_for()
    wait_drawn(page, path)
    dt = time.perf_counter() - t
    ctx.close()
    return dt


def in_session(browser, url: str) -> dict:
    """Page changes by the sidebar in one session (plotly.js already loaded, as for a
    person clicking through): click to heading, figure or table drawn."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    goto_page(page, url, "gradients?checkpoint=digits_parl", timeout=120_000)  # loads plotly.js
    wait_drawn(page, "gradients")
    out = {}
    for path, title in PAGES.items():
        link = page.locator('[data-testid="stSidebarNav"] a', has_text=title.split(":")[0].split(" ")[0]
                            if path else "Home").first
        if path == "train":
            link = page.locator('[data-testid="stSidebarNav"] a', has_text="Train").first
        if path == "robustness":
            link = page.locator('[data-testid="stSidebarNav"] a', has_text="Robustness").first
        t = time.perf_counter()
        act(page, link.click, page.get_by_role("heading", name=title), timeout=120_000)
        wait_drawn(page, path)
        out[path or "home"] = time.perf_counter() - t
    ctx.close()
    return out


def example_change(browser, url: str, n: int = 5) -> list[float]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    goto_page(page, url, "gradients?checkpoint=digits_parl&example=0", timeout=120_000)
    wait_drawn(page, "gradients")
    box = page.get_by_label("Test example (0–449)", exact=True)
    times = []
    for i in range(1, n + 1):
        # Streamlit redraws a changed chart as a new element: wait for three new drawings.
        page.evaluate("""() => document.querySelectorAll('[data-testid="stPlotlyChart"] .main-svg')
                                .forEach(e => { e.dataset.old = '1'; })""")
        t = time.perf_counter()
        act(page, lambda i=i: (box.fill(str(10 * i)), box.press("Enter")),
            page.get_by_text(f"Test example #{10 * i} "))
        page.wait_for_function("""() => document.querySelectorAll(
            '[data-testid="stPlotlyChart"] .main-svg:not([data-old])').length >= 3""")
        times.append(time.perf_counter() - t)
    ctx.close()
    return times


def training(browser, url: str) -> float:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    goto_page(page, url, "train?checkpoint=digits_parl", timeout=120_000)
    page.get_by_role("heading", name="Train an ensemble").wait_for()
    t = time.perf_counter()
    act(page, page.get_by_role("button", name="Start training").click, page.get_by_text("Run digits_parl_s0"))
    act(page, lambda: None, page.get_by_text("Finished: 15 epoch(s)"), timeout=600_000)
    dt = time.perf_counter() - t
    ctx.close()
    return dt


def cli_training(folder: Path) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "parl_core", "train", "--dataset", "digits", "--method", "parl",
                    "--quiet", "--out", str(folder / "cli_parl.safetensors"), "--force"],
                   cwd=REPO, check=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t


def row(name, secs, goal):
    print(f"{name:<40} {secs:7.2f} s   goal {goal:5.1f} s   {secs / goal:5.2f} x goal")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--only-training", action="store_true")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright
    folder = copy_checkpoints(Path(tempfile.mkdtemp()) / "checkpoints")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        t = time.perf_counter()
        proc, url = start_app(folder)
        try:
            startup = time.perf_counter() - t + first_render(browser, url, "", "PARL Lab")
            row("startup to Home rendered", startup, GOALS["startup"])
            runs = (("cold server, fresh browser", False), ("fresh browser", False), ("returning browser", True))
            for label, returning in () if args.only_training else runs:
                for path, title in PAGES.items():
                    row(f"{path or 'home'} ({label})", first_render(browser, url, path, title, returning),
                        GOALS["page"])
            if not args.only_training:
                for name, secs in in_session(browser, url).items():
                    row(f"page change to {name} (in session)", secs, GOALS["page"])
                ex = sorted(example_change(browser, url))
                row("gradients example change (median)", ex[len(ex) // 2], GOALS["example"])
                row("gradients example change (max)", ex[-1], GOALS["example"])
            if not args.skip_training:
                dash = training(browser, url)
                row("default digits PARL, Train page", dash, GOALS["training"])
        finally:
            stop_app(proc)
            browser.close()
    if not args.skip_training:
        cli = cli_training(folder)
        row("same run, CLI (1 thread)", cli, GOALS["training"])
        print(f"dashboard / CLI time ratio: {dash / cli:.2f}")


if __name__ == "__main__":
    main()
