"""Checkpoint folders for the AppTests (fixtures only; no tests here).

The dashboard opens on the shipped CIFAR-10 ensembles when they are in the folder. The
digits AppTests import `shared_checkpoints` and `private_checkpoints` from here, which
override conftest's with copies of the shipped *digits* checkpoints only, so what they
test does not depend on the (large, slow on a CPU) CIFAR checkpoints beside them.
`tiny_cifar` builds CIFAR-shaped ensembles named like the shipped ones, small enough
for seconds-long AppTests, next to two digits checkpoints.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO

TINY_PARL_K = 3  # the tiny PARL checkpoint says it regularised 3 of smallcnn's 4 layers


def copy_digits(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in (REPO / "checkpoints").glob("digits_*.safetensors"):
        shutil.copy2(f, dest / f.name)
    return dest


@pytest.fixture(scope="session")
def shared_checkpoints(tmp_path_factory) -> Path:
    """A read-only-use copy of the shipped digits checkpoints (overrides conftest's)."""
    return copy_digits(tmp_path_factory.mktemp("digits") / "checkpoints")


@pytest.fixture
def private_checkpoints(tmp_path, monkeypatch) -> Path:
    """A private writable copy of the digits checkpoints (overrides conftest's)."""
    d = copy_digits(tmp_path / "checkpoints")
    monkeypatch.setenv("PARL_CHECKPOINTS", str(d))
    monkeypatch.setenv("PARL_DEBUG", "1")
    monkeypatch.delenv("PARL_READONLY", raising=False)
    return d


def build_tiny_cifar(folder: Path, data_root: Path) -> Path:
    """cifar10_ens_u, cifar10_parl and cifar10_surrogate as 2 × smallcnn (width 4) on
    3×32×32 inputs, untrained (their numbers are whatever they are; the tests check that
    the pages report them), plus digits_parl and digits_ens_u."""
    import parl_core as pc
    test = pc.load_dataset("cifar10", "test", data_root)  # no folder there: the embedded sample
    assert test.info.get("sample"), test.info
    for name, method, params, seed in [
            ("cifar10_ens_u", "ce_only", {}, 0),
            ("cifar10_parl", "parl", {"gamma1": 1.0, "gamma2": 0.5, "layers": TINY_PARL_K}, 10),
            ("cifar10_surrogate", "ce_only", {}, 100)]:
        ens = pc.build_ensemble("smallcnn", 2, test, seed=seed, width=4)
        pc.save_checkpoint(folder / f"{name}.safetensors", ens, {
            "dataset": "cifar10", "classes": test.classes, "input_shape": [3, 32, 32],
            "method": method, "params": params, "seed": seed, "epochs": 0, "epochs_done": 0,
            "train_size": 0, "clean_acc": None, "r_mean": None})
    for name in ("digits_parl", "digits_ens_u"):
        shutil.copy2(REPO / "checkpoints" / f"{name}.safetensors", folder / f"{name}.safetensors")
    return folder


@pytest.fixture(scope="module")
def tiny_cifar_folder(tmp_path_factory) -> Path:
    """The folder of `build_tiny_cifar` (built once per module; its cache grows as tests run)."""
    root = tmp_path_factory.mktemp("tiny_cifar")
    return build_tiny_cifar(root / "checkpoints", root / "no_data")


@pytest.fixture
def cifar_env(tiny_cifar_folder, monkeypatch) -> Path:
    """The app pointed at the tiny CIFAR folder; CIFAR data from the embedded sample."""
    monkeypatch.setenv("PARL_CHECKPOINTS", str(tiny_cifar_folder))
    monkeypatch.setenv("PARL_DATA", str(tiny_cifar_folder.parent / "no_data"))
    monkeypatch.setenv("PARL_DEBUG", "1")
    monkeypatch.delenv("PARL_READONLY", raising=False)
    return tiny_cifar_folder
