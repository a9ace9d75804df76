"""PARL's feature definition (pre_bn | post_bn | post_relu) and the batch-norm rule for
input-gradients (per_example | batch): the layers are what they claim (checked with
forward hooks), pre_bn's layer-1 gradient ignores the input, per_example gradients are
those of frozen statistics while batch ones couple the batch, and defaults leave the
recorded parameters unchanged."""
import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

import parl_core as pc
from parl_core.baselines import ce_input_grad, gal_loss
from parl_core.features import layer_outputs, num_feature_layers
from parl_core.layergrad import forward_with_layer_grads, layer_gradients
from parl_core.losses import make_method
from parl_core.train import mean_pairwise_r

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASES = [("resnet20", (3, 3, 8, 8), {"width": 2}), ("smallcnn", (4, 1, 8, 8), {"width": 3}),
         ("mlp", (5, 2), {"width": 6})]


def model(arch, shape, kw, seed=0, train=False):
    m = pc.build_model(arch, 5, shape[1], seed=seed, **kw).double()
    with torch.no_grad():  # non-trivial batch-norm parameters and running statistics
        g = torch.Generator().manual_seed(seed + 10)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                for t, lo, hi in ((mod.running_var, 0.5, 2.0), (mod.running_mean, -0.2, 0.2),
                                  (mod.weight, 0.5, 1.5), (mod.bias, -0.3, 0.3)):
                    t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * (hi - lo) + lo)
    return m.train(train)


def inputs(shape, seed=0):
    return torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def main_bns(m):
    """The batch norms that follow layers 1..L in forward order (shortcut ones excluded)."""
    if isinstance(m, pc.models.ResNet20):
        return [m.bn1] + [bn for b in m.blocks for bn in (b.bn_a, b.bn_b)]
    return list(m.bns)


@pytest.mark.parametrize("arch,shape,kw", CASES)
def test_feature_spaces_are_what_they_claim(arch, shape, kw):
    m, x = model(arch, shape, kw), inputs(shape)
    with torch.no_grad():
        spaces = {s: layer_outputs(m, x, s)[1] for s in ("pre_bn", "post_bn", "post_relu")}
    seen = {"conv": [], "bn": [], "in": [], "fc": []}
    hooks = [mod.register_forward_hook(lambda mod, a, out: seen["conv"].append(out))
             for mod in m.layer_modules()]
    hooks += [mod.register_forward_pre_hook(lambda mod, a: seen["in"].append(a[0]))
              for mod in m.layer_modules()[1:]]  # what layer k+1 reads: post_relu of layer k
    hooks.append(m.fc.register_forward_pre_hook(lambda mod, a: seen["fc"].append(a[0])))
    if arch != "mlp":
        hooks += [bn.register_forward_hook(lambda mod, a, out: seen["bn"].append(out))
                  for bn in main_bns(m)]
    with torch.no_grad():
        m(x)  # one forward, observed by the hooks
    for h in hooks:
        h.remove()
    L = m.num_layers
    assert [len(v) for v in spaces.values()] == [L] * 3 and len(seen["in"]) == L - 1
    for k in range(L):
        torch.testing.assert_close(spaces["pre_bn"][k], seen["conv"][k])
        torch.testing.assert_close(spaces["post_bn"][k],
                                   seen["bn"][k] if arch != "mlp" else seen["conv"][k])
        if k < L - 1:
            torch.testing.assert_close(spaces["post_relu"][k], seen["in"][k])
    last = spaces["post_relu"][-1]
    torch.testing.assert_close(last.mean((2, 3)) if last.dim() == 4 else last, seen["fc"][0])
    if arch != "mlp":  # the spaces really differ
        for k in range(L):
            assert not torch.allclose(spaces["post_bn"][k], spaces["pre_bn"][k])
            assert not torch.allclose(spaces["post_relu"][k], spaces["post_bn"][k])
    else:  # no batch norm: post_bn is pre_bn
        assert all(torch.equal(a, b) for a, b in zip(spaces["post_bn"], spaces["pre_bn"]))


def test_resnet_second_conv_post_bn_excludes_the_shortcut_post_relu_includes_it():
    m, x = model("resnet20", (2, 3, 8, 8), {"width": 2}), inputs((2, 3, 8, 8))
    with torch.no_grad():
        _, pre = m(x, return_features=True)
        post_bn = layer_outputs(m, x, "post_bn")[1]
        post_relu = layer_outputs(m, x, "post_relu")[1]
        blk, h = m.blocks[0], post_relu[0]  # block 0 input: relu(bn1(conv1 x))
        torch.testing.assert_close(post_bn[2], blk.bn_b(pre[2]))
        torch.testing.assert_close(post_relu[2], F.relu(blk.bn_b(pre[2]) + h))


