"""CIFAR download without torchvision, against a local HTTP server (no internet): resume
with Range, checksum, safe and atomic extraction, offline instructions, the CLI's
output, and the Train page's download button."""
from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from parl_core import download as dl
from parl_core.data import load_dataset

FOLDER = "cifar-10-batches-py"


def _batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return pickle.dumps({"batch_label": "tiny", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": [int(v) for v in rng.integers(0, 10, n)],
                         "filenames": [f"img{i}.png" for i in range(n)]})


def _archive(extra: dict[str, bytes] | None = None) -> bytes:
    """A tiny tar.gz in the canonical layout (+ `extra` members, e.g. hostile ones)."""
    files = {f"{FOLDER}/data_batch_1": _batch(6, 0), f"{FOLDER}/test_batch": _batch(5, 1),
             f"{FOLDER}/batches.meta": pickle.dumps({"label_names": [f"c{i}" for i in range(10)],
                                                     "num_vis": 3072}),
             **(extra or {})}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        dir_info = tarfile.TarInfo(FOLDER)
        dir_info.type, dir_info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(dir_info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ARCHIVE = _archive()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Server:
    """ThreadingHTTPServer on 127.0.0.1 serving `payload` at any path, with Range support.
    cut_first: the first response promises every byte but sends half, then closes.
    ignore_range: answer 200 with the whole file to a Range request.
    status: answer every request with this HTTP error instead."""

    def __init__(self, payload: bytes, *, cut_first=False, ignore_range=False, status=None):
        self.payload, self.cut_first, self.ignore_range = payload, cut_first, ignore_range
        self.status = status
        self.requests: list[str | None] = []  # the Range header of each request
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                srv.requests.append(rng)
                if srv.status:
                    self.send_error(srv.status)
                    return
                data, start = srv.payload, 0
                if rng and not srv.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if srv.cut_first and len(srv.requests) == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar-10-python.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    monkeypatch.setattr(dl, "BACKOFF_S", 0.0)
    for v in ("PARL_CIFAR10_URL", "PARL_CIFAR10_CHECKSUM", "PARL_DATA"):
        monkeypatch.delenv(v, raising=False)


def test_good_download_loads_and_reports_progress(tmp_path):
    seen = []
    with Server(ARCHIVE) as srv:
        path = dl.download_cifar("cifar10", tmp_path, url=srv.url, checksum=_sha(ARCHIVE),
                                 progress=lambda d, t: seen.append((d, t)))
    assert path == tmp_path / FOLDER and path.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [FOLDER]  # no .part, no temp folder
    assert seen[-1] == (len(ARCHIVE), len(ARCHIVE))
    ds = load_dataset("cifar10", "test", tmp_path)
    assert len(ds) == 5 and ds.classes[0] == "c0" and tuple(ds.images.shape[1:]) == (3, 32, 32)


def test_md5_checksum_and_env_overrides(tmp_path, monkeypatch):
    with Server(ARCHIVE) as srv:
        monkeypatch.setenv("PARL_CIFAR10_URL", srv.url)
        monkeypatch.setenv("PARL_CIFAR10_CHECKSUM", "md5:" + hashlib.md5(ARCHIVE).hexdigest())
        monkeypatch.setenv("PARL_DATA", str(tmp_path))
        assert dl.download_cifar("cifar10") == tmp_path / FOLDER
        assert srv.requests == [None]


def test_wrong_checksum_leaves_nothing(tmp_path):
    with Server(ARCHIVE) as srv, pytest.raises(ValueError) as e:
        dl.download_cifar("cifar10", tmp_path, url=srv.url, checksum="sha256:" + "0" * 64)
    msg = str(e.value)
    assert "expected sha256:" + "0" * 64 in msg and hashlib.sha256(ARCHIVE).hexdigest() in msg
    assert "again" in msg
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_resumes_with_range(tmp_path):
    with Server(ARCHIVE, cut_first=True) as srv:
        path = dl.download_cifar("cifar10", tmp_path, url=srv.url, checksum=_sha(ARCHIVE))
    assert path.is_dir() and srv.requests[0] is None
    assert srv.requests[1] == f"bytes={len(ARCHIVE) // 2}-"
    assert len(load_dataset("cifar10", "train", tmp_path)) == 6


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    with Server(ARCHIVE, cut_first=True, ignore_range=True) as srv:
        path = dl.download_cifar("cifar10", tmp_path, url=srv.url, checksum=_sha(ARCHIVE))
    assert path.is_dir() and len(srv.requests) == 2 and srv.requests[1] is not None


def test_cancel_keeps_the_part_and_the_next_call_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "CHUNK", 1024)
    stop = threading.Event()
    with Server(ARCHIVE) as srv:
        with pytest.raises(dl.DownloadCancelled, match="resumes"):
            dl.download_cifar("cifar10", tmp_path, url=srv.url, checksum=_sha(ARCHIVE), cancel=stop,
                              progress=lambda d, t: d >= 2048 and stop.set())
        part = tmp_path / ".cifar-10-python.tar.gz.part"
        assert part.stat().st_size == 2048 and not (tmp_path / FOLDER).exists()
        dl.download_cifar("cifar10", tmp_path, url=srv.url, checksum=_sha(ARCHIVE))
    assert srv.requests == [None, "bytes=2048-"] and not part.exists()


