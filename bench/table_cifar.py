"""ENS_U vs PARL on the shipped CIFAR-10 checkpoints, every number from the project's own
functions (issue 11's closing table). For each ensemble, on the first --n test examples of
the canonical evaluation order (the embedded sample when the CIFAR folder is absent):

  clean       majority-vote accuracy (the evaluation's clean row), 95 % Wilson interval
  bb PGD      black-box PGD at each ε of --eps, crafted on the surrogate (steps of ε/5,
              --restarts, robust only if every restart's example is classified correctly),
              with the 95 % interval; the same cached results the dashboard shows
  wb PGD      white-box PGD at the same ε
  CKA         the ensemble's average same-layer linear CKA over member pairs (minibatch
              estimator), over the first 7 layers and over all 19
  grad cos    mean pairwise cosine of the members' loss gradients ∇x CE
  R/K         mean pairwise R/K at K = 7 (layer-gradient cosines), on --n-r examples

    python -m bench.table_cifar [--n 1000] [--steps 20] [--restarts 1] [--eps 0.01,0.03,0.05,0.07]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import parl_core as pc
from bench.table_methods import grad_cosine

NAMES = ("cifar10_ens_u", "cifar10_parl")


def _fmt(row) -> str:
    return f"{100 * row['acc']:.1f} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def measure(folder: Path, args) -> list[dict]:
    paths = [str(folder / f"{n}.safetensors") for n in NAMES]
    sur = str(folder / "cifar10_surrogate.safetensors")
    grid = pc.default_eps_grid("cifar10")
    kw = dict(n_examples=args.n, seed=0, steps=args.steps, restarts=args.restarts,
              data_root=args.data_root)
    black = pc.evaluate_checkpoints(paths, surrogate=sur, attacks=list(pc.ATTACKS), eps=grid, **kw)
    white = pc.evaluate_checkpoints(paths, attacks=["pgd"], eps=args.eps, **kw)
    test = pc.evaluation_subset(pc.load_dataset("cifar10", "test", args.data_root), args.n)
    rows = []
    for path, bb, wb in zip(paths, black, white):
        ens, meta = pc.load_checkpoint(path)
        x, y = test.images, test.labels
        cka = pc.ensemble_cka(ens, x, batch_size=250)
        diag = np.mean([p["diagonal"] for p in cka["pairs"].values()], 0)
        r, _ = pc.mean_pairwise_r(ens, x[:args.n_r], 7)
        t_bb, t_wb = bb.table, wb.table
        rows.append({
            "name": Path(path).stem, "method": pc.method_label(meta["method"]),
            "clean": _fmt(t_bb.iloc[0]),
            "bb": {e: _fmt(t_bb[(t_bb.attack == "pgd") & np.isclose(t_bb.eps, e)].iloc[0]) for e in args.eps},
            "wb": {e: _fmt(t_wb[(t_wb.attack == "pgd") & np.isclose(t_wb.eps, e)].iloc[0]) for e in args.eps},
            "cka7": float(diag[:7].mean()), "cka_all": float(diag.mean()), "layers": len(diag),
            "cos": grad_cosine(ens, x[:args.n_r], y[:args.n_r]), "rk": float(r),
            "source": test.info.get("source")})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default="checkpoints")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-r", type=int, default=250, help="examples for R/K and gradient cosine")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--eps", default="0.01,0.03,0.05,0.07")
    args = ap.parse_args()
    args.eps = [float(e) for e in args.eps.split(",")]
    rows = measure(Path(args.folder), args)
    print(f"CIFAR-10, 3 x ResNet20; {rows[0]['source']}; n={args.n}; PGD {args.steps} steps of "
          f"eps/5, {args.restarts} restart(s); black-box from cifar10_surrogate; % [95 % CI]")
    head = ["method", "clean"] + [f"bb {e:g}" for e in args.eps] + [f"wb {e:g}" for e in args.eps] \
        + ["CKA 1-7", "CKA all", "grad cos", "R/K"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [r["method"], r["clean"]] + [r["bb"][e] for e in args.eps] + \
            [r["wb"][e] for e in args.eps] + [f"{r['cka7']:.2f}", f"{r['cka_all']:.2f}",
                                               f"{r['cos']:.2f}", f"{r['rk']:.3f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
