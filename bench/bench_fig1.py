"""Figure 1 panel for one example: gradients of 3 members, cosines, 3-D embedding, figures.

Times (median of interleaved rounds) the whole panel as the Gradients page builds it:
`input_gradients` (loss gradient, label given) + `gradient_cosines` + `embed_directions`
("compute"), then `gradient_maps_figure`, `angle_matrix_figure`, `directions_3d_figure`
("figures"), for
  digits     the shipped PARL checkpoint (3 x smallcnn, 8x8 grey)
  resnet20   3 x ResNet20 (seeded, untrained: the cost does not depend on the weights)
             on a CIFAR-10 test image (a seeded random image if the data is absent)
Targets (issue 4): digits <= 0.3 s, ResNet20 <= 1 s, on the 2-core machine.

    python bench/bench_fig1.py [--rounds 7] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import parl_core as pc
import parl_core.plots as pp

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def digits_case():
    ens, _ = pc.load_checkpoint(REPO / "checkpoints" / "digits_parl.safetensors")
    ds = pc.load_dataset("digits", "test")
    return ens, ds.images[:1], ds.labels[:1]


def resnet_case():
    if (DATA / "cifar-10-batches-py").exists():
        ds = pc.load_dataset("cifar10", "test", root=DATA)
        x, y, mean, std = ds.images[:1], ds.labels[:1], ds.mean, ds.std
    else:
        x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        y, mean, std = torch.tensor([3]), None, None
    ens = pc.Ensemble([pc.build_model("resnet20", 10, 3, mean=mean, std=std, seed=s)
                       for s in range(3)]).eval()
    return ens, x, y


def panel(ens, x, y):
    names = [f"M{i + 1}" for i in range(len(ens))]
    t0 = time.perf_counter()
    g = pc.input_gradients(ens, x, y)[:, 0]  # (M, C, H, W)
    cos = pc.gradient_cosines(g[:, None])[0]
    pc.embed_directions(cos)
    t1 = time.perf_counter()
    pp.gradient_maps_figure(x[0], g, names)
    pp.angle_matrix_figure(cos, names)
    pp.directions_3d_figure(cos, names)
    return t1 - t0, time.perf_counter() - t1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (on a crowded machine 1 avoids idle-spinning threads)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = {"digits": (digits_case(), 0.3), "resnet20": (resnet_case(), 1.0)}
    for case, _ in cases.values():
        panel(*case)  # warm-up (first-call costs of plotly and torch kernels)
    times = {k: [] for k in cases}
    for _ in range(args.rounds):  # interleaved, so both see the same machine load
        for k, (case, _) in cases.items():
            times[k].append(panel(*case))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"{'case':<10} {'compute s':>10} {'figures s':>10} {'panel s':>9} {'target s':>9} "
          f"{'panel/target':>13}")
    for k, (_, target) in cases.items():
        c = statistics.median(t[0] for t in times[k])
        f = statistics.median(t[1] for t in times[k])
        tot = statistics.median(sum(t) for t in times[k])
        print(f"{k:<10} {c:>10.3f} {f:>10.3f} {tot:>9.3f} {target:>9.1f} {tot / target:>13.2f}")


if __name__ == "__main__":
    main()
