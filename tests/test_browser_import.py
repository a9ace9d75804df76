"""Ensembles from elsewhere in a real browser (issue 15): an ensemble imported from the
DVERGE codebase's layout and one built from a user-defined nn.Module (its factory
allow-listed by whoever started the server, PARL_MODEL_FACTORIES) open on every analysis
page, with figures and no error."""
import os

import pytest
import torch

import parl_core as pc
from browser_helpers import goto_page, wait_for_app
from conftest import REPO, copy_checkpoints, start_app, stop_app
from import_helpers import DvergeWrapper, RefResNet20, make_user_net, randomise

CHART = '[data-testid="stPlotlyChart"] .main-svg'
PAGES = {"gradients": "Gradients", "diversity": "Diversity: layer-wise CKA",
         "robustness": "Robustness under attack"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import _require_browser
    _require_browser()
    folder = copy_checkpoints(tmp_path_factory.mktemp("import") / "checkpoints")
    refs = [DvergeWrapper(randomise(RefResNet20(), 30 + i), [0.49, 0.48, 0.45], [0.2, 0.2, 0.2]).eval()
            for i in range(3)]
    ens, meta = _import(refs, folder)
    pc.save_checkpoint(folder / "dverge_imported.safetensors", ens, meta)
    torch.manual_seed(0)
    users = [pc.HookedModel(make_user_net(), num_classes=10, in_channels=1,
                            factory="import_helpers:make_user_net") for _ in range(3)]
    pc.save_checkpoint(folder / "user_net.safetensors", pc.Ensemble(users),
                       {"dataset": "digits", "method": "ce_only"})
    env = {"PARL_MODEL_FACTORIES": "import_helpers:make_user_net",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc, url = start_app(folder, env=env)
    yield url
    stop_app(proc)


def _import(refs, folder):
    f = folder.parent / "epoch_200.pth"
    torch.save({f"model_{i}": r.state_dict() for i, r in enumerate(refs)}, f)
    return pc.import_members([f], "dverge", method="dverge")


@pytest.mark.parametrize("ckpt", ["dverge_imported", "user_net"])
@pytest.mark.parametrize("path", list(PAGES))
def test_foreign_ensembles_open_on_every_analysis_page(server, page, ckpt, path):
    goto_page(page, server)
    goto_page(page, server, f"{path}?checkpoint={ckpt}")
    page.get_by_role("heading", name=PAGES[path]).wait_for(timeout=120_000)
    wait_for_app(page, 180_000)
    sel = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input').first
    assert sel.input_value().startswith(ckpt)
    errors = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.first.inner_text()
    if path == "gradients":  # its figures compute on first paint
        page.locator(CHART).first.wait_for(timeout=180_000)
