"""DESIGN §3: every page also runs by itself (no app.py, no shared session state)."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from test_app_cifar_folders import shared_checkpoints  # noqa: F401  digits-only folder

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p.name for p in (ROOT / "pages").glob("*.py"))


def test_every_page_file_is_covered():
    assert {"home.py", "train.py", "gradients.py", "diversity.py", "robustness.py",
            "checkpoints.py", "playground.py"} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_its_own(page, app_env):
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.title, "every page shows its title"
