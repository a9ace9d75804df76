"""A reproduction on a Ray cluster: `python -m parl_core reproduce ... --ray [ADDRESS]`.

The units of a plan (`parl_core.reproduce`) are independent but for their dependencies (an
evaluation needs its trainings, DVERGE its ENS_U warm start). `reproduce_on_ray` submits
every unfinished unit whose dependencies have finished as a Ray task asking for its own
CPUs and GPUs, as many at once as the cluster holds, and waits for the next to finish:

- **The same files as a local run.** A task runs the unit exactly as `reproduce` does
  (`run_unit`: the `train` command with --resume, the cached evaluation, CKA) and writes its
  checkpoint or cache into `out`; the driver writes the unit's marker. So `out` must be a
  folder every node sees at the same path (a shared filesystem; on one machine, any
  folder): a task that cannot see it fails at once with that message. A half-finished
  cluster run is finished by the local command and vice versa, since both read the same
  markers, checkpoints and resume states.
- **Progress** comes back as it happens: each task sends "unit_running" (its node and
  CPUs) through a `ray.util.queue.Queue`, the driver emits the same "unit_start" /
  "unit_done" events as a local run, and Ray forwards the tasks' own progress lines (the
  train command's epochs) to the driver's terminal.
- **Code**: the driver ships its `parl_core` package to the cluster
  (`runtime_env={"py_modules": [...]}`), so the nodes need torch and the requirements,
  not this repository. Tasks run with `threads` torch threads (default: their CPUs).
- **Ctrl-C** cancels the running tasks; finished units stay (their markers), and a
  training's last finished epoch stays in its resume state.

Ray is optional (`pip install "parl-lab[ray]"`, or `pip install ray`); nothing else in the
project imports it.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from .reproduce import Interrupted, Plan, check_data, finish_unit, reusable, run_unit

__all__ = ["reproduce_on_ray", "ray_or_exit", "connect"]


def ray_or_exit():
    """The `ray` module, or SystemExit saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SystemExit("--ray needs Ray: pip install 'parl-lab[ray]' (or: pip install ray)") from None
    return ray


