"""pc.layer_cosines: the mean pairwise layer-gradient cosine of every layer under PARL's three
definitions of F^k — its shape, its agreement with mean_pairwise_r's R/K, the floor, the
input-independence of layer 1 under "pre_bn" (and not after ReLU), batching, validation.
The wording of "What R measures" (dashboard/findings_r.py) is tested here too: it is a pure
function of such numbers."""
import numpy as np
import pytest
import torch

import parl_core as pc
from dashboard import findings_r
from parl_core.train import mean_pairwise_r

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FEATURES = ("pre_bn", "post_bn", "post_relu")


@pytest.fixture(scope="module")
def x():
    return pc.evaluation_subset(pc.load_dataset("digits", "test"), 60).images


@pytest.mark.parametrize("feature", FEATURES)
def test_shape_and_r_over_k_agree_with_mean_pairwise_r(models, x, feature):
    for ens in (models["ens_u"], models["parl"]):
        L = min(m.num_layers for m in ens.members)
        c = pc.layer_cosines(ens, x, feature=feature)
        assert c.shape == (L,) and torch.isfinite(c).all()
        for k in (1, 3, L):
            assert c[:k].mean().item() == pytest.approx(mean_pairwise_r(ens, x, k, feature=feature)[0], abs=1e-5)
        pe = pc.layer_cosines(ens, x, feature=feature, per_example=True)
        assert pe.shape == (L, len(x)) and torch.allclose(pe.mean(1), c, atol=1e-6)
        assert (pe >= -1 / (len(ens.members) - 1) - 1e-5).all()  # no mean of 3 cosines is below the floor


def test_pre_bn_layer_one_is_the_same_for_every_input_but_not_after_relu(models, x):
    ens = models["ens_u"]
    pre = pc.layer_cosines(ens, x, feature="pre_bn", per_example=True)
    assert float(pre[0].max() - pre[0].min()) < 1e-6          # a constant of the weights
    assert float(pre[1].max() - pre[1].min()) > 1e-3          # deeper layers depend on x
    relu = pc.layer_cosines(ens, x, feature="post_relu", per_example=True)
    assert float(relu[0].max() - relu[0].min()) > 1e-3        # the ReLU makes layer 1 depend on x