@pytest.mark.parametrize("arch,shape,kw", CASES)
def test_pre_bn_layer1_gradient_ignores_the_input(arch, shape, kw):
    m = model(arch, shape, kw, train=True)
    x1, x2 = (inputs(shape, s) * 6 - 3 for s in (1, 2))  # both signs: ReLUs switch
    a, b = layer_gradients(m, x1, 1), layer_gradients(m, x2, 1)
    torch.testing.assert_close(a, b)  # the same for two batches of different inputs
    torch.testing.assert_close(a, a[:, :1].expand_as(a))  # and for every example
    c = layer_gradients(m, x1, 1, feature="post_relu")
    d = layer_gradients(m, x2, 1, feature="post_relu")
    assert not torch.allclose(c, d)  # after the ReLU it depends on the input


@pytest.mark.parametrize("feature", ["post_bn", "post_relu"])
@pytest.mark.parametrize("train", [True, False])
def test_feature_gradients_equal_one_example_at_a_time(feature, train):
    shape = (3, 3, 8, 8)
    m, x = model("resnet20", shape, {"width": 2}, train=train), inputs(shape)
    g = layer_gradients(m, x, 5, feature=feature)
    # per_example: the gradient of each example's own layer sum, statistics frozen
    for n in range(3):
        xg = x.clone().requires_grad_(True)
        with pc.models.per_example_bn(m):
            feats = layer_outputs(m, xg, feature)[1]
        for k in range(5):
            want = torch.autograd.grad(feats[k][n].sum(), xg, retain_graph=True)[0][n]
            torch.testing.assert_close(g[k, n], want)


def frozen_stats_copy(m, x):
    """An eval-mode copy of m whose running statistics are the batch statistics that a
    train-mode forward of x sees at every batch norm."""
    stats = {}
    bns = {name: bn for name, bn in m.named_modules() if isinstance(bn, torch.nn.BatchNorm2d)}

    def keep(name):
        def hook(mod, a):
            stats[name] = (a[0].mean((0, 2, 3)), a[0].var((0, 2, 3), unbiased=False))
        return hook

    hooks = [bn.register_forward_pre_hook(keep(name)) for name, bn in bns.items()]
    with torch.no_grad(), pc.models.per_example_bn(m):
        m(x)
    for h in hooks:
        h.remove()
    c = copy.deepcopy(m).eval()
    cbns = dict(c.named_modules())
    assert set(stats) == set(bns)
    for name, (mean, var) in stats.items():
        cbns[name].running_mean.copy_(mean)
        cbns[name].running_var.copy_(var)
    return c


@pytest.mark.parametrize("feature", ["pre_bn", "post_relu"])
def test_bn_grad_per_example_is_frozen_statistics_batch_couples(feature):
    shape = (4, 3, 8, 8)
    m, x = model("resnet20", shape, {"width": 2}, train=True), inputs(shape)
    per = layer_gradients(m, x, 4, feature=feature, method="autograd")
    batch = layer_gradients(m, x, 4, feature=feature, bn_grad="batch")
    frozen = frozen_stats_copy(m, x)
    for n in range(4):  # example n alone, through the batch's statistics as constants
        alone = layer_gradients(frozen, x[n:n + 1], 4, feature=feature)
        torch.testing.assert_close(per[:, n:n + 1], alone)
    assert not torch.allclose(batch[1:], per[1:])  # layer 1 has no batch norm before it
    # the other examples change: "batch" moves example 0's gradient, in eval mode
    # (running statistics) "per_example" leaves it exactly as it was
    y = x.clone()
    y[1:] = inputs((3, 3, 8, 8), 5)
    batch_y = layer_gradients(m, y, 4, feature=feature, bn_grad="batch")
    assert not torch.allclose(batch[1:, 0], batch_y[1:, 0])
    m.eval()
    torch.testing.assert_close(layer_gradients(m, x, 4, feature=feature)[:, 0],
                               layer_gradients(m, y, 4, feature=feature)[:, 0])


def test_bn_grad_batch_leaves_running_statistics_updated_once():
    m, x = model("smallcnn", (4, 1, 8, 8), {"width": 3}, train=True), inputs((4, 1, 8, 8))
    ref = model("smallcnn", (4, 1, 8, 8), {"width": 3}, train=True)
    with torch.no_grad():
        ref(x)  # one ordinary forward
    forward_with_layer_grads(m, x, 2, feature="post_relu", bn_grad="batch")
    for a, b in zip(main_bns(m), main_bns(ref)):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        assert a.num_batches_tracked == b.num_batches_tracked == 1


def test_gal_bn_grad():
    shape = (4, 1, 8, 8)
    m, x = model("smallcnn", shape, {"width": 3}, train=True), inputs(shape)
    y = torch.tensor([0, 1, 2, 3])
    per = ce_input_grad(m, x, y, create_graph=False)
    batch = ce_input_grad(m, x, y, create_graph=False, bn_grad="batch")
    frozen = frozen_stats_copy(m, x)
    for n in range(4):
        torch.testing.assert_close(per[n:n + 1], ce_input_grad(frozen, x[n:n + 1], y[n:n + 1],
                                                               create_graph=False))
    assert not torch.allclose(per, batch)
    ens = pc.Ensemble([model("smallcnn", shape, {"width": 3}, seed=s, train=True) for s in (0, 1)])
    loss, _ = gal_loss(ens, x, y, bn_grad="batch")
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in ens.members[1].convs.parameters())
    with pytest.raises(ValueError, match="bn_grad must be one of 'per_example', 'batch', got 'both'"):
        gal_loss(ens, x, y, bn_grad="both")


