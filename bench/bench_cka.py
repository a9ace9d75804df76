"""layerwise_cka of two ResNet20 on CIFAR-10 test images: minibatch vs full estimator.

Every layer against every layer (19 x 19). Each configuration runs in a fresh
subprocess so its peak resident memory (ru_maxrss) is its own; "extra" is the peak
minus the resident memory after the models and images were loaded. The minibatch
estimator's memory must not grow with the number of images; the full one keeps every
example's features, so it does. Time (wall and CPU seconds of the process) is the call
to `layerwise_cka` alone; on a crowded machine CPU seconds / threads is the better
guide to what an idle one would take.
Target (issue 4): minibatch on 2,000 images <= 10 s on the 2-core machine.

    python bench/bench_cka.py [--sizes 500 1000 2000] [--batch 256] [--no-full] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _rss_mib() -> float:
    """Current resident memory of this process (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(n: int, estimator: str, batch: int, threads: int) -> dict:
    sys.path.insert(0, str(REPO))
    if threads:
        torch.set_num_threads(threads)
    import parl_core as pc
    ds = pc.load_dataset("cifar10", "test", root=DATA)
    x = ds.images[:n].contiguous()
    a, b = (pc.build_model("resnet20", 10, 3, mean=ds.mean, std=ds.std, seed=s).eval()
            for s in (0, 1))
    with torch.no_grad():  # warm-up: allocator and kernels, outside the measurement
        a(x[:8]), b(x[:8])
    base = _rss_mib()
    t, cpu = time.perf_counter(), time.process_time()
    mat = pc.layerwise_cka(a, b, x, batch_size=batch, estimator=estimator)
    sec, cpu = time.perf_counter() - t, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"n": n, "estimator": estimator, "seconds": sec, "cpu_seconds": cpu, "peak_mib": peak,
            "extra_mib": peak - base, "shape": list(mat.shape),
            "diag_mean": float(mat.diagonal().mean())}


def run(n, estimator, batch, threads):
    out = subprocess.run([sys.executable, __file__, "--worker", str(n), estimator, str(batch),
                          str(threads or 0)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--no-full", action="store_true", help="skip the full (memory-hungry) mode")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in each worker")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        n, est, batch, threads = args.worker
        print(json.dumps(worker(int(n), est, int(batch), int(threads))))
        return
    if not (DATA / "cifar-10-batches-py").exists():
        sys.exit(f"skipped: CIFAR-10 not found under {DATA}")
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, batch {args.batch}")
    print(f"{'estimator':<10} {'n':>5} {'time s':>8} {'CPU s':>7} {'peak MiB':>9} "
          f"{'extra MiB':>10} {'diag mean':>10}")
    rows = {}
    for est in ["minibatch"] + ([] if args.no_full else ["full"]):
        for n in args.sizes:
            r = rows[(est, n)] = run(n, est, args.batch, args.threads)
            print(f"{est:<10} {n:>5} {r['seconds']:>8.2f} {r['cpu_seconds']:>7.1f} "
                  f"{r['peak_mib']:>9.0f} {r['extra_mib']:>10.0f} {r['diag_mean']:>10.3f}")
    lo, hi = min(args.sizes), max(args.sizes)
    for est in ["minibatch"] + ([] if args.no_full else ["full"]):
        a, b = rows[(est, lo)], rows[(est, hi)]
        print(f"{est}: n {lo} -> {hi} (x{hi / lo:.1f}): time x{b['seconds'] / a['seconds']:.2f}, "
              f"extra memory x{b['extra_mib'] / max(a['extra_mib'], 1):.2f}")
    if not args.no_full:
        a, b = rows[("minibatch", hi)], rows[("full", hi)]
        print(f"full / minibatch at n={hi}: time x{b['seconds'] / a['seconds']:.2f}, "
              f"extra memory x{b['extra_mib'] / max(a['extra_mib'], 1):.2f}")


if __name__ == "__main__":
    main()
