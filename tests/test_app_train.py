"""Train page through AppTest: widgets follow the method and dataset, a tiny run trains in
the background and is saved without overwriting, and the job limit is enforced."""
import pytest

from conftest import open_page, rerun
from dashboard import jobs
from test_app_cifar_folders import private_checkpoints, shared_checkpoints  # noqa: F401  digits-only folders

PAGE = "pages/train.py"


def _labels(at):
    return [w.label for w in (*at.number_input, *at.selectbox)]


def test_method_widgets_come_from_the_registry(app_env):
    at = open_page(PAGE)
    assert "γ₁ (accuracy weight)" in _labels(at) and "K (layers regularised)" in _labels(at)
    methods = at.selectbox(key="k_tr_method").options
    assert {"PARL", "ENS_U"} <= set(methods)
    at.selectbox(key="k_tr_method").set_value("ce_only")
    rerun(at)
    assert "γ₁ (accuracy weight)" not in _labels(at)
    assert "python -m parl_core train" in at.code[0].value and "--method ce_only" in at.code[0].value


def test_dataset_change_picks_a_fitting_architecture(app_env):
    at = open_page(PAGE)
    assert at.selectbox(key="k_tr_arch").value == "smallcnn"
    at.selectbox(key="k_tr_dataset").set_value("moons")
    rerun(at)
    assert at.selectbox(key="k_tr_arch").value == "mlp"
    assert at.selectbox(key="k_tr_arch").options == ["mlp"]


def test_missing_cifar_says_where_to_put_it(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("PARL_DATA", str(tmp_path))
    at = open_page(PAGE)
    at.selectbox(key="k_tr_dataset").set_value("cifar10")
    rerun(at)
    msg = " ".join(e.value for e in at.error)
    assert "cifar-10-batches-py" in msg and str(tmp_path) in msg
    assert at.button(key="tr_start").disabled


def test_existing_name_is_never_overwritten_silently(app_env):
    at = open_page(PAGE)
    at.text_input(key="k_tr_name").input("digits_parl")
    rerun(at)
    assert any("already exists" in e.value for e in at.error)
    assert not any(b.key == "tr_start" for b in at.button)
    at.checkbox(key="tr_overwrite").check()
    rerun(at)
    assert any(b.key == "tr_start" for b in at.button)


def test_a_tiny_run_trains_in_the_background_and_is_saved(private_checkpoints):
    at = open_page(PAGE)
    at.number_input(key="k_tr_epochs").set_value(1)
    at.number_input(key="k_tr_subset").set_value(64)
    at.number_input(key="k_tr_batch").set_value(32)
    at.slider(key="k_tr_members").set_value(2)
    at.text_input(key="k_tr_name").input("../../x")
    rerun(at)
    assert any("contains a path" in e.value for e in at.error)
    assert not any(b.key == "tr_start" for b in at.button)
    at.text_input(key="k_tr_name").input("tiny_parl")
    rerun(at)
    at.button(key="tr_start").click()
    rerun(at)
    job = jobs.get_job(at.session_state["train_job"])
    assert job is not None
    job_thread_join(job)
    assert job.status == "finished", job.error
    assert (private_checkpoints / "tiny_parl.safetensors").is_file()
    rerun(at)
    assert any("saved as `tiny_parl.safetensors`" in s.value for s in at.success)
    at.switch_page("pages/home.py")
    rerun(at)
    assert "tiny_parl" in set(at.dataframe[0].value.checkpoint)


def job_thread_join(job, timeout=120):
    import threading
    for t in threading.enumerate():
        if t.name == f"parl-train-{job.id}":
            t.join(timeout)
    assert not job.active


def test_job_limit_gives_a_clear_message(app_env, monkeypatch):
    monkeypatch.setenv("PARL_MAX_JOBS", "1")
    busy = jobs.Job(jobs.TrainSettings(name="someone_else"), status="running")
    monkeypatch.setitem(jobs._JOBS, busy.id, busy)
    at = open_page(PAGE)
    at.button(key="tr_start").click()
    rerun(at)
    assert any("server is busy" in e.value and "PARL_MAX_JOBS=1" in e.value for e in at.error)
    assert "train_job" not in at.session_state


def test_estimate_times_real_steps(app_env):
    at = open_page(PAGE)
    at.number_input(key="k_tr_epochs").set_value(2)
    rerun(at)
    next(b for b in at.button if b.label == "Estimate run time").click()
    rerun(at)
    text = " ".join(i.value for i in at.info)
    assert "Estimated run time" in text and "2 evaluations" in text


@pytest.mark.parametrize("status", ["failed"])
def test_failed_job_shows_error_not_traceback(app_env, status):
    job = jobs.Job(jobs.TrainSettings(name="broken"), status=status, error="RuntimeError: out of memory")
    jobs._JOBS[job.id] = job
    try:
        at = open_page(PAGE)
        at.session_state["train_job"] = job.id
        rerun(at)
        assert any("out of memory" in e.value for e in at.error)
    finally:
        jobs._JOBS.pop(job.id)


# ------------------------------------------------------------------ nothing trained is lost
def _start_tiny(at, name: str, epochs: int = 1):
    at.number_input(key="k_tr_epochs").set_value(epochs)
    at.number_input(key="k_tr_subset").set_value(64)
    at.number_input(key="k_tr_batch").set_value(32)
    at.slider(key="k_tr_members").set_value(2)
    at.text_input(key="k_tr_name").input(name)
    rerun(at)
    at.button(key="tr_start").click()
    rerun(at)
    job = jobs.get_job(at.session_state["train_job"])
    job_thread_join(job)
    rerun(at)
    return job


def _texts(elements) -> str:
    return " ".join(e.value for e in elements)


def test_a_taken_name_is_replaced_by_the_next_free_one_and_the_person_told(private_checkpoints):
    from parl_core.runlock import RunLock
    at = open_page(PAGE)
    # another session's run reserved the name a moment ago (no file yet)
    with RunLock(private_checkpoints / "tiny_taken.safetensors", owner="another session"):
        job = _start_tiny(at, "tiny_taken")
    assert job.settings.name == "tiny_taken_2" and job.status == "finished", job.error
    assert "`tiny_taken` was taken" in _texts(at.info) and "saved as `tiny_taken_2`" in _texts(at.info)
    assert "saved as `tiny_taken_2.safetensors`" in _texts(at.success)
    assert not (private_checkpoints / "tiny_taken.safetensors").exists()


def test_a_failed_save_says_why_and_offers_retry_and_download(private_checkpoints, monkeypatch):
    import errno
    full = {"on": True}
    real = jobs._write

    def write(path, ens, meta):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, ens, meta)
    monkeypatch.setattr(jobs, "_write", write)
    at = open_page(PAGE)
    job = _start_tiny(at, "tiny_full")
    assert job.status == "finished" and job.pending is not None
    msg = _texts(at.error)
    assert "could not be saved" in msg and "No space left on device" in msg and "Retry saving" in msg
    assert at.get("download_button"), "no download button for the unsaved checkpoint"
    full["on"] = False  # space freed
    at.button(key="tr_retry_save").click()
    rerun(at)
    assert "saved as `tiny_full.safetensors`" in _texts(at.success)
    assert (private_checkpoints / "tiny_full.safetensors").is_file()


