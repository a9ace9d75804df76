"""ADP, GAL and DVERGE: formulas against slow direct computations, gradients reach every
member, distillation stays in its ball and moves features, and each method trains."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import parl_core as pc
from parl_core.baselines import features_at
from parl_core.cli import main as cli_main
from parl_core.losses import make_method
from parl_core.train import epoch_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return pc.load_dataset("digits", "train"), pc.load_dataset("digits", "test")


def tiny_ensemble(arch="smallcnn", m=3, seed=0, **kw):
    in_ch = 2 if arch == "mlp" else 1
    return pc.Ensemble([pc.build_model(arch, 5, in_ch, seed=seed + i, **kw) for i in range(m)])


def batch(n=6, seed=0, shape=(1, 8, 8), classes=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g), torch.randint(classes, (n,), generator=g)


def member_grads_nonzero(ens):
    return [any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
            for m in ens.members]


# --------------------------------------------------------------------------- ADP
def test_adp_terms_equal_slow_formula():
    ens, (x, y) = tiny_ensemble(width=4), batch()
    loss, parts = pc.adp_loss(ens, x, y, alpha=2.0, beta=0.5)
    with torch.no_grad():
        p = F.softmax(ens.member_logits(x), -1).double().numpy()  # (M, N, C)
    ents, dets = [], []
    for n in range(x.shape[0]):
        pbar = p[:, n].mean(0)
        ents.append(-sum(v * math.log(v) for v in pbar))
        rows = np.stack([np.delete(p[i, n], int(y[n])) for i in range(p.shape[0])])
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        dets.append(math.log(np.linalg.det(rows @ rows.T + 1e-6 * np.eye(len(rows)))))
    assert parts["entropy"].item() == pytest.approx(np.mean(ents), rel=1e-5)
    assert parts["log_det"].item() == pytest.approx(np.mean(dets), rel=1e-4, abs=1e-4)
    expect = parts["ce"] - 2.0 * parts["entropy"] - 0.5 * parts["log_det"]
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)


def test_adp_regulariser_reaches_every_member():
    ens, (x, y) = tiny_ensemble(width=4), batch()
    _, parts = pc.adp_loss(ens, x, y)
    (-2.0 * parts["entropy"] - 0.5 * parts["log_det"]).backward()
    assert member_grads_nonzero(ens) == [True] * 3


def test_adp_rejects_negative_weights():
    ens, (x, y) = tiny_ensemble(width=4), batch()
    with pytest.raises(ValueError, match="alpha"):
        pc.adp_loss(ens, x, y, alpha=-1.0)
    with pytest.raises(ValueError, match="beta"):
        make_method("adp", beta=-0.5)


# --------------------------------------------------------------------------- GAL
def slow_coherence(grads):
    """mean over examples of log Σ_{i<j} exp(cos), one example and pair at a time."""
    g = grads.flatten(2).double().numpy()
    m, n = g.shape[:2]
    vals = []
    for k in range(n):
        s = sum(math.exp(g[i, k] @ g[j, k] / (np.linalg.norm(g[i, k]) * np.linalg.norm(g[j, k])))
                for i in range(m) for j in range(i + 1, m))
        vals.append(math.log(s))
    return float(np.mean(vals))


def test_gal_coherence_equals_slow_formula_eval_mode():
    # In eval mode an example's CE gradient is that of a forward of the example alone.
    ens, (x, y) = tiny_ensemble(width=4), batch()
    ens.eval()
    _, parts = pc.gal_loss(ens, x, y, lam=0.5)
    grads = torch.stack([torch.cat([_one_grad(m, x[k:k + 1], y[k:k + 1]) for k in range(len(x))])
                         for m in ens.members])  # (M, N, 1, 8, 8)
    assert parts["reg"].item() == pytest.approx(slow_coherence(grads), rel=1e-5)


def _one_grad(model, x, y):
    xg = x.clone().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(model(xg), y), xg)[0]


def test_gal_gradients_are_per_example_in_train_mode():
    # Batch statistics held constant: CE_k's gradient lives only on example k.
    ens, (x, y) = tiny_ensemble(width=4), batch()
    m = ens.members[0]
    with pc.models.per_example_bn(m):
        xg = x.clone().requires_grad_(True)
        ce = F.cross_entropy(m(xg), y, reduction="none")
        rows = [torch.autograd.grad(ce[k], xg, retain_graph=True)[0] for k in range(len(x))]
    ours = pc.baselines.ce_input_grad(m, x, y, create_graph=False)
    for k, r in enumerate(rows):
        others = torch.cat([r[:k], r[k + 1:]])
        assert others.abs().max() == 0
        torch.testing.assert_close(ours[k], r[k])


def test_gal_loss_and_gradients_reach_every_member():
    ens, (x, y) = tiny_ensemble(width=4), batch()
    loss, parts = pc.gal_loss(ens, x, y, lam=0.5)
    assert loss.item() == pytest.approx((parts["ce"] + 0.5 * parts["reg"]).item(), rel=1e-6)
    _, mean_parts = pc.gal_loss(ens, x, y, ce_reduction="mean")
    assert mean_parts["ce"].item() == pytest.approx(parts["ce"].item() / 3, rel=1e-6)
    parts["reg"].backward()  # the coherence term alone: double backprop into every member
    assert member_grads_nonzero(ens) == [True] * 3
    pair = parts["pairwise"]
    torch.testing.assert_close(pair, pair.T)
    assert torch.all(pair.diagonal() == 0)


def test_gal_needs_two_members():
    ens, (x, y) = tiny_ensemble(m=1, width=4), batch()
    with pytest.raises(ValueError, match="at least 2 members"):
        pc.gal_loss(ens, x, y)


def test_gal_noise_is_seeded():
    ens, (x, y) = tiny_ensemble(width=4), batch()
    ens.eval()
    a, b = make_method("gal", noise_std=0.045), make_method("gal", noise_std=0.045)
    clean = make_method("gal")
    la, lb, lc = (f(ens, x, y)[0].item() for f in (a, b, clean))
    assert la == lb and la != lc


# --------------------------------------------------------------------------- DVERGE
@pytest.mark.parametrize("arch,kw,shape", [("smallcnn", {"width": 4}, (1, 8, 8)),
                                           ("resnet20", {"width": 4}, (1, 8, 8)),
                                           ("mlp", {"width": 8, "depth": 3}, (2,))])
def test_features_at_equals_full_forward(arch, kw, shape):
    ens, (x, _) = tiny_ensemble(arch, m=1, **kw), batch(shape=shape)
    m = ens.members[0]
    _, feats = m(x, return_features=True)
    for layer in range(1, m.num_layers + 1):
        torch.testing.assert_close(features_at(m, x, layer), feats[layer - 1])


def feature_gap(m, x, t, layer):
    with torch.no_grad():
        return F.mse_loss(features_at(m, x, layer), features_at(m, t, layer)).item()


@pytest.mark.parametrize("layer", [1, 3])
def test_dverge_distill_stays_in_ball_and_moves_features(layer):
    ens, (x, _) = tiny_ensemble(width=4), batch(n=8, seed=1)
    t, _ = batch(n=8, seed=2)
    ens.eval()
    xd = pc.dverge_distill(ens, x, t, layer, eps=0.07, step_size=0.007, steps=10)
    assert xd.shape == (3, *x.shape)
    assert (xd - x).abs().max() <= 0.07 + 1e-6
    assert xd.min() >= 0 and xd.max() <= 1
    for j, m in enumerate(ens.members):
        assert feature_gap(m, xd[j], t, layer) < feature_gap(m, x, t, layer)
    # batched over members == one member at a time
    torch.testing.assert_close(xd[1], pc.dverge_distill(ens.members[1], x, t, layer))


def test_dverge_distill_validates():
    ens, (x, _) = tiny_ensemble(width=4), batch()
    with pytest.raises(ValueError, match="layer"):
        pc.dverge_distill(ens, x, x, 5)  # smallcnn has 4 layers
    with pytest.raises(ValueError, match="eps"):
        pc.dverge_distill(ens, x, x, 1, eps=-0.1)
    with pytest.raises(ValueError, match="same shape"):
        pc.dverge_distill(ens, x, x[:2], 1)


def test_dverge_rand_start_is_seeded_and_in_ball():
    m, (x, _) = tiny_ensemble(m=1, width=4).members[0], batch()
    a = pc.dverge_distill(m, x, x.flip(0), 2, steps=0, rand_start=True, seed=3)
    b = pc.dverge_distill(m, x, x.flip(0), 2, steps=0, rand_start=True, seed=3)
    assert torch.equal(a, b) and 0 < (a - x).abs().max() <= 0.07 + 1e-6


def test_dverge_loss_reaches_every_member_and_draws_layer(digits):
    train, _ = digits
    ens = pc.build_ensemble("smallcnn", 3, train, seed=0, width=4)
    method = make_method("dverge", steps=2)
    method.start_epoch(ens, 0, epoch_generator(0, 0), train)
    layer = method._layer
    loss, parts = method(ens, train.images[:16], train.labels[:16])
    assert parts["layer"].item() == layer and 1 <= layer <= 4
    loss.backward()
    assert member_grads_nonzero(ens) == [True] * 3
    again = make_method("dverge", steps=2)
    again.start_epoch(ens, 0, epoch_generator(0, 0), train)
    assert again._layer == layer
    fixed = make_method("dverge", layer=9)
    with pytest.raises(ValueError, match="layer=9"):
        fixed.start_epoch(ens, 0, epoch_generator(0, 0), train)


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("method,params", [("adp", {"alpha": 1.0}), ("gal", {"lam": 0.25}),
                                           ("dverge", {"steps": 3})])
def test_one_epoch_through_train(digits, method, params):
    train, test = digits
    train = train.subset(192, seed=0)
    ens = pc.build_ensemble("smallcnn", 3, train, seed=0)
    hist = pc.train(ens, train, test, method=method, epochs=1, batch_size=64, seed=0,
                    eval_size=200, **params)
    rec = hist[0]
    assert math.isfinite(rec["loss"]) and rec["test_acc"] is not None and rec["train_acc"] is not None
    assert {k: hist.method_params[k] for k in params} == params
    if method == "dverge":  # the epoch's distillation layer and the clean CE are logged
        assert rec["layer"] in (1, 2, 3, 4) and rec["clean_ce"] > 0
    assert pc.method_label(method) == {"adp": "ADP", "gal": "GAL", "dverge": "DVERGE"}[method]


@pytest.mark.parametrize("method,extra", [("adp", ["--param", "alpha=1.5"]),
                                          ("gal", ["--param", "lam=0.25", "--param", "ce_reduction=mean"]),
                                          ("dverge", ["--param", "steps=3", "--init",
                                                      "checkpoints/digits_ens_u.safetensors"])])
def test_one_epoch_through_cli_records_method_and_params(tmp_path, monkeypatch, method, extra):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    if "--init" in extra and not (root / extra[-1]).exists():
        pytest.skip("shipped ENS_U checkpoint absent")
    out = tmp_path / f"{method}.safetensors"
    rc = cli_main(["train", "--method", method, "--epochs", "1", "--train-subset", "128",
                   "--eval-size", "100", "--quiet", "--out", str(out), *extra])
    assert rc == 0
    meta = pc.read_metadata(out)
    assert meta["method"] == method and meta["epochs_done"] == 1
    expected = make_method(method).params
    for item in extra[1::2] if method != "dverge" else extra[1:2]:
        k, v = item.split("=")
        expected[k] = type(expected[k])(v) if not isinstance(expected[k], str) else v
    assert meta["params"] == expected
    assert make_method(meta["method"], **meta["params"]).params == expected  # round-trips
    if method == "dverge":
        assert meta["init"] == extra[-1]
    ens, _ = pc.load_checkpoint(out)
    assert len(ens.members) == 3
