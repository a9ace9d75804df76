"""One training step of every method vs a plain ensemble step: 3 x ResNet20, batch 128, CPU.

Prints one table: the median time of interleaved runs of each method's step (loss,
backward, Adam) and its ratio to the plain step, measured side by side in one run
(these machines are noisy and shared):
  ce_only   ENS_U: Σ_i CE_i
  parl      PARL, K = 7, fast path (explicit VJPs); issue 2's target: <= 2.5x plain
  parl_autograd  the same loss through the generic path (one autograd.grad per layer,
            create_graph), the reference the fast path is parity-tested against
  adp       ADP, α = 2, β = 0.5 (one forward per member; the extra terms are tiny)
  gal       GAL, λ = 0.5: per member an ordinary forward for CE and a per-example
            forward + double backward for ∇_x CE_i (the reference also runs two)
  dverge    DVERGE, ε 0.07, 10 steps, at `--layer` (default: the middle layer, 10 of
            19, the expected cost of the per-epoch draw): M x 10 distillation steps that
            stop the forward at the layer, plus M(M-1) training forwards on x'_j
What the reference algorithms require, in member forward+backward passes per step:
ADP M, GAL 2M with M double backwards, DVERGE M x steps distillation passes (the
reference runs them to the logits and recomputes the target features each step) plus
M(M-1) training passes.

    python -m bench.bench_methods [--rounds 5] [--batch 128] [--threads N] [--layer 10]
                                  [--only parl parl_autograd]
"""
from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch

import parl_core as pc
from parl_core.train import epoch_generator

# variant -> (method, parameters)
VARIANTS = {"ce_only": ("ce_only", {}), "parl": ("parl", {"layers": 7}),
            "parl_autograd": ("parl", {"layers": 7, "grad_method": "autograd"}),
            "adp": ("adp", {}), "gal": ("gal", {}), "dverge": ("dverge", {})}


def make_step(method, ens, x, y, pool, **params):
    loss_fn = pc.make_method(method, **params)
    if hasattr(loss_fn, "start_epoch"):
        loss_fn.start_epoch(ens, 0, epoch_generator(0, 0), pool)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-3)

    def step():
        loss, _ = loss_fn(ens, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--layer", type=int, default=10, help="DVERGE's distillation layer (1..19)")
    ap.add_argument("--only", nargs="*", default=None,
                    help=f"a subset of {', '.join(VARIANTS)} (ce_only always runs)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    pool = SimpleNamespace(images=torch.rand(4 * args.batch, 3, 32, 32, generator=g))  # DVERGE targets
    variants = {k: v for k, v in VARIANTS.items()
                if args.only is None or k in args.only or k == "ce_only"}
    if "dverge" in variants:
        variants["dverge"] = ("dverge", {"layer": args.layer})
    steps = {}
    for name, (method, params) in variants.items():
        ens = pc.Ensemble([pc.build_model("resnet20", 10, 3, seed=i) for i in range(3)]).train()
        steps[name] = make_step(method, ens, x, y, pool, **params)
        steps[name]()  # warm-up
    times = {k: [] for k in steps}
    names = list(steps)
    for r in range(args.rounds):  # interleaved, so drifts in machine load hit every method;
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotated: no fixed slot
            step = steps[name]
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["ce_only"])
    print(f"3 x ResNet20, batch {args.batch}, CPU, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds (DVERGE layer {args.layer})")
    print(f"{'variant':<14} {'label':<7} {'median s':>9} {'x plain':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        label = pc.method_label(variants[name][0])
        print(f"{name:<14} {label:<7} {med:>9.3f} {med / base:>8.2f}")


if __name__ == "__main__":
    main()
