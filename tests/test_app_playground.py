"""The Playground page under Streamlit's AppTest: it renders, Play/Step/Pause/Reset act on
the background run, every method trains a step, the split screen trains ENS_U and PARL
on the same seed, labels and caption agree at every epoch, and the URL carries every
setting (a link round-trips)."""
import re
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.components.playground_canvas import unpack
from parl_core.playground import playground_methods

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "playground.py")
SMALL = {"n": "60", "w": "8", "d": "2"}  # a tiny run keeps every AppTest rerun quick


def _app(**params) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    for k, v in {**SMALL, **params}.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def _live(at):
    return at.session_state["pg_live"]


def _payload(at):
    (canvas,) = at.get("bidi_component")
    return unpack(canvas.proto.bytes)


def _shown_epoch(at) -> int:
    m = next(m.value for m in at.markdown if m.value.startswith("**Epoch "))
    return int(re.match(r"\*\*Epoch (\d+)\*\*", m).group(1))


def _widget(at, key):
    for kind in ("selectbox", "slider", "select_slider", "number_input", "toggle"):
        try:
            return getattr(at, kind)(key=key)
        except KeyError:
            continue
    raise KeyError(key)


def _stop(at):
    _live(at).pause()
    _live(at).settle()


def test_page_renders_one_plot_per_member_and_the_vote():
    at = _app(m="4")
    head, arrays = _payload(at)
    (run,) = head["runs"]
    assert run["members"] == 4 and len(run["titles"]) == len(run["verdicts"]) == 5
    assert {f"0.r{i}" for i in range(5)} | {f"0.b{i}" for i in range(5)} <= set(arrays)
    assert arrays["train.x"].shape == (60, 2) and arrays["0.r0"].shape == (60, 60)
    assert _shown_epoch(at) == 0 == head["epoch"]
    assert len(at.get("plotly_chart")) == 3  # alignment, layer cosines, transfer (paused)


def test_step_play_pause_and_reset():
    at = _app()
    at.button(key="pg_step").click().run()
    assert _live(at).epoch == 1 == _shown_epoch(at) == _payload(at)[0]["epoch"]
    at.button(key="pg_play").click().run()
    assert _live(at).playing and at.button(key="pg_play").label == "Pause"
    deadline = time.monotonic() + 120  # a guard against a hung run, not a timing
    while _live(at).epoch < 3:
        at.run()  # what the fragment's timer does in a browser: take the next epoch
        assert time.monotonic() < deadline
    at.button(key="pg_play").click().run()  # pause
    assert not _live(at).playing and at.button(key="pg_play").label == "Play"
    _live(at).settle()
    at.run()
    paused = _live(at).epoch
    assert _shown_epoch(at) == paused  # paused: the screen shows the last epoch trained
    at.run()
    assert _live(at).epoch == paused  # and nothing trains
    at.button(key="pg_step").click().run()
    assert _live(at).epoch == paused + 1 == _shown_epoch(at)
    at.button(key="pg_reset").click().run()
    assert _live(at).epoch == 0 == _shown_epoch(at)


@pytest.mark.parametrize("method", playground_methods())
def test_every_method_runs_a_step(method):
    at = _app(method=method, m="2")
    at.button(key="pg_step").click().run()
    assert not at.exception, at.exception
    live = _live(at)
    assert live.epoch == 1 and next(iter(live.configs.values())).method == method


def test_split_screen_trains_ens_u_and_parl_on_the_same_seed():
    at = _app(vs="1", seed="5")
    live = _live(at)
    assert {n: c.method for n, c in live.configs.items()} == {"ENS_U": "ce_only", "PARL": "parl"}
    assert {c.seed for c in live.configs.values()} == {5}
    head, arrays = _payload(at)
    assert [r["name"] for r in head["runs"]] == ["ENS_U", "PARL"]
    assert np.array_equal(arrays["0.r0"], arrays["1.r0"])  # same initial weights at epoch 0
    at.button(key="pg_step").click().run()
    assert [s.epoch for s in live.sessions.values()] == [1, 1]
    head, arrays = _payload(at)
    assert head["epoch"] == 1 and not np.array_equal(arrays["0.r0"], arrays["1.r0"])  # the losses differ
    assert len(at.get("plotly_chart")) == 6  # the analysis of each run


