"""The attacked losses (parl_core.attacks.input_loss): the CW margin, DLR and the vote loss by
their formulas, every loss inside the ε-ball for every iterative attack, and the vote attack
against the majority vote of the shipped digits ENS_U."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import parl_core as pc
from parl_core.attacks import ATTACK_LOSSES, input_loss, vote_loss

NEW_LOSSES = ("margin", "vote", "dlr")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def test_set():
    ds = pc.load_dataset("digits", "test")
    return ds.images, ds.labels


def _tiny(seed=0, classes=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, classes)).eval()


def test_margin_and_dlr_are_their_formulas():
    model, x, y = _tiny(), torch.rand(7, 6), torch.tensor([0, 1, 2, 3, 0, 1, 2])
    z = model(x).detach()
    margin = torch.tensor([max(z[i, j] for j in range(4) if j != y[i]) - z[i, y[i]] for i in range(7)])
    top = z.sort(1, descending=True).values
    dlr = margin / (top[:, 0] - top[:, 2] + 1e-12)
    torch.testing.assert_close(input_loss(model, x, y, "margin")[0], margin)
    torch.testing.assert_close(input_loss(model, x, y, "dlr")[0], dlr)
    # one voter: the vote loss is the margin
    torch.testing.assert_close(input_loss(model, x, y, "vote")[0], margin)
    # an Ensemble: margin and DLR of its log-mean-softmax output
    e = pc.Ensemble([_tiny(1), _tiny(2), _tiny(3)]).eval()
    lz = e(x).detach()
    want = torch.stack([torch.cat([lz[i, :y[i]], lz[i, y[i] + 1:]]).max() - lz[i, y[i]]
                        for i in range(7)])
    torch.testing.assert_close(input_loss(e, x, y, "margin")[0], want)
    assert ((want > 0) == (lz.argmax(1) != y)).all()


def test_vote_loss_is_its_formula():
    # 3 members, 4 classes, label 0. Votes: member 0 -> 1, member 1 -> 0, member 2 -> 2;
    # wrong classes 1 and 2 have one vote each, the mean probability picks t = 1.
    ml = torch.tensor([[[0.0, 3.0, 1.0, -1.0]],
                       [[2.0, 1.5, 0.0, 0.0]],
                       [[0.0, 0.5, 1.0, 0.0]]])
    y = torch.tensor([0])
    p = F.softmax(ml, -1).mean(0)[0]
    assert p[1] > p[2]  # so the target is class 1
    margins = torch.tensor([3.0 - 1.0, 1.5 - 2.0, 0.5 - 1.0])  # z_t − max_{j≠t} z_j per member
    top2 = margins.topk(2).values  # a majority of 3 is 2: the two members closest to t
    want = -F.softplus(-top2).sum()
    torch.testing.assert_close(vote_loss(ml, y), want.view(1))
    # members voting t pull less and less: the loss saturates at 0 from below
    far = torch.tensor([[[0.0, 30.0, 0.0, 0.0]], [[0.0, 30.0, 0.0, 0.0]], [[9.0, 0.0, 0.0, 0.0]]])
    assert -1e-9 < vote_loss(far, y).item() <= 0


def test_vote_loss_gradient_never_vanishes_on_clean_data(ens, test_set):
    # The evaluation's masking check counts exactly-zero input gradients of the attacked loss.
    x, y = test_set
    xi = x[:128].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(input_loss(ens, xi, y[:128], "vote")[0].sum(), xi)
    assert (g.flatten(1).abs().sum(1) > 0).all()


def test_unknown_loss_lists_the_valid_ones(ens, test_set):
    x, y = test_set
    for call in (lambda: input_loss(ens, x[:2], y[:2], "hinge"),
                 lambda: pc.attack("bim", ens, x[:2], y[:2], 0.1, steps=1, loss="hinge")):
        with pytest.raises(ValueError, match="loss must be one of") as info:
            call()
        assert all(name in str(info.value) for name in ATTACK_LOSSES)


def test_dlr_needs_three_classes():
    model, x, y = _tiny(classes=2), torch.rand(3, 6), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="3 classes"):
        pc.attack("bim", model, x, y, 0.1, steps=1, bounds=None, loss="dlr")


@pytest.mark.parametrize("loss", NEW_LOSSES)
def test_every_attack_stays_in_the_ball_and_is_deterministic(loss, ens, test_set):
    x, y = test_set[0][:48], test_set[1][:48]
    eps = [0.05, 0.15]
    for name in pc.ATTACKS:
        adv = pc.attack(name, ens, x, y, eps, steps=4, restarts=2, seed=5, loss=loss)
        assert adv.shape == (2, *x.shape)
        for e, a in zip(eps, adv):
            assert (a - x).abs().max().item() <= e + 1e-7
            assert a.min().item() >= 0.0 and a.max().item() <= 1.0
        assert torch.equal(adv, pc.attack(name, ens, x, y, eps, steps=4, restarts=2, seed=5, loss=loss))
        assert torch.equal(pc.attack(name, ens, x, y, 0.0, steps=2, loss=loss), x)


@pytest.mark.parametrize("loss", NEW_LOSSES)
def test_new_losses_hurt(loss, ens, test_set):
    x, y = test_set[0][:96], test_set[1][:96]
    clean = (ens.predict(x) == y).float().mean().item()
    adv = pc.attack("bim", ens, x, y, 0.2, steps=10, loss=loss)
    assert (ens.predict(adv) == y).float().mean().item() < min(0.3, clean - 0.5)


def test_vote_attack_beats_ce_on_the_mean_against_the_vote(ens, test_set):
    """Same budget (BIM, 10 steps, ε = 0.12, where the digits ENS_U sits mid-range), the
    whole test set: attacking the vote leaves fewer examples correctly voted. Measured:
    CE on the log-mean-softmax 0.560, margin 0.516, vote 0.458 (PGD: 0.569, 0.536, 0.496)."""
    x, y = test_set
    acc = {loss: (ens.predict(pc.attack("bim", ens, x, y, 0.12, steps=10, loss=loss)) == y)
           .float().mean().item() for loss in ("ensemble", "vote")}
    assert 0.2 < acc["ensemble"] < 0.8  # mid-range: the comparison means something
    assert acc["vote"] <= acc["ensemble"] - 0.05, acc
    assert math.isfinite(acc["vote"])


def test_pgd_vote_is_pgd_on_the_vote_loss(ens, test_set):
    """The named attack "pgd-vote" (a column of the evaluation tables) is exactly PGD with
    loss="vote": same random start, steps and step size; its name fixes the loss."""
    x, y = test_set[0][:64], test_set[1][:64]
    kw = dict(steps=5, restarts=2, seed=3)
    named = pc.attack("pgd-vote", ens, x, y, [0.1, 0.2], **kw)
    assert torch.equal(named, pc.attack("pgd", ens, x, y, [0.1, 0.2], loss="vote", **kw))
    assert torch.equal(named, pc.attack("pgd-vote", ens, x, y, [0.1, 0.2], loss="members", **kw))
    assert not torch.equal(named, pc.attack("pgd", ens, x, y, [0.1, 0.2], **kw))
    table = pc.robustness_curve(ens, x, y, attacks=["pgd", "pgd-vote"], eps=[0.12], steps=5).table
    assert set(table.attack) == {"clean", "pgd", "pgd-vote", "worst-case"}
