"""APGD-CE and APGD-DLR (parl_core.apgd) through parl_core.attack: the step-size schedule, the
L∞ budget and range, seeds and restarts, and a cross-check against torchattacks 3.5.1's APGD
(a dev-only reference) on the shipped digits ENS_U and one of its members."""
from __future__ import annotations

import math
import threading

import pytest
import torch

import parl_core as pc
import parl_core.evaluate as evaluate
from parl_core.apgd import checkpoints
from parl_core.attacks import ALL_ATTACKS, ATTACKS, EXTRA_ATTACKS, AttackCancelled

APGD = ("apgd-ce", "apgd-dlr")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _acc(model, x, y) -> float:
    pred = model.predict(x) if isinstance(model, pc.Ensemble) else model(x).argmax(1)
    return (pred == y).float().mean().item()


def test_names():
    assert ATTACKS == ("fgsm", "bim", "mim", "pgd") == pc.ATTACKS
    assert EXTRA_ATTACKS == ("apgd-ce", "apgd-dlr", "square", "mi-di", "pgd-vote", "apgd-t")
    assert ALL_ATTACKS == ATTACKS + EXTRA_ATTACKS


@pytest.mark.parametrize("steps", [100, 250, 1000])
def test_checkpoints_follow_the_published_schedule(steps):
    p = [0.0, 0.22]
    while p[-1] <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    want = [math.ceil(round(v * steps, 6)) for v in p[1:] if v <= 1]  # all distinct here
    assert [w for w, _ in checkpoints(steps)] == want
    marks = checkpoints(steps)
    assert all(k == w1 - w0 for (w0, _), (w1, k) in zip([(0, 0)] + marks, marks))
    assert checkpoints(100)[:3] == [(22, 22), (41, 19), (57, 16)]
    assert [w for w, _ in checkpoints(10)] == [3, 5, 6, 7, 8, 9, 10]  # distinct whole iterations
    assert checkpoints(1) == [(1, 1)]


@pytest.mark.parametrize("name", APGD)
def test_budget_range_seed_and_restarts(name, ens, data):
    x, y = data[0][:40], data[1][:40]
    eps = [0.05, 0.15]
    every = pc.attack_restarts(name, ens, x, y, eps, steps=6, restarts=3, seed=2)  # (E, R, N, ...)
    assert every.shape == (2, 3, *x.shape)
    for e, a in zip(eps, every):
        assert (a - x).abs().max().item() <= e + 1e-7
        assert a.min().item() >= 0.0 and a.max().item() <= 1.0
    assert torch.equal(every, pc.attack_restarts(name, ens, x, y, eps, steps=6, restarts=3, seed=2))
    assert not torch.equal(every[:, 0], every[:, 1])  # restarts start apart
    # restart r is the same however the restarts are split into passes
    split = torch.cat([pc.attack_restarts(name, ens, x, y, eps, steps=6, restarts=2, seed=2),
                       pc.attack_restarts(name, ens, x, y, eps, steps=6, restarts=1, seed=2,
                                          first_restart=2)], 1)
    assert torch.equal(split, every)
    # batched ε equals separate calls; the start is PGD's (same seed, same draw)
    for e, a in zip(eps, every[:, 0]):
        torch.testing.assert_close(a, pc.attack(name, ens, x, y, e, steps=6, seed=2), atol=1e-6, rtol=0)
    best = pc.attack(name, ens, x, y, 0.15, steps=6, restarts=3, seed=2)
    assert ((every[1] == best).flatten(2).all(2)).any(0).all()  # one of the restarts
    assert _acc(ens, best, y) <= _acc(ens, every[1, 0], y)
    assert torch.equal(pc.attack(name, ens, x, y, 0.0, steps=4, restarts=2), x)


def test_unbounded_and_single_model():
    torch.manual_seed(0)
    ds = pc.load_dataset("blobs", "test")
    x, y = ds.images[:30], ds.labels[:30]
    model = pc.build_model("mlp", len(ds.classes), in_channels=2).eval()
    for name in APGD if len(ds.classes) >= 3 else ("apgd-ce",):
        adv = pc.attack(name, model, x, y, 0.5, steps=5, bounds=None)
        assert (adv - x).abs().max() <= 0.5 + 1e-6


