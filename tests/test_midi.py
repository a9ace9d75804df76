"""MI-DI (parl_core.midi): MIM through a random resize-and-pad. p = 0 is MIM exactly, the
examples stay in the ε-ball and the bounds, draws are seeded, and the transform keeps
the shape, is what it says (checked against F.interpolate and F.pad per example) and is
applied with the stated probability."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import parl_core as pc
from parl_core import midi
from parl_core.attacks import ALL_ATTACKS, EXTRA_ATTACKS, attack_restarts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits(data):
    return data[0][:40], data[1][:40]


@pytest.fixture(scope="module")
def rgb():
    """A tiny seeded 3×16×16 ensemble of two small CNNs and 24 random images."""
    members = [pc.build_model("smallcnn", 10, 3, seed=s, width=4) for s in (0, 1)]
    g = torch.Generator().manual_seed(0)
    return pc.Ensemble(members).eval(), torch.rand(24, 3, 16, 16, generator=g), \
        torch.randint(0, 10, (24,), generator=g)


def test_registered_beside_the_other_attacks():
    assert "mi-di" in EXTRA_ATTACKS and "mi-di" in ALL_ATTACKS and "mi-di" in pc.ALL_ATTACKS


@pytest.mark.parametrize("kw", [dict(), dict(loss="margin", early_stop=True),
                                dict(restarts=2, step_size=0.03, decay=0.5)])
def test_prob_zero_is_mim(ens, digits, kw):
    x, y = digits
    mim = pc.attack("mim", ens, x, y, [0.1, 0.25], steps=6, **kw)
    assert torch.equal(midi.mi_di(ens, x, y, [0.1, 0.25], steps=6, prob=0.0, **kw), mim)
    with midi.options(prob=0.0):
        assert torch.equal(pc.attack("mi-di", ens, x, y, [0.1, 0.25], steps=6, **kw), mim)
    assert midi.current_options() == {"prob": midi.PROB, "ratio": midi.RATIO}  # restored


def test_prob_one_moves_differently_from_mim(rgb):
    model, x, y = rgb
    a = midi.mi_di(model, x, y, 0.05, steps=4, prob=1.0)
    assert not torch.equal(a, pc.attack("mim", model, x, y, 0.05, steps=4))


@pytest.mark.parametrize("which", ["digits", "rgb"])
def test_in_the_eps_ball_and_bounds(which, ens, digits, rgb):
    model, x, y = (ens, *digits) if which == "digits" else rgb
    eps = [0.0, 0.03, 0.3]
    adv = attack_restarts("mi-di", model, x, y, eps, steps=5, restarts=2)
    assert adv.shape == (3, 2, *x.shape)
    for e, a in zip(eps, adv):
        assert (a - x).abs().amax() <= e + 1e-6
        assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(adv[0, 0], x) and torch.equal(adv[0, 1], x)  # ε = 0 leaves x alone
    assert not torch.equal(adv[2, 0], adv[2, 1])  # restarts draw their own transforms


def test_seeded_and_independent_of_batching(rgb):
    model, x, y = rgb
    a = midi.mi_di(model, x, y, [0.03, 0.1], steps=4, seed=3, prob=0.7)
    assert torch.equal(a, midi.mi_di(model, x, y, [0.03, 0.1], steps=4, seed=3, prob=0.7))
    assert not torch.equal(a, midi.mi_di(model, x, y, [0.03, 0.1], steps=4, seed=4, prob=0.7))
    one = midi.mi_di(model, x, y, 0.1, steps=4, seed=3, prob=0.7)
    assert torch.equal(a[1], one)  # batched ε values draw what separate calls draw
    both = attack_restarts("mi-di", model, x, y, 0.1, steps=4, restarts=2, seed=5)
    second = attack_restarts("mi-di", model, x, y, 0.1, steps=4, restarts=1, seed=5, first_restart=1)
    assert torch.equal(both[1], second[0])  # a pass over restart 1 alone draws the same


def test_attack_is_stronger_than_nothing(ens, digits):
    x, y = digits
    clean = (ens.predict(x) == y).float().mean()
    adv = pc.attack("mi-di", ens, x, y, 0.25, steps=10)
    assert (ens.predict(adv) == y).float().mean() < clean - 0.4


def _reference(img, o, top, left, pad):
    """One example by hand: nearest resize, zero pad, bilinear resize back."""
    c, h, w = img.shape
    r = F.interpolate(img[None], size=(h + o, w + o), mode="nearest")
    p = F.pad(r, (left, pad - o - left, top, pad - o - top))
    return F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("side,ratio", [(8, 0.1), (16, 0.25), (32, 0.1)])
def test_transform_matches_resize_and_pad(side, ratio):
    g = torch.Generator().manual_seed(side)
    x = torch.rand(64, 2, side, side, generator=g, dtype=torch.float64)
    out, applied = midi.input_diversity(x, 1.0, ratio, generator=torch.Generator().manual_seed(1))
    pad = midi.padded_size(side, ratio) - side
    assert out.shape == x.shape and applied.all()
    draw = midi._draw([torch.Generator().manual_seed(1)], 64, pad, 1.0)[:, 0]
    seen = set()
    for i in range(64):
        o, top, left = (int(v) for v in draw[1:, i])
        assert 0 <= o < pad and 0 <= top <= pad - o and 0 <= left <= pad - o
        seen.add((o, top, left))
        torch.testing.assert_close(out[i], _reference(x[i], o, top, left, pad))
    assert len(seen) > 1
    assert midi.padded_size(32, 0.1) == 36 and midi.padded_size(299, 0.1) == 329
    assert midi.padded_size(8, 0.1) == 9


def test_transform_is_applied_with_the_stated_probability():
    x = torch.rand(4000, 1, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.1
    for prob in (0.0, 0.3, 0.5, 1.0):
        out, applied = midi.input_diversity(x, prob, generator=torch.Generator().manual_seed(2))
        changed = (out != x).flatten(1).any(1)
        assert torch.equal(changed, applied)  # applied rows change, the others are x itself
        share, sd = applied.float().mean().item(), math.sqrt(prob * (1 - prob) / len(x))
        assert abs(share - prob) <= 4 * sd + 1e-12, (prob, share)


def test_gradient_flows_through_the_transform():
    x = torch.rand(5, 3, 12, 12, requires_grad=True)
    out, _ = midi.input_diversity(x, 1.0, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(out.square().sum(), x)
    assert g.shape == x.shape and (g.abs().flatten(1).sum(1) > 0).all()


def test_bad_input_is_explained(ens, digits):
    x, y = digits
    with pytest.raises(ValueError, match="prob must be a number in \\[0, 1\\], got 1.5"):
        midi.mi_di(ens, x, y, 0.1, prob=1.5)
    with pytest.raises(ValueError, match="ratio must be a finite number > 0, got 0"):
        midi.input_diversity(x, 0.5, 0)
    with pytest.raises(ValueError, match="x must be an \\(N, C, H, W\\) tensor"):
        midi.input_diversity(x.flatten(1))
    mlp = pc.build_model("mlp", 2, 2, seed=0)
    with pytest.raises(ValueError, match="mi-di needs image inputs \\(N, C, H, W\\), got shape \\(4, 2\\)"):
        pc.attack("mi-di", mlp, torch.rand(4, 2), torch.zeros(4, dtype=torch.long), 0.1, steps=2)


def test_evaluation_takes_mi_di(ens, digits):
    x, y = digits
    res = pc.robustness_curve(ens, x, y, attacks=["mim", "mi-di"], eps=[0.0, 0.2], steps=5)
    t = res.table
    assert set(t.attack) == {"clean", "mim", "mi-di", "worst-case"}
    assert (t[t.eps == 0.0].acc == t.clean_acc.iloc[0]).all()
    assert res.settings["mi_di"] == {"prob": midi.PROB, "ratio": midi.RATIO}
    assert all(c["ok"] for c in res.checks if c["check"] == "eps = 0")
