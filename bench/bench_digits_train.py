"""Time to train the default digits ensembles (3 x smallcnn, 15 epochs, batch 64) on CPU.

Target (issue 2): PARL reaches >= 95 % ensemble test accuracy in <= 30 s on a 2-core
machine. Prints, for ENS_U and PARL side by side: wall time, ensemble and member
accuracy, mean pairwise R/K at K_eval and its floor -1/(M-1).

    python -m bench.bench_digits_train [--epochs 15] [--members 3]
"""
from __future__ import annotations

import argparse
import time

import parl_core as pc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--members", type=int, default=3)
    args = ap.parse_args()
    tr, te = pc.load_dataset("digits", "train"), pc.load_dataset("digits", "test")
    floor = -1.0 / (args.members - 1)
    print(f"digits, {args.members} x smallcnn, {args.epochs} epochs, batch 64, CPU; "
          f"R/K floor {floor:.3f}")
    print(f"{'method':<8} {'time s':>7} {'ens acc':>8} {'members':>24} {'R/K':>7} {'>=95% at':>9}")
    for method in ("ce_only", "parl"):
        ens = pc.build_ensemble("smallcnn", args.members, tr, seed=0)
        t0 = time.perf_counter()
        hist = pc.train(ens, tr, te, method=method, epochs=args.epochs, batch_size=64, seed=0,
                        device="cpu", eval_size=None)
        wall = time.perf_counter() - t0
        first = next((r["time"] for r in hist if r["test_acc"] >= 0.95), None)
        last = hist[-1]
        members = " ".join(f"{a:.3f}" for a in last["member_acc"])
        print(f"{pc.method_label(method):<8} {wall:>7.1f} {last['test_acc']:>8.4f} {members:>24} "
              f"{last['r_mean']:>7.3f} {'-' if first is None else f'{first:.1f}s':>9}")


if __name__ == "__main__":
    main()
