"""Background training jobs: a worker thread per run that never calls Streamlit.

The page starts a job with `start_job(settings)`; the worker trains with `pc.train`,
records every progress event into the Job (under a lock) and, when done, saves the
checkpoint under the chosen name without overwriting an existing file. A Streamlit
fragment polls `job.snapshot()`. Jobs live in this module (one registry per server
process), so a person can leave the page and come back, and the per-server limit on
concurrent jobs holds across every browser session.
"""
from __future__ import annotations

import shlex
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import parl_core as pc
from parl_core.checkpoints import sanitize_name
from parl_core.train import training_meta

from . import config

ACTIVE = ("starting", "running")


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
        a += ["--out", str(folder / f"{self.name}.safetensors")]
        if self.overwrite:
            a.append("--force")
        return " ".join(shlex.quote(x) for x in a)


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
    cancel_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

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


def start_job(settings: TrainSettings) -> Job:
    """Start training in a daemon thread. Raises JobLimitError at the server's limit,
    FileExistsError if the name is taken and overwrite is off, ValueError on bad settings."""
    settings.name = sanitize_name(settings.name)
    path = checkpoint_path(settings.name)
    if path.exists() and not settings.overwrite:
        raise FileExistsError(f"a checkpoint named {settings.name!r} already exists")
    pc.make_method(settings.method, **settings.params)  # bad parameters fail here, not in the thread
    with _LOCK:
        running = sum(j.active for j in _JOBS.values())
        if running >= config.max_jobs():
            raise JobLimitError(f"this server already runs {running} training job(s), its limit "
                                f"(PARL_MAX_JOBS={config.max_jobs()})")
        job = Job(settings)
        _JOBS[job.id] = job
    threading.Thread(target=_run, args=(job, path), name=f"parl-train-{job.id}", daemon=True).start()
    return job


def _run(job: Job, path: Path) -> None:
    s = job.settings
    try:
        train_ds = pc.load_dataset(s.dataset, "train", config.data_root())
        test_ds = pc.load_dataset(s.dataset, "test", config.data_root())
        if s.train_subset:
            train_ds = train_ds.subset(s.train_subset, seed=s.seed)
        ens = pc.build_ensemble(s.arch, s.members, train_ds, seed=s.seed)
        hist = pc.train(ens, train_ds, test_ds, method=s.method, epochs=s.epochs,
                        batch_size=s.batch_size, lr=s.lr, seed=s.seed, on_progress=job.on_progress,
                        cancel=job.cancel_event, **s.params)
        if len(hist):  # a cancelled run keeps its finished epochs
            meta = training_meta(train_ds, hist, method=s.method,
                                 params=getattr(hist, "method_params", s.params), seed=s.seed,
                                 epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
                                 schedule="cosine", train_subset=s.train_subset,
                                 command=s.command(path.parent), source="dashboard")
            pc.save_checkpoint(path, ens, meta, overwrite=s.overwrite)
            job.saved_path = path
        job.status = "cancelled" if hist.cancelled else "finished"
    except Exception as e:  # the page shows the message; the thread must not die silently
        job.error = f"{type(e).__name__}: {e}"
        job.status = "failed"


def estimate_seconds(settings: TrainSettings, n_steps: int = 3) -> dict:
    """Time a few real training steps and one end-of-epoch evaluation of these settings;
    returns {"step": s, "epoch_eval": s, "steps": total steps, "total": s}."""
    import torch
    from parl_core.train import evaluate_accuracy, mean_pairwise_r
    s = settings
    train_ds = pc.load_dataset(s.dataset, "train", config.data_root())
    test_ds = pc.load_dataset(s.dataset, "test", config.data_root())
    n = min(s.train_subset or len(train_ds), len(train_ds))
    steps = max(1, n // s.batch_size)
    ens = pc.build_ensemble(s.arch, s.members, train_ds, seed=s.seed).to(pc.default_device())
    loss_fn = pc.make_method(s.method, **s.params)
    opt = torch.optim.Adam(ens.parameters(), lr=s.lr)
    g = torch.Generator().manual_seed(s.seed)
    dev = pc.default_device()
    times = []
    for i in range(n_steps + 1):  # the first step warms up kernels and is not counted
        idx = torch.randint(0, len(train_ds), (min(s.batch_size, n),), generator=g)
        x, y = train_ds.images[idx].to(dev), train_ds.labels[idx].to(dev)
        t = time.perf_counter()
        loss, _ = loss_fn(ens, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    t = time.perf_counter()
    evaluate_accuracy(ens, test_ds.subset(min(2000, len(test_ds)), seed=s.seed))
    mean_pairwise_r(ens, test_ds.subset(min(256, len(test_ds)), seed=s.seed).images.to(dev))
    ev = time.perf_counter() - t
    step = sorted(times)[len(times) // 2]
    return {"step": step, "epoch_eval": ev, "steps": steps * s.epochs,
            "total": s.epochs * (steps * step + ev)}
