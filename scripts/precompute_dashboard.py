"""Compute the dashboard's on-request results for the shipped CIFAR-10 ensembles at the
pages' default settings, through the pages themselves (Streamlit's AppTest), so that a
fresh clone shows them at once: layer-wise CKA (Diversity) and the gradient-cosine
distributions (Gradients). They are written beside the checkpoints
(checkpoints/.cache/cka_*.json, cosdist_*.json; dashboard/persist.py).

    python scripts/precompute_dashboard.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(page: str, button: str) -> None:
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=1800)
    at.run()
    at.switch_page(page)
    at.run()
    found = [b for b in at.button if b.key == button]
    if found:
        found[0].click()
        at.run()
    if at.exception:
        raise SystemExit(f"{page}: {[e.value for e in at.exception]}")
    print(f"{page}: {'computed' if found else 'already there'}")


def main() -> int:
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("PARL_CHECKPOINTS", str(REPO / "checkpoints"))
    _run("pages/diversity.py", "dv_go")
    _run("pages/gradients.py", "gr_dist_go")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
