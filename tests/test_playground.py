"""The Playground's core (parl_core.playground) and figures (parl_core.plots.playground):
regions, boundaries and arrows agree with the models themselves; the session is the
one trainer; alignment numbers obey their known bounds."""
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F

import parl_core as pc
from parl_core.playground import (PlaygroundConfig, PlaygroundSession, class_margins,
                                  mean_pairwise_cosine, playground_methods, plane_grid,
                                  transfer_matrix, zero_contour)
from parl_core.plots.playground import (alignment_figure, arrow_segments, layer_cosine_figure,
                                        members_figure, playground_history_figure,
                                        transfer_figure)

TINY = dict(n_samples=80, width=8, depth=2, batch_size=32, lr=0.03)


@pytest.fixture(scope="module")
def trained():
    sess = PlaygroundSession(PlaygroundConfig(members=3, method="parl", **TINY))
    sess.step(3)
    return sess, sess.frame(grid=24, arrows=6)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("field,value", [("dataset", "digits"), ("members", 1), ("members", 6),
                                         ("method", "nope"), ("layers", 3), ("gamma2", -1.0),
                                         ("n_samples", 5), ("noise", -0.1), ("lr", 0.0)])
def test_config_rejects_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=field):
        PlaygroundConfig(**{**TINY, field: value})


def test_methods_list_every_registered_method_ens_u_and_parl_first():
    methods = playground_methods()
    assert methods[:2] == ["ce_only", "parl"]
    assert sorted(methods) == sorted(pc.METHODS)


def test_method_params_go_only_where_the_method_takes_them():
    assert PlaygroundConfig(method="parl", gamma2=0.7, layers=2, **TINY).method_params() == \
        {"gamma2": 0.7, "layers": 2}
    assert PlaygroundConfig(method="ce_only", gamma2=0.7, **TINY).method_params() == {}
    if "gal" in pc.METHODS:
        assert PlaygroundConfig(method="gal", gamma2=0.7, **TINY).method_params() == {"lam": 0.7}


def test_config_round_trips_through_a_dict():
    cfg = PlaygroundConfig(dataset="spiral", members=4, seed=3, **TINY)
    assert PlaygroundConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg


# --------------------------------------------------------------------------- session
def test_stepping_epoch_by_epoch_equals_one_train_call():
    cfg = PlaygroundConfig(method="parl", **TINY)
    sess = PlaygroundSession(cfg)
    sess.step()
    sess.step()
    ref = PlaygroundSession(cfg)  # same data and initial weights
    pc.train(ref.ens, ref.train_ds, ref.test_ds, method="parl", epochs=2, batch_size=cfg.batch_size,
             lr=cfg.lr, schedule="constant", seed=cfg.seed, device="cpu", **cfg.method_params())
    assert sess.epoch == 2 and [r["epoch"] for r in sess.history] == [1, 2]
    for a, b in zip(sess.ens.parameters(), ref.ens.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", playground_methods())
def test_every_method_trains_a_step(method):
    sess = PlaygroundSession(PlaygroundConfig(method=method, members=2, **TINY))
    before = [p.clone() for p in sess.ens.parameters()]
    rec = sess.step()
    assert sess.epoch == 1 and len(rec) == 1 and 0 <= rec[0]["test_acc"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, sess.ens.parameters()))


def test_regions_and_vote_agree_with_the_models(trained):
    sess, frame = trained
    xs, ys, pts = plane_grid(sess.bounds, 24)
    rng = np.random.default_rng(0)
    idx = torch.from_numpy(rng.choice(len(pts), 40, replace=False))
    with torch.no_grad():
        logits = sess.ens.member_logits(pts[idx])  # (M, 40, C)
        vote = sess.ens.predict(pts[idx])
    r, c = idx // 24, idx % 24
    assert torch.equal(torch.from_numpy(frame.member_probs[:, r, c].argmax(-1)), logits.argmax(-1))
    torch.testing.assert_close(torch.from_numpy(frame.member_probs[:, r, c]),
                               F.softmax(logits, -1), rtol=1e-4, atol=1e-5)
    assert torch.equal(torch.from_numpy(frame.vote[r, c]), vote)


