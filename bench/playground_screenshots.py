"""Screenshots of the Playground for ENS_U and PARL on the same set, seed and number of
epochs (docs/screenshots/playground_ens_u.png, playground_parl.png), and the numbers
behind them (docs/screenshots/playground_numbers.txt).

The real app (`streamlit run app.py`) in headless chromium: open the Playground with the
settings in the URL, press Step `--epochs` times, pause, screenshot. The numbers come
from the same seeded run in parl_core (stepping epoch by epoch equals one pc.train call).

    python bench/playground_screenshots.py [--dataset moons] [--epochs 20] [--eps 0.3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from browser_helpers import act, goto_page, wait_for_app  # noqa: E402
from conftest import CHROMIUM, copy_checkpoints, start_app, stop_app  # noqa: E402

import parl_core as pc  # noqa: E402
from parl_core.playground import (PlaygroundConfig, PlaygroundSession,  # noqa: E402
                                  mean_pairwise_cosine, one_thread)

OUT = REPO / "docs" / "screenshots"
METHODS = {"ce_only": "playground_ens_u.png", "parl": "playground_parl.png"}


def run(method, args) -> PlaygroundSession:
    sess = PlaygroundSession(PlaygroundConfig(dataset=args.dataset, method=method, seed=args.seed))
    sess.step(args.epochs)
    return sess


def pick_point(sessions, eps) -> int:
    """A training point near the boundary whose attack on M1 splits the members in some run."""
    best = 0
    for i in range(len(sessions[0].train_ds)):
        crossed = [s.attack_path(i, member=0, eps=eps)["crossed"] for s in sessions]
        if all(c[0] for c in crossed):
            best = i
            if any(not c.all() for c in crossed):
                return i
    return best


def numbers(method, sess, point, eps) -> str:
    h, frame = sess.history[-1], sess.frame()
    te = sess.test_ds
    with one_thread():
        align = mean_pairwise_cosine(pc.input_gradients(sess.ens, te.images, te.labels)).mean()
    t = sess.transfer(attack="pgd", eps=eps, steps=10)
    a = sess.attack_path(point, member=0, eps=eps)
    return (f"{pc.method_label(method)}: test acc (vote) {h['test_acc']:.3f}, members "
            f"{', '.join(f'{x:.3f}' for x in h['member_acc'])}; mean pairwise R/K "
            f"{h['r_mean']:+.3f}; per-layer cosine {', '.join(f'{c:+.3f}' for c in frame.layer_cos)} "
            f"(floor {frame.floor:+.2f}); loss-gradient alignment: test points {align:+.3f}, "
            f"plane {frame.alignment.mean():+.3f}; PGD eps={eps} (10 steps) on the test set: "
            f"white-box {np.diag(t['rates']).mean():.3f}, transfer {t['transfer']:.3f}, vote fooled "
            f"{t['vote'].mean():.3f}; point #{point} crafted on M1 crossed "
            f"{['M%d' % (i + 1) for i, c in enumerate(a['crossed']) if c]}")


def shoot(url, method, args, point, path):
    from playwright.sync_api import sync_playwright
    q = f"ds={args.dataset}&method={method}&seed={args.seed}&eps={args.eps}&pt={point}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        page = browser.new_page(viewport={"width": 1400, "height": 2100})
        page.set_default_timeout(120_000)
        goto_page(page, url, "", timeout=120_000)  # the app's navigation first, as a person
        goto_page(page, url, f"playground?{q}", timeout=120_000)
        for _ in range(args.epochs):
            act(page, page.get_by_role("button", name="Step").click, timeout=120_000)
        page.get_by_text(f"Epoch {args.epochs}").first.wait_for()
        page.locator(".js-plotly-plot").nth(4).wait_for()  # the transfer chart (paused)
        wait_for_app(page)
        page.mouse.move(5, 5)  # no tooltip left over from the Step button
        page.wait_for_timeout(500)  # the tooltip's fade-out: a picture, not a test
        page.screenshot(path=str(path), full_page=True)
        browser.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="moons")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--shots-only", action="store_true", help="skip recomputing the numbers")
    args = ap.parse_args()
    if args.shots_only:
        return shots(args, int((OUT / "playground_numbers.txt").read_text().split("point #")[1].split()[0]))
    sessions = {m: run(m, args) for m in METHODS}
    point = pick_point(list(sessions.values()), args.eps)
    lines = [f"{args.dataset}, seed {args.seed}, {args.epochs} epochs, 3 members, MLP 32x3, "
             f"500 points, lr 0.01, batch 64 (Playground defaults)"]
    lines += [numbers(m, s, point, args.eps) for m, s in sessions.items()]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "playground_numbers.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shots(args, point)


def shots(args, point):
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_app(copy_checkpoints(Path(tmp) / "checkpoints"))
        try:
            for m, name in METHODS.items():
                shoot(url, m, args, point, OUT / name)
                print("wrote", OUT / name)
        finally:
            stop_app(proc)


if __name__ == "__main__":
    main()