def test_an_interrupted_run_is_offered_for_resume(private_checkpoints, monkeypatch):
    real = jobs.Job.on_progress

    def stop_after_first(self, ev):  # the server "dies" after epoch 1 of 3
        real(self, ev)
        if ev["event"] == "epoch":
            self.cancel()
    with monkeypatch.context() as m:
        m.setattr(jobs.Job, "on_progress", stop_after_first)
        first = jobs.start_job(jobs.TrainSettings(members=2, epochs=3, batch_size=32, train_subset=64,
                                                  name="tiny_halfway"))
        job_thread_join(first)
    monkeypatch.setattr(jobs, "_JOBS", {})  # a restarted server remembers no job
    monkeypatch.setenv("PARL_READONLY", "1")
    at = open_page(PAGE)
    assert "after epoch 1 of 3" in _texts(at.markdown)
    assert at.button(key="tr_resume_tiny_halfway").disabled  # classroom mode: it replaces a file
    monkeypatch.delenv("PARL_READONLY")
    at = open_page(PAGE)
    assert any(h.value == "Unfinished runs" for h in at.subheader)
    at.button(key="tr_resume_tiny_halfway").click()
    rerun(at)
    job = jobs.get_job(at.session_state["train_job"])
    job_thread_join(job)
    rerun(at)
    assert job.status == "finished", job.error
    assert "Finished: 3 epoch(s), saved as `tiny_halfway.safetensors`" in _texts(at.success)
    assert not any(h.value == "Unfinished runs" for h in at.subheader)
    import parl_core as pc
    assert pc.read_metadata(private_checkpoints / "tiny_halfway.safetensors")["epochs_done"] == 3


def test_dverge_warm_starts_from_an_ens_u_as_its_reference_does(private_checkpoints):
    import parl_core as pc
    at = open_page(PAGE)
    at.selectbox(key="k_tr_method").set_value("dverge")
    rerun(at)
    box = at.selectbox(key="k_tr_init")
    assert box.value == "digits_ens_u" and "(from scratch)" in box.options  # the shipped ENS_U, 3 members
    assert "digits_parl" not in box.options  # only plain ensembles
    assert "--init" in at.code[0].value and "digits_ens_u.safetensors" in at.code[0].value
    for k, v in (("k_tr_epochs", 1), ("k_tr_subset", 64), ("k_tr_batch", 32)):
        at.number_input(key=k).set_value(v)
    at.text_input(key="k_tr_name").input("tiny_dverge")
    rerun(at)
    at.button(key="tr_start").click()
    rerun(at)
    job = jobs.get_job(at.session_state["train_job"])
    job_thread_join(job, timeout=300)
    assert job.status == "finished", job.error
    meta = pc.read_metadata(private_checkpoints / "tiny_dverge.safetensors")
    assert meta["init"] == "digits_ens_u" and "--init" in meta["command"]
    # two members: no ENS_U fits, so DVERGE waits for a choice (scratch or train one first)
    at.slider(key="k_tr_members").set_value(2)
    rerun(at)
    assert any("no finished ENS_U here" in w.value for w in at.warning)
    assert not any(b.key == "tr_start" for b in at.button)
    at.checkbox(key="tr_dv_scratch").check()
    rerun(at)
    assert "--scratch" in at.code[0].value and any(b.key == "tr_start" for b in at.button)


def test_a_warm_start_that_does_not_fit_is_refused_before_training(private_checkpoints):
    s = jobs.TrainSettings(method="dverge", members=2, init="digits_ens_u", name="x", epochs=1)
    with pytest.raises(ValueError, match="members 3 \\(this run: 2\\)"):
        jobs.start_job(s)
    with pytest.raises(ValueError, match="not in the checkpoint folder"):
        jobs.start_job(jobs.TrainSettings(method="dverge", init="nope", name="y", epochs=1))