def connect(address=None, *, quiet=True, init_kwargs=None):
    """(ray, started_here): connect to the cluster at `address` (None: RAY_ADDRESS, else a
    new local cluster), shipping this `parl_core` package to it; nothing when this process
    is already connected. The caller shuts down what it started."""
    ray = ray_or_exit()
    if ray.is_initialized():
        return ray, False
    kwargs = dict(init_kwargs or {})
    env = dict(kwargs.pop("runtime_env", None) or {})
    env.setdefault("py_modules", [str(Path(__file__).resolve().parent)])
    env.setdefault("excludes", ["__pycache__", "*.pyc"])
    try:
        ray.init(address=address, runtime_env=env, log_to_driver=not quiet,
                 **{"include_dashboard": False, **kwargs})
    except ConnectionError as e:
        raise ConnectionError(f"{e}. Is a cluster running at that address? Clusters started with "
                              "token authentication (Ray's default) need RAY_AUTH_MODE=token here, "
                              "and the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None
    return ray, True


def _task(unit, out: str, ctx: dict, queue, threads: int | None):
    """One unit on a Ray worker: check the shared folder, report, run it -> (outputs, seconds)."""
    import torch
    out_path = Path(out)
    if not (out_path / "units").is_dir():
        raise RuntimeError(f"{out} is not visible on node {socket.gethostname()}: --out must be on a "
                           f"filesystem every Ray node sees at the same path")
    if threads:
        torch.set_num_threads(threads)
    if queue is not None:
        queue.put({"event": "unit_running", "unit": unit.name, "node": socket.gethostname(),
                   "pid": os.getpid(), "threads": torch.get_num_threads()})
    t0 = time.perf_counter()
    outputs = run_unit(unit, out_path, ctx)
    return outputs, time.perf_counter() - t0


def _validate(cpus, gpus, threads):
    for name, v, low in (("cpus", cpus, 1), ("gpus", gpus, 0)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < low:
            raise ValueError(f"{name} per unit must be a number >= {low}, got {v!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None or an int >= 1, got {threads!r}")


def reproduce_on_ray(plan: Plan, out, *, address=None, cpus=1, gpus=None, threads=None,
                     device=None, data_root=None, quiet=True, on_event=None, command=None,
                     init_kwargs=None) -> Path:
    """Run every unfinished unit of `plan` on a Ray cluster, then write the report from
    the driver; returns report.md's path, the same file a local `reproduce` writes.

    address: what `ray.init` takes ("auto", "HOST:6379", "ray://HOST:10001"); None: the
      cluster in RAY_ADDRESS, else a new local one on this machine.
    cpus, gpus: what each unit asks for (gpus None: 1 when the cluster has GPUs, else 0;
      fractions share a GPU). threads: torch threads in a task (default: `cpus`).
    on_event: as `reproduce`'s, plus {"event": "unit_running", "unit", "node", "pid",
      "threads"} when a task starts on its node. init_kwargs: more `ray.init` arguments.
    """
    _validate(cpus, 0 if gpus is None else gpus, threads)
    ray_or_exit()
    from ray.util.queue import Queue

    from .report import write_report
    out, data_root = Path(out).resolve(), plan.data_root if data_root is None else data_root
    check_data(plan, data_root)
    (out / "units").mkdir(parents=True, exist_ok=True)
    emit = on_event or (lambda ev: None)
    ray, started_here = connect(address, quiet=quiet, init_kwargs=init_kwargs)
    try:
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        ctx = {"device": device or ("cuda" if gpus else "cpu"), "data_root": _absolute_root(data_root),
               "quiet": quiet}
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_task)
        queue = Queue()
        return _schedule(ray, remote, queue, plan, out, ctx, threads or int(max(1, cpus)), emit,
                         lambda records: write_report(plan, out, records, command=command))
    finally:
        if started_here:
            ray.shutdown()


def _absolute_root(data_root):
    """The data root as an absolute path (tasks do not run in the driver's folder); None
    when neither it nor the default ($PARL_DATA, ./data) exists here."""
    from .data import find_data_root
    root = find_data_root(data_root)
    return str(root.resolve()) if data_root is not None or root.exists() else None


def _schedule(ray, remote, queue, plan, out, ctx, threads, emit, report):
    units, total = {u.name: u for u in plan.units}, len(plan.units)
    index = {u.name: i for i, u in enumerate(plan.units, 1)}
    records, running = {}, {}  # name -> marker; ObjectRef -> unit
    pending = list(plan.units)

    def drain():
        while not queue.empty():
            emit(queue.get_nowait())
    try:
        while pending or running:
            for u in [u for u in pending if all(d in records for d in u.deps)]:
                pending.remove(u)
                rec = reusable(out, u, records)
                if rec is not None:
                    records[u.name] = rec
                    emit({"event": "unit_done", "unit": u.name, "kind": u.kind, "index": index[u.name],
                          "total": total, "reused": True, "seconds": 0.0})
                    continue
                emit({"event": "unit_start", "unit": u.name, "kind": u.kind, "index": index[u.name],
                      "total": total})
                running[remote.remote(u, str(out), ctx, queue, threads)] = u
            if not running:
                if pending:  # cannot happen for a plan (dependencies come first); guard anyway
                    raise RuntimeError(f"units {[u.name for u in pending]} wait on units that never ran")
                break
            done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            drain()
            for ref in done:
                u = running.pop(ref)
                try:
                    outputs, seconds = ray.get(ref)
                except Exception as e:  # the unit failed on its node; finished units are kept
                    raise RuntimeError(f"unit {u.name} failed on the cluster: {e}") from None
                finish_unit(out, u, outputs, records, seconds, ctx["device"], runner="ray")
                emit({"event": "unit_done", "unit": u.name, "kind": u.kind, "index": index[u.name],
                      "total": total, "reused": False, "seconds": seconds})
        drain()
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref, force=True)
        raise Interrupted("stopped; finished units are kept") from None
    missing = [n for n in units if n not in records]
    if missing:
        raise RuntimeError(f"units not finished: {missing}")
    return report(records)


def _print_event(ev) -> None:
    """The CLI's progress lines (stderr)."""
    if ev["event"] == "unit_running":
        print(f"  {ev['unit']} running on {ev['node']} (pid {ev['pid']}, {ev['threads']} threads)",
              file=sys.stderr, flush=True)
    elif ev["event"] == "unit_start":
        print(f"[{ev['index']}/{ev['total']}] {ev['unit']} submitted", file=sys.stderr, flush=True)
    elif ev["event"] == "unit_done" and not ev["reused"]:
        print(f"[{ev['index']}/{ev['total']}] {ev['unit']} done ({ev['seconds']:.0f}s)",
              file=sys.stderr, flush=True)