def test_labels_caption_and_plots_agree_at_every_epoch():
    at = _app(m="3", pt="4", eps="0.5")
    for epoch in range(4):
        head, _ = _payload(at)
        caption = next(c.value for c in at.caption if "Fooled:" in c.value)
        for run in head["runs"]:
            verdicts = run["verdicts"]
            assert [t[1].split(" · ")[0] for t in run["titles"]] == verdicts
            fooled = [f"M{i + 1}" for i, v in enumerate(verdicts[:-1]) if v == "fooled"]
            if verdicts[-1] == "fooled":
                fooled.append("the vote")
            said = re.search(r"Fooled: ([^;.]*)", caption).group(1)
            assert said == ("none" if not fooled else
                            fooled[0] if len(fooled) == 1 else ", ".join(fooled[:-1]) + " and " + fooled[-1])
            for i, v in enumerate(verdicts[:-1]):
                if v == "already wrong":  # never counted as holding, never as fooled
                    assert f"M{i + 1}" not in said and "already wrong before the attack" in caption
        assert head["epoch"] == epoch
        at.button(key="pg_step").click().run()


def test_picking_a_point_and_member_redraws_the_attack():
    at = _app()
    at.number_input(key="k_pg_point").set_value(7).run()
    at.selectbox(key="k_pg_src").set_value(1).run()
    head, arrays = _payload(at)
    assert head["runs"][0]["attacked"] == 1 and "attacked" in head["runs"][0]["titles"][1][1]
    assert np.allclose(arrays["0.path"][0], arrays["train.x"][7])  # the path starts at point 7
    assert any("starts at point #7 and is crafted on **M2**" in c.value for c in at.caption)
    assert at.query_params["pt"] == "7" and at.query_params["src"] == "1"


def test_every_setting_round_trips_through_the_link():
    at = _app()
    changes = {"k_pg_dataset": "circles", "k_pg_members": 4, "k_pg_gamma2": 0.8, "k_pg_width": 12,
               "k_pg_depth": 3, "pg_k_3": 2, "k_pg_method": "ce_only", "k_pg_seed": 7, "k_pg_lr": 0.03,
               "k_pg_attack": "fgsm", "k_pg_eps": 0.5, "k_pg_src": 2, "k_pg_point": 9,
               "k_pg_n_samples": 100, "k_pg_noise": 0.2}
    for key, v in changes.items():  # (γ2 and K before the method that disables them)
        _widget(at, key).set_value(v)
        at.run()
    changes["k_pg_layers"] = changes.pop("pg_k_3")
    at.toggle(key="k_pg_split").set_value(True).run()
    link = {k: at.query_params[k] for k in at.query_params}
    _stop(at)
    again = AppTest.from_file(PAGE, default_timeout=120)
    for k, v in link.items():
        again.query_params[k] = v[0] if isinstance(v, list) else v
    again.run()
    assert not again.exception
    for key, v in {**changes, "k_pg_split": True}.items():
        assert again.session_state[key] == v, key
    assert _live(again).configs == _live(at).configs
    _stop(again)


def test_a_bad_link_falls_back_to_the_defaults_with_a_warning():
    at = _app(m="9")
    assert at.warning and next(iter(_live(at).configs.values())).members == 3
    at = _app(m="x")
    assert any("m" in w.value for w in at.warning)


def test_play_mode_sends_every_new_epoch_in_one_message():
    """Playing, the canvas gets the epochs trained since the last rerun in one message
    (it plays them on its own timer); paused, one frame drawn at once."""
    from dashboard.components.playground_canvas import FRAMES_MAGIC, frames_payload, unpack_frames
    at = _app()
    at.button(key="pg_play").click().run()
    live = _live(at)
    deadline = time.monotonic() + 120
    while live.epoch < 4:  # the thread trains ahead while nobody reruns the page
        time.sleep(0.05)
        assert time.monotonic() < deadline
    at.run()
    (canvas,) = at.get("bidi_component")
    frames = unpack_frames(canvas.proto.bytes)
    epochs = [h["epoch"] for h, _ in frames]
    assert canvas.proto.bytes[:4] == FRAMES_MAGIC and len(frames) >= 2
    assert epochs == list(range(epochs[0], epochs[0] + len(epochs)))  # consecutive, oldest first
    assert all(h["playing"] and h["frame_ms"] == 100 for h, _ in frames)
    assert any(m.value.startswith("**Playing**") for m in at.markdown)
    _stop(at)
    at.run()
    (canvas,) = at.get("bidi_component")
    (head, _), = unpack_frames(canvas.proto.bytes)
    assert not head["playing"] and head["epoch"] == live.epoch == _shown_epoch(at)
    with pytest.raises(ValueError, match="frame_ms"):
        frames_payload([live.current()], playing=False, frame_ms=1)
    with pytest.raises(ValueError, match="at least one"):
        frames_payload([], playing=False)
