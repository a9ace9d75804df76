import itertools

import pytest
import torch
import torch.nn.functional as F

import parl_core as pc


def _ens(arch="smallcnn", c=1, m=3, dtype=torch.float64):
    return pc.Ensemble([pc.build_model(arch, 10, c, seed=i) for i in range(m)]).to(dtype)


def _slow_parl(ens, x, y, g1, g2, k):
    """Eq. (1) one example at a time, plain autograd (models in eval mode)."""
    ce = sum(F.cross_entropy(m(x), y) for m in ens.members)
    reg, pair = 0.0, torch.zeros(len(ens.members), len(ens.members), dtype=x.dtype)
    for i, j in itertools.combinations(range(len(ens.members)), 2):
        r = 0.0
        for n in range(len(x)):
            xn = x[n:n + 1].clone().requires_grad_(True)
            for layer in range(k):
                gi = torch.autograd.grad(ens.members[i](xn, return_features=True)[1][layer].sum(), xn)[0]
                gj = torch.autograd.grad(ens.members[j](xn, return_features=True)[1][layer].sum(), xn)[0]
                r = r + F.cosine_similarity(gi.flatten(), gj.flatten(), dim=0)
        r = r / len(x)
        pair[i, j] = pair[j, i] = r
        reg = reg + r
    return g1 * ce + g2 * reg, ce, reg, pair


@pytest.mark.parametrize("arch,c", [("smallcnn", 1), ("mlp", 2)])
def test_batched_loss_equals_slow_loop(arch, c):
    ens = _ens(arch, c).eval()
    shape = (6, 1, 8, 8) if arch == "smallcnn" else (6, 2)
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 2
    k = 3
    loss, parts = pc.parl_loss(ens, x, y, gamma1=0.7, gamma2=0.3, layers=k)
    ref, ce, reg, pair = _slow_parl(ens, x, y, 0.7, 0.3, k)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(parts["ce"], ce)
    torch.testing.assert_close(parts["reg"], reg)
    torch.testing.assert_close(parts["pairwise"], pair)
    assert torch.all(parts["pairwise"].diagonal() == 0)


def test_gradients_reach_every_member():
    ens = _ens().train()
    x, y = torch.rand(8, 1, 8, 8, dtype=torch.float64), torch.arange(8) % 10
    loss, _ = pc.parl_loss(ens, x, y, gamma1=0.0, gamma2=1.0)  # the regulariser alone
    loss.backward()
    for m in ens.members:
        assert m.convs[0].weight.grad is not None and m.convs[0].weight.grad.abs().sum() > 0


def test_zero_gradient_inputs_give_finite_loss():
    # an MLP whose first layer is zero has zero layer gradients at every input
    ens = _ens("mlp", 2, dtype=torch.float32)
    for m in ens.members:
        torch.nn.init.zeros_(m.linears[0].weight)
    loss, parts = pc.parl_loss(ens, torch.randn(5, 2), torch.zeros(5, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss) and parts["reg"].item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in ens.parameters() if p.grad is not None)


def test_parl_lowers_the_pairwise_term_of_identical_members():
    ens = pc.Ensemble([pc.build_model("mlp", 2, 2, seed=0) for _ in range(2)])
    x, y = torch.randn(64, 2), torch.randint(0, 2, (64,))
    _, parts = pc.parl_loss(ens, x, y, layers=2)
    assert parts["reg"].item() == pytest.approx(2.0, abs=1e-5)  # cos = 1 at both layers


def test_validation():
    ens = _ens(dtype=torch.float32)
    x, y = torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="L=4"):
        pc.parl_loss(ens, x, y, layers=5)
    with pytest.raises(ValueError, match="gamma1 and gamma2 must be >= 0"):
        pc.parl_loss(ens, x, y, gamma2=-1)
    with pytest.raises(ValueError, match="unknown method 'parl2'"):
        pc.make_method("parl2")
    with pytest.raises(ValueError, match="does not take \\['gamma3'\\]"):
        pc.make_method("parl", gamma3=1)
