"""Attacks (parl_core.attacks): the L∞ budget, the range, the definitions, and a cross-check
against an independent implementation (torchattacks 3.5.1) on the shipped digits ENS_U."""
from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import parl_core as pc

REPO = Path(__file__).resolve().parents[1]
ATTACKS = ("fgsm", "bim", "mim", "pgd")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ens():
    e, _ = pc.load_checkpoint(REPO / "checkpoints" / "digits_ens_u.safetensors", device="cpu")
    return e


@pytest.fixture(scope="module")
def data():
    ds = pc.load_dataset("digits", "test").subset(64, seed=0)
    return ds.images, ds.labels


def _acc(ens, x, y) -> float:
    return (ens.predict(x) == y).float().mean().item()


@pytest.mark.parametrize("name", ATTACKS)
def test_budget_range_and_strength(name, ens, data):
    x, y = data
    adv = pc.attack(name, ens, x, y, [0.05, 0.2], steps=10, restarts=2)  # (E, N, ...)
    assert adv.shape == (2, *x.shape)
    for e, a in zip([0.05, 0.2], adv):
        assert (a - x).abs().max().item() <= e + 1e-6
        assert a.min().item() >= 0.0 and a.max().item() <= 1.0
        assert _acc(ens, a, y) <= _acc(ens, x, y)
    assert _acc(ens, adv[1], y) < 0.2  # ε = 0.2 breaks a plain digits ensemble (DESIGN §3)


@pytest.mark.parametrize("name", ATTACKS)
def test_eps_zero_returns_the_input(name, ens, data):
    x, y = data
    assert torch.equal(pc.attack(name, ens, x, y, 0.0, steps=5, restarts=3), x)


def test_fgsm_is_its_formula(ens, data):
    x, y = data
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(ens(xg), y, reduction="sum"), xg)
    want = (x + 0.1 * g.sign()).clamp(0, 1)
    assert torch.equal(pc.attack("fgsm", ens, x, y, 0.1), want)


@pytest.mark.parametrize("name", ["bim", "mim", "pgd"])
def test_matches_torchattacks(name, ens, data):
    ta = pytest.importorskip("torchattacks",
                             reason="dev-only reference: pip install --no-deps torchattacks==3.5.1")
    x, y = data
    eps = 0.15
    ref_attack = {"bim": lambda: ta.BIM(ens, eps=eps, alpha=eps / 5, steps=50),
                  "mim": lambda: ta.MIFGSM(ens, eps=eps, alpha=eps / 5, steps=50, decay=0.01),
                  "pgd": lambda: ta.PGD(ens, eps=eps, alpha=eps / 5, steps=50, random_start=True)}[name]()
    torch.manual_seed(7)  # torchattacks draws PGD's start from the global generator
    ref = ref_attack(x, y)
    mine = pc.attack(name, ens, x, y, eps, seed=7)
    if name == "bim":  # same projection arithmetic: bit for bit
        assert torch.equal(mine, ref)
    else:  # δ-clamp vs min/max projection and L1 vs mean-|g| scaling differ by an ulp
        torch.testing.assert_close(mine, ref, atol=1e-6, rtol=0)
    assert _acc(ens, mine, y) == _acc(ens, ref, y)


def test_mim_with_zero_decay_is_bim(ens, data):
    x, y = data
    assert torch.equal(pc.attack("mim", ens, x, y, 0.1, steps=8, decay=0.0),
                       pc.attack("bim", ens, x, y, 0.1, steps=8))


def test_mim_steps_along_the_sign_of_accumulated_momentum():
    # A linear model: ∇ of the CE changes with x only through the softmax, so with a huge
    # decay the first normalised gradient dominates the momentum and fixes the direction.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.full((5, 4), 0.5), torch.tensor([0, 1, 2, 0, 1])
    _, path = pc.attack("mim", model, x, y, 0.4, steps=4, decay=1e6, return_path=True)
    first = (path[1] - path[0]).sign()
    for k in range(1, 4):
        step = (path[k + 1] - path[k]).sign()
        moved = step != 0
        assert torch.equal(step[moved], first[moved])


def test_mim_zero_gradient_guard():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.zeros_(model[1].weight)  # the loss does not depend on x: ∇ = 0 everywhere
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    adv = pc.attack("mim", model, x, y, 0.2, steps=3)
    assert torch.isfinite(adv).all() and torch.equal(adv, x)


def test_seed_reproducibility_and_restarts(ens, data):
    x, y = data
    a = pc.attack("pgd", ens, x, y, 0.1, steps=5, seed=3)
    assert torch.equal(a, pc.attack("pgd", ens, x, y, 0.1, steps=5, seed=3))
    assert not torch.equal(a, pc.attack("pgd", ens, x, y, 0.1, steps=5, seed=4))
    every = pc.attack_restarts("pgd", ens, x, y, 0.1, steps=5, restarts=3, seed=3)  # (R, N, ...)
    assert every.shape == (3, *x.shape)
    assert torch.equal(every[0], a)  # restart 0 is the single-restart run
    best = pc.attack("pgd", ens, x, y, 0.1, steps=5, restarts=3, seed=3)
    same = (every == best).flatten(2).all(2)  # (R, N): which restart was returned
    assert same.any(0).all()
    # Restarts can only help the attacker: at most the single run's accuracy.
    assert _acc(ens, best, y) <= _acc(ens, a, y)
    assert pc.attack_restarts("bim", ens, x, y, 0.1, steps=5, restarts=4).shape[0] == 1  # deterministic


