"""Background training jobs: a worker thread per run that never calls Streamlit.

The page starts a job with `start_job(settings)` (or continues an interrupted one with
`resume_job(name)`); the worker trains with `pc.train`, records every progress event
into the Job (under a lock) and a Streamlit fragment polls `job.snapshot()`. Jobs live
in this module (one registry per server process), so a person can leave the page and
come back, and the per-server limit on concurrent jobs holds across every browser session.

Nothing trained is lost:
- The name is reserved when the run starts: a `parl_core.runlock.RunLock` on the
  checkpoint path (a hidden `.<name>.safetensors.lock` file, released when the run ends;
  the lock of a server that died is stale and taken over). When the name is taken (a
  checkpoint, or another live run, CLI included), the run saves under the next free
  name, `<name>_2`, `<name>_3`, ..., and `Job.requested_name` says which was asked for.
- After every finished epoch the worker writes the checkpoint atomically (save_checkpoint:
  a `.tmp-*` file in the folder, then os.replace) with `epochs_done` < `epochs` marking
  it partial (fields the checkpoint schema always had; `source: "dashboard"` says who
  wrote it), and beside it `<name>.safetensors.resume.pt` (parl_core.resume_state:
  weights, Adam's state and history, atomic too). A restarted server lists the partial
  checkpoint like any other and `resumable()` offers it: `resume_job(name)` continues
  with `pc.train(..., resume=state)` to the planned epochs, exactly as the uninterrupted
  run (same per-epoch seeds), under the same name. The resume file is removed when a
  run finishes; a cancelled run keeps it, so it can be continued too.
- A save that fails (disk full, permissions: OSError) never stops training; the next
  epoch tries again. When the final save fails, the job keeps the ensemble and its
  metadata in memory (`Job.pending`), keeps the name reserved, and the page offers
  `retry_save(job)` and a download (`checkpoint_bytes(job)`).

Every rule is enforced here, not only by the page: PARL_NO_TRAIN refuses every start,
and classroom (read-only) mode refuses whatever would replace an existing checkpoint
(overwrite, resume); both raise PermissionError.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import parl_core as pc
from parl_core.checkpoints import CheckpointError, list_checkpoints, read_metadata, sanitize_name
from parl_core.resume_state import is_partial, load_resume_state, resume_path, save_resume_state
from parl_core.runlock import RunLock, RunLockedError, lock_holder
from parl_core.train import training_meta

from . import config
from . import warm_start as warm

ACTIVE = ("starting", "running")
MAX_SUFFIX = 1000  # <name>_2 ... <name>_1000 are tried before giving up


class JobLimitError(RuntimeError):
    """Raised when the server already runs its maximum number of training jobs."""


@dataclass
class TrainSettings:
    dataset: str = "digits"
    arch: str = "smallcnn"
    members: int = 3
    method: str = "parl"
    params: dict = field(default_factory=dict)
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    train_subset: int | None = None
    seed: int = 0
    name: str = "digits_parl_s0"
    overwrite: bool = False
    resume: bool = False  # continue the partial checkpoint `name` from its resume state
    init: str | None = None  # warm start: a checkpoint of the folder (DVERGE starts from a trained ENS_U)

    def command(self, folder: Path) -> str:
        """The equivalent `python -m parl_core train` command."""
        a = ["python", "-m", "parl_core", "train", "--dataset", self.dataset, "--arch", self.arch,
             "--members", str(self.members), "--method", self.method, "--epochs", str(self.epochs),
             "--batch-size", str(self.batch_size), "--lr", f"{self.lr:g}", "--seed", str(self.seed)]
        if self.train_subset:
            a += ["--train-subset", str(self.train_subset)]
        for k, v in self.params.items():
            if v is not None:
                a += ["--param", f"{k}={v}"]
        if self.init:
            a += ["--init", str(folder / f"{self.init}.safetensors")]
        elif self.method == "dverge":
            a.append("--scratch")  # the CLI refuses DVERGE without a warm start unless told
        a += ["--out", str(folder / f"{self.name}.safetensors")]
        if self.overwrite:
            a.append("--force")
        return " ".join(shlex.quote(x) for x in a)

    def run_settings(self) -> dict:
        """What must match for a resume to continue this run exactly (name and flags aside)."""
        d = dataclasses.asdict(self)
        for k in ("name", "overwrite", "resume"):
            d.pop(k)
        return d


@dataclass
class Job:
    settings: TrainSettings
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    status: str = "starting"  # starting | running | finished | cancelled | failed
    started: float = field(default_factory=time.time)
    last: dict = field(default_factory=dict)        # the latest progress event (no state)
    steps: list = field(default_factory=list)       # (global_step, loss, parts) per step
    history: list = field(default_factory=list)     # per-epoch records
    error: str | None = None
    steps_per_epoch: int | None = None
    saved_path: Path | None = None
    saved_epochs: int = 0                           # epochs in the checkpoint on disk
    save_error: str | None = None                   # the last failed save, None once one succeeds
    requested_name: str | None = None               # the name asked for, when it was taken
    resumed_from: int = 0                           # epochs done when this run started
    pending: tuple | None = None                    # (ens, meta) whose final save failed
    reservation: RunLock | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _download: bytes | None = None

    def on_progress(self, ev: dict) -> None:
        ev = {k: v for k, v in ev.items() if k != "state"}  # weights stay in the worker
        with self.lock:
            self.last = ev
            self.steps_per_epoch = ev.get("steps", self.steps_per_epoch)
            if ev["event"] == "step":
                self.status = "running"
                self.steps.append((ev["global_step"], ev["loss"], dict(ev.get("parts", {}))))
            elif ev["event"] == "epoch":
                self.history.append(ev["record"])

    def snapshot(self) -> dict:
        """A consistent copy of the job's progress for drawing."""
        with self.lock:
            return {"id": self.id, "status": self.status, "last": dict(self.last),
                    "steps": list(self.steps), "history": list(self.history),
                    "error": self.error, "saved_path": self.saved_path,
                    "saved_epochs": self.saved_epochs, "save_error": self.save_error,
                    "requested_name": self.requested_name, "resumed_from": self.resumed_from,
                    "pending": self.pending is not None,
                    "steps_per_epoch": self.steps_per_epoch,
                    "settings": self.settings, "started": self.started}

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


