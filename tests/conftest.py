"""Shared fixtures. Browser fixtures (`app_url`, `page`) start the real dashboard with
`streamlit run app.py` on a temporary copy of checkpoints/ and drive it with Playwright
and Debian's chromium; they skip, with the reason, when either is missing."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_app(checkpoint_dir: Path, *, env: dict | None = None, timeout: float = 60.0):
    """Start `streamlit run app.py` on a free port; returns (process, url) once healthy."""
    port = _free_port()
    full_env = {**os.environ, "PARL_CHECKPOINTS": str(checkpoint_dir), "PARL_READONLY": "0",
                "PARL_DEBUG": "1",
                "PYTHONUNBUFFERED": "1", **(env or {})}
    log = open(checkpoint_dir.parent / f"streamlit-{port}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while not _healthy(url):  # the server's own health endpoint is the signal
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            text = (checkpoint_dir.parent / f"streamlit-{port}.log").read_text(errors="replace")
            raise RuntimeError(f"streamlit did not become healthy on {url}:\n{text[-3000:]}")
        time.sleep(0.1)
    return proc, url


def stop_app(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def copy_checkpoints(dest: Path) -> Path:
    """A writable copy of the shipped checkpoints and their shipped (committed) cached
    results, so tests never modify them."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in (REPO / "checkpoints").glob("*.safetensors"):
        shutil.copy2(f, dest / f.name)
    shipped = subprocess.run(["git", "ls-files", "checkpoints/.cache"], cwd=REPO,
                             capture_output=True, text=True).stdout.split()
    for rel in shipped:
        (dest / ".cache").mkdir(exist_ok=True)
        shutil.copy2(REPO / rel, dest / ".cache" / Path(rel).name)
    return dest


def _require_browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests need Playwright for Python (pip install playwright)")


@pytest.fixture(scope="session")
def browser_checkpoints(tmp_path_factory) -> Path:
    """The checkpoint folder the browser app uses (a temporary copy of checkpoints/)."""
    return copy_checkpoints(tmp_path_factory.mktemp("app") / "checkpoints")


@pytest.fixture(scope="session")
def app_url(browser_checkpoints):
    """URL of a running `streamlit run app.py` (PARL_CHECKPOINTS = a temporary copy)."""
    _require_browser()
    proc, url = start_app(browser_checkpoints)
    yield url
    stop_app(proc)


@pytest.fixture(scope="session")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def page(browser):
    """One Playwright page (1280x900) for the browser tests of the session."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    ctx.close()


# --------------------------------------------------------------------------- AppTest
@pytest.fixture(scope="session")
def shared_checkpoints(tmp_path_factory) -> Path:
    """A temporary copy of checkpoints/ for AppTests that only read (shared by the session,
    so cached analyses are computed once)."""
    return copy_checkpoints(tmp_path_factory.mktemp("shared") / "checkpoints")


@pytest.fixture
def app_env(shared_checkpoints, monkeypatch):
    """Point the app at the shared read-only copy (classroom mode off)."""
    monkeypatch.setenv("PARL_CHECKPOINTS", str(shared_checkpoints))
    monkeypatch.setenv("PARL_DEBUG", "1")  # an unexpected exception fails the test
    monkeypatch.delenv("PARL_READONLY", raising=False)
    return shared_checkpoints


@pytest.fixture
def private_checkpoints(tmp_path, monkeypatch) -> Path:
    """A private writable copy for AppTests that add, rename or delete checkpoints."""
    d = copy_checkpoints(tmp_path / "checkpoints")
    monkeypatch.setenv("PARL_CHECKPOINTS", str(d))
    monkeypatch.setenv("PARL_DEBUG", "1")
    monkeypatch.delenv("PARL_READONLY", raising=False)
    return d


def open_page(page: str | None = None, *, timeout: float = 120, query: dict | None = None):
    """AppTest of app.py (navigation + sidebar), switched to `page` (e.g. "pages/train.py")
    and run; raises if the run raised."""
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=timeout)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if page is not None:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def rerun(at):
    """Run again and fail on any exception shown in the page."""
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# --------------------------------------------------------------------------- torch
@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny batches: one thread is as fast, and immune to the 20-100x slowdown of OpenMP
    threads spinning on a shared, oversubscribed machine. Restored after the module."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- attack tests
@pytest.fixture(scope="module")
def ens():
    """The shipped digits ENS_U ensemble on CPU (modules may override with their own)."""
    import parl_core as pc
    return pc.load_checkpoint(REPO / "checkpoints" / "digits_ens_u.safetensors", device="cpu")[0]


@pytest.fixture(scope="module")
def models():
    """The shipped digits ENS_U, PARL and surrogate ensembles on CPU, by short name."""
    import parl_core as pc
    return {n: pc.load_checkpoint(REPO / "checkpoints" / f"digits_{n}.safetensors", device="cpu")[0]
            for n in ("ens_u", "parl", "surrogate")}


@pytest.fixture(scope="module")
def data():
    """200 digits test examples (seeded subset) as (x, y)."""
    import parl_core as pc
    ds = pc.load_dataset("digits", "test").subset(200, seed=0)
    return ds.images, ds.labels



# --------------------------------------------------------------------------- reproduction
@pytest.fixture(scope="session")
def smoke_reproduction(tmp_path_factory):
    """One full smoke reproduction (about a minute), shared by the tests that read it:
    (report folder, report.md path, progress events). Tests must not modify it."""
    import parl_core.reproduce as rp
    out = tmp_path_factory.mktemp("smoke")
    events = []
    report = rp.reproduce(rp.make_plan("smoke"), out, on_event=events.append)
    return out, report, events
