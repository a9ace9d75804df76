"""The Playground page under Streamlit's AppTest: it renders, Play/Step/Reset change the
run, every method trains a step, the URL carries the settings, and the member figure
carries one boundary per member."""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from parl_core.playground import playground_methods

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "playground.py")
SMALL = {"n": "60", "w": "8", "d": "2"}  # a tiny run keeps every AppTest rerun quick


def _app(**params) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    for k, v in {**SMALL, **params}.items():
        at.query_params[k] = v
    return at.run()


def _epoch(at) -> int:
    return at.session_state["pg_session"].epoch


def _members_traces(at) -> list:
    chart = next(c for c in at.get("plotly_chart") if '"boundary M' in c.proto.spec)
    return json.loads(chart.proto.spec)["data"]


def test_page_renders_with_one_boundary_per_member():
    at = _app(m="4")
    assert not at.exception
    assert any(m.value.startswith("**Epoch 0**") for m in at.markdown)
    names = [t.get("name") for t in _members_traces(at)]
    assert sorted(n for n in names if n.startswith("boundary M")) == [f"boundary M{i}" for i in range(1, 5)]
    assert names.count("vote boundary") == 1
    assert len(at.get("plotly_chart")) >= 4  # members, alignment, layers, history (+ transfer)


def test_step_play_pause_and_reset_change_the_run():
    at = _app()
    at.button(key="pg_step").click().run()
    assert not at.exception and _epoch(at) == 1
    assert any(m.value.startswith("**Epoch 1**") for m in at.markdown)
    first = [p.clone() for p in at.session_state["pg_session"].ens.parameters()]
    at.button(key="pg_play").click().run()  # play: the fragment trains on every run
    assert at.session_state["pg_playing"] and _epoch(at) == 2
    at.button(key="pg_play").click().run()  # pause
    assert not at.session_state["pg_playing"] and _epoch(at) == 2
    at.run()
    assert _epoch(at) == 2  # paused: reruns do not train
    at.button(key="pg_reset").click().run()
    assert _epoch(at) == 0 and not at.exception
    sess = at.session_state["pg_session"]
    sess.step()  # the reset run starts from the same seeded weights as the first
    assert all((a - b).abs().max() < 1e-6 for a, b in zip(first, sess.ens.parameters()))


@pytest.mark.parametrize("method", playground_methods())
def test_every_method_runs_a_step(method):
    at = _app(method=method, m="2")
    at.button(key="pg_step").click().run()
    assert not at.exception, at.exception
    assert _epoch(at) == 1 and at.session_state["pg_session"].config.method == method


def test_url_sets_the_configuration_and_follows_the_widgets():
    at = _app(ds="circles", m="2", method="ce_only", seed="7", eps="0.5", atk="fgsm")
    cfg = at.session_state["pg_session"].config
    assert (cfg.dataset, cfg.members, cfg.method, cfg.seed) == ("circles", 2, "ce_only", 7)
    assert at.session_state["pg_eps"] == 0.5 and at.session_state["pg_attack"] == "fgsm"
    at.selectbox(key="pg_dataset").set_value("xor").run()
    assert at.query_params["ds"] == "xor" and at.session_state["pg_session"].config.dataset == "xor"
    assert _epoch(at) == 0  # new settings, new run


def test_a_bad_link_falls_back_to_the_defaults_with_a_warning():
    at = _app(m="9")
    assert not at.exception and at.warning
    assert at.session_state["pg_session"].config.members == 3


def test_picking_a_point_and_member_redraws_the_attack():
    at = _app()
    at.number_input(key="pg_point").set_value(7).run()
    at.selectbox(key="pg_src").set_value(1).run()
    assert not at.exception
    paths = [t for t in _members_traces(at) if t.get("name") == "attack path"]
    assert len(paths) == 4  # drawn on every member and on the vote
    assert any("crafted on **M2**" in c.value for c in at.caption)
    assert at.query_params["pt"] == "7" and at.query_params["src"] == "1"
