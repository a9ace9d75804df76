"""Playground frame cost: one epoch plus every figure, default settings (moons, 500
points, 3 members x MLP 32x3, PARL, 60x60 grid). Target (issue 7): <= 200 ms per frame.

Prints the median of interleaved rounds for each piece of one play-mode frame:
  step        one epoch through pc.train (resumed), 8 minibatches
  frame       grid evaluation: regions, boundaries, gradient arrows, alignment, layers
  attack      the PGD path of one point (10 steps) judged by every member
  figures     the four plotly builders
  to_json     plotly.io.to_json(validate=False), what st.plotly_chart sends
and two choices measured side by side (ratios):
  threads     frame on torch's default threads vs one thread (parl_core.playground.one_thread)
  validate    figures built with plotly validation vs without (the builders skip it)
Per-method epoch times follow. The frame rate seen in a real browser is measured by
bench/bench_playground_browser.py.

    python bench/bench_playground.py [--rounds 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import plotly.graph_objects as go
import plotly.io as pio
import torch

from parl_core.playground import PlaygroundConfig, PlaygroundSession, one_thread, playground_methods
from parl_core.plots.playground import (alignment_figure, layer_cosine_figure, members_figure,
                                        playground_history_figure)


def figures(sess, frame, attack):
    h = sess.history[-1]
    return [members_figure(frame, attack, accuracies=h["member_acc"] + [h["test_acc"]]),
            alignment_figure(frame), layer_cosine_figure(frame.layer_cos, frame.floor),
            playground_history_figure(frame.history)]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, 1000 * (time.perf_counter() - t)


def one_frame(sess):
    """The work of one play-mode frame, piece by piece (ms)."""
    ms = {}
    _, ms["step"] = timed(sess.step)
    frame, ms["frame"] = timed(sess.frame)
    attack, ms["attack"] = timed(lambda: sess.attack_path(3, member=0, eps=0.3))
    figs, ms["figures"] = timed(lambda: figures(sess, frame, attack))
    js, ms["to_json"] = timed(lambda: [pio.to_json(f, validate=False) for f in figs])
    ms["total"] = sum(ms.values())
    ms["kB"] = sum(map(len, js)) / 1e3
    return ms, frame, attack


def side_by_side(sess, frame, attack, rounds):
    """Median ratios of the alternatives we did not take, interleaved with ours."""
    t = {"1 thread": [], "default threads": [], "no validation": [], "validation": []}
    for _ in range(rounds):
        with one_thread(), torch.no_grad():
            t["1 thread"].append(timed(lambda: sess._frame(60, 15))[1])
        with torch.no_grad():
            t["default threads"].append(timed(lambda: sess._frame(60, 15))[1])
        t["no validation"].append(timed(lambda: figures(sess, frame, attack))[1])
        t["validation"].append(timed(lambda: [go.Figure(f.to_dict())
                                              for f in figures(sess, frame, attack)])[1])
    return {k: statistics.median(v) for k, v in t.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    sess = PlaygroundSession(PlaygroundConfig())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; config {sess.config}")
    for _ in range(3):  # warm-up: first calls pay for lazy initialisation
        one_frame(sess)
    rows = [one_frame(sess)[0] for _ in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print("\none play-mode frame, median of", args.rounds, "rounds (ms):")
    for k, v in med.items():
        print(f"  {k:9s} {v:8.1f}" + ("  kB sent" if k == "kB" else ""))
    print(f"  budget 200 ms: {'MET' if med['total'] <= 200 else 'MISSED'} "
          f"({med['total'] / 200:.2f} of it)")
    _, frame, attack = one_frame(sess)
    r = side_by_side(sess, frame, attack, max(5, args.rounds // 2))
    print("\nside by side (median ms):")
    print(f"  grid evaluation: 1 thread {r['1 thread']:.1f} vs default threads "
          f"{r['default threads']:.1f}  -> ratio {r['default threads'] / r['1 thread']:.2f}x")
    print(f"  figures: unvalidated {r['no validation']:.1f} vs validated {r['validation']:.1f}"
          f"  -> ratio {r['validation'] / r['no validation']:.2f}x")
    print("\none epoch per method (ms, median of 5, default settings):")
    for method in playground_methods():
        s = PlaygroundSession(PlaygroundConfig(method=method))
        s.step()
        print(f"  {method:8s} {statistics.median(timed(s.step)[1] for _ in range(5)):8.1f}")


if __name__ == "__main__":
    main()