def slow_parl_reg(ens, x, k, feature):
    """Σ_{i<j} R(M_i, M_j) one example at a time, eval mode, from layer_outputs."""
    reg = 0.0
    for i, j in itertools.combinations(range(len(ens.members)), 2):
        for n in range(len(x)):
            xn = x[n:n + 1].clone().requires_grad_(True)
            for layer in range(k):
                gi, gj = (torch.autograd.grad(layer_outputs(ens.members[a], xn, feature)[1][layer].sum(),
                                              xn)[0] for a in (i, j))
                reg = reg + F.cosine_similarity(gi.flatten(), gj.flatten(), dim=0) / len(x)
    return reg


@pytest.mark.parametrize("feature", ["post_bn", "post_relu"])
def test_parl_loss_and_r_under_other_features(feature):
    shape = (3, 1, 8, 8)
    ens = pc.Ensemble([model("smallcnn", shape, {"width": 3}, seed=s) for s in range(3)])
    x, y = inputs(shape), torch.tensor([0, 1, 2])
    _, parts = pc.parl_loss(ens, x, y, layers=3, feature=feature)
    torch.testing.assert_close(parts["reg"], slow_parl_reg(ens, x, 3, feature))
    base = pc.parl_loss(ens, x, y, layers=3)[1]["reg"]
    assert not torch.allclose(parts["reg"], base)
    r, _ = mean_pairwise_r(ens, x, 3, feature=feature)
    assert r == pytest.approx(parts["reg"].item() / 3 / 3, rel=1e-6)  # 3 pairs, K = 3
    assert mean_pairwise_r(ens, x, 3)[0] == pytest.approx(base.item() / 9, rel=1e-6)


def test_parl_options_train_and_validate():
    shape = (4, 1, 8, 8)
    ens = pc.Ensemble([model("smallcnn", shape, {"width": 3}, seed=s, train=True) for s in (0, 1)])
    x, y = inputs(shape), torch.tensor([0, 1, 2, 3])
    for kw in ({"feature": "post_relu", "bn_grad": "batch"}, {"feature": "post_bn"}):
        ens.zero_grad()
        loss, _ = pc.parl_loss(ens, x, y, gamma1=0.0, **kw)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in ens.parameters() if p.grad is not None)
        assert ens.members[0].convs[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="post_bn' with bn_grad='batch' in train mode"):
        pc.parl_loss(ens, x, y, feature="post_bn", bn_grad="batch")
    with pytest.raises(ValueError, match="method='fast' is not available"):
        pc.parl_loss(ens, x, y, feature="post_relu", grad_method="fast")
    with pytest.raises(ValueError,
                       match="feature must be one of 'pre_bn', 'post_bn', 'post_relu', got 'relu'"):
        make_method("parl", feature="relu")
    with pytest.raises(ValueError, match="bn_grad must be one of"):
        layer_gradients(ens.members[0], x, 1, bn_grad="train")
    with pytest.raises(ValueError, match="upto must be None or an int in 1..5"):
        layer_outputs(ens.members[0], x, "reference", upto=6)
    assert num_feature_layers(ens.members[0], "reference") == 5


def test_defaults_leave_params_unchanged_and_options_round_trip():
    assert make_method("parl").params == {"gamma1": 1.0, "gamma2": 0.5, "layers": None,
                                          "grad_method": "auto"}
    assert make_method("gal").params == {"lam": 0.5, "ce_reduction": "sum", "noise_std": 0.0,
                                         "noise_prob": 0.5}
    assert make_method("parl", feature="pre_bn", bn_grad="per_example").params == make_method("parl").params
    p = make_method("parl", feature="post_relu", bn_grad="batch").params
    assert p["feature"] == "post_relu" and p["bn_grad"] == "batch"
    assert make_method("parl", **p).params == p
    g = make_method("gal", bn_grad="batch").params
    assert g["bn_grad"] == "batch" and make_method("gal", **g).params == g


def test_train_with_post_relu_parl():
    train = pc.load_dataset("digits", "train").subset(64, seed=0)
    ens = pc.build_ensemble("smallcnn", 2, train, seed=0, width=3)
    hist = pc.train(ens, train, None, method="parl", epochs=1, batch_size=32, seed=0,
                    feature="post_relu", layers=2, probe_size=16)
    assert hist.method_params["feature"] == "post_relu" and torch.isfinite(torch.tensor(hist[0]["loss"]))
    # R in the history: under the pre-BN definition (comparable across runs) and under the loss's
    rec = hist[0]
    probe = train.subset(16, seed=0).images
    assert rec["r_feature_mean"] == pytest.approx(pc.mean_pairwise_r(ens, probe, rec["k_eval"],
                                                                     feature="post_relu")[0], abs=1e-5)
    assert rec["r_feature_mean"] != pytest.approx(rec["r_mean"], abs=1e-4)
