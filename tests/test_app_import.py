"""Checkpoints page, Upload tab, through AppTest: member .pth files in the DVERGE layout
become a checkpoint (what was mapped is shown; the logits are the reference model's); a
pickle with code is refused and runs nothing; the method must be chosen; classroom mode
has no import; and the dashboard never imports the factory of a user-defined model."""
import sys

import pytest
import torch

import parl_core as pc
from conftest import open_page, rerun
from test_app_cifar_folders import private_checkpoints, shared_checkpoints  # noqa: F401  digits-only folders
from import_helpers import DvergeWrapper, RefResNet20, UserNet, randomise, save_user_net_ensemble

PAGE = "pages/checkpoints.py"
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def _files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def _import(files, *, layout="dverge", method="dverge", name=None, click=True):
    at = open_page(PAGE)
    at.session_state["ck_tab"] = "Upload"
    rerun(at)
    at.file_uploader(key="ck_imp_files").set_value(
        [(n, d, "application/octet-stream") for n, d in files])
    at.selectbox(key="ck_imp_layout").set_value(layout)
    rerun(at)
    if method is not None:
        at.selectbox(key="ck_imp_method").set_value(method)
    if name is not None:
        at.text_input(key="ck_imp_name").input(name)
    rerun(at)
    if click:
        at.button(key="ck_imp_go").click()
        rerun(at)
    return at


def _dverge_file(tmp_path, n=2):
    refs = [DvergeWrapper(randomise(RefResNet20(), 30 + i), MEAN, STD).eval() for i in range(n)]
    f = tmp_path / "epoch_200.pth"
    torch.save({f"model_{i}": r.state_dict() for i, r in enumerate(refs)}, f)
    return refs, f.read_bytes()


def test_dverge_members_become_a_checkpoint_and_the_mapping_is_shown(private_checkpoints, tmp_path):
    refs, data = _dverge_file(tmp_path)
    at = _import([("epoch_200.pth", data)], name="from dverge")
    assert not at.error, [e.value for e in at.error]
    assert any("Imported `from_dverge.safetensors`: 2 x resnet20 (DVERGE, cifar10)" in s.value
               and "(file)" in s.value for s in at.success), [s.value for s in at.success]
    mapping = at.dataframe[-1].value  # the renames, shown last
    assert ["model.layer1.0.conv1", "blocks.0.conv_a"] in mapping.values.tolist()
    ens, meta = pc.load_checkpoint(private_checkpoints / "from_dverge.safetensors")
    assert meta["imported"]["layout"] == "dverge" and meta["method"] == "dverge"
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        for m, r in zip(ens.members, refs):
            torch.testing.assert_close(m(x), r(x), rtol=1e-4, atol=1e-5)


def test_a_pickle_with_code_is_refused_and_runs_nothing(private_checkpoints, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    f = tmp_path / "evil.pth"
    torch.save({"state_dict": RefResNet20().state_dict(), "x": Evil()}, f)
    before = _files(private_checkpoints)
    at = _import([("evil.pth", f.read_bytes())], name="evil")
    assert any("refused" in e.value and "GLOBAL" in e.value for e in at.error), [e.value for e in at.error]
    assert not marker.exists() and _files(private_checkpoints) == before


def test_bad_keys_are_listed_and_the_method_must_be_chosen(private_checkpoints, tmp_path):
    sd = RefResNet20().state_dict()
    sd["layer9.0.conv1.weight"] = torch.zeros(1)
    f = tmp_path / "odd.pth"
    torch.save(sd, f)
    at = _import([("odd.pth", f.read_bytes())], layout="trs", method="trs")
    assert any("unknown keys (1): layer9.0.conv1.weight" in e.value for e in at.error)
    at = _import([("odd.pth", f.read_bytes())], method=None, click=False)
    assert at.button(key="ck_imp_go").disabled


def test_classroom_mode_offers_no_import(private_checkpoints, monkeypatch):
    monkeypatch.setenv("PARL_READONLY", "1")
    at = open_page(PAGE)
    at.session_state["ck_tab"] = "Upload"
    rerun(at)
    assert not at.get("file_uploader") and any("read-only" in i.value for i in at.info)


def test_the_dashboard_never_imports_a_user_models_factory(private_checkpoints, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_factory_xyz.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "def make():\n    raise RuntimeError('never')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = pc.hooked.HookedModel(UserNet(), num_classes=10, in_channels=1, factory="evil_factory_xyz:make")
    path = pc.save_checkpoint(private_checkpoints / "user_model.safetensors", pc.Ensemble([m]),
                              {"dataset": "digits", "method": "ce_only"})
    at = open_page(PAGE)
    at.selectbox(key="ck_sel").set_value("user_model")
    rerun(at)
    assert any(mt.value == "1" for mt in at.metric)  # listed, its metadata shown
    from dashboard import cache
    with pytest.raises(pc.checkpoints.CheckpointError,
                       match="evil_factory_xyz:make.*not been allowed.*PARL_MODEL_FACTORIES"):
        cache.load_ensemble(path)
    monkeypatch.setenv("PARL_MODEL_FACTORIES", "other_module:make")  # an allow-list without it
    with pytest.raises(pc.checkpoints.CheckpointError, match="not been allowed"):
        pc.load_checkpoint(path)
    assert not marker.exists() and "evil_factory_xyz" not in sys.modules


def test_a_user_model_opens_where_its_operator_allows_its_factory(private_checkpoints, monkeypatch):
    """PARL_MODEL_FACTORIES, set by whoever starts the server, lets exactly those factories
    be imported: such an ensemble then opens on the analysis pages like any other."""
    save_user_net_ensemble(private_checkpoints)
    monkeypatch.setenv("PARL_MODEL_FACTORIES", "import_helpers:make_user_net")
    for page in ("pages/gradients.py", "pages/diversity.py", "pages/robustness.py"):
        at = open_page(page, query={"checkpoint": "user_net"})
        assert not at.error, [e.value for e in at.error]
        assert at.session_state["checkpoint"] == "user_net"


@pytest.mark.parametrize("page", ["pages/gradients.py", "pages/diversity.py", "pages/robustness.py"])
def test_an_imported_dverge_ensemble_opens_on_the_analysis_pages(private_checkpoints, tmp_path, page):
    from parl_core.importers import import_members
    _, data = _dverge_file(tmp_path, 3)
    ens, meta = import_members([("epoch_200.pth", data)], "dverge", method="dverge")
    pc.save_checkpoint(private_checkpoints / "dverge_imported.safetensors", ens, meta)
    at = open_page(page, query={"checkpoint": "dverge_imported"})
    assert not at.error, [e.value for e in at.error]
    if page == "pages/gradients.py":  # its top row shows the imported members
        assert at.selectbox[0].label.startswith("Top row") and at.selectbox[0].value == "dverge_imported"
