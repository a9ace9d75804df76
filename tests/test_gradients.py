"""Input gradients, their cosines and the 3-D direction embedding (Figure 1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import parl_core as pc
from parl_core.models import per_example_bn


def _warm(model, x):
    """A train-mode forward so batch norm's running statistics are not the defaults."""
    model.train()
    with torch.no_grad():
        model(x)
    return model


def _digits_models(n=3):
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    return [_warm(pc.build_model("smallcnn", 10, 1, seed=s, width=4), x) for s in range(n)]


def _x(n=6, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _one_by_one_loss_grad(model, x, y):
    """The definition: each example alone, CE of its logits, autograd, eval mode."""
    model.eval()
    out = []
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        loss = F.cross_entropy(model(xi), y[i:i + 1])
        out.append(torch.autograd.grad(loss, xi)[0][0])
    return torch.stack(out)


def test_loss_gradients_equal_autograd_per_member_and_modes_are_restored():
    models, x = _digits_models(), _x()
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    models[1].eval()  # mixed modes: each must come back as it was
    before = [m.training for m in models]
    state = {k: v.clone() for k, v in models[0].state_dict().items()}
    g = pc.input_gradients(models, x, y)
    assert g.shape == (3, 6, 1, 8, 8)
    assert [m.training for m in models] == before
    for k, v in models[0].state_dict().items():
        assert torch.equal(v, state[k]), k  # running statistics untouched
    assert all(p.grad is None for m in models for p in m.parameters())
    for i, m in enumerate(models):
        torch.testing.assert_close(g[i], _one_by_one_loss_grad(m, x, y), rtol=1e-4, atol=1e-7)


def test_no_label_means_the_ensemble_vote_and_batching_changes_nothing():
    models, x = _digits_models(), _x(9)
    ens = pc.Ensemble(models).eval()
    voted = pc.input_gradients(ens, x)
    explicit = pc.input_gradients(models, x, ens.predict(x))
    torch.testing.assert_close(voted, explicit)
    torch.testing.assert_close(pc.input_gradients(ens, x, batch_size=4), voted)


def test_layer_gradient_is_the_gradient_of_the_summed_layer_output():
    models, x = _digits_models(2), _x(5)
    for k in (1, 3):
        g = pc.input_gradients(models, x, layer=k)
        for i, m in enumerate(models):
            m.eval()
            for n in range(len(x)):  # one example at a time: the definition
                xi = x[n:n + 1].clone().requires_grad_(True)
                with per_example_bn(m):
                    feat = m(xi, return_features=True)[1][k - 1]
                ref = torch.autograd.grad(feat.sum(), xi)[0][0]
                torch.testing.assert_close(g[i, n], ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        pc.input_gradients(models, x, layer=5)


def test_two_dimensional_inputs_work():
    ds = pc.load_dataset("moons", "test", n_samples=40)
    models = [pc.build_model("mlp", 2, 2, mean=ds.mean, std=ds.std, seed=s, width=8, depth=2)
              for s in range(2)]
    g = pc.input_gradients(models, ds.images[:7])
    assert g.shape == (2, 7, 2)
    y = pc.Ensemble(models).eval().predict(ds.images[:7])
    torch.testing.assert_close(g[1], _one_by_one_loss_grad(models[1], ds.images[:7], y))
    assert pc.input_gradients(models, ds.images[:7], layer=2).shape == (2, 7, 2)


def test_gradient_cosines_values_zero_gradients_and_types():
    g = torch.tensor([[[1.0, 0.0], [0.0, 0.0]],
                      [[1.0, 1.0], [0.0, 2.0]],
                      [[-1.0, 0.0], [3.0, 0.0]]])  # (M=3, N=2, D=2); model 0: zero at n=1
    cos = pc.gradient_cosines(g)
    assert cos.shape == (2, 3, 3)
    assert cos[0, 0, 1].item() == pytest.approx(1 / np.sqrt(2))
    assert cos[0, 0, 2].item() == pytest.approx(-1.0)
    assert cos[1, 1, 2].item() == pytest.approx(0.0)
    assert torch.all(cos[1, 0] == 0) and not torch.isnan(cos).any()
    assert torch.equal(cos, cos.transpose(1, 2))
    as_np = pc.gradient_cosines(g.numpy())
    assert isinstance(as_np, np.ndarray)
    np.testing.assert_allclose(as_np, cos.numpy())


def test_cosine_to_angle():
    assert pc.cosine_to_angle(0.0) == pytest.approx(90.0)
    assert pc.cosine_to_angle(1.0 + 1e-9) == pytest.approx(0.0)  # clipped, no NaN
    np.testing.assert_allclose(pc.cosine_to_angle(np.array([-1.0, 0.5])), [180.0, 60.0])
    torch.testing.assert_close(pc.cosine_to_angle(torch.tensor([0.5], dtype=torch.float64)),
                               torch.tensor([60.0], dtype=torch.float64))


def test_cosine_distribution_matches_the_per_example_cosines():
    models, x = _digits_models(), _x(11)
    y = torch.arange(11) % 10
    d = pc.cosine_distribution(models, x, y, batch_size=4)
    cos = pc.gradient_cosines(pc.input_gradients(models, x, y))
    assert d["pairs"] == [(0, 1), (0, 2), (1, 2)] and d["labels"][1] == "M1–M3"
    assert d["n"] == 11 and d["all"].shape == (33,)
    for i, j in d["pairs"]:
        np.testing.assert_allclose(d["cosines"][(i, j)], cos[:, i, j].numpy(), atol=1e-5)
    iu = torch.triu_indices(3, 3, 1)
    assert d["mean"] == pytest.approx(cos[:, iu[0], iu[1]].mean().item(), abs=1e-5)
    s = d["summary"]["all"]
    assert s["q05"] <= s["q25"] <= s["q50"] <= s["q75"] <= s["q95"]
    with pytest.raises(ValueError, match="at least 2 models"):
        pc.cosine_distribution(models[:1], x, y)


def _unit(m, d, seed):
    v = np.random.default_rng(seed).normal(size=(m, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _angles(v):
    return pc.cosine_to_angle(np.clip(v @ v.T, -1, 1))


@pytest.mark.parametrize("m", [1, 2, 3])
def test_embedding_reproduces_the_angles_of_up_to_three_vectors(m):
    v = _unit(m, 500, seed=m)
    coords, distortion = pc.embed_directions(v @ v.T)
    assert coords.shape == (m, 3)
    np.testing.assert_allclose(np.linalg.norm(coords, axis=1), 1.0, atol=1e-12)
    iu = np.triu_indices(m, 1)  # (arccos is ill-conditioned on the unit diagonal)
    np.testing.assert_allclose(_angles(coords)[iu], _angles(v)[iu], atol=1e-6)
    assert distortion < 1e-6
    assert coords[0, 1] == pytest.approx(0) and coords[0, 0] > 0  # canonical view: first on +x


def test_embedding_of_more_vectors_reports_its_distortion():
    v = _unit(6, 50, seed=7)
    coords, distortion = pc.embed_directions(torch.tensor(v @ v.T))
    np.testing.assert_allclose(np.linalg.norm(coords, axis=1), 1.0, atol=1e-12)
    iu = np.triu_indices(6, 1)
    actual = np.abs(_angles(coords) - _angles(v))[iu].max()
    assert distortion == pytest.approx(actual, abs=1e-6)
    assert distortion > 1.0  # 6 random directions in 50-D do not fit in 3-D


def test_embedding_puts_a_zero_gradient_at_the_origin_and_validates():
    g = torch.tensor([[[1.0, 0, 0, 0]], [[0.0, 0, 0, 0]], [[1.0, 1, 0, 0]]])  # (3, 1, 4)
    cos = pc.gradient_cosines(g)[0]
    coords, distortion = pc.embed_directions(cos)
    assert np.all(coords[1] == 0)
    assert pc.cosine_to_angle(coords[0] @ coords[2]) == pytest.approx(45.0)
    with pytest.raises(ValueError, match="square"):
        pc.embed_directions(np.ones((2, 3)))
    with pytest.raises(ValueError, match="cosines"):
        pc.embed_directions(np.array([[1.0, 2.0], [2.0, 1.0]]))


def test_input_gradients_validate():
    models = _digits_models(2)
    with pytest.raises(ValueError, match="y must be"):
        pc.input_gradients(models, _x(4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="x must be"):
        pc.input_gradients(models, _x(4).numpy())
    with pytest.raises(ValueError, match="models must"):
        pc.input_gradients([models[0], "not a model"], _x(4))
