import threading

import pytest
import torch

import parl_core as pc


@pytest.fixture(scope="module")
def digits():
    tr = pc.load_dataset("digits", "train").subset(256, seed=0)
    te = pc.load_dataset("digits", "test").subset(128, seed=0)
    return tr, te


def _run(digits, epochs=2, **kw):
    tr, te = digits
    ens = pc.build_ensemble("smallcnn", 2, tr, seed=0)
    kw.setdefault("method", "parl")
    hist = pc.train(ens, tr, te, epochs=epochs, batch_size=32, device="cpu", **kw)
    return ens, hist


def test_same_seed_same_result(digits):
    a, ha = _run(digits, seed=3)
    b, hb = _run(digits, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert [r["loss"] for r in ha] == [r["loss"] for r in hb]


def test_history_and_progress_payload(digits):
    events = []
    _, hist = _run(digits, on_progress=events.append, method="ce_only")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 2
    assert kinds.count("step") == 2 * 8
    rec = hist[-1]
    for key in ("epoch", "lr", "loss", "ce", "train_acc", "test_acc", "member_acc", "r_mean",
                "r_pairwise", "k_eval", "time"):
        assert key in rec, key
    assert len(rec["member_acc"]) == 2 and rec["k_eval"] == 4
    assert -1.0 <= rec["r_mean"] <= 1.0
    step = next(e for e in events if e["event"] == "step")
    assert {"loss", "parts", "eta", "global_step", "total_steps"} <= set(step)


def test_parl_trains_and_lowers_r(digits):
    _, h_plain = _run(digits, epochs=4, method="ce_only", lr=3e-3, schedule="constant")
    _, h_parl = _run(digits, epochs=4, method="parl", lr=3e-3, schedule="constant")
    assert h_parl[-1]["test_acc"] > 0.5
    assert h_parl[-1]["r_mean"] < h_plain[-1]["r_mean"] - 0.2
    assert h_parl[-1]["r_mean"] >= -1.0 - 1e-6  # floor -1/(M-1) for M = 2


def test_cancel_keeps_last_finished_epoch_and_resume_is_exact(digits):
    full, h_full = _run(digits, epochs=3, seed=1)
    stop = threading.Event()

    def on_progress(ev):  # cancel in the middle of epoch 2
        if ev["event"] == "step" and ev["epoch"] == 2 and ev["step"] == 3:
            stop.set()
    part, h_part = _run(digits, epochs=3, seed=1, cancel=stop, on_progress=on_progress)
    assert h_part.cancelled and len(h_part) == 1
    # the weights are those at the end of epoch 1, not of the partial epoch 2
    one, _ = _run(digits, epochs=3, seed=1, cancel=lambda: False,
                  on_progress=lambda ev: stop.set() if ev["event"] == "epoch" else None)
    tr, te = digits
    resumed = pc.build_ensemble("smallcnn", 2, tr, seed=1)
    h_res = pc.train(resumed, tr, te, method="parl", epochs=3, batch_size=32, seed=1,
                     device="cpu", resume=h_part.state)
    assert len(h_res) == 3 and not h_res.cancelled
    for p, q in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert h_res[-1]["loss"] == h_full[-1]["loss"]


def test_train_validation(digits):
    tr, te = digits
    ens = pc.build_ensemble("smallcnn", 2, tr)
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        pc.train(ens, tr, te, epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        pc.train(ens, tr, te, batch_size=1)
    with pytest.raises(ValueError, match="schedule must be one of"):
        pc.train(ens, tr, te, schedule="linear")
    with pytest.raises(ValueError, match="unknown method"):
        pc.train(ens, tr, te, method="magic")


def test_weight_decay_and_the_canonical_eval_subset():
    import parl_core as pc
    train, test = pc.load_dataset("digits", "train").subset(128, seed=0), pc.load_dataset("digits", "test")
    runs = {}
    for wd in (0.0, 0.5):
        ens = pc.build_ensemble("smallcnn", 2, train, seed=0, width=4)
        runs[wd] = (pc.train(ens, train, test, method="ce_only", epochs=1, batch_size=64, seed=3,
                             eval_size=100, weight_decay=wd), ens)
    w0 = sum(p.norm() for p in runs[0.0][1].parameters())
    w1 = sum(p.norm() for p in runs[0.5][1].parameters())
    assert w1 < w0  # the penalty shrinks the weights
    # the eval subset does not depend on the run's seed: the canonical first 100
    ens = runs[0.0][1]
    acc, _ = pc.evaluate_accuracy(ens, pc.evaluation_subset(test, 100))
    assert runs[0.0][0][-1]["test_acc"] == pytest.approx(acc)
    with pytest.raises(ValueError, match="weight_decay"):
        pc.train(ens, train, test, method="ce_only", epochs=1, weight_decay=float("nan"))


def test_an_mlp_is_refused_for_images_with_the_architectures_that_fit():
    ds = pc.load_dataset("digits", "train")
    with pytest.raises(ValueError, match="vector inputs.*smallcnn or resnet20"):
        pc.build_ensemble("mlp", 2, ds)
