"""Training sweeps: `python -m parl_core train ... --sweep KEY=V1,V2 [--sweep ...] [--ray [ADDRESS]]`.

Every combination of the swept values (the Cartesian product, in the order given) is one
ordinary `train` command: the same arguments with `--KEY VALUE` set and `--out` formatted
with the combination (`--out 'runs/{method}_K{layers}_s{seed}.safetensors'`; a key with
dashes is a field with underscores, `--sweep batch-size=64,128` -> `{batch_size}`). The
template must name every swept key, so no two runs share a file.

Each run is resumable as a single training is: a finished checkpoint (every epoch done,
no resume state) is kept and skipped, an interrupted one continues with --resume, so
rerunning the sweep finishes what is left. Locally the runs go one after another; with
--ray each is a Ray task asking for --ray-cpus/--ray-gpus (see `parl_core.reproduce_ray`
for the cluster, the shared-filesystem requirement and token authentication), and the
tasks' progress lines come back to this terminal. A summary table (run, clean accuracy,
R/K, seconds) ends the sweep.
"""
from __future__ import annotations

import itertools
import string
import sys
import time
from pathlib import Path

__all__ = ["parse_sweep", "sweep_runs", "run_sweep"]

_VALUE_FLAGS = ("seed", "method", "layers", "gamma1", "gamma2", "members", "lr", "epochs",
                "batch-size", "weight-decay", "width", "arch", "feature", "bn-grad", "schedule",
                "train-subset", "dverge-features", "init")
_RUNNER_FLAGS = {"--sweep": 1, "--ray": "?", "--ray-cpus": 1, "--ray-gpus": 1}


def parse_sweep(items) -> dict:
    """{"key": [values...]} from ["KEY=V1,V2", ...], validated (known keys, no repeats)."""
    out = {}
    for item in items:
        key, sep, vals = str(item).partition("=")
        key = key.strip().lstrip("-")
        values = [v.strip() for v in vals.split(",") if v.strip()]
        if not sep or not values:
            raise ValueError(f"--sweep expects KEY=V1,V2,..., got {item!r}")
        if key not in _VALUE_FLAGS:
            raise ValueError(f"--sweep: cannot sweep {key!r}; sweepable: {', '.join(_VALUE_FLAGS)}")
        if key in out:
            raise ValueError(f"--sweep: {key!r} given twice")
        if len(set(values)) != len(values):
            raise ValueError(f"--sweep {key}: repeated values {values}")
        out[key] = values
    return out


def _strip(argv: list, keys) -> list:
    """argv without the runner's flags and without `--KEY value` for the swept keys."""
    drop = {**_RUNNER_FLAGS, **{f"--{k}": 1 for k in keys}, "--out": 1}
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        flag, eq, _ = a.partition("=")
        if flag in drop:
            i += 1
            if not eq and drop[flag] == 1:
                i += 1
            elif not eq and drop[flag] == "?" and i < len(argv) and not argv[i].startswith("-"):
                i += 1
            continue
        out.append(a)
        i += 1
    return out


def sweep_runs(argv: list, sweep: dict, out_template: str | None) -> list:
    """[(combination dict, child argv)] for every combination, with --out formatted."""
    if not out_template:
        raise ValueError("--sweep needs --out with a {field} per swept key, e.g. "
                         "--out 'runs/{method}_s{seed}.safetensors'")
    fields = {f for _, f, _, _ in string.Formatter().parse(out_template) if f}
    names = {k: k.replace("-", "_") for k in sweep}
    missing = [f"{{{n}}}" for n in names.values() if n not in fields]
    unknown = sorted(fields - set(names.values()))
    if missing or unknown:
        raise ValueError(f"--out {out_template!r}: " + "; ".join(
            ([f"name every swept key ({', '.join(missing)}) so no two runs share a file"] if missing else [])
            + ([f"fields {unknown} are not swept"] if unknown else [])))
    base = _strip(list(argv), sweep)
    runs = []
    for combo in itertools.product(*sweep.values()):
        values = dict(zip(sweep, combo))
        out = out_template.format(**{names[k]: v for k, v in values.items()})
        child = base + [a for k, v in values.items() for a in (f"--{k}", v)] + ["--out", out]
        runs.append((values, child))
    return runs