def test_unreachable_server_says_what_to_do(tmp_path):
    url = _closed_port_url()
    with pytest.raises(ConnectionError) as e:
        dl.download_cifar("cifar10", tmp_path, url=url, retries=1)
    msg = str(e.value)
    assert isinstance(e.value, dl.DownloadError)
    assert url in msg and FOLDER in msg and str(tmp_path.resolve()) in msg and "PARL_DATA" in msg
    assert not (tmp_path / FOLDER).exists()


def test_http_404_is_not_retried(tmp_path):
    with Server(ARCHIVE, status=404) as srv, pytest.raises(dl.DownloadError, match="HTTP 404") as e:
        dl.download_cifar("cifar10", tmp_path, url=srv.url, checksum=_sha(ARCHIVE), retries=3)
    assert len(srv.requests) == 1 and srv.url in str(e.value)


def test_hostile_member_is_refused(tmp_path):
    root = tmp_path / "root"
    bad = _archive({"../evil": b"gotcha"})
    with Server(bad) as srv, pytest.raises(ValueError, match="refusing.*evil"):
        dl.download_cifar("cifar10", root, url=srv.url, checksum=_sha(bad))
    assert not (tmp_path / "evil").exists() and list(root.iterdir()) == []


def test_link_member_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo(f"{FOLDER}/test_batch")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    bad = buf.getvalue()
    with Server(bad) as srv, pytest.raises(ValueError, match="a link"):
        dl.download_cifar("cifar10", tmp_path, url=srv.url, checksum=_sha(bad))
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_makes_no_request(tmp_path):
    (tmp_path / FOLDER).mkdir()
    with Server(ARCHIVE) as srv:
        assert dl.download_cifar("cifar10", tmp_path, url=srv.url) == tmp_path / FOLDER
        assert srv.requests == []
        (tmp_path / FOLDER / "old_file").write_bytes(b"x")
        dl.download_cifar("cifar10", tmp_path, url=srv.url, checksum=_sha(ARCHIVE), force=True)
    assert not (tmp_path / FOLDER / "old_file").exists() and (tmp_path / FOLDER / "test_batch").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [FOLDER]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="cifar10, cifar100"):
        dl.download_cifar("mnist", tmp_path)
    with pytest.raises(ValueError, match="md5:"):
        dl.download_cifar("cifar10", tmp_path, checksum="crc:1234")


# --------------------------------------------------------------------------- CLI
def _cli(argv):
    parser = argparse.ArgumentParser(prog="python -m parl_core")
    dl.add_data_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_downloads_with_plain_progress_lines(tmp_path, capsys, monkeypatch):
    with Server(ARCHIVE) as srv:
        monkeypatch.setenv("PARL_CIFAR10_URL", srv.url)
        monkeypatch.setenv("PARL_CIFAR10_CHECKSUM", _sha(ARCHIVE))
        assert _cli(["data", "cifar10", "--root", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == str(tmp_path / FOLDER)
    assert "downloaded" in err and " MB" in err and "\r" not in err
    assert _cli(["data", "cifar10", "--root", str(tmp_path), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / FOLDER) and err == ""


def test_cli_failure_is_one_error_line(tmp_path, capsys):
    rc = _cli(["data", "cifar10", "--root", str(tmp_path), "--url", _closed_port_url(), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert FOLDER in err and "PARL_DATA" in err


# --------------------------------------------------------------------------- dashboard
def test_train_page_offers_the_download_when_cifar_is_missing(app_env, tmp_path, monkeypatch):
    from conftest import open_page, rerun
    monkeypatch.setenv("PARL_DATA", str(tmp_path))
    at = open_page("pages/train.py")
    at.selectbox(key="k_tr_dataset").set_value("cifar10")
    rerun(at)
    button = at.button(key="tr_download")
    assert "Download CIFAR-10" in button.label and at.button(key="tr_start").disabled
    monkeypatch.setenv("PARL_READONLY", "1")
    rerun(at)
    assert not any(b.key == "tr_download" for b in at.button)
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded
