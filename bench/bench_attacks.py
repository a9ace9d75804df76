"""Attack speed (issue 3), measured side by side in one run (these machines are noisy):

  pgd        parl_core PGD vs torchattacks 3.5.1 PGD on the same ensemble of 3, same
             settings (eps, alpha = eps/5, steps, one random start); interleaved rounds,
             median time of each and the ratio ours / torchattacks. Target: <= 1.0.
  batched    the 7-eps sweep as one batched call vs seven separate calls (PGD): ratio.
  sweep      the dashboard's default digits sweep: 4 attacks x the default eps grid,
             white-box (ENS_U) and black-box (from the surrogate), every digits test
             example, 50 steps of eps/5, 1 PGD restart (target <= 60 s on 2 cores), and the
             same with 10 PGD restarts. Absolute seconds.

    python -m bench.bench_attacks [--only pgd,batched,sweep] [--rounds 5] [--threads N]
           [--arch smallcnn|resnet20] [--batch 450] [--steps 50] [--restarts 1 10]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import parl_core as pc

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "checkpoints"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _side_by_side(variants: dict, rounds: int) -> tuple[dict, dict]:
    """Median wall-clock and CPU (process) seconds of each variant, interleaved rounds.
    CPU time is the steadier figure on a shared machine when running one thread."""
    for fn in variants.values():  # warm-up
        fn()
    wall, cpu = {k: [] for k in variants}, {k: [] for k in variants}
    for _ in range(rounds):  # interleaved, so drifts in machine load hit every variant
        for name, fn in variants.items():
            c = time.process_time()
            wall[name].append(_timed(fn))
            cpu[name].append(time.process_time() - c)
    med = lambda d: {k: statistics.median(v) for k, v in d.items()}  # noqa: E731
    return med(wall), med(cpu)


def _ensemble_and_data(arch: str, batch: int):
    if arch == "smallcnn":
        ens = pc.load_checkpoint(CKPT / "digits_ens_u.safetensors", device="cpu")[0]
        ds = pc.load_dataset("digits", "test")
        return ens, ds.images[:batch], ds.labels[:batch]
    torch.manual_seed(0)  # CIFAR-shaped inputs; the speed does not depend on training
    ens = pc.Ensemble([pc.build_model("resnet20", 10, 3, seed=i) for i in range(3)]).eval()
    return ens, torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))


def bench_pgd(args):
    import torchattacks  # dev-only reference (pip install --no-deps torchattacks==3.5.1)
    ens, x, y = _ensemble_and_data(args.arch, args.batch)
    eps = 0.2 if args.arch == "smallcnn" else 0.03
    ref = torchattacks.PGD(ens, eps=eps, alpha=eps / 5, steps=args.steps, random_start=True)
    t, c = _side_by_side({"parl_core": lambda: pc.attack("pgd", ens, x, y, eps, steps=args.steps),
                          "torchattacks": lambda: ref(x, y)}, args.rounds)
    print(f"pgd      {args.arch} x3, batch {len(x)}, {args.steps} steps: parl_core {t['parl_core']:.3f} s, "
          f"torchattacks {t['torchattacks']:.3f} s, ratio {t['parl_core'] / t['torchattacks']:.2f} "
          f"(CPU time ratio {c['parl_core'] / c['torchattacks']:.2f}; target <= 1.0)")


def bench_batched(args):
    ens, x, y = _ensemble_and_data(args.arch, args.batch)
    grid = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35] if args.arch == "smallcnn" else \
        [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07]
    t, c = _side_by_side({"batched": lambda: pc.attack("pgd", ens, x, y, grid, steps=args.steps),
                          "separate": lambda: [pc.attack("pgd", ens, x, y, e, steps=args.steps)
                                               for e in grid]}, max(1, args.rounds // 2))
    print(f"batched  7 eps, {args.arch} x3, batch {len(x)}, {args.steps} steps: one call "
          f"{t['batched']:.2f} s, seven calls {t['separate']:.2f} s, ratio "
          f"{t['batched'] / t['separate']:.2f} (CPU time ratio {c['batched'] / c['separate']:.2f})")


def bench_sweep(args):
    ens = pc.load_checkpoint(CKPT / "digits_ens_u.safetensors", device="cpu")[0]
    sur = pc.load_checkpoint(CKPT / "digits_surrogate.safetensors", device="cpu")[0]
    ds = pc.load_dataset("digits", "test")
    grid = pc.default_eps_grid("digits")
    for restarts in args.restarts:
        t, c = {}, {}
        for mode, s in (("white-box", None), ("black-box", sur)):
            c0 = time.process_time()
            t[mode] = _timed(lambda: pc.robustness_curve(ens, ds.images, ds.labels, eps=grid, surrogate=s,
                                                         steps=50, restarts=restarts))
            c[mode] = time.process_time() - c0
        print(f"sweep    digits, {len(ds)} examples, 4 attacks x {len(grid)} eps, 50 steps, "
              f"{restarts} PGD restart(s): white-box {t['white-box']:.1f} s + black-box "
              f"{t['black-box']:.1f} s = {sum(t.values()):.1f} s wall, {sum(c.values()):.1f} s CPU"
              + (" (target <= 60 s)" if restarts == 1 else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="pgd,batched,sweep")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--arch", default="smallcnn", choices=("smallcnn", "resnet20"))
    ap.add_argument("--batch", type=int, default=450)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--restarts", type=int, nargs="+", default=[1, 10], help="sweep: PGD restarts")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for name in args.only.split(","):
        {"pgd": bench_pgd, "batched": bench_batched, "sweep": bench_sweep}[name.strip()](args)


if __name__ == "__main__":
    main()