def test_a_resnet_list_of_models_batches_and_modes():
    torch.manual_seed(0)
    ms = [pc.build_model("resnet20", 5, 3, width=2, seed=s) for s in (0, 1, 2)]
    xx = torch.rand(9, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for m in ms:
        m.train()
    whole = pc.layer_cosines(ms, xx, feature="post_relu", per_example=True)
    parts = pc.layer_cosines(ms, xx, feature="post_relu", per_example=True, batch_size=4)
    assert whole.shape == (ms[0].num_layers, 9) and torch.allclose(whole, parts, atol=1e-5)
    assert all(m.training for m in ms)  # computed in eval mode, each model's mode restored
    pre = pc.layer_cosines(ms, xx, per_example=True)
    assert float(pre[0].max() - pre[0].min()) < 1e-5


@pytest.mark.parametrize("call,message", [
    (lambda e, x: pc.layer_cosines(e.members[:1], x), "at least 2 models"),
    (lambda e, x: pc.layer_cosines(e, x, feature="reference"), "feature must be one of"),
    (lambda e, x: pc.layer_cosines(e, x, feature="post-relu"), "feature must be one of"),
    (lambda e, x: pc.layer_cosines(e, (x * 255).long()), "x must be a non-empty float tensor"),
    (lambda e, x: pc.layer_cosines(e, x[:0]), "x must be a non-empty float tensor"),
    (lambda e, x: pc.layer_cosines(e, x, batch_size=0), "batch_size must be an int >= 1"),
    (lambda e, x: pc.layer_cosines(e, x, per_example="yes"), "per_example must be True or False"),
    (lambda e, x: pc.layer_cosines("ens", x), "models must be"),
])
def test_bad_inputs_are_named(models, x, call, message):
    with pytest.raises(ValueError, match=message):
        call(models["ens_u"], x)


# --------------------------------------------------------------------------- the wording
def _res(per_layer, members=3, spread=None, n=450):
    v = np.asarray(per_layer, dtype=float)
    return {"per_layer": v, "spread": np.zeros_like(v) if spread is None else np.asarray(spread, dtype=float),
            "members": members, "n": n}


METHODS = {"ENS_U": "ce_only", "PARL": "parl"}


def test_lower_r_and_lower_loss_cosine_move_together():
    text = findings_r.r_measure_finding({"ENS_U": _res([-0.35, 0.0, 0.2, 0.0]),
                                         "PARL": _res([-0.5, -0.49, -0.48, -0.48])},
                                        {"ENS_U": 0.38, "PARL": 0.25}, 4, "pre_bn", METHODS, "pre_bn")
    assert "ENS_U: +0.38, PARL: +0.25" in text and "ENS_U: -0.04 over layers 1–4" in text
    assert ("**PARL's R/K is lower than ENS_U's by 0.45**; its loss-gradient cosine is lower too, but only by 0.13 "
            "(29% of R/K's difference): **the gradient attacks follow moves far less than R.**") in text
    assert "PARL sits at the floor" in text  # −0.49 ≤ −0.5 + 0.02
    assert "not lower" not in text and "does not differ" not in text
    assert "layer 1's gradient does not depend on the input" in text
    assert "(ENS_U -0.35, PARL -0.50) is a constant of the weights: the same at all 450 examples" in text


def test_loss_cosine_moving_as_much_as_r_is_said_to_move_the_same_way():
    text = findings_r.r_measure_finding({"ENS_U": _res([0.3, 0.3]), "PARL": _res([0.1, 0.1])},
                                        {"ENS_U": 0.4, "PARL": 0.25}, 2, "post_bn", METHODS)
    assert "lower too, by 0.15 (75% of R/K's difference): here R and the gradient attacks follow move the same" in text
    assert "far less" not in text and "not lower" not in text and "floor" not in text


def test_r_differs_but_the_loss_cosine_does_not_is_said_plainly():
    text = findings_r.r_measure_finding({"ENS_U": _res([0.1, 0.1]), "PARL": _res([-0.4, -0.4])},
                                        {"ENS_U": 0.30, "PARL": 0.31}, None, "pre_bn", METHODS)
    assert "over layers 1–2" in text
    assert "PARL's R/K is lower than ENS_U's by 0.50, but the loss-gradient cosine does not differ (+0.01)" in text
    assert "the gap between what PARL optimises and what attacks follow" in text and "lower too" not in text


def test_reversed_effects_are_said_plainly():
    # PARL's R higher than ENS_U's: the expected effect is absent
    text = findings_r.r_measure_finding({"ENS_U": _res([-0.3, -0.3], spread=[0.1, 0.1]),
                                         "PARL": _res([0.2, 0.2], spread=[0.1, 0.1])},
                                        {"ENS_U": 0.4, "PARL": 0.2}, 2, "post_relu", METHODS, "pre_bn")
    assert "**ENS_U's R/K is lower than PARL's by 0.50, but its loss-gradient cosine is higher (+0.20)" in text
    assert "PARL's R/K is not lower than ENS_U's (+0.50): the expected effect is absent here" in text
    assert "PARL was trained with R before batch norm (PARL's default); this view reads R another way" in text
    assert "constant of the weights" not in text and "depends on the input under this definition" in text
    # R about the same, the loss cosine apart: R does not see the difference
    same = findings_r.r_measure_finding({"A": _res([0.1, 0.1], spread=[0.2, 0.3]),
                                         "B": _res([0.11, 0.1], spread=[0.2, 0.3])},
                                        {"A": 0.5, "B": 0.2}, None, "post_relu")
    assert "R/K is about the same in both" in same and "but the loss-gradient cosine is lower in B (-0.30)" in same
    assert "Layer 1's cosine (A +0.10, B +0.11) depends on the input" in same and "PARL" not in same


def test_layer_one_claims_follow_the_spread():
    varies = findings_r.r_measure_finding({"A": _res([0.1, 0.2], spread=[0.05, 0.1])}, {"A": 0.3}, None, "pre_bn")
    assert "yet here it varies over the 450 examples by up to 0.05" in varies and "same at all" not in varies
    post_bn = findings_r.r_measure_finding({"A": _res([0.1, 0.2])}, {"A": 0.3}, None, "post_bn")
    assert "the same at all 450 examples under this definition too (in eval mode batch norm" in post_bn


def test_wording_validates_its_inputs():
    good = {"A": _res([0.1])}
    with pytest.raises(ValueError, match="feature must be one of"):
        findings_r.r_measure_finding(good, {"A": 0.1}, None, "reference")
    with pytest.raises(ValueError, match="loss_cos has no loss-gradient cosine"):
        findings_r.r_measure_finding(good, {}, None, "pre_bn")
    with pytest.raises(ValueError, match="one or two labels"):
        findings_r.r_measure_finding({}, {}, None, "pre_bn")
    with pytest.raises(ValueError, match="k must be None"):
        findings_r.r_measure_finding(good, {"A": 0.1}, 0, "pre_bn")
    with pytest.raises(ValueError, match="members must be an int >= 2"):
        findings_r.floor(1)
    assert findings_r.r_at_k(_res([0.2, 0.4, 0.9]), 7) == (pytest.approx(0.5), 3)  # K beyond L: all L
