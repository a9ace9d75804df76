"""Datasets in pixel space: images are float32 in [0, 1], shape (N, C, H, W).

Normalisation (mean/std) is *not* applied here: it lives inside the model, so an
attack's epsilon is in pixel units (DESIGN §3). Each dataset carries its
per-channel mean/std (computed on its training split) for the model to use, and
its own default epsilon grid.

Datasets:
  digits            scikit-learn's embedded 8x8 digits (no download), 1x8x8.
  moons, circles,   2-D toy sets from scikit-learn (plus xor, spiral), shape
  blobs, xor,       (N, 2), standardised with the training split's statistics
  spiral            folded into the model like image normalisation.
  cifar10/cifar100  the canonical "python version" folders under a data root.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["Dataset", "load_dataset", "DATASETS", "TOY_2D", "default_eps_grid",
           "augment_batch", "find_data_root", "cifar_available", "evaluation_order",
           "evaluation_subset", "SAMPLE_PATH"]

TOY_2D = ("moons", "circles", "blobs", "xor", "spiral")
DATASETS = ("digits", "cifar10", "cifar100") + TOY_2D

# Per-dataset default attack strengths (pixel units; for 2-D sets, input units).
# CIFAR: the paper's grid. Digits: 8x8 grey images need far larger steps to move
# accuracy (DESIGN §3). 2-D sets: the points live at a scale of ~1.
_EPS_GRIDS = {
    "cifar10": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07],
    "cifar100": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07],
    "digits": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3],
}
_EPS_2D = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]

CIFAR_ENV = "PARL_DATA"


@dataclass
class Dataset:
    """A labelled dataset held in memory as tensors.

    images: (N, C, H, W) float32 in [0, 1] (or (N, 2) for 2-D sets)
    labels: (N,) int64
    """
    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: list[float]
    std: list[float]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_image(self) -> bool:
        return self.images.dim() == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def bounds(self):
        """Valid input range for attacks: (0, 1) for images, None for 2-D sets."""
        return (0.0, 1.0) if self.is_image else None

    def subset(self, n: int | None, seed: int = 0) -> "Dataset":
        """A seeded random subset of n examples (all of them when n is None or >= N)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"subset size must be >= 1, got {n}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        idx = idx.sort().values
        return Dataset(self.name, self.split, self.images[idx], self.labels[idx],
                       self.classes, self.mean, self.std, dict(self.info, subset=n))


def default_eps_grid(name: str) -> list[float]:
    """The default epsilon grid for a dataset (editable wherever epsilon is chosen)."""
    _check_name(name)
    return list(_EPS_GRIDS.get(name, _EPS_2D))


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None, *,
                 n_samples: int = 600, noise: float | None = None, seed: int = 0,
                 download: bool = False) -> Dataset:
    """Load a dataset by name.

    root: data root for CIFAR (default: $PARL_DATA, else ./data). It must contain
      `cifar-10-batches-py` or `cifar-100-python`.
    n_samples, noise, seed: size, noise and seed of the 2-D sets (the test split is
      drawn from the same distribution with seed+1).
    download: for CIFAR, download the folder when absent (`parl_core.download`).
    CIFAR-10's test split falls back to the embedded 1,000-image sample when its folder
    is absent (info["source"] says which set was read).
    """
    _check_name(name)
    _check_split(split)
    if name == "digits":
        return _load_digits(split)
    if name in TOY_2D:
        return _load_2d(name, split, n_samples=n_samples, noise=noise, seed=seed)
    return _load_cifar(name, split, root, download=download)


# --------------------------------------------------------------------------- digits
def _load_digits(split: str) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = d.target.astype(np.int64)
    # A fixed, stratified split: 1,347 train / 450 test.
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=450, random_state=0, stratify=y)
    mean, std = float(xtr.mean()), float(xtr.std())
    xs, ys = (xtr, ytr) if split == "train" else (xte, yte)
    return Dataset("digits", split, torch.from_numpy(xs), torch.from_numpy(ys),
                   [str(i) for i in range(10)], [mean], [std])


# --------------------------------------------------------------------------- 2-D sets
_DEFAULT_NOISE = {"moons": 0.2, "circles": 0.1, "blobs": 1.0, "xor": 0.15, "spiral": 0.1}