def test_boundary_lies_where_the_member_is_undecided(trained):
    sess, frame = trained
    cell = (frame.xs[1] - frame.xs[0])
    for member, (bx, by) in zip(sess.ens.members, frame.boundaries):
        ok = ~np.isnan(bx)
        assert ok.sum() > 0
        p = torch.from_numpy(np.stack([bx[ok], by[ok]], 1)).float()
        with torch.no_grad():
            logits = member(p)
            step = member(p + torch.tensor([cell, 0.0])) - member(p - torch.tensor([cell, 0.0]))
        margin = (logits[:, 1] - logits[:, 0]).abs()
        # Linear interpolation inside a grid cell: the margin is small next to its change
        # across one cell.
        assert (margin <= (step[:, 1] - step[:, 0]).abs() + 0.05).float().mean() > 0.95


def test_gradient_arrows_match_autograd(trained):
    sess, frame = trained
    x = torch.from_numpy(frame.arrow_points).requires_grad_(True)
    y = sess.ens.predict(x.detach())
    for i, member in enumerate(sess.ens.members):
        (g,) = torch.autograd.grad(F.cross_entropy(member(x), y, reduction="sum"), x)
        torch.testing.assert_close(torch.from_numpy(frame.arrow_grads[i]), g, rtol=1e-4, atol=1e-6)
    # the drawn arrows point along the gradient
    fig = members_figure(frame)
    tr = next(t for t in fig.data if t.name == "gradient M1")
    px, py = np.asarray(tr.x, dtype=float).reshape(-1, 7), np.asarray(tr.y, dtype=float).reshape(-1, 7)
    d = np.stack([px[:, 1] - px[:, 0], py[:, 1] - py[:, 0]], 1)
    g = frame.arrow_grads[0][np.linalg.norm(frame.arrow_grads[0], axis=1) > 0]
    cos = (d * g).sum(1) / np.linalg.norm(d, axis=1) / np.linalg.norm(g, axis=1)
    assert cos.min() > 0.999


def test_alignment_and_layer_cosines_respect_the_floor(trained):
    _, frame = trained
    assert frame.floor == pytest.approx(-0.5)
    assert frame.alignment.min() >= frame.floor - 1e-5 and frame.alignment.max() <= 1 + 1e-5
    assert len(frame.layer_cos) == 2
    assert np.all(frame.layer_cos >= frame.floor - 1e-5) and np.all(frame.layer_cos <= 1 + 1e-5)


def test_mean_pairwise_cosine_known_values():
    v = torch.tensor([[1.0, 0.0]])
    assert mean_pairwise_cosine(torch.stack([v, v])).item() == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.stack([v, -v])).item() == pytest.approx(-1.0)
    ang = torch.tensor([0, 2 * np.pi / 3, 4 * np.pi / 3])
    three = torch.stack([torch.cos(ang), torch.sin(ang)], 1)[:, None]  # (3, 1, 2)
    assert mean_pairwise_cosine(three).item() == pytest.approx(-0.5, abs=1e-6)  # the floor


