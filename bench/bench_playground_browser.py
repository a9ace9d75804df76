"""Playground responsiveness in a real browser: `streamlit run app.py`, Playwright +
headless chromium, the Playground page in play mode. Goals (issue 17): >= 5 frames per
second; Pause and Step act within 0.5 s whatever the frame rate.

A frame is an epoch the person sees: the canvas component records every repaint
(`window.__pgDraws`: [time, epoch]); frames per second counts repaints with a new epoch.
Latency of a click (Pause, Step) is measured two ways:
  * screen: from the click to the page showing its effect (Pause: the button reads
    "Play" again; Step: the canvas shows epoch + 1);
  * training: Pause — how many epochs the background run trained after the click (it
    finishes the epoch it is in and the `ahead` epochs already queued are dropped).
Each is repeated --cycles times; the median and the worst are printed.

    python -m bench.bench_playground_browser [--seconds 10] [--cycles 5] [--query "n=500"] [--split]

Run it on a quiet machine: under load every number measures the load.
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

CANVAS = "canvas.parl-playground"
EPOCH_JS = f"() => +(document.querySelector('{CANVAS}')?.dataset.epoch ?? -1)"
# Timestamps the moment a button with this label is in the page (MutationObserver, so the
# measurement does not depend on Playwright's polling interval).
WATCH_LABEL_JS = """(label) => new Promise((resolve) => {
  const t0 = performance.now();
  const has = () => [...document.querySelectorAll('button')].some(b => b.innerText.trim().endsWith(label));
  if (has()) return resolve(0);
  const obs = new MutationObserver(() => { if (has()) { obs.disconnect(); resolve(performance.now() - t0); } });
  obs.observe(document.body, {subtree: true, childList: true, characterData: true});
})"""
WATCH_EPOCH_JS = f"""(target) => new Promise((resolve) => {{
  const t0 = performance.now();
  const now = () => +(document.querySelector('{CANVAS}')?.dataset.epoch ?? -1);
  if (now() >= target) return resolve(0);
  const obs = new MutationObserver(() => {{ if (now() >= target) {{ obs.disconnect(); resolve(performance.now() - t0); }} }});
  obs.observe(document.body, {{subtree: true, attributes: true, attributeFilter: ['data-epoch']}});
}})"""


def _button(page, label):
    return page.get_by_role("button", name=label, exact=False).filter(has_text=label).first


def _click_and_time(page, label, watch_js, arg) -> float:
    """Click `label`, return ms until `watch_js(arg)` resolves (the watcher starts first)."""
    handle = page.evaluate_handle(f"(a) => {{ window.__pgWatch = ({watch_js})(a); return 1; }}", arg)
    handle.dispose()
    _button(page, label).click()
    return float(page.evaluate("() => window.__pgWatch"))


def fps_window(page, seconds: float) -> dict:
    page.evaluate("() => { window.__pgDraws = []; }")
    page.wait_for_timeout(seconds * 1000)
    draws = page.evaluate("() => window.__pgDraws")
    frames, last = [], None
    for t, e in draws:
        if e != last:
            frames.append(t)
            last = e
    gaps = [b - a for a, b in zip(frames, frames[1:])]
    span = (frames[-1] - frames[0]) / 1000 if len(frames) > 1 else float("nan")
    return {"frames": len(frames) - 1, "fps": (len(frames) - 1) / span if len(frames) > 1 else 0.0,
            "median_gap_ms": statistics.median(gaps) if gaps else float("nan"),
            "p90_gap_ms": sorted(gaps)[int(0.9 * (len(gaps) - 1))] if gaps else float("nan")}


def measure(url: str, seconds: float, cycles: int, query: str) -> dict:
    from playwright.sync_api import sync_playwright
    out = {"fps": [], "pause_ms": [], "pause_epochs": [], "step_ms": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        goto_page(page, url)
        goto_page(page, url, "playground" + (f"?{query}" if query else ""), timeout=60_000)
        page.locator(CANVAS).wait_for()
        wait_for_app(page)
        for _ in range(cycles):
            _button(page, "Play").click()
            _button(page, "Pause").wait_for()
            out["fps"].append(fps_window(page, seconds))
            shown = page.evaluate(EPOCH_JS)
            out["pause_ms"].append(_click_and_time(page, "Pause", WATCH_LABEL_JS, "Play"))
            wait_for_app(page)
            page.wait_for_timeout(500)  # let the paused screen settle on the last epoch trained
            out["pause_epochs"].append(page.evaluate(EPOCH_JS) - shown)
            before = page.evaluate(EPOCH_JS)
            out["step_ms"].append(_click_and_time(page, "Step", WATCH_EPOCH_JS, before + 1))
            wait_for_app(page)
        browser.close()
    return out


def _stat(xs) -> str:
    return f"median {statistics.median(xs):.0f}, worst {max(xs):.0f}" if xs else "n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10, help="length of each play window")
    ap.add_argument("--cycles", type=int, default=5, help="play / pause / step cycles")
    ap.add_argument("--query", default="", help="extra Playground URL parameters, e.g. m=5&n=1000")
    ap.add_argument("--split", action="store_true", help="ENS_U vs PARL split screen (vs=1)")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"needs chromium at {CHROMIUM}")
    query = "&".join(q for q in (args.query, "vs=1" if args.split else "") if q)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_app(copy_checkpoints(Path(tmp) / "checkpoints"), env={"PARL_DEBUG": "0"})
        try:
            r = measure(url, args.seconds, args.cycles, query)
        finally:
            stop_app(proc)
    fps = [w["fps"] for w in r["fps"]]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; query {query or '(defaults)'}")
    print(f"frames per second over {args.cycles} windows of {args.seconds:g} s: "
          + ", ".join(f"{f:.1f}" for f in fps)
          + f" (median {statistics.median(fps):.1f}; goal >= 5: {'MET' if min(fps) >= 5 else 'MISSED'})")
    print("interval between frames (ms), per window: "
          + "; ".join(f"median {w['median_gap_ms']:.0f} / p90 {w['p90_gap_ms']:.0f}" for w in r["fps"]))
    print(f"Pause -> 'Play' shown (ms): {_stat(r['pause_ms'])} "
          f"(goal <= 500: {'MET' if max(r['pause_ms']) <= 500 else 'MISSED'}); "
          f"epochs trained after the click: {r['pause_epochs']}")
    print(f"Step -> next epoch shown (ms): {_stat(r['step_ms'])} "
          f"(goal <= 500: {'MET' if max(r['step_ms']) <= 500 else 'MISSED'})")


if __name__ == "__main__":
    main()
