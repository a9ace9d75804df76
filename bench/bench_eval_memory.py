"""Peak memory of a full CIFAR-10 evaluation (issue 11): 1,000 test images, the four
attacks, the seven ε of the paper's grid, black-box (crafted on the surrogate, scored on
two targets) and white-box, each in a fresh process whose peak resident memory
(ru_maxrss) is reported. Target: <= 2 GB.

Peak memory is set by one pass (rows per pass × bytes per row, `parl_core.memory`), not
by how many passes run, so the default takes 1 step and 2 PGD restarts to finish in
minutes; --steps 50 --restarts 10 runs the paper's settings (hours on a CPU) with the same
peak. Uses the shipped cifar10_* checkpoints, or fresh 3 × ResNet20 where absent.

    python -m bench.bench_eval_memory [--n 1000] [--steps 1] [--restarts 2] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "checkpoints"


def _models():
    import parl_core as pc
    test = pc.load_dataset("cifar10", "test")
    out = {}
    for name, seed in (("cifar10_parl", 0), ("cifar10_ens_u", 10), ("cifar10_surrogate", 100)):
        path = CKPT / f"{name}.safetensors"
        out[name] = (pc.load_checkpoint(path, device="cpu")[0] if path.is_file()
                     else pc.build_ensemble("resnet20", 3, test, seed=seed).eval())
    return out, test


def child(mode: str, args) -> None:
    import torch

    import parl_core as pc
    from parl_core.memory import rows_per_pass
    if args.threads:
        torch.set_num_threads(args.threads)
    models, test = _models()
    sub = pc.evaluation_subset(test, args.n)
    kw = dict(attacks=list(pc.ATTACKS), eps=pc.default_eps_grid("cifar10"), steps=args.steps,
              restarts=args.restarts)
    t = time.perf_counter()
    if mode == "black-box":
        targets, source = [models["cifar10_parl"], models["cifar10_ens_u"]], models["cifar10_surrogate"]
        pc.robustness_curve(targets, sub.images, sub.labels, surrogate=source, **kw)
    else:
        source = models["cifar10_parl"]
        pc.robustness_curve(source, sub.images, sub.labels, **kw)
    print(json.dumps({"mode": mode, "seconds": time.perf_counter() - t,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rows_per_pass": rows_per_pass(source, sub.images[0]), "n": len(sub),
                      "data": sub.info.get("source")}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args)
    print(f"full CIFAR-10 evaluation: n={args.n}, 4 attacks x 7 eps, {args.steps} step(s), "
          f"{args.restarts} PGD restarts; target peak <= 2048 MB")
    for mode in ("black-box", "white-box"):
        cmd = [sys.executable, "-m", "bench.bench_eval_memory", "--child", mode, "--n", str(args.n),
               "--steps", str(args.steps), "--restarts", str(args.restarts)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{mode:<10} peak {r['peak_mb']:7.0f} MB  ({r['rows_per_pass']} rows per pass, "
              f"{r['seconds']:.0f} s, {r['n']} images: {r['data']})")


if __name__ == "__main__":
    main()
