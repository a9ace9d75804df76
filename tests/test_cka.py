"""Linear CKA: known facts of the estimators and of layer-wise CKA on tiny models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import parl_core as pc
from parl_core import cka as C


def _data(n, p, seed=0):
    return np.random.default_rng(seed).normal(size=(n, p))


def _related(n, p, q, seed=0, noise=1.0):
    """Y = a nonlinear function of X plus noise: similar, not identical."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = np.tanh(x @ rng.normal(size=(p, q))) + noise * rng.normal(size=(n, q))
    return x, y


def _textbook(x, y):
    """Kornblith et al. (2019): HSIC = tr(K H L H) / (n-1)²,
    CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h) / (n - 1) ** 2  # noqa: E731
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def _song_hsic_u(k, l_):
    """Song et al. (2012) unbiased HSIC written out term by term."""
    n = len(k)
    k, l_ = k.copy(), l_.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l_, 0)
    one = np.ones(n)
    return (np.trace(k @ l_) + (one @ k @ one) * (one @ l_ @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ k @ l_ @ one) / (n * (n - 3))


def _orthogonal(p, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(p, p)))
    return q


# Feature form (n > p) and Gram form (n < p) are both exercised.
SHAPES = [(60, 5, 7), (12, 40, 30)]
ESTIMATORS = [C.linear_cka, C.unbiased_cka, lambda a, b: C.minibatch_cka(a, b, batch_size=8)]


@pytest.mark.parametrize("n,p,q", SHAPES)
@pytest.mark.parametrize("fn", ESTIMATORS)
def test_cka_of_x_with_itself_is_one(n, p, q, fn):
    x = _data(n, p)
    assert fn(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n,p,q", SHAPES)
@pytest.mark.parametrize("fn", ESTIMATORS)
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(n, p, q, fn):
    x, y = _related(n, p, q)
    ref = fn(x, y)
    assert 0.05 < ref < 0.999  # a case where invariance means something
    assert fn(x @ _orthogonal(p, 1), y) == pytest.approx(ref, abs=1e-10)
    assert fn(x, y @ _orthogonal(q, 2)) == pytest.approx(ref, abs=1e-10)
    assert fn(3.7 * x, y) == pytest.approx(ref, abs=1e-10)
    assert fn(x, 0.01 * y) == pytest.approx(ref, abs=1e-10)


@pytest.mark.parametrize("fn", ESTIMATORS)
def test_not_invariant_to_a_general_invertible_linear_map(fn):
    x, y = _related(80, 6, 6, seed=3)
    a = np.diag([20.0, 1, 1, 1, 1, 0.05]) @ _orthogonal(6, 4)  # invertible, anisotropic
    assert abs(fn(x @ a, y) - fn(x, y)) > 0.02


@pytest.mark.parametrize("n,p,q", SHAPES)
def test_linear_cka_equals_the_textbook_formula(n, p, q):
    x, y = _related(n, p, q, seed=5)
    assert C.linear_cka(x, y) == pytest.approx(_textbook(x, y), abs=1e-10)
    # torch input, float32, and images flattened: the same number
    xt = torch.tensor(x, dtype=torch.float32).reshape(n, p, 1)
    assert C.linear_cka(xt, y) == pytest.approx(_textbook(x.astype(np.float32).astype(float), y),
                                                abs=1e-6)


def test_unbiased_cka_equals_song_formula():
    x, y = _related(15, 9, 4, seed=6)
    k, l_ = x @ x.T, y @ y.T
    expected = _song_hsic_u(k, l_) / np.sqrt(_song_hsic_u(k, k) * _song_hsic_u(l_, l_))
    assert C.unbiased_cka(x, y) == pytest.approx(expected, abs=1e-10)


def test_minibatch_estimate_approaches_full_unbiased_as_batches_grow():
    x, y = _related(300, 10, 8, seed=7, noise=1.5)
    full = C.unbiased_cka(x, y)
    orders = [np.random.default_rng(s).permutation(300) for s in range(6)]
    # mean absolute gap over 6 seeded orderings (one ordering alone is noisy)
    errs = [np.mean([abs(C.minibatch_cka(x[o], y[o], batch_size=b) - full) for o in orders])
            for b in (6, 30, 150)]
    assert errs[0] > 1.5 * errs[1] > 2.25 * errs[2]
    assert C.minibatch_cka(x, y, batch_size=300) == pytest.approx(full, abs=1e-12)


def test_guards_small_batches_negative_estimates_and_constants():
    assert C._batches(10, 4) == [(0, 4), (4, 10)]  # a last batch of 2 joins the previous one
    assert C._batches(12, 4) == [(0, 4), (4, 8), (8, 12)]
    with pytest.raises(ValueError, match="at least 4 examples"):
        C.unbiased_cka(_data(3, 2), _data(3, 2))
    with pytest.raises(ValueError, match="batch_size"):
        C.minibatch_cka(_data(10, 2), _data(10, 2), batch_size=3)
    # independent small samples: find one whose unbiased HSIC is negative -> clipped to 0
    for seed in range(50):
        x, y = _data(6, 3, seed), _data(6, 3, seed + 100)
        k = C._u_stats(C._grams([torch.tensor(x)]))
        l_ = C._u_stats(C._grams([torch.tensor(y)]))
        if C._hsic_u(k, l_, 6).item() < 0:
            assert C.unbiased_cka(x, y) == 0.0
            break
    else:
        pytest.fail("no negative unbiased HSIC among 50 independent samples")
    const = np.ones((20, 4))
    assert C.linear_cka(const, _data(20, 4)) == 0.0
    assert C.unbiased_cka(const, _data(20, 4)) == 0.0


def test_mismatched_rows_raise():
    with pytest.raises(ValueError, match="same examples"):
        C.linear_cka(_data(10, 2), _data(11, 2))


# --------------------------------------------------------------------------- models
def _model(seed, width=4):
    return pc.build_model("smallcnn", 10, 1, seed=seed, width=width)


def _x(n=26, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _warm(model, x):
    """A train-mode forward so batch norm's running statistics are not the defaults."""
    model.train()
    with torch.no_grad():
        model(x)
    return model


