"""DVERGE's options: the reference feature space maps to the reference trainer's tensors
(checked against a forward written out by hand), DVERGE+AdvT (plus_adv) follows the
reference's loss, and neither changes the parameters recorded at the defaults."""
import math

import pytest
import torch
import torch.nn.functional as F

import parl_core as pc
from parl_core.baselines import DVERGE as ReExported
from parl_core.baselines import dverge_distill, features_at
from parl_core.dverge import DVERGE, member_pgd
from parl_core.features import layer_outputs, num_feature_layers
from parl_core.losses import METHODS, make_method
from parl_core.models import per_example_bn
from parl_core.train import epoch_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEFAULTS = {"eps": 0.07, "step_size": 0.007, "steps": 10, "layer": None, "momentum": True,
            "rand_start": False}


def resnet(seed=0, width=2):
    """A tiny ResNet20 (width 2) with non-trivial batch-norm parameters and statistics."""
    m = pc.build_model("resnet20", 5, 3, mean=[0.4] * 3, std=[0.3] * 3, seed=seed, width=width).double()
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                for t, lo, hi in ((mod.running_var, 0.5, 2.0), (mod.running_mean, -0.2, 0.2),
                                  (mod.weight, 0.5, 1.5), (mod.bias, -0.3, 0.3)):
                    t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * (hi - lo) + lo)
    return m


def by_hand(m, x, train):
    """The reference trainer's get_features(layer, before_relu=True) for layers 1..20,
    written out with functional ops from m's weights: stem bn1(conv1 x); per basic block
    bn1(conv1 h) (its 'intermediate' output) and bn2(conv2 relu(...)) + shortcut(h)
    (before the block's ReLU), the shortcut being the identity or conv1x1 + bn; then
    avgpool and fc as layer 20."""
    def bn(t, mod):
        if train:  # batch statistics, as constants (per_example_bn)
            mean, var = t.mean((0, 2, 3)).detach(), t.var((0, 2, 3), unbiased=False).detach()
        else:
            mean, var = mod.running_mean, mod.running_var
        return (t - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + mod.eps) \
            * mod.weight.view(1, -1, 1, 1) + mod.bias.view(1, -1, 1, 1)

    out = []
    h = (x - m.mean) / m.std  # the normalisation buffers (0.4, 0.3)
    t = bn(F.conv2d(h, m.conv1.weight, padding=1), m.bn1)
    out.append(t)
    h = F.relu(t)
    for i, blk in enumerate(m.blocks):
        stride = 2 if i in (3, 6) else 1  # the first block of stages 2 and 3
        a = bn(F.conv2d(h, blk.conv_a.weight, stride=stride, padding=1), blk.bn_a)
        out.append(a)
        b = bn(F.conv2d(F.relu(a), blk.conv_b.weight, padding=1), blk.bn_b)
        if i in (3, 6):
            conv, sbn = blk.short
            short = bn(F.conv2d(h, conv.weight, stride=2), sbn)
        else:
            assert blk.short is None
            short = h
        out.append(b + short)
        h = F.relu(b + short)
    out.append(F.linear(F.avg_pool2d(h, h.shape[-1]).flatten(1), m.fc.weight, m.fc.bias))
    return out


@pytest.mark.parametrize("train", [False, True])
def test_reference_layers_are_the_reference_trainers(train):
    m, x = resnet().train(train), torch.rand(3, 3, 16, 16, dtype=torch.float64)
    assert num_feature_layers(m, "reference") == 20 == m.num_layers + 1
    with torch.no_grad(), per_example_bn(m):
        want = by_hand(m, x, train)
        logits, got = layer_outputs(m, x, "reference")
        for layer in range(1, 21):  # each one alone, the forward stopped after it
            torch.testing.assert_close(features_at(m, x, layer, "reference"), want[layer - 1])
    assert len(got) == 20
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    torch.testing.assert_close(got[-1], logits)
    # and they are not DESIGN §3's layers: those are the raw conv outputs
    assert not torch.allclose(features_at(m, x, 3), want[2])


def test_reference_layer_stops_the_forward_early():
    m, x = resnet(), torch.rand(2, 3, 16, 16, dtype=torch.float64)
    calls = []
    hook = m.fc.register_forward_hook(lambda *a: calls.append(1))
    features_at(m.eval(), x, 19, "reference")
    assert calls == []
    features_at(m, x, 20, "reference")
    hook.remove()
    assert calls == [1]