def _status(out: Path, epochs: int) -> str:
    """"done" | "resume" | "new" for a run's checkpoint path."""
    from .checkpoints import read_metadata
    resume = out.with_name(out.name + ".resume.pt")
    if resume.is_file():
        return "resume"
    try:
        return "done" if read_metadata(out).get("epochs_done") == epochs else "new"
    except (OSError, ValueError):
        return "new"


def _one(child: list, threads: int | None = None) -> tuple[int, float]:
    """One train command in this process -> (exit code, seconds)."""
    import torch

    from . import cli
    if threads:
        torch.set_num_threads(threads)
    saved, t0 = sys.argv, time.perf_counter()
    sys.argv = ["parl_core", *child]
    try:
        return cli.main(child), time.perf_counter() - t0
    except SystemExit as e:
        print(f"error: {e.code}", file=sys.stderr)
        return 2, time.perf_counter() - t0
    finally:
        sys.argv = saved


def run_sweep(args) -> int:
    """The `train --sweep` command (args: the train parser's namespace with `_argv`)."""
    sweep = parse_sweep(args.sweep)
    runs = sweep_runs(args._argv[1:], sweep, args.out)  # [0] is "train"
    outs = [Path(c[c.index("--out") + 1]) for _, c in runs]
    if len(set(outs)) != len(outs):
        raise ValueError("--out gives two runs the same file; name every swept key in it")
    epochs = {i: int(dict(zip(c, c[1:])).get("--epochs", args.epochs)) for i, (_, c) in enumerate(runs)}
    todo = []
    for i, ((values, child), out) in enumerate(zip(runs, outs)):
        state = _status(out, epochs[i])
        if state == "done" and not args.force:
            print(f"[{i + 1}/{len(runs)}] {out}: finished, kept", file=sys.stderr)
            continue
        todo.append((i, ["train", *child] + (["--resume"] if state == "resume" and not args.force else [])))
    print(f"sweep: {len(runs)} runs, {len(todo)} to train"
          + (f" on Ray ({args.ray or 'RAY_ADDRESS or a local cluster'})" if args.ray is not None else ""),
          file=sys.stderr, flush=True)
    results = _on_ray(args, todo) if args.ray is not None else \
        {i: _one(c) for i, c in todo}
    return _summary(runs, outs, results)


def _on_ray(args, todo) -> dict:
    from .reproduce_ray import connect
    ray, started = connect(args.ray or None, quiet=args.quiet)
    try:
        gpus = args.ray_gpus if args.ray_gpus is not None else \
            (1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0)
        task = ray.remote(num_cpus=args.ray_cpus, num_gpus=gpus, max_retries=0)(_one)
        threads = args.threads or int(max(1, args.ray_cpus))
        refs = {task.remote([str(Path(a).resolve()) if prev in ("--out", "--init", "--data-root") else a
                             for prev, a in zip([None, *c], c)], threads): i for i, c in todo}
        results = {}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            i = refs.pop(done[0])
            results[i] = ray.get(done[0])
            print(f"run {i + 1} finished (exit {results[i][0]}, {results[i][1]:.0f}s)", file=sys.stderr, flush=True)
        return results
    finally:
        if started:
            ray.shutdown()


def _summary(runs, outs, results) -> int:
    from .checkpoints import read_metadata
    print("| run | checkpoint | clean acc | R/K | seconds | exit |\n|---|---|---|---|---|---|")
    worst = 0
    for i, ((values, _), out) in enumerate(zip(runs, outs)):
        rc, sec = results.get(i, (0, 0.0))
        worst = max(worst, rc)
        try:
            meta = read_metadata(out)
            acc, r = meta.get("clean_acc"), meta.get("r_mean")
        except (OSError, ValueError):
            acc = r = None
        fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        label = ", ".join(f"{k}={v}" for k, v in values.items())
        print(f"| {label} | {out} | {fmt(acc)} | {fmt(r)} | {sec:.0f} | {rc} |")
    return worst
