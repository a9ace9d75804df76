"""The six methods side by side on the shipped digits checkpoints (issues 6 and 15).

For each checkpoint: clean accuracy (majority vote, full test split), mean pairwise
cosine of the members' loss gradients ∇x CE (eval mode, true labels, mean over pairs
and test examples), the layer metric R/K at K_eval recorded in the checkpoint, the
ensemble's average layer-wise CKA (mean over member pairs of the same-layer values,
minibatch estimator) and black-box accuracy under PGD at one ε crafted on the shared
surrogate (50 steps of ε/5, `--restarts` random starts, robust only if every
restart's example is classified correctly).

    python -m bench.table_methods [--eps 0.2] [--restarts 10] [--n 450]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import parl_core as pc

CKPTS = {"ce_only": "digits_ens_u", "parl": "digits_parl", "adp": "digits_adp",
         "gal": "digits_gal", "dverge": "digits_dverge", "trs": "digits_trs"}


def grad_cosine(ens, x, y) -> float:
    """Mean over pairs i<j and examples of cos(∇x CE_i, ∇x CE_j)."""
    cos = pc.gradient_cosines(pc.input_gradients(ens, x, y))  # (N, M, M)
    m = cos.shape[-1]
    iu = torch.triu_indices(m, m, 1)
    return cos[:, iu[0], iu[1]].mean().item()


def row(path: Path, surrogate: Path, test, args) -> dict:
    ens, meta = pc.load_checkpoint(path)
    x, y = test.images, test.labels
    acc, _ = pc.evaluate_accuracy(ens, test)
    cka = pc.ensemble_cka(ens, x, batch_size=150)["overall"]
    res = pc.evaluate_checkpoint(str(path), surrogate=str(surrogate), n_examples=args.n,
                                 attacks=("pgd",), eps=[args.eps], restarts=args.restarts)
    pgd = res.table[res.table["attack"] == "pgd"].iloc[0]
    bb = (pgd["acc"], pgd["ci_low"], pgd["ci_high"])
    return {"label": pc.method_label(meta["method"]), "clean": acc,
            "cos": grad_cosine(ens, x, y), "rk": meta.get("r_mean"), "cka": cka, "bb": bb}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default="checkpoints")
    ap.add_argument("--eps", type=float, default=0.2)
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--n", type=int, default=450, help="test examples for the attack")
    args = ap.parse_args()
    folder = Path(args.folder)
    test = pc.load_dataset("digits", "test")
    surrogate = folder / "digits_surrogate.safetensors"
    print(f"digits, 3 x smallcnn; black-box PGD eps={args.eps}, 50 steps, {args.restarts} "
          f"restarts, n={args.n}, surrogate {surrogate.name}")
    print(f"{'method':<7} {'clean':>6} {'grad cos':>9} {'R/K':>7} {'CKA':>6} {'bb PGD (95% CI)':>20}")
    for name in CKPTS.values():
        r = row(folder / f"{name}.safetensors", surrogate, test, args)
        print(f"{r['label']:<7} {r['clean']:>6.3f} {r['cos']:>9.3f} {r['rk']:>7.3f} "
              f"{r['cka']:>6.3f} {r['bb'][0]:>7.3f} ({r['bb'][1]:.3f}-{r['bb'][2]:.3f})")


if __name__ == "__main__":
    main()