# --------------------------------------------------------------------------- grid maths
def test_zero_contour_of_a_line_and_a_circle():
    xs = ys = np.linspace(-1, 1, 41, dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    px, py = zero_contour(xs, ys, gx - 0.33)
    assert np.allclose(px[~np.isnan(px)], 0.33, atol=1e-6) and np.isnan(px).sum() == 40
    px, py = zero_contour(xs, ys, np.hypot(gx, gy) - 0.5)
    r = np.hypot(px, py)[~np.isnan(px)]
    assert len(r) > 40 and np.allclose(r, 0.5, atol=0.01)


def test_class_margins_are_positive_only_for_the_winner():
    s = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    m = class_margins(s)
    assert m.shape == (3, 50)
    assert torch.equal(m.argmax(0), s.argmax(1)) and torch.all((m > 0).sum(0) == 1)
    assert class_margins(s[:, :2]).shape == (1, 50)


# --------------------------------------------------------------------------- attacks
def test_attack_path_stays_in_the_ball_and_reports_crossings(trained):
    sess, _ = trained
    a = sess.attack_path(5, member=1, attack="pgd", eps=0.4, steps=8)
    x = sess.train_ds.images[5].numpy()
    assert a["path"].shape == (10, 2)  # the clean point, the random start, 8 steps
    assert np.allclose(a["path"][0], x) and np.abs(a["path"] - x).max() <= 0.4 + 1e-5
    with torch.no_grad():
        end = sess.ens.member_logits(torch.from_numpy(a["path"][-1:])).argmax(-1)[:, 0].numpy()
    assert np.array_equal(end, a["end_pred"])
    assert np.array_equal(a["crossed"], (a["start_pred"] == a["label"]) & (end != a["label"]))
    f = sess.attack_path((0.1, 0.2), label=0, attack="fgsm", eps=0.2)
    assert f["path"].shape == (2, 2) and np.abs(f["path"][1] - [0.1, 0.2]).max() == \
        pytest.approx(0.2, abs=1e-5)
    with pytest.raises(ValueError, match="member"):
        sess.attack_path(0, member=3)
    with pytest.raises(ValueError, match="point"):
        sess.attack_path(10_000)


def test_transfer_rates_are_proportions_and_vanish_for_a_tiny_eps(trained):
    sess, _ = trained
    t = transfer_matrix(sess.ens, sess.test_ds.images, sess.test_ds.labels, eps=0.5, steps=5)
    assert t["rates"].shape == (3, 3) and t["vote"].shape == (3,)
    assert np.all((0 <= t["rates"]) & (t["rates"] <= 1)) and 0 <= t["transfer"] <= 1
    assert t["rates"].diagonal().mean() > 0  # a white-box attack of 0.5 fools something
    tiny = transfer_matrix(sess.ens, sess.test_ds.images, sess.test_ds.labels, eps=1e-7, steps=1)
    assert tiny["rates"].max() <= 0.02


# --------------------------------------------------------------------------- figures
def _validated(fig):
    """Rebuild with plotly's validation on (the builders skip it for speed)."""
    return go.Figure(fig.to_dict())


def test_members_figure_has_one_boundary_per_member_and_draws_the_attack(trained):
    sess, frame = trained
    a = sess.attack_path(3, member=0, eps=0.3)
    fig = _validated(members_figure(frame, a, accuracies=[0.9, 0.8, 0.7, 0.85]))
    names = [t.name for t in fig.data]
    assert sorted(n for n in names if n.startswith("boundary M")) == ["boundary M1", "boundary M2",
                                                                       "boundary M3"]
    assert names.count("vote boundary") == 1 and names.count("regions") == 4
    assert names.count("attack path") == 4 and names.count("gradient M2") == 1
    ends = [t for t in fig.data if t.name == "attack end"]
    assert [int(t.customdata[0]) for t in ends[:3]] == a["crossed"].astype(int).tolist()


def test_every_builder_returns_a_valid_figure(trained):
    sess, frame = trained
    t = sess.transfer(eps=0.3, steps=3)
    for fig in (alignment_figure(frame), layer_cosine_figure(frame.layer_cos, frame.floor),
                playground_history_figure(frame.history), transfer_figure(t["rates"], t["vote"])):
        assert isinstance(_validated(fig), go.Figure)


def test_svg_for_small_figures_webgl_for_many_markers(trained):
    import dataclasses
    import parl_core.plots.playground as pgp
    _, frame = trained  # ~60 training points: SVG everywhere
    assert {t.type for t in members_figure(frame).data if t.type != "heatmap"} == {"scatter"}
    many = dataclasses.replace(frame, train_x=np.zeros((pgp.SVG_MAX_MARKERS, 2), np.float32),
                               train_y=np.zeros(pgp.SVG_MAX_MARKERS, np.int64))
    assert {t.type for t in _validated(members_figure(many)).data if t.type != "heatmap"} == {"scattergl"}
    assert {t.type for t in alignment_figure(many).data if t.type != "heatmap"} == {"scatter"}
    assert pgp.scatter_type(pgp.SVG_MAX_MARKERS) == "scatter"


def test_multiclass_regions_and_boundaries():
    sess = PlaygroundSession(PlaygroundConfig(dataset="blobs", **TINY))
    sess.step()
    frame = sess.frame(grid=16, arrows=4)
    assert frame.member_probs.shape == (3, 16, 16, 3)
    fig = _validated(members_figure(frame))
    assert sum(t.name.startswith("boundary M") for t in fig.data) == 3


def test_arrow_segments_skip_zero_vectors():
    px, py = arrow_segments(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 0.0], [2.0, 0.0]]), 0.5)
    assert len(px) == 7 and px[1] == pytest.approx(1.5) and py[1] == pytest.approx(1.0)