_JOBS: dict[str, Job] = {}
_LOCK = threading.Lock()


def get_job(job_id: str | None) -> Job | None:
    return _JOBS.get(job_id) if job_id else None


def active_jobs() -> list[Job]:
    with _LOCK:
        return [j for j in _JOBS.values() if j.active]


def checkpoint_path(name: str) -> Path:
    """Where a checkpoint called `name` lives: always inside the checkpoint folder."""
    from .uploads import target_path
    return target_path(name)


def name_in_use(name: str) -> bool:
    """Whether `name` is taken: a checkpoint file, or a live run (any process) writing it."""
    path = checkpoint_path(name)
    return path.exists() or lock_holder(path) is not None


def _numbered(base: str, n: int) -> str:
    suffix = f"_{n}"
    return sanitize_name(base[: 80 - len(suffix)] + suffix)


def _reserve(s: TrainSettings) -> tuple[RunLock, str]:
    """Lock the checkpoint path the run will write: `s.name`, or when it is taken (and
    neither overwrite nor resume asks for that very file) the next free `<name>_<n>`."""
    explicit = s.overwrite or s.resume
    for n in range(1, MAX_SUFFIX + 1):
        name = s.name if n == 1 else _numbered(s.name, n)
        path = checkpoint_path(name)
        lock = RunLock(path, owner="a dashboard training job")
        try:
            lock.acquire()
        except RunLockedError:
            if explicit:
                raise FileExistsError(f"the checkpoint {name!r} is being written by another training "
                                      "run right now; wait for it to finish or choose another name") from None
            continue
        if s.resume and not path.is_file():
            lock.release()
            raise FileNotFoundError(f"there is no checkpoint named {name!r} to resume")
        if path.exists() and not explicit:
            lock.release()
            continue
        return lock, name
    raise FileExistsError(f"the names {s.name!r} to {_numbered(s.name, MAX_SUFFIX)!r} are all taken; "
                          "choose another name")


def _check_allowed(s: TrainSettings) -> None:
    if not config.training_allowed():
        raise PermissionError("training is switched off on this server (PARL_NO_TRAIN=1)")
    if config.readonly() and (s.overwrite or s.resume):
        what = "resume (it replaces the partial checkpoint)" if s.resume else "overwrite a checkpoint"
        raise PermissionError(f"this server is in classroom (read-only) mode (PARL_READONLY=1): "
                              f"training may not {what}; train under a new name instead")