def test_on_step_cancel_early_stop_and_validation(ens, data):
    x, y = data[0][:32], data[1][:32]
    seen = []
    pc.attack("apgd-ce", ens, x, y, [0.1, 0.2], steps=5, on_step=seen.append)
    assert seen == [64] * 5
    stop = threading.Event()
    stop.set()
    with pytest.raises(AttackCancelled):
        pc.attack("apgd-dlr", ens, x, y, 0.1, steps=5, cancel=stop)
    es = pc.attack("apgd-ce", ens, x, y, 0.2, steps=10, early_stop=True)
    full = pc.attack("apgd-ce", ens, x, y, 0.2, steps=10)
    assert (es - x).abs().max() <= 0.2 + 1e-7
    assert _acc(ens, es, y) == _acc(ens, full, y)  # a fooled example stays fooled
    with pytest.raises(ValueError, match="return_path"):
        pc.attack("apgd-ce", ens, x, y, 0.1, steps=2, return_path=True)
    with pytest.raises(ValueError, match="apgd-ce"):  # the message lists every name
        pc.attack("apgd", ens, x, y, 0.1, steps=2)


def test_step_size_is_ignored(ens, data):
    x, y = data[0][:16], data[1][:16]
    assert torch.equal(pc.attack("apgd-ce", ens, x, y, 0.1, steps=4, step_size=0.001),
                       pc.attack("apgd-ce", ens, x, y, 0.1, steps=4))


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_at_least_as_strong_as_torchattacks_and_pgd(loss, ens, data):
    """Robust accuracy after 20 steps at ε = 0.12, 200 digits examples (clean 0.98 / 0.975).
    Measured, ours vs torchattacks (seeds 0, 1, 2): ENS_U (scored by its vote) CE 0.435,
    0.45, 0.43 vs 0.49, 0.495, 0.495, DLR 0.46, 0.445, 0.45 vs 0.515, 0.52, 0.52, PGD 0.47;
    member 0 alone CE 0.21, 0.225, 0.21 vs 0.21, 0.215, 0.22, DLR 0.29, 0.29, 0.31 vs
    0.295, 0.295, 0.28, PGD 0.255. On the ensemble ours returns an iterate that fools the
    vote, torchattacks one that fools the argmax of the mean (else the clean input)."""
    ta = pytest.importorskip("torchattacks",
                             reason="dev-only reference: pip install --no-deps torchattacks==3.5.1")
    x, y = data
    # torchattacks wants a module returning logits on [0, 1] inputs: an Ensemble's forward
    # is its log-mean-softmax, which is what our APGD differentiates too.
    for model in (ens, ens.members[0].eval()):
        clean = _acc(model, x, y)
        theirs = _acc(model, ta.APGD(model, norm="Linf", eps=0.12, steps=20, n_restarts=1, loss=loss,
                                     seed=0)(x, y), y)
        adv = pc.attack(f"apgd-{loss}", model, x, y, 0.12, steps=20, seed=0)
        ours = _acc(model, adv, y)
        assert ours <= theirs + 0.03, (ours, theirs)
        assert ours < clean - 0.4 and theirs < clean - 0.4
        if loss == "ce":
            assert ours <= _acc(model, pc.attack("pgd", model, x, y, 0.12, steps=20, seed=0), y) + 0.03


def test_robustness_curve_takes_the_extra_attacks(ens, data, monkeypatch):
    """The evaluation validates names in its `_validate` (ATTACKS there, until it reads
    ALL_ATTACKS); past that line every extra attack runs through it unchanged."""
    monkeypatch.setattr(evaluate, "ATTACKS", ALL_ATTACKS)
    x, y = data[0][:48], data[1][:48]
    res = pc.robustness_curve(ens, x, y, attacks=["apgd-ce", "square"], eps=[0.0, 0.2], steps=8,
                              restarts=2)
    t = res.table
    assert set(t.attack) == {"clean", "apgd-ce", "square", "worst-case"}
    assert (t[t.eps == 0.0].acc == t.clean_acc.iloc[0]).all()
    assert t[(t.attack == "apgd-ce") & (t.eps == 0.2)].acc.item() < 0.2
    assert all(c["ok"] for c in res.checks if c["check"] == "eps = 0")


@pytest.mark.usefixtures("one_torch_thread")
def test_evaluation_runs_the_extra_attacks_with_their_own_budget(ens):
    ds = pc.evaluation_subset(pc.load_dataset("digits", "test"), 40)
    res = pc.robustness_curve(ens, ds.images, ds.labels, attacks=["pgd", "apgd-ce", "square"],
                              eps=[0.15], steps={"default": 5, "square": 40})
    t = res.table.set_index("attack")
    assert t.loc["square", "steps"] == 40 and t.loc["apgd-ce", "steps"] == 5
    assert "gradient-free <= gradient" in {c["check"] for c in res.checks}
    assert t.loc["worst-case", "acc"] <= t.loc[["pgd", "apgd-ce", "square"], "acc"].min()