# --------------------------------------------------------------------------- verdicts
def _atk(start, end, vote_start, vote_end, label=1):
    return {"label": label, "start_pred": np.array(start), "end_pred": np.array(end),
            "vote_start": vote_start, "vote_end": vote_end, "member": 0}


def test_verdicts_tell_already_wrong_from_holds_and_fooled():
    from parl_core.playground_live import attack_verdicts, fooled_text
    v = attack_verdicts(_atk([0, 1, 1], [0, 0, 1], 1, 0))
    assert v == ["already wrong", "fooled", "holds", "fooled"]
    assert fooled_text(v) == "Fooled: M2 and the vote; already wrong before the attack: M1."
    v = attack_verdicts(_atk([0, 0, 1], [1, 0, 1], 0, 1))  # the attack "fixes" M1: still not holding
    assert v == ["already wrong", "already wrong", "holds", "already wrong"]
    assert fooled_text(v).startswith("Fooled: none; already wrong before the attack: M1, M2 and the vote")
    assert fooled_text(attack_verdicts(_atk([1, 1], [1, 1], 1, 1))) == "Fooled: none."


def test_member_figure_titles_follow_the_verdicts(trained):
    from parl_core.playground_live import attack_verdicts
    sess, frame = trained
    for point in range(0, 40, 7):
        a = sess.attack_path(point, member=0, eps=0.5)
        titles = [t.text for t in members_figure(frame, a).layout.annotations]
        for title, verdict in zip(titles, attack_verdicts(a)):
            assert title.endswith("<b>fooled</b>" if verdict == "fooled" else verdict), (title, verdict)


# --------------------------------------------------------------------------- live runs
def _wait(cond, timeout=120.0):
    """Poll a condition of a background thread (a deadline against a hung test, not a timing)."""
    import time
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "the background run did not get there"
        time.sleep(0.02)


@pytest.fixture
def live():
    from parl_core.playground_live import LiveRun
    cfg = PlaygroundConfig(**TINY)
    run = LiveRun({"ENS_U": PlaygroundConfig(**{**TINY, "method": "ce_only"}), "PARL": cfg}, grid=12, arrows=4)
    yield run
    run.pause()
    run.settle()


def test_split_runs_share_data_and_initial_weights(live):
    a, b = live.sessions["ENS_U"], live.sessions["PARL"]
    assert torch.equal(a.train_ds.images, b.train_ds.images)
    for p, q in zip(a.ens.parameters(), b.ens.parameters()):
        assert torch.equal(p, q)
    from parl_core.playground_live import LiveRun
    with pytest.raises(ValueError, match="share"):
        LiveRun({"a": PlaygroundConfig(**TINY), "b": PlaygroundConfig(**{**TINY, "seed": 1})})


def test_play_trains_in_lockstep_and_views_come_in_order(live):
    live.play()
    seen = []
    _wait(lambda: seen.append(live.next_view().epoch) or seen[-1] >= 4)
    live.pause()
    assert live.settle()
    epochs = sorted(set(seen))
    assert epochs == list(range(epochs[0], epochs[-1] + 1))  # no epoch skipped on screen
    assert live.sessions["ENS_U"].epoch == live.sessions["PARL"].epoch == live.epoch
    v = live.current()
    assert v.epoch == live.epoch and [r.frame.epoch for r in v.runs] == [live.epoch] * 2
    before = live.epoch
    assert live.current().epoch == before and live.epoch == before  # paused: nothing trains


