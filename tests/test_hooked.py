"""parl_core.hooked: a user-defined nn.Module (tests/import_helpers.UserNet) as an
ensemble member. Its hooked layer outputs feed layer gradients (checked against plain
autograd), R, PARL's loss and training, CKA, DVERGE's features and the attacks; batch
norm holds its statistics per example; checkpoints name the factory and are rebuilt only
with allow_code=True; imports from .pth files and the CLI's --model."""
import pytest
import torch
import torch.nn as nn

import parl_core as pc
from parl_core.checkpoints import CheckpointError
from parl_core.dverge import features_at
from parl_core.hooked import HookedModel, default_layers, hooked_model, import_module_members
from parl_core.models import BatchNorm2d, per_example_bn
from import_helpers import UserNet

FACTORY = "import_helpers:make_user_net"
X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.arange(6) % 10


def _member(seed=0, layers=None):
    torch.manual_seed(seed)
    return HookedModel(UserNet(), layers, num_classes=10, in_channels=1, mean=[0.3], std=[0.4],
                       factory=FACTORY)


def _ens(n=2):
    return pc.Ensemble([_member(i) for i in range(n)])


def test_layers_default_to_conv_and_linear_in_order_and_normalisation_is_inside():
    m = _member().eval()
    assert default_layers(m.net) == ["features.0", "features.3", "head"] == m.layer_names
    assert m.num_layers == 3 and m.layer_modules()[2] is m.net.head
    logits, feats = m(X, return_features=True)
    torch.testing.assert_close(logits, m.net((X - 0.3) / 0.4))
    assert [tuple(f.shape) for f in feats] == [(6, 6, 8, 8), (6, 8, 4, 4), (6, 10)]
    torch.testing.assert_close(feats[0], m.net.features[0]((X - 0.3) / 0.4))
    assert isinstance(m.net.features[1], BatchNorm2d)  # adopted: per-example statistics
    chosen = _member(layers=["features.3"])
    assert chosen.num_layers == 1
    with pytest.raises(ValueError, match=r"\['nope'\] are not submodules of UserNet"):
        _member(layers=["features.0", "nope"])
    with pytest.raises(ValueError, match="mean/std need 1 values"):
        HookedModel(UserNet(), num_classes=10, in_channels=1, mean=[0.1, 0.2])


def test_layer_gradients_match_plain_autograd_and_are_per_example():
    m = _member().train()
    grads = pc.layer_gradients(m, X, 3)  # (K, N, 1, 8, 8)
    for k in range(3):
        xg = X.clone().requires_grad_(True)
        with per_example_bn(m):
            feats = m(xg, return_features=True)[1]
        want = torch.autograd.grad(feats[k].sum(), xg)[0]
        torch.testing.assert_close(grads[k], want)
    xg = X.clone().requires_grad_(True)  # example 0's features do not move with example 1
    with per_example_bn(m):
        f = m(xg, return_features=True)[1][1]
    g = torch.autograd.grad(f[0].sum(), xg)[0]
    assert g[0].abs().sum() > 0 and g[1:].abs().sum() == 0


def test_r_parl_cka_dverge_and_attacks_work_through_hooks():
    ens = _ens(3)
    loss, parts = pc.parl_loss(ens.train(), X, Y, layers=2)
    loss.backward()
    assert torch.isfinite(loss) and parts["pairwise"].shape == (3, 3)
    assert all(p.grad is not None for p in ens.members[0].net.features[0].parameters())
    r, mat = pc.mean_pairwise_r(ens, X, 2)
    assert -0.5 - 1e-6 <= r <= 1 and len(mat) == 3
    cka = pc.layerwise_cka(ens.members[0].eval(), ens.members[1].eval(), X, batch_size=6)
    assert cka.shape == (3, 3)
    f = features_at(ens.members[0], X, 2)
    assert tuple(f.shape) == (6, 8, 4, 4)
    xa = pc.attack("pgd", ens.eval(), X, Y, 0.1, steps=3)
    assert (xa - X).abs().max() <= 0.1 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    g = pc.input_gradients(list(ens.members), X, Y)
    assert tuple(g.shape) == (3, 6, 1, 8, 8)