def make_2d(name: str, n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw 2-D points and labels for one of TOY_2D (not standardised)."""
    from sklearn import datasets as skd

    rng = np.random.default_rng(seed)
    if name == "moons":
        x, y = skd.make_moons(n, noise=noise, random_state=seed)
    elif name == "circles":
        x, y = skd.make_circles(n, noise=noise, factor=0.5, random_state=seed)
    elif name == "blobs":
        x, y = skd.make_blobs(n, centers=[[-2, -2], [2, 2], [-2, 2]], cluster_std=noise,
                              random_state=seed)
    elif name == "xor":
        x = rng.uniform(-1, 1, size=(n, 2))
        y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int64)
        x = x + rng.normal(0, noise, size=x.shape)
    else:  # spiral: two interleaved arms
        t = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
        y = rng.integers(0, 2, n)
        r = t / (3 * np.pi)
        ang = t + np.pi * y
        x = np.stack([r * np.cos(ang), r * np.sin(ang)], 1) + rng.normal(0, noise, (n, 2)) * 0.3
    return x.astype(np.float32), np.asarray(y, dtype=np.int64)


def _load_2d(name: str, split: str, *, n_samples: int, noise: float | None, seed: int) -> Dataset:
    if n_samples < 10:
        raise ValueError(f"n_samples must be >= 10 for 2-D sets, got {n_samples}")
    noise = _DEFAULT_NOISE[name] if noise is None else float(noise)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    xtr, _ = make_2d(name, n_samples, noise, seed)
    x, y = make_2d(name, n_samples, noise, seed if split == "train" else seed + 1)
    mean, std = xtr.mean(0).tolist(), xtr.std(0).tolist()
    classes = [f"class {c}" for c in range(int(y.max()) + 1)]
    return Dataset(name, split, torch.from_numpy(x), torch.from_numpy(y), classes, mean, std,
                   {"noise": noise, "seed": seed, "n_samples": n_samples})


# --------------------------------------------------------------------------- CIFAR
_CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "meta": "batches.meta", "names": "label_names",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "labels": "labels"},
    "cifar100": {"folder": "cifar-100-python", "meta": "meta", "names": "fine_label_names",
                 "train": ["train"], "test": ["test"], "labels": "fine_labels"},
}
# Published per-channel statistics of the CIFAR training sets (kept fixed so that a
# partial copy of the data gives the same model normalisation as the full one).
_CIFAR_STATS = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}


def find_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else $PARL_DATA, else ./data."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(CIFAR_ENV, "data"))


def cifar_available(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether the canonical folder for `name` exists under the data root."""
    return (find_data_root(root) / _CIFAR[name]["folder"]).is_dir()


def _unpickle_cifar(path: Path) -> dict:
    # The canonical CIFAR release is a pickle of plain dicts/lists/arrays; we load it
    # with a restricted unpickler that refuses anything that could run code.
    class _Safe(pickle.Unpickler):
        _ok = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

        def find_class(self, module, name):
            if (module, name) in self._ok:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    try:
        with open(path, "rb") as f:
            d = _Safe(f, encoding="latin1").load()
    except Exception as e:  # corrupt, truncated, or not a pickle
        raise ValueError(f"cannot read CIFAR file {path}: {type(e).__name__}: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"CIFAR file {path} holds a {type(d).__name__}, expected a dict")
    return d


def _read_cifar_folder(name: str, folder: Path, split: str):
    """(images uint8 (N, 3, 32, 32), labels int64 (N,), class names, files read) of a
    canonical CIFAR folder: the batches of `split` that are present."""
    spec = _CIFAR[name]
    files = [folder / f for f in spec[split] if (folder / f).is_file()]
    if not files:
        raise FileNotFoundError(f"{name}: no {split} batch in {folder} "
                                f"(expected one of {', '.join(spec[split])})")
    xs, ys = [], []
    for f in files:
        d = _unpickle_cifar(f)
        if "data" not in d or spec["labels"] not in d:
            raise ValueError(f"CIFAR file {f} lacks 'data' or '{spec['labels']}' "
                             f"(keys: {sorted(d)[:6]})")
        data = np.asarray(d["data"])
        labels = np.asarray(d[spec["labels"]], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"CIFAR file {f}: 'data' should be uint8 N x 3072, got "
                             f"{data.dtype} {data.shape}")
        if len(labels) != len(data):
            raise ValueError(f"CIFAR file {f}: {len(data)} images but {len(labels)} labels")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    meta_path = folder / spec["meta"]
    n_classes = 10 if name == "cifar10" else 100
    classes = [str(i) for i in range(n_classes)]
    if meta_path.is_file():
        meta = _unpickle_cifar(meta_path)
        classes = [str(c) for c in meta.get(spec["names"], classes)]
    y = np.concatenate(ys)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"{name}: labels out of range 0..{n_classes - 1} in {folder}")
    return np.concatenate(xs), y, classes, files


def _load_cifar(name: str, split: str, root, *, download: bool) -> Dataset:
    spec = _CIFAR[name]
    base = find_data_root(root)
    folder = base / spec["folder"]
    if not folder.is_dir() and download:
        from .download import download_cifar
        download_cifar(name, base)
    mean, std = _CIFAR_STATS[name]
    if not folder.is_dir() and split == "test" and name in _SAMPLES:
        return _load_sample(name, mean, std, missing=folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{name}: folder {folder} not found. Run `python -m parl_core data {name}` to "
            f"download it, or place the canonical python-version folder '{spec['folder']}' (from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html) under {base.resolve()}, or pass "
            f"root=... / set ${CIFAR_ENV} to its parent folder.")
    x, y, classes, files = _read_cifar_folder(name, folder, split)
    # Kept as uint8 until here: converting once is faster than per-batch casts.
    x = torch.from_numpy(x).float().div_(255.0)
    info = {"batches": [f.name for f in files], "n_batches": len(files),
            "expected_batches": len(spec[split]), "root": str(base),
            "source": f"{folder} ({', '.join(f.name for f in files)})"}
    return Dataset(name, split, x, torch.from_numpy(y), classes, list(mean), list(std), info)


# --------------------------------------------------------------------------- embedded sample
SAMPLE_PATH = Path(__file__).parent / "assets" / "cifar10_test_sample.npz"
_SAMPLES = {"cifar10": SAMPLE_PATH}


def _load_sample(name: str, mean, std, *, missing: Path) -> Dataset:
    """The embedded test sample (scripts/make_cifar_sample.py): used when the test folder is
    absent, so shipped CIFAR checkpoints open on a fresh clone. Its images are the first
    ones of `evaluation_order` of the full test set, so evaluation subsets agree."""
    path = _SAMPLES[name]
    if not path.is_file():
        raise FileNotFoundError(f"{name}: neither the folder {missing} nor the embedded sample "
                                f"{path} was found")
    with np.load(path, allow_pickle=False) as z:
        x, y, idx = z["images"], z["labels"].astype(np.int64), z["indices"].astype(np.int64)
        classes, prov = [str(c) for c in z["classes"]], str(z["provenance"])
    info = {"source": f"embedded sample of {len(y)} test images ({path.name}; {missing} not found)",
            "sample": True, "indices": idx.tolist(), "provenance": prov}
    return Dataset(name, "test", torch.from_numpy(x).float().div_(255.0), torch.from_numpy(y),
                   classes, list(mean), list(std), info)


def evaluation_order(labels, seed: int = 0) -> np.ndarray:
    """The canonical order in which every evaluation takes test examples: a seeded
    permutation, interleaved by class (the first example of each class in class order,
    then the second of each, ...). Any prefix is as balanced as the classes allow, and the
    first n examples are the same for every checkpoint, method and page, so numbers compare."""
    labels = np.asarray(labels)
    perm = np.random.default_rng(seed).permutation(len(labels))
    lab = labels[perm]
    rank = np.empty(len(perm), dtype=np.int64)  # position of each example within its class
    for c in np.unique(lab):
        where = np.flatnonzero(lab == c)
        rank[where] = np.arange(len(where))
    return perm[np.lexsort((lab, rank))].astype(np.int64)


def evaluation_subset(ds: Dataset, n: int | None) -> Dataset:
    """The first n examples of `ds` in `evaluation_order` (all when n is None or >= N).

    info["indices"] records each example's index in the full test split (the embedded
    sample keeps the indices it was cut from); info["note"] says when fewer than n
    examples were available."""
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n must be None or an int >= 1, got {n!r}")
    if ds.info.get("sample"):
        order, full = np.arange(len(ds)), np.asarray(ds.info["indices"])  # already in order
    else:
        order, full = evaluation_order(ds.labels.numpy()), np.arange(len(ds))
    take = order if n is None else order[:n]
    info = {k: v for k, v in ds.info.items() if k != "indices"}
    info.update(indices=full[take].tolist(), subset=len(take))
    if n is not None and n > len(ds):
        info["note"] = f"{n} examples asked, {len(ds)} available: all {len(ds)} used"
    t = torch.from_numpy(take)
    return Dataset(ds.name, ds.split, ds.images[t], ds.labels[t], ds.classes, ds.mean, ds.std, info)


# --------------------------------------------------------------------------- augmentation
def augment_batch(x: torch.Tensor, *, pad: int = 4, flip: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, as one batched operation.

    x: (N, C, H, W) on any device; returns a new tensor of the same shape. Each image
    gets its own offset in [-pad, pad]^2 and a fair coin for the flip, drawn from
    `generator` (on CPU, so runs are reproducible on every device).
    """
    n, c, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    fl = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    dev = x.device
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (N, C, H+2p, W+2p)
    rows = (torch.arange(h, device=dev)[None, :] + dy.to(dev)[:, None])  # (N, H)
    cols = torch.arange(w, device=dev)[None, :].expand(n, w)
    cols = torch.where(fl.to(dev)[:, None], w - 1 - cols, cols) + dx.to(dev)[:, None]  # (N, W)
    idx_n = torch.arange(n, device=dev)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
