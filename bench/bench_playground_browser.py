"""Playground frame rate in a real browser: `streamlit run app.py`, Playwright + chromium,
the Playground page in play mode at its default settings (moons, 500 points, 3 members,
PARL, 60x60 grid). Goal (issue 7): >= 5 frames per second.

A frame is an epoch the person sees: the page's "Epoch N" counter changing. A
MutationObserver in the page timestamps every change; plotly's own `plotly_afterplot`
events on the member figure are counted beside it (the picture actually redrawn).
Prints frames per second over the window and the median and 90th percentile of the
interval between frames.

    python bench/bench_playground_browser.py [--seconds 20] [--query "n=500"]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from browser_helpers import goto_page, wait_for_app  # noqa: E402
from conftest import CHROMIUM, copy_checkpoints, start_app, stop_app  # noqa: E402

OBSERVE = """() => {
  window.__pgTimes = []; window.__pgPlots = 0;
  const main = document.querySelector('[data-testid="stMain"]');
  let last = null;
  new MutationObserver(() => {
    const m = main.innerText.match(/Epoch (\\d+)/);
    if (m && m[1] !== last) { last = m[1]; window.__pgTimes.push([performance.now(), +m[1]]); }
  }).observe(main, {subtree: true, childList: true, characterData: true});
  const hook = () => {
    const plot = document.querySelector('.js-plotly-plot');
    if (plot && plot.on && !plot.__pgHooked) {
      plot.__pgHooked = true;
      plot.on('plotly_afterplot', () => { window.__pgPlots += 1; });
    }
  };
  hook(); window.__pgHook = setInterval(hook, 200);
}"""


def measure(url: str, seconds: float, query: str) -> dict:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        goto_page(page, url, "playground" + (f"?{query}" if query else ""), timeout=60_000)
        page.locator(".js-plotly-plot").nth(3).wait_for()
        wait_for_app(page)
        page.evaluate(OBSERVE)
        page.get_by_role("button", name="Play").click()
        page.get_by_role("button", name="Pause").wait_for()
        page.wait_for_timeout(seconds * 1000)  # the measurement window itself
        times = page.evaluate("() => window.__pgTimes")
        plots = page.evaluate("() => window.__pgPlots")
        page.get_by_role("button", name="Pause").click()
        browser.close()
    t = [a for a, _ in times]
    gaps = [b - a for a, b in zip(t, t[1:])]
    span = (t[-1] - t[0]) / 1000 if len(t) > 1 else float("nan")
    return {"frames": len(t) - 1, "span_s": span, "fps": (len(t) - 1) / span if len(t) > 1 else 0.0,
            "median_gap_ms": statistics.median(gaps) if gaps else float("nan"),
            "p90_gap_ms": sorted(gaps)[int(0.9 * (len(gaps) - 1))] if gaps else float("nan"),
            "epochs": (times[0][1], times[-1][1]) if times else None, "afterplot": plots,
            "window_s": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--query", default="", help="extra Playground URL parameters, e.g. m=5")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"needs chromium at {CHROMIUM}")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_app(copy_checkpoints(Path(tmp) / "checkpoints"))
        try:
            r = measure(url, args.seconds, args.query)
        finally:
            stop_app(proc)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"query {args.query or '(defaults)'}")
    print(f"frames seen: {r['frames']} in {r['span_s']:.1f} s -> {r['fps']:.2f} frames/s "
          f"(goal >= 5: {'MET' if r['fps'] >= 5 else 'MISSED'})")
    print(f"interval between frames: median {r['median_gap_ms']:.0f} ms, "
          f"90th percentile {r['p90_gap_ms']:.0f} ms; epochs {r['epochs']}; "
          f"member-figure redraws (plotly_afterplot) {r['afterplot']} in {r['window_s']:.0f} s")


if __name__ == "__main__":
    main()