def test_batched_eps_equals_separate_calls(ens, data):
    x, y = data
    eps = [0.05, 0.1, 0.2]
    for name in ("bim", "pgd"):
        batched = pc.attack(name, ens, x, y, eps, steps=6, seed=1)
        for e, b in zip(eps, batched):
            torch.testing.assert_close(b, pc.attack(name, ens, x, y, e, steps=6, seed=1), atol=1e-6, rtol=0)


def test_pgd_start_is_uniform_in_the_ball(ens, data):
    x, y = data
    _, path = pc.attack("pgd", ens, x, y, 0.1, steps=2, return_path=True, bounds=None)
    d = path[0] - x
    assert path.shape == (3, *x.shape)
    assert d.abs().max() <= 0.1 and d.abs().mean() > 0.04  # U(-ε, ε): mean |d| = ε/2
    assert abs(d.mean().item()) < 0.005


def test_path_and_early_stop(ens, data):
    x, y = data
    adv, path = pc.attack("bim", ens, x, y, 0.2, steps=10, return_path=True)
    assert path.shape == (11, *x.shape) and torch.equal(path[0], x) and torch.equal(path[-1], adv)
    assert ((path - x).abs().amax((1, 2, 3, 4)) <= 0.2 + 1e-6).all()
    wrong = ens.predict(x) != y
    es, es_path = pc.attack("bim", ens, x, y, 0.2, steps=10, early_stop=True, return_path=True)
    assert torch.equal(es[wrong], x[wrong])  # already misclassified: never attacked
    stopped = (es_path[-2] == es_path[-1]).flatten(1).all(1) & (es_path[1] != x).flatten(1).any(1)
    assert (ens.predict(es[stopped]) != y[stopped]).all()  # stopped because fooled
    assert _acc(ens, es, y) <= _acc(ens, x, y)


def test_modes_restored_and_grads_untouched(ens, data):
    x, y = data
    ens.train()
    ens.members[1].eval()
    before = {n: m.training for n, m in ens.named_modules()}
    p0 = next(ens.parameters())
    p0.grad = torch.ones_like(p0)
    try:
        pc.attack("pgd", ens, x[:8], y[:8], 0.1, steps=2)
        assert {n: m.training for n, m in ens.named_modules()} == before
        assert torch.equal(p0.grad, torch.ones_like(p0))
        assert all(p.grad is None for p in list(ens.parameters())[1:])
    finally:
        p0.grad = None
        ens.eval()


class _Uncopyable(nn.Module):
    """A model that copy.deepcopy refuses (it holds a lock): attacked as it is."""

    def __init__(self, model):
        super().__init__()
        self.model, self.lock = model, threading.Lock()

    def forward(self, x):
        return self.model(x)


def test_uncopyable_model_is_attacked_in_place_and_restored(ens, data):
    x, y = data
    wrapped = _Uncopyable(copy.deepcopy(ens.members[0])).train()
    adv = pc.attack("bim", wrapped, x[:8], y[:8], 0.1, steps=3)
    assert wrapped.training and all(m.training for m in wrapped.modules())
    assert all(p.grad is None for p in wrapped.parameters())
    assert torch.equal(adv, pc.attack("bim", wrapped.model.eval(), x[:8], y[:8], 0.1, steps=3))


def test_members_loss_single_model_and_2d():
    torch.manual_seed(0)
    ds = pc.load_dataset("moons", "test")
    x, y = ds.images[:32], ds.labels[:32]
    e = pc.build_ensemble("mlp", 2, ds, seed=0).eval()
    a = pc.attack("bim", e, x, y, 0.3, steps=5, bounds=None, loss="members")
    b = pc.attack("bim", e.members[0], x, y, 0.3, steps=5, bounds=None)
    for adv in (a, b):
        assert (adv - x).abs().max() <= 0.3 + 1e-6
    assert not torch.equal(a, b)
    assert (a < 0).any()  # bounds=None: no clipping to [0, 1]


@pytest.mark.parametrize("kwargs, word", [
    (dict(name="cw"), "name"), (dict(eps=-0.1), "eps"), (dict(eps=[]), "eps"),
    (dict(steps=0), "steps"), (dict(restarts=0), "restarts"), (dict(bounds=(1, 0)), "bounds"),
    (dict(loss="max"), "loss"), (dict(decay=-1.0), "decay"),
    (dict(eps=[0.1, 0.2], return_path=True), "return_path"),
])
def test_validation(kwargs, word, ens, data):
    x, y = data
    args = dict(name="pgd", model=ens, x=x[:4], y=y[:4], eps=0.1, steps=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        pc.attack(**args)


def test_inputs_outside_bounds_are_refused(ens, data):
    x, y = data
    with pytest.raises(ValueError, match="bounds"):
        pc.attack("fgsm", ens, x[:4] + 2.0, y[:4], 0.1)