@pytest.mark.parametrize("estimator", ["minibatch", "full"])
def test_layerwise_cka_of_a_model_with_itself_has_unit_diagonal(estimator):
    m, x = _warm(_model(0), _x()), _x()
    mat = pc.layerwise_cka(m, m, x, batch_size=8, estimator=estimator)
    assert mat.shape == (4, 4)
    np.testing.assert_allclose(np.diag(mat), 1.0, atol=1e-9)
    assert np.all((mat >= 0) & (mat <= 1))
    assert m.training  # mode restored


def test_layerwise_cka_matches_the_array_estimators_on_the_features():
    a, b, x = _model(1), pc.build_model("smallcnn", 10, 1, seed=2, width=6), _x(30)
    a.eval(), b.eval()
    with torch.no_grad():
        fa, fb = a(x, return_features=True)[1], b(x, return_features=True)[1]
    mb = pc.layerwise_cka(a, b, x, batch_size=10)
    full = pc.layerwise_cka(a, b, x, batch_size=7, estimator="full")
    assert mb.shape == full.shape == (4, 4)
    for i in range(4):
        for j in range(4):
            assert mb[i, j] == pytest.approx(C.minibatch_cka(fa[i], fb[j], 10), abs=1e-6)
            assert full[i, j] == pytest.approx(C.linear_cka(fa[i], fb[j]), abs=1e-6)


def test_layerwise_cka_leaves_batch_norm_statistics_alone():
    m, x = _warm(_model(3), _x()), _x(seed=1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    pc.layerwise_cka(m, _model(4), x, batch_size=8)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_ensemble_cka_one_forward_per_batch_per_model_and_result_layout():
    members = [_model(s) for s in range(3)]
    calls = [0, 0, 0]
    for i, m in enumerate(members):
        m.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    res = pc.ensemble_cka(pc.Ensemble(members), _x(26), batch_size=8)
    assert calls == [3, 3, 3]  # batches of 8, 8 and 10 (the last 2 examples joined)
    assert sorted(res["pairs"]) == [(0, 1), (0, 2), (1, 2)]
    assert res["estimator"] == "minibatch" and res["n"] == 26 and res["members"] == 3
    for p in res["pairs"].values():
        assert p["matrix"].shape == (4, 4)
        np.testing.assert_allclose(p["diagonal"], np.diag(p["matrix"]))
        assert p["overall"] == pytest.approx(p["diagonal"].mean())
    assert res["overall"] == pytest.approx(np.mean([p["overall"] for p in res["pairs"].values()]))
    assert res["pairs"][(0, 2)]["label"] == "M1–M3"


def test_ensemble_cka_full_close_to_minibatch_for_one_big_batch():
    members = [_model(s) for s in range(2)]
    x = _x(64)
    full = pc.ensemble_cka(members, x, estimator="full")["pairs"][(0, 1)]["matrix"]
    mb = pc.ensemble_cka(members, x, batch_size=64)["pairs"][(0, 1)]["matrix"]
    # biased vs unbiased on the same 64 examples: close, not equal
    assert np.abs(full - mb).max() < 0.25


def test_cka_entry_points_validate():
    m, x = _model(0), _x(8)
    with pytest.raises(ValueError, match="estimator"):
        pc.layerwise_cka(m, m, x, estimator="biased")
    with pytest.raises(ValueError, match="batch_size"):
        pc.layerwise_cka(m, m, x, batch_size=2)
    with pytest.raises(ValueError, match="at least 2 models"):
        pc.ensemble_cka([m], x)
    with pytest.raises(ValueError, match="x must be a float tensor"):
        pc.layerwise_cka(m, m, x.numpy())