def test_distillation_in_reference_space_moves_logits_and_validates():
    m, x = resnet().eval(), torch.rand(4, 3, 16, 16, dtype=torch.float64)
    t = torch.rand(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    xd = dverge_distill(m, x, t, 20, steps=5, feature_space="reference")
    assert (xd - x).abs().max() <= 0.07 + 1e-9
    with torch.no_grad():
        gap = [F.mse_loss(m(a), m(t)).item() for a in (x, xd)]
    assert gap[1] < gap[0]
    with pytest.raises(ValueError, match=r"layer must be an int in 1\.\.19 .*'pre_bn'"):
        dverge_distill(m, x, t, 20)
    with pytest.raises(ValueError, match="feature_space must be one of"):
        dverge_distill(m, x, t, 2, feature_space="logits")


def test_member_pgd_follows_the_reference():
    ens = pc.Ensemble([resnet(s).eval() for s in (0, 1)])
    x = torch.rand(6, 3, 16, 16, dtype=torch.float64)
    y = torch.arange(6) % 5
    a = member_pgd(ens, x, y, eps=0.03, step_size=0.01, steps=5, seed=1)
    assert a.shape == (2, *x.shape) and torch.equal(a, member_pgd(ens, x, y, 0.03, 0.01, 5, seed=1))
    assert (a - x).abs().max() <= 0.03 + 1e-9 and a.min() >= 0 and a.max() <= 1
    m0 = ens.members[0]  # one backward serves all members: slot 0 only sees member 0
    torch.testing.assert_close(a[0], member_pgd([m0, m0], x, y, 0.03, 0.01, 5, seed=1)[0])
    with torch.no_grad():
        for i, m in enumerate(ens.members):  # each member's own loss goes up
            assert F.cross_entropy(m(a[i]), y) > F.cross_entropy(m(x), y)
    start = member_pgd(ens.members[0], x, y, 0.03, 0.01, 0, seed=1)  # the random start alone
    assert 0 < (start - x).abs().max() <= 0.03 + 1e-9
    with pytest.raises(ValueError, match="steps must be an int >= 0, got -1"):
        member_pgd(ens, x, y, steps=-1)


def test_plus_adv_loss_is_the_reference_sum(tmp_path):
    train = pc.load_dataset("digits", "train")
    ens = pc.build_ensemble("smallcnn", 3, train, seed=0, width=4)
    x, y = train.images[:12], train.labels[:12]
    plain = make_method("dverge", steps=2, layer=2)
    plus = make_method("dverge", steps=2, layer=2, plus_adv=True, adv_steps=2, dverge_coeff=0.5)
    for meth in (plain, plus):
        meth.start_epoch(ens, 0, epoch_generator(0, 0), train)
    loss0, _ = plain(ens, x, y)
    loss, parts = plus(ens, x, y)
    # the same distilled batches: the diversity term equals plain DVERGE's loss
    assert parts["div_ce"].item() == pytest.approx(loss0.item(), rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * parts["div_ce"].item() + parts["adv_ce"].item(), rel=1e-6)
    assert parts["adv_ce"] > parts["clean_ce"]  # PGD examples are harder than clean ones
    loss.backward()
    assert all(any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
               for m in ens.members)


def test_params_at_defaults_are_unchanged_and_options_round_trip():
    assert make_method("dverge").params == DEFAULTS
    assert METHODS["dverge"] is DVERGE is ReExported
    same = make_method("dverge", feature_space="pre_bn", plus_adv=False, adv_eps=8 / 255)
    assert same.params == DEFAULTS
    p = make_method("dverge", feature_space="reference", plus_adv=True, adv_eps=0.1).params
    assert p == {**DEFAULTS, "feature_space": "reference", "plus_adv": True, "adv_eps": 0.1,
                 "adv_step_size": 2 / 255, "adv_steps": 10, "dverge_coeff": 1.0}
    assert make_method("dverge", **p).params == p
    with pytest.raises(ValueError, match="adv_eps, adv_steps only apply with plus_adv=True"):
        make_method("dverge", adv_eps=0.1, adv_steps=3)
    with pytest.raises(ValueError, match="plus_adv must be True or False, got 'yes'"):
        make_method("dverge", plus_adv="yes")
    with pytest.raises(ValueError, match="feature_space must be one of"):
        make_method("dverge", feature_space="post")


def test_reference_layer_draw_covers_the_logits():
    train = pc.load_dataset("digits", "train")
    ens = pc.build_ensemble("smallcnn", 2, train, seed=0, width=4)
    drawn = set()
    for epoch in range(40):
        meth = make_method("dverge", feature_space="reference")
        meth.start_epoch(ens, epoch, epoch_generator(0, epoch), train)
        drawn.add(meth._layer)
    assert drawn == {1, 2, 3, 4, 5}  # smallcnn: 4 layers + the logits
    with pytest.raises(ValueError, match="layer=6 is out of range: .*L=5 .*'reference'"):
        make_method("dverge", feature_space="reference", layer=6).start_epoch(
            ens, 0, epoch_generator(0, 0), train)


def test_one_epoch_reference_plus_adv_through_train():
    train = pc.load_dataset("digits", "train").subset(96, seed=0)
    ens = pc.build_ensemble("smallcnn", 2, train, seed=0, width=4)
    hist = pc.train(ens, train, None, method="dverge", epochs=1, batch_size=48, seed=0, steps=2,
                    feature_space="reference", plus_adv=True, adv_steps=2, probe_size=16)
    rec = hist[0]
    assert math.isfinite(rec["loss"]) and rec["adv_ce"] > 0 and rec["div_ce"] > 0
    assert 1 <= rec["layer"] <= 5
    assert hist.method_params["feature_space"] == "reference" and hist.method_params["plus_adv"]
