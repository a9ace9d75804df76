"""One writer per output file: a lock beside the file a run writes (a checkpoint).

`RunLock(target)` guards `target` with a lock file beside it, `.<name>.lock` (a dotfile,
so checkpoint listings never show it). The file holds JSON {pid, host, started, owner}
for the refusal message; exclusivity comes from `fcntl.flock` held on that file for as
long as the lock is held. Why both: the file's creation is atomic (it is written and
locked under a temporary name, then hard-linked into place, which fails when the name
exists: O_EXCL semantics without a moment where the file exists unlocked), and flock is
released by the kernel when its holder dies, so the lock of a killed run (Ctrl-C twice,
OOM, a restarted server) is stale the moment its process is gone and the next `acquire`
takes it over; no pid is guessed, and a recycled pid cannot keep a dead run's lock.
flock locks belong to an open file, so two RunLocks on one target exclude each other
inside one process too (two dashboard jobs in two threads).

Where flock is unavailable (no fcntl, or a file system that refuses it), the lock falls
back to the pid in the file: a lock whose pid is not a live process on this host is
stale. Used by `python -m parl_core train` (its --out) and by the dashboard's training
jobs (the name a run reserves), so a CLI run and a dashboard job exclude each other too.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["RunLock", "RunLockedError", "lock_path", "lock_holder"]


class RunLockedError(FileExistsError):
    """The target is being written by another live run (the message names it)."""


def lock_path(target) -> Path:
    """The lock file of `target`: `.<name>.lock` in the same folder."""
    target = Path(target)
    if not target.name:
        raise ValueError(f"target must name a file, got {str(target)!r}")
    return target.with_name(f".{target.name}.lock")


def _info(owner: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "owner": owner,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _read(fd_or_path) -> dict:
    """The holder's record, {} when unreadable (being written, or not ours)."""
    try:
        if isinstance(fd_or_path, int):
            os.lseek(fd_or_path, 0, os.SEEK_SET)
            raw = os.read(fd_or_path, 4096)
        else:
            raw = Path(fd_or_path).read_bytes()[:4096]
        d = json.loads(raw.decode("utf-8"))
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(info: dict) -> bool:
    """Fallback staleness test: the recorded pid is a live process on this host."""
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if info.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: cannot tell, assume alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _flock(fd: int) -> bool | None:
    """Try to take the flock: True taken, False held by someone else, None unsupported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EINVAL...: this file system has no flock


def _describe(target: Path, info: dict) -> str:
    who = info.get("owner") or "another run"
    pid = info.get("pid", "?")
    host = info.get("host")
    since = info.get("started")
    return (f"{target} is being written by {who} (pid {pid}" + (f" on {host}" if host else "")
            + (f", since {since}" if since else "") + "); wait for it to finish, stop it, "
            "or write to another file")


class RunLock:
    """An exclusive lock on `target` (the file a run writes). Use as a context manager
    or call acquire()/release(). `owner` is a short text for the refusal message (e.g.
    "python -m parl_core train"). acquire() raises RunLockedError naming the live holder;
    after taking over a dead run's lock, `taken_over` holds that run's record."""

    def __init__(self, target, *, owner: str = "a PARL Lab run"):
        if not isinstance(owner, str):
            raise ValueError(f"owner must be a string, got {type(owner).__name__}")
        self.target = Path(target)
        self.path = lock_path(self.target)
        self.owner = owner
        self.taken_over: dict | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            raise RuntimeError(f"this lock on {self.target} is already held")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps(_info(self.owner)).encode()
        for _ in range(20):  # a few rounds against concurrent creators and releasers
            if self._create(record):
                return self
            got = self._take_stale(record)
            if got:
                return self
        raise RunLockedError(f"{self.target}: could not take its lock {self.path} (it keeps changing)")

    def _create(self, record: bytes) -> bool:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-lock-", dir=self.path.parent)
        try:
            os.write(fd, record)
            os.fsync(fd)
            _flock(fd)  # ours alone: the temporary name is unique
            try:
                os.link(tmp, self.path)  # atomic; fails when a lock file exists
            except FileExistsError:
                os.close(fd)
                return False
            except OSError as e:  # a file system without hard links: O_EXCL instead
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                os.close(fd)
                return self._create_excl(record)
            self._fd = fd
            return True
        except BaseException:
            if self._fd != fd:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _create_excl(self, record: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return False
        if _flock(fd) is False:  # taken over as stale before we locked it: theirs now
            os.close(fd)
            return False
        os.write(fd, record)
        os.fsync(fd)
        self._fd = fd
        return True

    def _take_stale(self, record: bytes) -> bool:
        """Open the existing lock file; take it over if its holder is gone. Raises
        RunLockedError when the holder is alive; False: try again (it changed)."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False  # released meanwhile: create it
        keep = False
        try:
            taken = _flock(fd)
            for _ in range(4):  # a moment's flock may be a probe (lock_holder), not a holder
                if taken is not False:
                    break
                time.sleep(0.05)
                taken = _flock(fd)
            info = _read(fd)
            if taken is False or (taken is None and _pid_alive(info)):
                raise RunLockedError(_describe(self.target, info))
            try:  # the file we locked must still be the one at the path
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                return False
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, record)
            os.fsync(fd)
            self.taken_over = info
            self._fd, keep = fd, True
            return True
        finally:
            if not keep:
                os.close(fd)

    def release(self) -> None:
        """Remove the lock file (while still holding it) and let go; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # a forgotten lock is let go with its object, never leaked
        try:
            self.release()
        except Exception:
            pass


def lock_holder(target) -> dict | None:
    """The record of the live run holding `target`'s lock, or None when it is free (no
    lock file, or its holder is gone). Takes nothing: a probe only."""
    path = lock_path(target)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        taken = _flock(fd)  # a read-only descriptor can hold flock too
        info = _read(fd)
        if taken is True:
            return None  # nobody holds it (closing our descriptor releases the probe)
        if taken is None:
            return info if _pid_alive(info) else None
        return info or {"owner": "another run"}
    finally:
        os.close(fd)