def test_pause_and_play_never_wait_for_an_epoch(live):
    """Pause/Play only set a flag: they return while an epoch holds the sessions."""
    import threading
    live.play()
    _wait(lambda: live.epoch >= 1)
    held = threading.Event()
    with live._lock:  # an epoch (or a frame) in progress
        done = threading.Thread(target=lambda: (live.pause(), live.play(), live.pause(), held.set()))
        done.start()
        done.join(60)
        assert held.is_set()
    assert live.settle() and not live.playing


def test_step_and_reset(live):
    v = live.step()
    assert v.epoch == 1 == live.epoch and not live.playing
    live.play()
    v = live.step()  # pauses first, then one more
    assert v.epoch == live.epoch and not live.playing
    assert live.reset().epoch == 0
    live.step()
    once = [p.clone() for p in live.sessions["PARL"].ens.parameters()]
    live.reset()
    live.step()
    assert all(torch.equal(a, b) for a, b in zip(once, live.sessions["PARL"].ens.parameters()))


def test_a_run_nobody_watches_stops_by_itself():
    from parl_core.playground_live import LiveRun
    run = LiveRun({"PARL": PlaygroundConfig(**TINY)}, grid=8, arrows=3, ahead=1, idle_s=0.2)
    run.play()
    _wait(lambda: not run.playing)  # the queue fills, nobody takes a view
    assert run.settle() and run.epoch >= 1


def test_view_verdicts_match_the_members_at_that_epoch(live):
    from parl_core.playground_live import attack_verdicts
    for _ in range(3):
        live.set_attack(11, 1, "pgd", 0.4)
        v = live.current()
        for r in v.runs:
            ens, a = live.sessions[r.name].ens, r.attack
            x0 = live.train_points[11:12]
            with torch.no_grad():
                start = ens.member_logits(x0).argmax(-1)[:, 0]
                end = ens.member_logits(torch.from_numpy(a["path"][-1:])).argmax(-1)[:, 0]
                vs, ve = int(ens.predict(x0)[0]), int(ens.predict(torch.from_numpy(a["path"][-1:]))[0])
            assert np.array_equal(start.numpy(), a["start_pred"]) and np.array_equal(end.numpy(), a["end_pred"])
            assert (vs, ve) == (a["vote_start"], a["vote_end"])
            assert r.verdicts == attack_verdicts(a) and a["member"] == 1
        live.step()
    with pytest.raises(ValueError, match="member"):
        live.set_attack(0, 7)


def test_next_views_hands_out_every_trained_epoch_once_in_order(live):
    live.play()
    got = []
    _wait(lambda: got.extend(v.epoch for v in live.next_views()) or (got and got[-1] >= 5))
    live.pause()
    assert live.settle()
    fresh = sorted(set(got))
    assert fresh == list(range(fresh[0], fresh[-1] + 1))  # none skipped
    (v,) = live.next_views()  # paused: the latest epoch trained, one view
    assert v.epoch == live.epoch
    with pytest.raises(ValueError, match="limit"):
        live.next_views(0)


def test_the_first_live_run_warms_up_torch_in_the_background():
    """A fresh process: making a LiveRun starts importing torch._dynamo (what the first
    optimizer step would import, 1-2 s) in the background, so Play's first epoch is fast."""
    import subprocess
    import sys
    code = ("import sys, time\n"
            "from parl_core.playground_live import LiveRun\n"
            "from parl_core.playground import PlaygroundConfig\n"
            "assert 'torch._dynamo' not in sys.modules\n"
            "LiveRun({'PARL': PlaygroundConfig(n_samples=40)}, grid=8, arrows=3)\n"
            "t = time.monotonic()\n"
            "while 'torch._dynamo' not in sys.modules and time.monotonic() - t < 60: time.sleep(0.05)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr[-2000:]
