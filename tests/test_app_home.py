"""Home page and the shared sidebar through Streamlit's AppTest."""
from conftest import open_page, rerun
from test_app_cifar_folders import private_checkpoints, shared_checkpoints  # noqa: F401  digits-only folders


def test_home_lists_the_shipped_checkpoints(app_env):
    at = open_page()
    assert at.title[0].value == "PARL Lab"
    assert len(at.latex) == 1
    table = at.dataframe[0].value
    assert {"digits_ens_u", "digits_parl", "digits_surrogate"} <= set(table.checkpoint)
    row = table.set_index("checkpoint").loc["digits_parl"]
    assert row.method == "PARL" and row.members == 3 and 0.9 < row.clean_acc <= 1


def test_sidebar_checkpoint_drives_state_and_url(app_env):
    at = open_page()
    box = at.sidebar.selectbox(key="_sb_checkpoint")
    assert box.value == "digits_parl"  # the preferred default
    assert at.query_params["checkpoint"] in ("digits_parl", ["digits_parl"])
    box.set_value("digits_ens_u")
    rerun(at)
    assert at.session_state["checkpoint"] == "digits_ens_u"
    at.switch_page("pages/checkpoints.py")
    rerun(at)  # every page follows the active checkpoint
    assert at.selectbox(key="ck_sel").value == "digits_ens_u"
    assert at.metric[0].value == "98.2%"


def test_sidebar_describes_the_active_checkpoint(app_env):
    at = open_page(query={"checkpoint": "digits_ens_u"})
    text = " ".join(m.value for m in at.sidebar.markdown)
    assert "ENS_U" in text and "`digits`" in text and "data available" in text and "Device" in text


def test_checkpoint_from_the_url(app_env):
    at = open_page(query={"checkpoint": "digits_surrogate"})
    assert at.sidebar.selectbox(key="_sb_checkpoint").value == "digits_surrogate"


def test_unknown_checkpoint_in_url_falls_back(app_env):
    at = open_page(query={"checkpoint": "../../etc/passwd"})
    assert at.sidebar.selectbox(key="_sb_checkpoint").value == "digits_parl"


def test_readonly_mode_is_announced(app_env, monkeypatch):
    monkeypatch.setenv("PARL_READONLY", "1")
    at = open_page()
    assert any("Classroom mode" in i.value for i in at.sidebar.info)


def test_empty_folder_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PARL_CHECKPOINTS", str(tmp_path))
    at = open_page()
    assert any("Train" in w.value for w in at.sidebar.warning)
    for page in ("pages/gradients.py", "pages/diversity.py", "pages/robustness.py", "pages/checkpoints.py"):
        at.switch_page(page)
        rerun(at)


def test_page_checkpoint_and_example_from_the_url(app_env):
    at = open_page(query={"page": "gradients", "checkpoint": "digits_ens_u", "example": "4"})
    assert at.title[0].value == "Gradients"
    assert any(m.value.startswith("**Test example #4**") and "ENS_U M1" in m.value for m in at.markdown)


def test_a_failing_view_shows_what_to_do_not_a_traceback(private_checkpoints, monkeypatch):
    monkeypatch.delenv("PARL_DEBUG")
    good = (private_checkpoints / "digits_parl.safetensors").read_bytes()
    # weights cut: the header no longer covers the file, so the listing refuses it before
    # any page loads it (parl_core/schema.py); the pages open on another checkpoint
    (private_checkpoints / "digits_parl.safetensors").write_bytes(good[:-64])
    at = open_page(query={"page": "gradients", "checkpoint": "digits_parl"})
    assert not at.exception and not at.error
    assert at.title[0].value == "Gradients"


def test_warm_up_loads_the_checkpoints_test_sets_once_in_the_background(app_env, monkeypatch):
    import threading

    import parl_core as pc
    from dashboard import cache
    calls = []
    real = pc.load_dataset
    monkeypatch.setattr(pc, "load_dataset", lambda *a, **k: calls.append(a[:2]) or real(*a, **k))
    monkeypatch.setattr(cache, "_warm_started", threading.Event())
    cache.load_dataset.clear()
    assert cache.warm_up() is True and cache.warm_up() is False  # once per server
    for t in threading.enumerate():  # (it may have finished already)
        if t.name == "parl-warm-up":
            t.join(120)
    assert calls == [("digits", "test")]  # the shipped checkpoints are all digits
    cache.load_dataset("digits", "test")  # what a page asks for next: already there
    assert calls == [("digits", "test")]
