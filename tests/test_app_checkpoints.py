"""Checkpoints page through AppTest: details, validated uploads (a pickle, a truncated
file and a path-like name are refused; nothing is written outside the folder), rename
and delete with confirmation, classroom mode, and the comparison table."""
import pickle

import pytest

from conftest import REPO, open_page, rerun
from test_app_cifar_folders import private_checkpoints, shared_checkpoints  # noqa: F401  digits-only folders

PAGE = "pages/checkpoints.py"
GOOD = (REPO / "checkpoints" / "digits_parl.safetensors").read_bytes()


def _tab(at, name):
    """Open a tab of the page (only the open tab is computed)."""
    at.session_state["ck_tab"] = name
    return rerun(at)


def _upload(at, filename, data, name=None):
    _tab(at, "Upload")
    at.file_uploader(key="ck_upload").set_value((filename, data, "application/octet-stream"))
    rerun(at)
    if name is not None:
        at.text_input(key="ck_up_name").input(name)
    at.button(key="ck_up_go").click()
    return rerun(at)


def _files(folder):
    return sorted(p.name for p in folder.parent.rglob("*") if p.is_file())


def test_details_follow_the_selection(app_env):
    at = open_page(PAGE)
    assert at.selectbox(key="ck_sel").value == "digits_parl"
    assert len(at.get("plotly_chart")) >= 1  # the history curves
    at.selectbox(key="ck_sel").set_value("digits_ens_u")
    rerun(at)
    assert at.metric[0].value == "98.2%"


@pytest.mark.parametrize("filename,data,name,why", [
    ("evil.safetensors", pickle.dumps({"x": 1}), None, "pickle"),
    ("cut.safetensors", GOOD[:4000], None, "truncated"),
    ("ok.safetensors", GOOD, "../../x", "contains a path"),
    ("junk.safetensors", b"hello world, not a checkpoint", None, "header of"),
], ids=["pickle", "truncated", "path-name", "junk"])
def test_bad_uploads_are_refused(private_checkpoints, filename, data, name, why):
    before = _files(private_checkpoints)
    at = _upload(open_page(PAGE), filename, data, name)
    assert any(why in e.value for e in at.error), [e.value for e in at.error]
    assert _files(private_checkpoints) == before
    assert not (private_checkpoints.parent.parent / "x.safetensors").exists()


def test_good_upload_appears_and_is_not_overwritten(private_checkpoints):
    at = _upload(open_page(PAGE), "mine.safetensors", GOOD, "my ensemble")
    assert any("my_ensemble.safetensors" in s.value for s in at.success)
    assert (private_checkpoints / "my_ensemble.safetensors").read_bytes() == GOOD
    at = _upload(open_page(PAGE), "mine.safetensors", GOOD[:100] + GOOD[100:], "my_ensemble")
    assert any("already exists" in e.value for e in at.error)


def test_rename_and_delete_with_confirmation(private_checkpoints):
    at = open_page(PAGE, query={"checkpoint": "digits_surrogate"})
    at.text_input(key="ck_new_name").input("attacker")
    rerun(at)
    at.button(key="ck_rename_go").click()
    rerun(at)
    assert (private_checkpoints / "attacker.safetensors").exists()
    assert not (private_checkpoints / "digits_surrogate.safetensors").exists()
    assert at.selectbox(key="ck_sel").value == "attacker"
    assert at.button(key="ck_delete_go").disabled  # needs the confirmation box
    at.checkbox(key="ck_sure").check()
    rerun(at)
    at.button(key="ck_delete_go").click()
    rerun(at)
    assert not (private_checkpoints / "attacker.safetensors").exists()


def test_classroom_mode_turns_changes_off(private_checkpoints, monkeypatch):
    monkeypatch.setenv("PARL_READONLY", "1")
    at = _tab(open_page(PAGE), "Upload")
    assert not any(f.key == "ck_upload" for f in at.get("file_uploader"))
    assert any("uploads are off" in i.value for i in at.info)
    from dashboard import uploads
    with pytest.raises(PermissionError):
        uploads.delete(private_checkpoints / "digits_parl.safetensors")
    assert (private_checkpoints / "digits_parl.safetensors").exists()


def test_comparison_table(app_env):
    at = _tab(open_page(PAGE), "Compare (Table 2)")
    assert at.multiselect(key="k_ck_cmp_digits").value[:2] == ["digits_ens_u", "digits_parl"]
    assert "digits_surrogate" not in at.multiselect(key="k_ck_cmp_digits").value
    table = at.dataframe[1].value
    assert list(table.checkpoint[:2]) == ["digits_ens_u", "digits_parl"]
    parl = table.set_index("checkpoint").loc["digits_parl"]
    ens_u = table.set_index("checkpoint").loc["digits_ens_u"]
    assert parl.mean_R < ens_u.mean_R  # PARL's members' gradients are less aligned


def test_upload_size_limit(private_checkpoints, monkeypatch):
    monkeypatch.setenv("PARL_MAX_UPLOAD_MB", "0.01")  # 10 kB: the shipped checkpoints are larger
    before = _files(private_checkpoints)
    at = _upload(open_page(PAGE), "big.safetensors", GOOD, "big")
    assert any("accepts up to" in e.value for e in at.error)
    assert _files(private_checkpoints) == before