def test_a_hooked_ensemble_trains_with_the_one_trainer():
    ds = pc.load_dataset("digits", "train").subset(64, seed=0)
    ens = _ens(2)
    hist = pc.train(ens, ds, None, method="parl", epochs=1, batch_size=32, device="cpu")
    assert len(hist) == 1 and hist[0]["loss"] == hist[0]["loss"]


def test_checkpoints_name_the_factory_and_load_only_with_allow_code(tmp_path):
    ens = _ens(2).eval()
    path = pc.save_checkpoint(tmp_path / "user.safetensors", ens, {"dataset": "digits", "method": "ce_only"})
    meta = pc.read_metadata(path)
    assert meta["model"]["factory"] == FACTORY and meta["model"]["arch"] == "hooked"
    with pytest.raises(CheckpointError, match="import_helpers:make_user_net.*not been allowed"):
        pc.load_checkpoint(path)
    back, _ = pc.load_checkpoint(path, allow_code=True)
    with torch.no_grad():
        torch.testing.assert_close(back(X), ens(X))
    assert back.members[0].layer_names == ens.members[0].layer_names


def test_an_unimportable_factory_gives_a_clear_error(tmp_path):
    m = _member().eval()
    m.config["factory"] = "no_such_package.models:make"
    path = pc.save_checkpoint(tmp_path / "gone.safetensors", pc.Ensemble([m]), {"dataset": "digits"})
    with pytest.raises(CheckpointError, match=r"'no_such_package.models:make'.*cannot import no_such_package"):
        pc.load_checkpoint(path, allow_code=True)
    for spec, msg in [("import_helpers:nothing", "no callable 'nothing'"),
                      ("import_helpers:make_not_a_module", "not an nn.Module"),
                      ("os.system", "package.module:function")]:
        with pytest.raises(ValueError, match=msg):
            hooked_model(spec, num_classes=10, in_channels=1)
    m.config["factory"] = "bad spec; rm -rf"
    with pytest.raises(CheckpointError, match="factory"):
        pc.save_checkpoint(tmp_path / "bad.safetensors", pc.Ensemble([m]), {})


def test_import_module_members_and_the_cli(tmp_path, capsys):
    from parl_core.cli import main
    nets = [UserNet().eval() for _ in range(2)]
    files = []
    for i, n in enumerate(nets):
        files.append(tmp_path / f"user{i}.pth")
        torch.save({"model": {f"module.{k}": v for k, v in n.state_dict().items()}}, files[-1])
    ens, meta = import_module_members(files, FACTORY, "features.0,head", "digits")
    assert ens.members[1].layer_names == ["features.0", "head"]
    with torch.no_grad():
        torch.testing.assert_close(ens.members[1](X), nets[1](X))
    assert meta["imported"]["layout"] == "module" and meta["imported"]["normalize_source"] == ["none"] * 2
    out = tmp_path / "u.safetensors"
    assert main(["import", *map(str, files), "--model", FACTORY, "--dataset", "digits",
                 "--method", "ce_only", "--normalize", "0.3", "0.4", "--out", str(out)]) == 0
    assert "factory import_helpers:make_user_net, layers features.0, features.3, head" in capsys.readouterr().out
    back, _ = pc.load_checkpoint(out, allow_code=True)
    assert back.members[0].config["std"] == pytest.approx([0.4])
    with pytest.raises(SystemExit, match="drop --layout"):
        main(["import", str(files[0]), "--model", FACTORY, "--layout", "dverge", "--method", "ce_only",
              "--out", str(tmp_path / "v.safetensors")])
    bad = tmp_path / "wrong.pth"
    torch.save(nn.Linear(3, 3).state_dict(), bad)
    with pytest.raises(ValueError, match=r"wrong.pth does not fit import_helpers:make_user_net\(\)"):
        import_module_members([bad], FACTORY, dataset="digits")
    with pytest.raises(ValueError, match=r"fails on inputs of shape \[2, 3, 32, 32\]"):
        import_module_members(files[:1], FACTORY, dataset="cifar10")
