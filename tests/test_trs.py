"""TRS: its terms against slow direct computations, the reference's batch-mean gradient,
PGD in its ball, the ε ramp, gradients reaching every member through both terms,
parameters that round-trip (and leave the other methods' alone), and a tiny digits
training through pc.train and the CLI."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import parl_core as pc
from parl_core.losses import make_method
from parl_core.trs import TRS, _ce_grads, trs_cosine, trs_loss, trs_magnitude, trs_pgd

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(m=3, seed=0):
    return pc.Ensemble([pc.build_model("smallcnn", 5, 1, seed=seed + i) for i in range(m)])


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 8, 8), generator=g), torch.randint(5, (n,), generator=g)


def test_cosine_and_magnitude_equal_slow_formulas():
    g = torch.randn(3, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cos, pair = trs_cosine(g)
    slow = {}
    for i, j in itertools.combinations(range(3), 2):
        slow[i, j] = sum(abs(F.cosine_similarity(g[i, n].flatten(), g[j, n].flatten(), 0))
                         for n in range(4)) / 4
        assert pair[i, j] == pytest.approx(float(slow[i, j]), abs=1e-6)
    assert cos == pytest.approx(float(sum(slow.values()) / 3), abs=1e-6)
    assert torch.all(pair.diagonal() == 0)
    mag = sum(2 * (g[j].flatten(1) ** 2).sum(1).mean() for j in range(3)) / 3  # reference: /3
    assert trs_magnitude(g) == pytest.approx(float(mag), rel=1e-5)


def test_gradients_are_those_of_the_batch_mean_ce_in_eval_mode():
    m = tiny(1).members[0].eval()
    x, y = batch()
    _, g = _ce_grads(m, x, y, "per_example")
    xg = x.clone().requires_grad_(True)
    ref = torch.autograd.grad(F.cross_entropy(m(xg), y), xg)[0]  # the reference's grad
    torch.testing.assert_close(g, ref)
    _, gb = _ce_grads(m, x, y, "batch")
    torch.testing.assert_close(gb, ref)


def test_pgd_stays_in_ball_and_is_seeded():
    ens = tiny().train()
    x, y = batch()
    a = trs_pgd(list(ens.members), x, y, 0.1, generator=torch.Generator().manual_seed(3))
    b = trs_pgd(list(ens.members), x, y, 0.1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and (a - x).abs().max() <= 0.1 + 1e-6 and a.min() >= 0 and a.max() <= 1
    assert not a.requires_grad


def test_loss_is_finite_and_both_terms_reach_every_member():
    x, y = batch()
    for coeff, lamda in ((1.0, 0.0), (0.0, 1.0)):
        ens = tiny().train()
        loss, parts = trs_loss(ens, x, y, coeff, lamda, 1.0, eps=0.1,
                               generator=torch.Generator().manual_seed(0))
        reg = (parts["cos"] if coeff else parts["smooth"])
        assert torch.isfinite(loss) and reg > 0
        ens.zero_grad()
        (reg * 1.0).backward()  # the regulariser alone moves every member's weights
        for mem in ens.members:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mem.parameters())
    assert parts["pairwise"].shape == (3, 3) and parts["logits"].shape == (3, 6, 5)
    loss_b, _ = trs_loss(tiny().train(), x, y, bn_grad="batch", plus_adv=False)
    assert torch.isfinite(loss_b)


def test_parameters_validate_round_trip_and_leave_other_methods_alone():
    p = make_method("trs").params
    assert p == {"coeff": 2.0, "lamda": 2.0, "scale": 5.0, "init_eps": 0.1, "adv_eps": 0.2,
                 "plus_adv": True, "pgd_steps": 6, "ramp_epochs": 0, "bn_grad": "per_example"}
    assert make_method("trs", **p).params == p
    assert make_method("gal").params == {"lam": 0.5, "ce_reduction": "sum", "noise_std": 0.0,
                                         "noise_prob": 0.5}
    assert make_method("parl").params == {"gamma1": 1.0, "gamma2": 0.5, "layers": None,
                                          "grad_method": "auto"}
    assert pc.method_label("trs") == "TRS"
    for kw, msg in [({"coeff": -1}, "coeff must be a number >= 0"),
                    ({"bn_grad": "mean"}, "bn_grad must be one of"),
                    ({"pgd_steps": 1.5}, "pgd_steps must be an int"),
                    ({"plus_adv": "yes"}, "plus_adv must be True or False")]:
        with pytest.raises(ValueError, match=msg):
            make_method("trs", **kw)
    with pytest.raises(ValueError, match="at least 2 members"):
        trs_loss(tiny(1), *batch())


def test_eps_ramps_over_the_run():
    t = TRS()
    assert t.eps_at(0, 10) == pytest.approx(0.1) and t.eps_at(5, 10) == pytest.approx(0.15)
    assert t.eps_at(3, None) == pytest.approx(0.1)  # no run length: held at init_eps
    assert TRS(ramp_epochs=4).eps_at(2, 100) == pytest.approx(0.15)
    t.start_epoch(None, 9, torch.Generator().manual_seed(0), None, epochs=10)
    assert t._eps == pytest.approx(0.19)


def test_one_epoch_of_tiny_digits_training(tmp_path):
    ds = pc.load_dataset("digits", "train").subset(64, seed=0)
    ens = pc.build_ensemble("smallcnn", 3, ds, seed=0)
    hist = pc.train(ens, ds, None, method="trs", epochs=1, batch_size=32, device="cpu",
                    ramp_epochs=2)
    rec = hist[0]
    assert rec["eps"] == pytest.approx(0.1) and rec["cos"] > 0 and rec["smooth"] >= 0
    assert rec["loss"] == rec["loss"] and hist.method_params["ramp_epochs"] == 2
    from parl_core.cli import main
    out = tmp_path / "t.safetensors"
    assert main(["train", "--method", "trs", "--members", "2", "--epochs", "1", "--train-subset", "64",
                 "--param", "pgd_steps=2", "--out", str(out), "--quiet"]) == 0
    meta = pc.read_metadata(out)
    assert meta["method"] == "trs" and meta["params"]["pgd_steps"] == 2
