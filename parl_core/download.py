"""Download CIFAR-10/100 without torchvision (`python -m parl_core data cifar10`).

`download_cifar` streams the official "python version" archive with urllib,
resumes a dropped connection with an HTTP Range request, verifies the published
checksum, and extracts the archive safely and atomically into the data root, so
that `load_dataset("cifar10", root=...)` finds the canonical folder:

- the download lives in `<root>/.<archive>.part` until it is complete and
  verified (a cancelled or interrupted download is kept and resumed next time);
- extraction happens in a hidden temporary folder inside the root, and the
  canonical folder appears with one `os.replace`: a folder under the canonical
  name is always complete.

Address and checksum can be overridden by arguments or the environment
(PARL_CIFAR10_URL, PARL_CIFAR10_CHECKSUM, PARL_CIFAR100_URL, PARL_CIFAR100_CHECKSUM),
e.g. for a mirror or a local test server. Standard library only (tqdm for the CLI bar).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from .data import find_data_root

__all__ = ["download_cifar", "add_data_command", "DownloadError", "DownloadCancelled", "SOURCES"]

SOURCES = {
    "cifar10": {"url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "checksum": "md5:c58f30108f718f92721af3b95e74349a",
                "archive": "cifar-10-python.tar.gz", "folder": "cifar-10-batches-py",
                "label": "CIFAR-10", "mb": 170},
    "cifar100": {"url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "checksum": "md5:eb9058c3a382ffc7106e4002c42a8d85",
                 "archive": "cifar-100-python.tar.gz", "folder": "cifar-100-python",
                 "label": "CIFAR-100", "mb": 169},
}
CHUNK = 1 << 16        # bytes read between progress reports and cancel checks
BACKOFF_S = 0.5        # first pause before a retry; doubles each time, at most 30 s
_LOCKS = {name: threading.Lock() for name in SOURCES}  # one download per dataset per process


class DownloadError(ConnectionError):
    """The archive could not be fetched; the message says how to install it by hand."""


class DownloadCancelled(Exception):
    """`cancel` was set; the partial file is kept and the next call resumes from it."""


class _Dropped(Exception):
    """Internal: the transfer ended early; retried (resuming where possible)."""


def _parse_checksum(text: str) -> tuple[str, str]:
    algo, _, digest = text.strip().partition(":")
    algo, digest = algo.lower(), digest.lower()
    sizes = {"md5": 32, "sha256": 64}
    if algo not in sizes or len(digest) != sizes[algo] or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"checksum must be 'md5:<32 hex digits>' or 'sha256:<64 hex digits>', got {text!r}")
    return algo, digest


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_set(cancel) -> bool:
    if cancel is None:
        return False
    return bool(cancel.is_set() if hasattr(cancel, "is_set") else cancel())


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size or None) from 'bytes 100-199/200'; (None, None) if unreadable."""
    try:
        _, _, rest = value.strip().partition(" ")
        span, _, total = rest.partition("/")
        return int(span.split("-")[0]), (None if total.strip() == "*" else int(total))
    except (AttributeError, ValueError):
        return None, None


