import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import parl_core as pc

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
from parl_core.data import augment_batch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_digits_in_pixel_space_and_split_fixed():
    tr, te = pc.load_dataset("digits", "train"), pc.load_dataset("digits", "test")
    assert tr.images.shape == (1347, 1, 8, 8) and te.images.shape == (450, 1, 8, 8)
    assert tr.images.dtype == torch.float32 and tr.labels.dtype == torch.int64
    assert 0.0 <= tr.images.min() and tr.images.max() <= 1.0
    assert torch.equal(pc.load_dataset("digits", "test").images, te.images)
    assert sorted(te.labels.unique().tolist()) == list(range(10))
    assert tr.bounds == (0.0, 1.0) and tr.num_classes == 10


@pytest.mark.parametrize("name", pc.TOY_2D)
def test_2d_sets(name):
    ds = pc.load_dataset(name, "train", n_samples=200, seed=3)
    assert ds.images.shape == (200, 2) and ds.bounds is None and not ds.is_image
    again = pc.load_dataset(name, "train", n_samples=200, seed=3)
    assert torch.equal(ds.images, again.images)
    test = pc.load_dataset(name, "test", n_samples=200, seed=3)
    assert not torch.equal(ds.images, test.images)


def test_bad_names_are_explained():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*digits"):
        pc.load_dataset("mnist")
    with pytest.raises(ValueError, match="split must be"):
        pc.load_dataset("digits", "val")


def _write_cifar(folder: Path, batches=("data_batch_1", "test_batch"), n=20, bad=None):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for b in batches:
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             "labels": rng.integers(0, 10, n).tolist(), "batch_label": b,
             "filenames": [f"{i}.png" for i in range(n)]}
        if b == bad:
            d["data"] = d["data"][:, :100]
        with open(folder / b, "wb") as f:
            pickle.dump(d, f, protocol=4)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f, protocol=4)


def test_cifar_synthetic_reads_present_batches(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py", ("data_batch_1", "data_batch_3", "test_batch"))
    ds = pc.load_dataset("cifar10", "train", root=tmp_path)
    assert ds.images.shape == (40, 3, 32, 32) and ds.info["n_batches"] == 2
    assert ds.info["expected_batches"] == 5 and ds.classes[0] == "c0"
    raw = pickle.load(open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb"))
    # channel-major rows of 32: pixel (c=1, y=2, x=3) of image 0
    assert ds.images[0, 1, 2, 3] == pytest.approx(raw["data"][0, 1024 + 2 * 32 + 3] / 255)


def test_cifar_missing_corrupt_and_wrong_shape(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*python -m parl_core data"):
        pc.load_dataset("cifar10", "train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        pc.load_dataset("cifar100", "test", root=tmp_path)  # no embedded CIFAR-100 sample
    _write_cifar(tmp_path / "cifar-10-batches-py", bad="test_batch")
    with pytest.raises(ValueError, match="test_batch.*uint8 N x 3072"):
        pc.load_dataset("cifar10", "test", root=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="data_batch_1"):
        pc.load_dataset("cifar10", "train", root=tmp_path)


def test_cifar_refuses_code_in_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": Evil()}, f)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        pc.load_dataset("cifar10", "test", root=tmp_path)


@pytest.mark.skipif(not (SHARED / "cifar-10-batches-py").is_dir(),
                    reason="../shared/data/cifar-10-batches-py is absent (only on the team's machines)")
def test_shared_cifar10():
    tr = pc.load_dataset("cifar10", "train", root=SHARED)
    te = pc.load_dataset("cifar10", "test", root=SHARED)
    assert tr.images.shape == (10000, 3, 32, 32) and tr.info["n_batches"] == 1
    assert te.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(te.labels).tolist() == [1000] * 10
    assert te.classes[:2] == ["airplane", "automobile"]


def test_augment_batch_is_a_crop_and_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    same = augment_batch(x, pad=0, flip=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same, x)
    out = augment_batch(x, pad=0, flip=True, generator=torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    a = augment_batch(x, generator=torch.Generator().manual_seed(5))
    b = augment_batch(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape
    # every output pixel is either padding (0) or a pixel of the same image
    for i in range(2):
        assert set(a[i].flatten().tolist()) <= set(x[i].flatten().tolist()) | {0.0}


# --------------------------------------------------------------------------- embedded sample, evaluation order
def test_cifar10_test_falls_back_to_the_embedded_sample(tmp_path):
    ds = pc.load_dataset("cifar10", "test", root=tmp_path)
    assert ds.images.shape == (1000, 3, 32, 32) and ds.images.dtype == torch.float32
    assert 0 <= ds.images.min() and ds.images.max() <= 1
    assert np.bincount(ds.labels.numpy()).tolist() == [100] * 10
    assert ds.classes[:3] == ["airplane", "automobile", "bird"]
    assert "embedded sample of 1000" in ds.info["source"] and "JPEG" in ds.info["provenance"]
    assert ds.mean == pytest.approx([0.4914, 0.4822, 0.4465])  # the model normalisation is unchanged


def test_evaluation_order_is_class_interleaved_and_seeded():
    labels = np.repeat(np.arange(4), [5, 3, 7, 5])
    order = pc.data.evaluation_order(labels)
    assert sorted(order.tolist()) == list(range(len(labels)))  # a permutation
    assert labels[order[:12]].tolist() == [0, 1, 2, 3] * 3  # balanced prefixes
    assert (pc.data.evaluation_order(labels) == order).all()
    assert not (pc.data.evaluation_order(labels, seed=1) == order).all()


def test_evaluation_subset_records_indices_and_is_nested():
    test = pc.load_dataset("digits", "test")
    a, b = pc.evaluation_subset(test, 40), pc.evaluation_subset(test, 100)
    assert a.info["indices"] == b.info["indices"][:40]  # the first n are the same for every n
    torch.testing.assert_close(a.images, test.images[a.info["indices"]])
    big = pc.evaluation_subset(test, 10_000)
    assert len(big) == len(test) and "450 available" in big.info["note"]
    with pytest.raises(ValueError, match="n must be"):
        pc.evaluation_subset(test, 0)


@pytest.mark.skipif(not (SHARED_DATA / "cifar-10-batches-py").is_dir(),
                    reason="../shared/data (the team's CIFAR-10 subset) is not beside this checkout")
def test_sample_is_the_first_thousand_of_the_full_test_sets_order(tmp_path):
    full = pc.evaluation_subset(pc.load_dataset("cifar10", "test", root=SHARED_DATA), 1000)
    sample = pc.evaluation_subset(pc.load_dataset("cifar10", "test", root=tmp_path), 1000)
    assert full.info["indices"] == sample.info["indices"]
    assert torch.equal(full.images, sample.images) and torch.equal(full.labels, sample.labels)
