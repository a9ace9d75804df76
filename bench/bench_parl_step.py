"""PARL training step vs a plain ensemble step: 3 x ResNet20, batch 128, K = 7, CPU.

Prints the median time of interleaved runs of each variant and its ratio to the
plain step, measured side by side in one run (these machines are noisy):
  plain      ENS_U: Σ_i CE_i, forward + backward + Adam
  parl       PARL with the fast path (explicit VJPs, parl_core.models)
  autograd   PARL with the generic path (one autograd.grad per layer, create_graph)
Target (issue 2): parl / plain <= 2.5.

    python bench/bench_parl_step.py [--rounds 7] [--batch 128] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import parl_core as pc


def make_step(method, ens, x, y, **params):
    loss_fn = pc.make_method(method, **params)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-3)

    def step():
        loss, _ = loss_fn(ens, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-autograd", action="store_true", help="skip the slow generic path")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    variants = {"plain": ("ce_only", {}), "parl": ("parl", {"layers": 7})}
    if not args.no_autograd:
        variants["autograd"] = ("parl", {"layers": 7, "grad_method": "autograd"})
    steps = {}
    for name, (method, params) in variants.items():
        ens = pc.Ensemble([pc.build_model("resnet20", 10, 3, seed=i) for i in range(3)]).train()
        steps[name] = make_step(method, ens, x, y, **params)
        steps[name]()  # warm-up
    times = {k: [] for k in steps}
    for _ in range(args.rounds):  # interleaved, so drifts in machine load hit every variant
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["plain"])
    print(f"3 x ResNet20, batch {args.batch}, K=7, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'variant':<10} {'median s':>9} {'ratio':>7}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<10} {med:>9.3f} {med / base:>7.2f}")


if __name__ == "__main__":
    main()
