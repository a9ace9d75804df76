"""Heavy dashboard results kept on disk beside their checkpoint (dashboard/persist.py):
they survive a server restart, are shared by copies of a checkpoint, and a file that
does not fit is recomputed."""
import json

import numpy as np

from conftest import open_page, rerun
from dashboard import persist
from test_app_cifar_folders import cifar_env, tiny_cifar_folder  # noqa: F401


def test_round_trip_of_what_the_pages_store(tmp_path):
    value = {"pairs": {(0, 1): {"matrix": np.eye(3), "diagonal": np.ones(3, np.float32),
                                "overall": 0.5, "label": "M1–M2"}},
             "overall": np.float64(0.5), "estimator": "minibatch", "members": 2, "t": (1, "a")}
    key = ("cka", (str(tmp_path / "a.safetensors"), "abc"), "cifar10", 50, 32, "minibatch")
    persist.save(key, "fp", value)
    back = persist.load(key, "fp")
    assert back["pairs"][(0, 1)]["diagonal"].dtype == np.float32
    assert np.array_equal(back["pairs"][(0, 1)]["matrix"], np.eye(3)) and back["t"] == (1, "a")
    assert persist.load(key, "other images") is None  # computed on other test images
    copy = ("cka", (str(tmp_path / "a.safetensors"), "abc")) + key[2:]
    assert persist.load(copy, "fp") is not None
    (file,) = (tmp_path / ".cache").glob("cka_a_*.json")
    file.write_text(file.read_text()[:40])
    assert persist.load(key, "fp") is None  # truncated: not computed
    assert persist.file_for(("cosine", key[1]), "fp") is None  # a kind not persisted


def test_cka_survives_a_server_restart(cifar_env):
    from dashboard import compute
    at = open_page("pages/diversity.py")
    at.slider(key="k_dv_n").set_value(50)
    at.select_slider(key="k_dv_batch").set_value(32)
    rerun(at)
    at.button(key="dv_go").click()
    rerun(at)
    files = list((cifar_env / ".cache").glob("cka_cifar10_*.json"))
    assert len(files) == 2 and all(json.loads(f.read_text())["key"]["kind"] == "cka" for f in files)
    compute._store.clear()  # a restarted server: nothing in memory
    at = open_page("pages/diversity.py")
    at.slider(key="k_dv_n").set_value(50)
    at.select_slider(key="k_dv_batch").set_value(32)
    rerun(at)
    assert not [b for b in at.button if b.key == "dv_go"]  # shown at once, no Compute button
    assert sum("overall average CKA" in m.value for m in at.markdown) == 2


def test_read_only_server_does_not_write(cifar_env, monkeypatch):
    monkeypatch.setenv("PARL_READONLY", "1")
    at = open_page("pages/diversity.py")
    at.slider(key="k_dv_n").set_value(100)
    rerun(at)
    before = set((cifar_env / ".cache").glob("cka_*.json")) if (cifar_env / ".cache").exists() else set()
    if [b for b in at.button if b.key == "dv_go"]:
        at.button(key="dv_go").click()
        rerun(at)
    after = set((cifar_env / ".cache").glob("cka_*.json")) if (cifar_env / ".cache").exists() else set()
    assert after == before



def test_read_only_mode_computes_and_shows_but_never_writes(tmp_path, monkeypatch):
    """Every writer of the CKA / distribution / transfer results obeys PARL_READONLY itself:
    persist.save and compute.store (which keeps the value in memory for every session)."""
    from dashboard import compute
    monkeypatch.setenv("PARL_READONLY", "1")
    key = ("cka", (str(tmp_path / "a.safetensors"), "abc"), "digits", 20, 32, "minibatch")
    assert persist.save(key, "fp", {"overall": 0.5}) is None
    compute._store.clear()
    assert compute.store(key, {"overall": 0.25}) == {"overall": 0.25}
    assert compute.stored(key) == {"overall": 0.25}  # shown, from memory
    assert not (tmp_path / ".cache").exists()
    monkeypatch.delenv("PARL_READONLY")
    assert persist.save(key, "fp", {"overall": 0.5}).is_file()  # a writable server keeps it
    compute._store.clear()