def start_job(settings: TrainSettings) -> Job:
    """Start training in a daemon thread. Raises PermissionError when this server forbids
    it (PARL_NO_TRAIN; read-only mode and overwrite/resume), JobLimitError at the server's
    limit, ValueError on bad settings or an unusable resume state, FileExistsError when
    overwrite/resume names a checkpoint another live run is writing. A name that is taken
    otherwise is not an error: the run saves under the next free name (job.requested_name)."""
    if not isinstance(settings, TrainSettings):
        raise ValueError(f"settings must be a jobs.TrainSettings, got {type(settings).__name__}")
    _check_allowed(settings)
    settings.name = sanitize_name(settings.name)
    pc.make_method(settings.method, **settings.params)  # bad parameters fail here, not in the thread
    if settings.init is not None:
        warm.check_init(settings, checkpoint_path(settings.init))
    with _LOCK:
        running = sum(j.active for j in _JOBS.values())
        if running >= config.max_jobs():
            raise JobLimitError(f"this server already runs {running} training job(s), its limit "
                                f"(PARL_MAX_JOBS={config.max_jobs()})")
        reservation, name = _reserve(settings)
        try:
            state = _resume_state(settings, checkpoint_path(name)) if settings.resume else None
        except BaseException:
            reservation.release()
            raise
        asked = settings.name
        settings.name = name
        job = Job(settings, requested_name=asked if name != asked else None, reservation=reservation)
        if state is not None:  # the chart and the counts start from the epochs already done
            job.history = [dict(r) for r in state["history"]]
            job.resumed_from = job.saved_epochs = len(job.history)
            job.saved_path = checkpoint_path(name)
        _JOBS[job.id] = job
    threading.Thread(target=_run, args=(job, state), name=f"parl-train-{job.id}", daemon=True).start()
    return job


def _resume_state(s: TrainSettings, path: Path) -> dict:
    saved = load_resume_state(resume_path(path))  # ResumeStateError (a ValueError) says why
    if saved["settings"].get("source") != "dashboard" or saved["settings"].get("run") != s.run_settings():
        raise ValueError(f"the resume state of {path.stem!r} was written for other settings "
                         f"({saved['settings'].get('run') or 'by the command line'}); continue it with "
                         "the command that started it, or train anew")
    if len(saved["state"]["history"]) >= s.epochs:
        raise ValueError(f"{path.stem!r} already has all its {s.epochs} epochs; nothing to resume")
    return saved["state"]


def resume_job(name: str) -> Job:
    """Continue the partial dashboard checkpoint `name` to its planned epochs, with the
    settings it was started with (read from its resume state)."""
    path = checkpoint_path(name)
    saved = load_resume_state(resume_path(path))
    run = saved["settings"].get("run")
    if saved["settings"].get("source") != "dashboard" or not isinstance(run, dict):
        raise ValueError(f"{path.stem!r} was not started from the dashboard; continue it with the "
                         "command line that started it and --resume")
    fields = {f.name for f in dataclasses.fields(TrainSettings)} - {"name", "overwrite", "resume"}
    if set(run) != fields:
        raise ValueError(f"the resume state of {path.stem!r} records settings "
                         f"{sorted(run)}; expected {sorted(fields)}")
    return start_job(TrainSettings(**run, name=path.stem, resume=True))


def resumable() -> list[dict]:
    """The partial dashboard checkpoints in the folder that can be continued: a resume
    state beside them and no live run writing them. [{name, epochs_done, epochs,
    cancelled, method, dataset}], by name."""
    out = []
    for p in list_checkpoints(config.checkpoint_dir()):
        if p.name.startswith(".") or not resume_path(p).is_file():
            continue
        try:
            meta = read_metadata(p)
        except (CheckpointError, OSError, ValueError):
            continue
        if meta.get("source") != "dashboard" or not is_partial(meta) or lock_holder(p) is not None:
            continue
        out.append({"name": p.stem, "epochs_done": meta["epochs_done"], "epochs": meta["epochs"],
                    "cancelled": bool(meta.get("cancelled")), "method": meta.get("method"),
                    "dataset": meta.get("dataset")})
    return out


def _write(path: Path, ens, meta: dict) -> None:
    """The one checkpoint writer of the jobs (tests replace it to simulate a full disk)."""
    pc.save_checkpoint(path, ens, meta, overwrite=True)


def _save(job: Job, path: Path, ens, meta: dict) -> bool:
    """Write the checkpoint; on failure record why and return False (never raises for a
    full disk or a permission problem)."""
    try:
        _write(path, ens, meta)
    except (OSError, CheckpointError) as e:
        with job.lock:
            job.save_error = (f"{type(e).__name__}: {e}" if not isinstance(e, OSError) or not e.strerror
                              else f"{e.strerror} ({type(e).__name__}, errno {e.errno})")
        return False
    with job.lock:
        job.saved_path, job.saved_epochs, job.save_error = path, len(meta.get("history") or []), None
        job._download = None
    return True


