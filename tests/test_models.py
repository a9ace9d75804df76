import math

import pytest
import torch

import parl_core as pc


@pytest.mark.parametrize("arch,shape,L", [("resnet20", (2, 3, 32, 32), 19),
                                          ("smallcnn", (2, 1, 8, 8), 4), ("mlp", (2, 2), 3)])
def test_feature_lists(arch, shape, L):
    m = pc.build_model(arch, 10, shape[1], seed=0)
    logits, feats = m(torch.rand(shape), return_features=True)
    assert logits.shape == (2, 10) and len(feats) == L == m.num_layers
    assert all(f.shape[0] == 2 for f in feats)


def test_resnet20_shapes_and_shortcuts():
    m = pc.build_model("resnet20", 10, 3, seed=0)
    _, feats = m(torch.rand(2, 3, 32, 32), return_features=True)
    assert [f.shape[1] for f in feats] == [16] * 7 + [32] * 6 + [64] * 6
    assert feats[7].shape[-1] == 16 and feats[13].shape[-1] == 8
    assert sum(b.short is not None for b in m.blocks) == 2


def test_normalisation_lives_in_the_model():
    m = pc.build_model("smallcnn", 10, 1, mean=[0.3], std=[0.2], seed=0).eval()
    ref = pc.build_model("smallcnn", 10, 1, seed=0).eval()
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(m(x), ref((x - 0.3) / 0.2), atol=1e-6)
    assert m.config["mean"] == [0.3] and m.config["std"] == [0.2]


def test_seeded_init_and_bad_arguments():
    a, b = pc.build_model("mlp", 2, 2, seed=1), pc.build_model("mlp", 2, 2, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="unknown arch 'vgg'"):
        pc.build_model("vgg", 10)
    with pytest.raises(ValueError, match="num_classes"):
        pc.build_model("mlp", 1, 2)
    with pytest.raises(ValueError, match="mean/std need 3 values"):
        pc.build_model("resnet20", 10, 3, mean=[0.5])
    with pytest.raises(ValueError, match="does not take"):
        pc.build_model("smallcnn", 10, 1, depth=3)


def test_ensemble_output_is_log_mean_softmax():
    ens = pc.Ensemble([pc.build_model("mlp", 3, 2, seed=i) for i in range(3)]).eval()
    x = torch.randn(5, 2)
    p = torch.stack([m(x).softmax(-1) for m in ens.members]).mean(0)
    assert torch.allclose(ens(x), p.log(), atol=1e-6)
    assert math.isclose(ens(x).exp().sum(-1)[0].item(), 1.0, rel_tol=1e-5)


def test_vote_majority_and_tie_break():
    # 3 members, 3 classes; example 0: votes 0,0,1 -> 0 even though mean prob favours 1
    ml = torch.tensor([[[2.0, 0.0, 0.0]], [[2.0, 0.0, 0.0]], [[0.0, 20.0, 0.0]]])
    assert pc.Ensemble.vote(ml).tolist() == [0]
    # 2 members tie 1-1: the mean probability decides
    ml = torch.tensor([[[3.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])
    assert pc.Ensemble.vote(ml).tolist() == [0]
    ml = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 5.0, 0.0]]])
    assert pc.Ensemble.vote(ml).tolist() == [1]


def test_ensemble_rejects_bad_members():
    with pytest.raises(ValueError, match="at least one member"):
        pc.Ensemble([])
    with pytest.raises(ValueError, match="members \\[1\\]"):
        pc.Ensemble([pc.build_model("mlp", 2, 2), "model"])
