"""Build parl_core/assets/cifar10_test_sample.npz: the first 1,000 CIFAR-10 test images in
the lab's canonical evaluation order (`parl_core.data.evaluation_order`: 100 per class).

    python scripts/make_cifar_sample.py [--root ../shared/data]

The team's copy in ../shared/data is a JPEG re-encoding of CIFAR-10 (labels and images
are the real ones, pixel values differ slightly from the original release); the
sample's provenance string says so, and every view that uses it says it does.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from parl_core.data import SAMPLE_PATH, _read_cifar_folder, evaluation_order

PROVENANCE = ("CIFAR-10 test set (Krizhevsky, 2009), the first {n} images of the lab's canonical "
              "evaluation order (seed 0, {per} per class), taken from a public JPEG re-encoding "
              "of CIFAR-10 (labels and images real; pixel values differ slightly from the "
              "original release). Source test_batch sha256 {sha}.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data")
    p.add_argument("--n", type=int, default=1000)
    args = p.parse_args(argv)
    folder = Path(args.root) / "cifar-10-batches-py"
    x, y, classes, _ = _read_cifar_folder("cifar10", folder, "test")  # uint8 (N, 3, 32, 32)
    if len(y) != 10_000:
        raise SystemExit(f"expected the full 10,000-image test batch in {folder}, found {len(y)}")
    idx = evaluation_order(y)[:args.n]
    sha = hashlib.sha256((folder / "test_batch").read_bytes()).hexdigest()
    SAMPLE_PATH.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(SAMPLE_PATH, images=x[idx], labels=y[idx].astype(np.int64),
                        indices=idx.astype(np.int64), classes=np.array(classes),
                        provenance=np.array(PROVENANCE.format(n=args.n, per=args.n // 10, sha=sha)))
    print(f"wrote {SAMPLE_PATH} ({SAMPLE_PATH.stat().st_size / 1e6:.2f} MB, {args.n} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