def _run(job: Job, resume: dict | None) -> None:
    s = job.settings
    path = checkpoint_path(s.name)
    keep_reservation = False
    try:
        train_ds = pc.load_dataset(s.dataset, "train", config.data_root())
        test_ds = pc.load_dataset(s.dataset, "test", config.data_root())
        if s.train_subset:
            train_ds = train_ds.subset(s.train_subset, seed=s.seed)
        ens = pc.build_ensemble(s.arch, s.members, train_ds, seed=s.seed)
        if s.init and resume is None:
            warm.warm_start(ens, s, checkpoint_path(s.init))
        params_used = dict(pc.make_method(s.method, **s.params).params)
        if params_used.get("layers", 0) is None:  # the K train() records
            params_used["layers"] = min(7, min(m.num_layers for m in ens.members))
        resume_file = resume_path(path)
        run_settings = {"source": "dashboard", "run": s.run_settings()}

        def meta_for(history, cancelled=False) -> dict:
            meta = training_meta(train_ds, history, method=s.method, params=params_used, seed=s.seed,
                                 epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, schedule="cosine",
                                 train_subset=s.train_subset, command=s.command(path.parent),
                                 source="dashboard", init=s.init)
            meta["cancelled"] = cancelled
            return meta

        def on_progress(ev: dict) -> None:
            job.on_progress(ev)
            if ev["event"] == "epoch":  # every finished epoch is on disk before the next starts
                if _save(job, path, ens, meta_for(ev["state"]["history"])):
                    try:
                        save_resume_state(resume_file, run_settings, ev["state"])
                    except OSError as e:  # the checkpoint is safe; only resuming needs this
                        with job.lock:
                            job.save_error = f"resume state not written: {e.strerror or e}"

        hist = pc.train(ens, train_ds, test_ds, method=s.method, epochs=s.epochs,
                        batch_size=s.batch_size, lr=s.lr, seed=s.seed, on_progress=on_progress,
                        cancel=job.cancel_event, resume=resume, **s.params)
        if len(hist):  # a cancelled run keeps its finished epochs
            meta = meta_for(list(hist), cancelled=bool(hist.cancelled))
            if job.saved_epochs != len(hist):  # the last epoch's save failed: once more
                if not _save(job, path, ens, meta):
                    job.pending, keep_reservation = (ens, meta), True
            elif hist.cancelled and not _save(job, path, ens, meta):  # only records the cancel:
                job.save_error = None  # every epoch is on disk already, nothing is lost
            if not hist.cancelled and job.pending is None:
                resume_file.unlink(missing_ok=True)  # finished: nothing left to resume
        job.status = "cancelled" if hist.cancelled else "finished"
    except Exception as e:  # the page shows the message; the thread must not die silently
        job.error = f"{type(e).__name__}: {e}"
        job.status = "failed"
    finally:
        if not keep_reservation and job.reservation is not None:
            job.reservation.release()


def retry_save(job: Job) -> bool:
    """Try again to write a finished job's checkpoint whose save failed; True on success
    (the name's reservation is then released), False with job.save_error updated."""
    if job.pending is None:
        raise ValueError(f"job {job.id} has no unsaved checkpoint (saved as {job.saved_path})")
    ens, meta = job.pending
    path = checkpoint_path(job.settings.name)
    if not _save(job, path, ens, meta):
        return False
    job.pending = None
    if not meta.get("cancelled"):
        resume_path(path).unlink(missing_ok=True)
    if job.reservation is not None:
        job.reservation.release()
    return True


def checkpoint_bytes(job: Job) -> bytes:
    """The unsaved checkpoint of a job as the bytes of a .safetensors file, for download.
    Built through save_checkpoint (the same validation) in a temporary folder: memory
    (/dev/shm) when there is one, else the system's temporary folder. OSError when
    neither has room."""
    if job.pending is None:
        raise ValueError(f"job {job.id} has no unsaved checkpoint")
    if job._download is None:
        ens, meta = job.pending
        shm = Path("/dev/shm")
        where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        with tempfile.TemporaryDirectory(prefix="parl-download-", dir=where) as d:
            f = pc.save_checkpoint(Path(d) / f"{job.settings.name}.safetensors", ens, meta)
            job._download = f.read_bytes()
    return job._download