def _attempt(url: str, part: Path, progress, cancel, timeout: float) -> None:
    """One HTTP request; appends to `part` (Range) or rewrites it; _Dropped if cut short."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "parl-lab-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the partial file does not fit the remote file: start over
            e.close()
            part.unlink(missing_ok=True)
            raise _Dropped("the server refused to resume; restarting from zero") from e
        raise
    with resp:
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start is None and length is not None:
                start, total = offset, offset + int(length)
            if start != offset:  # not the range we asked for: start over
                part.unlink(missing_ok=True)
                raise _Dropped(f"the server resumed at byte {start}, not {offset}; restarting")
        else:  # 200: the whole file (a server that ignores Range included)
            offset, total = 0, (int(length) if length is not None else None)
        done = offset
        if progress:
            progress(done, total)
        with open(part, "ab" if offset else "wb") as f:
            while True:
                if _is_set(cancel):
                    raise DownloadCancelled(f"download cancelled after {done:,} bytes; the partial file "
                                            f"{part} is kept and the next download resumes from it")
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    if total is not None and done < total:
        raise _Dropped(f"connection closed after {done:,} of {total:,} bytes")


def _fetch(url: str, part: Path, *, progress, cancel, retries: int, timeout: float,
           backoff: float, hint: str) -> None:
    """Download `url` into `part`, retrying (with resume) up to `retries` times in a row
    without progress; raises DownloadError with `hint` when it gives up."""
    failures, best = 0, part.stat().st_size if part.exists() else 0
    while True:
        try:
            _attempt(url, part, progress, cancel, timeout)
            return
        except urllib.error.HTTPError as e:  # 4xx: asking again will not help
            if e.code < 500 and e.code not in (408, 429):
                raise DownloadError(f"{url} answered HTTP {e.code} {e.reason}. {hint}") from e
            err = e
        except (urllib.error.URLError, OSError, http.client.HTTPException, _Dropped) as e:
            err = e
        size = part.stat().st_size if part.exists() else 0
        if size > best:  # this attempt moved forward: a fresh set of retries
            best, failures = size, 0
        failures += 1
        if failures > retries:
            reason = getattr(err, "reason", None) or err
            raise DownloadError(f"could not download {url} ({type(err).__name__}: {reason}). {hint}") from err
        time.sleep(min(30.0, backoff * 2 ** (failures - 1)))


def _checked_members(tar: tarfile.TarFile, folder: str) -> list[tarfile.TarInfo]:
    """Every member, or ValueError if one is not a plain file/folder inside `folder`."""
    members = []
    for m in tar.getmembers():
        p = PurePosixPath(m.name)
        why = ("an absolute path" if p.is_absolute() or m.name.startswith("\\") else
               "a path with '..'" if ".." in p.parts else
               "a link" if m.issym() or m.islnk() else
               "a device or special file" if not (m.isfile() or m.isdir()) else
               f"outside the folder '{folder}'" if not p.parts or p.parts[0] != folder or "\\" in m.name
               else None)
        if why:
            raise ValueError(f"refusing to extract the archive: member {m.name!r} is {why}")
        members.append(m)
    return members


def _extract(archive: Path, root: Path, folder: str) -> Path:
    """Extract into a hidden temporary folder in `root`, then move `folder` into place."""
    for stale in root.glob(f".{folder}.extract-*"):  # left by a process that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.extract-", dir=root))
    dest = root / folder
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = _checked_members(tar, folder)
                kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **kw)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise ValueError(f"cannot read the archive {archive}: {e}") from e
        if not (tmp / folder).is_dir():
            raise ValueError(f"the archive {archive} has no folder '{folder}'")
        if dest.exists():  # force: move the old copy aside (removed with tmp)
            os.replace(dest, tmp / "previous")
        os.replace(tmp / folder, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def download_cifar(name: str, root=None, *, url: str | None = None, checksum: str | None = None,
                   progress=None, retries: int = 3, timeout: float = 30, cancel=None,
                   force: bool = False, backoff: float | None = None) -> Path:
    """Download and extract CIFAR-10/100; returns the canonical folder's path.

    name: "cifar10" or "cifar100". root: the data root (default: $PARL_DATA, else ./data).
    url, checksum ("md5:<hex>" or "sha256:<hex>"): default $PARL_<NAME>_URL / _CHECKSUM,
      else the official address and published md5.
    progress(done_bytes, total_bytes_or_None): called as bytes arrive.
    retries: attempts after a failure that made no progress; backoff: first pause in s.
    cancel: a threading.Event or a callable, checked between chunks (DownloadCancelled).
    force: download again even if the folder exists.
    Raises DownloadError (a ConnectionError) when the archive cannot be fetched, ValueError
    for a bad name/checksum, a checksum mismatch or an unsafe archive.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r} to download; expected one of {', '.join(SOURCES)}")
    src, env = SOURCES[name], f"PARL_{name.upper()}"
    url = url or os.environ.get(f"{env}_URL") or src["url"]
    algo, want = _parse_checksum(checksum or os.environ.get(f"{env}_CHECKSUM") or src["checksum"])
    root = find_data_root(root)
    dest = root / src["folder"]
    if dest.is_dir() and not force:
        return dest
    root.mkdir(parents=True, exist_ok=True)
    part = root / f".{src['archive']}.part"
    hint = (f"To install it by hand, fetch {url}, check that its {algo} is {want}, and extract it "
            f"under {root.resolve()} so that the folder '{src['folder']}' is there "
            f"(tar xzf {src['archive']} -C {root.resolve()}); or set PARL_DATA to a folder that "
            f"already holds '{src['folder']}'.")
    with _LOCKS[name]:
        if dest.is_dir() and not force:  # another thread finished it meanwhile
            return dest
        if not (part.is_file() and _digest(part, algo) == want):  # a complete .part is reused
            _fetch(url, part, progress=progress, cancel=cancel, retries=retries, timeout=timeout,
                   backoff=BACKOFF_S if backoff is None else backoff, hint=hint)
            got = _digest(part, algo)
            if got != want:
                part.unlink(missing_ok=True)
                raise ValueError(f"checksum mismatch for {url}: expected {algo}:{want}, got {algo}:{got}. "
                                 f"The download was corrupted or the file at that address is not the "
                                 f"{src['label']} archive; the partial file was deleted. Run the download "
                                 f"again, or check the address (--url / {env}_URL) and checksum.")
        try:
            _extract(part, root, src["folder"])
        except ValueError:  # a verified but unusable archive: do not keep it
            part.unlink(missing_ok=True)
            raise
        part.unlink(missing_ok=True)
    return dest


# --------------------------------------------------------------------------- CLI
class _Progress:
    """The CLI's progress callback: a tqdm bar on a terminal, plain lines every `every`
    seconds otherwise (log files get no carriage returns)."""

    def __init__(self, stream, every: float = 5.0):
        self.stream, self.every, self.tty = stream, every, stream.isatty()
        self.bar, self.last, self.shown = None, None, None

    def __call__(self, done: int, total: int | None) -> None:
        if self.tty:
            if self.bar is None or self.bar.total != total:
                from tqdm import tqdm
                self.close()
                self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True,
                                file=self.stream, desc="download")
            self.bar.update(done - self.bar.n)
            return
        now, final = time.monotonic(), total is not None and done >= total
        if done != self.shown and (final or self.last is None or now - self.last >= self.every):
            self.last, self.shown = now, done
            size = f" / {total / 1e6:.1f}" if total is not None else ""
            print(f"downloaded {done / 1e6:.1f}{size} MB", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_data(args) -> int:
    """`data` subcommand: download, print the folder; 0, or 2 with one 'error:' line."""
    show = None if args.quiet else _Progress(sys.stderr)
    try:
        folder = find_data_root(args.root) / SOURCES[args.name]["folder"]
        if folder.is_dir() and not args.force and not args.quiet:
            print(f"{args.name} is already in {folder} (--force downloads it again)", file=sys.stderr)
        path = download_cifar(args.name, args.root, url=args.url, checksum=args.checksum,
                              progress=show, force=args.force)
    except KeyboardInterrupt:
        print("error: interrupted; the partial download is kept, run the same command again to resume",
              file=sys.stderr)
        return 130
    except (OSError, ValueError, DownloadCancelled) as e:  # ConnectionError is an OSError
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    finally:
        if show is not None:
            show.close()
    print(path)
    return 0


def add_data_command(subparsers):
    """Register `data NAME [--root DIR] [--force] [--url U] [--checksum C] [--quiet]`."""
    p = subparsers.add_parser(
        "data", help="download CIFAR-10/100 into the data root (no torchvision needed)",
        description="Download, verify and extract the CIFAR 'python version' archive into the data "
                    "root (--root, else $PARL_DATA, else ./data); prints the folder. An interrupted "
                    "download resumes when run again.")
    p.add_argument("name", choices=list(SOURCES), help="the dataset")
    p.add_argument("--root", default=None, help="data root (default: $PARL_DATA, else ./data)")
    p.add_argument("--force", action="store_true", help="download again even if the folder exists")
    p.add_argument("--url", default=None, help="archive address (default: $PARL_<NAME>_URL, else the official one)")
    p.add_argument("--checksum", default=None,
                   help="'md5:<hex>' or 'sha256:<hex>' (default: $PARL_<NAME>_CHECKSUM, else the published md5)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_data)
    return p
