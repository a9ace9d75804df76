"""Reproduce the paper's experiments at a chosen scale, resumably, into a report.

    python -m parl_core reproduce --scale {smoke,cpu-small,paper} --out reports/NAME/

A reproduction is a list of units: trainings (one ensemble each), black-box evaluations
(one per dataset and seed: crafted once on that seed's surrogate, scored on every
target), white-box evaluations (one per ensemble) and CKA measurements (one per
ensemble). A unit is named by its role and a hash of its settings (which include the
names, hence the settings, of the units it depends on and the identity of the data
files). A finished unit is never recomputed: its marker `<out>/units/<name>.json`,
written atomically after its outputs, holds its outputs and how it was made. A run
killed at any point continues where it stopped: a training resumes from its last
finished epoch (the `train` command's --resume), an evaluation from the per-target cache
of `evaluate_checkpoints`. The report (`parl_core.report`) is written from the markers
alone, once every unit has finished.
"""
from __future__ import annotations

import copy
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .paper_numbers import PAPER_PROTOCOL, SCALES

__all__ = ["SCALES", "Plan", "Unit", "make_plan", "reproduce", "unit_done", "Interrupted"]

REPRO_VERSION = 1  # part of every unit key: bump when a change alters what a unit computes
_SHAPES = {"digits": ((1, 8, 8), 10), "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}
_ARCH = {"digits": "smallcnn", "cifar10": "resnet20", "cifar100": "resnet20"}


class Interrupted(Exception):
    """The run stopped before every unit finished (Ctrl-C); rerun to continue."""


@dataclass
class Unit:
    name: str
    kind: str            # "train" | "blackbox" | "whitebox" | "cka"
    settings: dict       # everything that identifies it (hashed into the name)
    dataset: str
    seed: int
    roles: list = field(default_factory=list)   # e.g. ["parl", "parl/K7"]
    deps: tuple = ()


@dataclass
class Plan:
    scale: str
    config: dict          # the resolved settings of the scale
    units: list           # in execution order (dependencies first)
    index: dict           # "dataset|seed|role" -> unit name
    data_root: str | None = None  # where the data identities in the settings were read

    def unit(self, name: str) -> Unit:
        return next(u for u in self.units if u.name == name)

    def find(self, dataset, seed, role):
        name = self.index.get(f"{dataset}|{seed}|{role}")
        return None if name is None else self.unit(name)


# --------------------------------------------------------------------------- the plan
def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def data_identity(dataset: str, data_root, split: str):
    """What identifies a split's data without reading it: the files present and their
    sizes (None: not found)."""
    from .data import _CIFAR, SAMPLE_PATH, find_data_root
    if dataset == "digits":
        return {"source": "scikit-learn digits"}
    folder = find_data_root(data_root) / _CIFAR[dataset]["folder"]
    files = [[f, (folder / f).stat().st_size] for f in _CIFAR[dataset][split] if (folder / f).is_file()]
    if files:
        return {"files": files}
    if split == "test" and dataset == "cifar10" and not folder.is_dir() and SAMPLE_PATH.is_file():
        return {"files": [[SAMPLE_PATH.name, SAMPLE_PATH.stat().st_size]]}
    return None


def _check_list(name, values, allowed=None, kind=str):
    values = tuple(values)
    if not values or len(set(values)) != len(values) or not all(isinstance(v, kind) for v in values):
        raise ValueError(f"{name}: expected a non-empty list of distinct {kind.__name__} values, "
                         f"got {list(values)!r}")
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad:
        raise ValueError(f"{name}: unknown {bad}; expected some of {', '.join(map(str, allowed))}")
    return values


def _resolve(scale: str, overrides: dict) -> dict:
    from .losses import METHODS
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    cfg = copy.deepcopy(SCALES[scale])
    for k, v in overrides.items():
        if k not in cfg:
            raise ValueError(f"unknown setting {k!r}; expected one of {', '.join(sorted(cfg))}")
        if v is not None:
            cfg[k] = v
    cfg["datasets"] = _check_list("datasets", cfg["datasets"], tuple(_SHAPES))
    if cfg["methods"] is not None:
        cfg["methods"] = _check_list("methods", cfg["methods"], tuple(METHODS))
    cfg["seeds"] = _check_list("seeds", cfg["seeds"], kind=int)
    if any(s < 0 for s in cfg["seeds"]):
        raise ValueError(f"seeds must be >= 0, got {list(cfg['seeds'])}")
    cfg["ablation"] = tuple(cfg["ablation"] or ())
    lows = dict(epochs=1, dverge_epochs=1, batch_size=2, steps=1, restarts=1, n_examples=1,
                wb_n_examples=1, cka_n=4, cka_batch=4)  # batch norm needs 2, unbiased CKA 4
    for k, low in lows.items():
        v = cfg[k]
        bad = isinstance(v, bool) or not isinstance(v, int) or v < low
        if bad and (k != "dverge_epochs" or v is not None):
            raise ValueError(f"{k} must be an int >= {low}, got {v!r}")
    if cfg["schedule"] not in ("cosine", "step", "constant"):
        raise ValueError(f"schedule must be cosine, step or constant, got {cfg['schedule']!r}")
    cfg["eps"] = tuple(float(e) for e in cfg["eps"])
    cfg["attacks"] = _check_list("attacks", cfg["attacks"], PAPER_PROTOCOL["attacks"])
    return cfg


def _layers(dataset: str) -> int:
    from .layergrad import num_layers
    from .models import build_model
    shape, classes = _SHAPES[dataset]
    return num_layers(build_model(_ARCH[dataset], classes, shape[0]))


def make_plan(scale: str, *, data_root=None, **overrides) -> Plan:
    """The units of a reproduction at `scale` ("smoke", "cpu-small", "paper"), with any
    setting of SCALES[scale] overridden (datasets, methods, seeds, epochs, ablation, ...).
    Raises ValueError naming a bad setting."""
    cfg = _resolve(scale, overrides)
    units, index = {}, {}

    def add(kind, dataset, seed, roles, settings, deps=()):
        settings = {"kind": kind, "dataset": dataset, "version": REPRO_VERSION, **settings}
        digest = _digest(settings)  # the same settings under two roles are one unit
        name = f"{kind}-{dataset}-{roles[0].replace('/', '-')}-s{seed}-{digest}"
        u = units.setdefault(digest, Unit(name, kind, settings, dataset, seed, [], tuple(deps)))
        for r in roles:
            u.roles.append(r) if r not in u.roles else None
            index[f"{dataset}|{seed}|{r}"] = u.name
        return u.name

    for ds in cfg["datasets"]:
        L = _layers(ds)
        bad = [k for k in (*cfg["ablation"], cfg["parl"]["layers"]) if not 1 <= k <= L]
        if bad:
            raise ValueError(f"layers K must be in 1..{L} for {_ARCH[ds]} on {ds}, got {bad}")
        methods = cfg["methods"] or PAPER_PROTOCOL["methods"][ds]
        base = dict(data=data_identity(ds, data_root, "train"), arch=_ARCH[ds], members=cfg["members"],
                    batch_size=cfg["batch_size"], lr=cfg["lr"], schedule=cfg["schedule"],
                    augment=ds.startswith("cifar"), train_subset=cfg["train_subset"],
                    eval_size=cfg["eval_size"], epochs=cfg["epochs"], init=None)
        test_id = data_identity(ds, data_root, "test")
        red, main_k = cfg["reduce"] or {}, cfg["parl"]["layers"]
        for i, seed in enumerate(cfg["seeds"]):
            def keep(what):  # the expensive ones run on the first red["seeds"] seeds only
                return what not in red.get("methods", ()) or i < red.get("seeds", len(cfg["seeds"]))

            def train(roles, method, params, seed_=seed, **extra):
                deps = [extra["init"]] if extra.get("init") else []
                return add("train", ds, seed, roles, {**base, "method": method, "params": params,
                                                      "seed": seed_, **extra}, deps)
            parl = {**cfg["parl"], "grad_method": "auto"}
            sur = train(["surrogate"], "ce_only", {}, cfg["surrogate_seed"] + seed)
            targets = []  # (unit, evaluated white-box too)
            if "ce_only" in methods or ("dverge" in methods and keep("dverge")):  # DVERGE's warm start
                ens_u = train(["ce_only"], "ce_only", {})
                targets += [(ens_u, True)] if "ce_only" in methods else []
            for m in [m for m in methods if m != "ce_only" and keep(m)]:
                if m == "parl":
                    targets.append((train(["parl", f"parl/K{main_k}"], "parl", parl), True))
                elif m == "dverge":
                    targets.append((train(["dverge"], "dverge", _defaults(m), init=ens_u,
                                          epochs=cfg["dverge_epochs"] or cfg["epochs"]), True))
                else:
                    targets.append((train([m], m, _defaults(m)), True))
            for k in cfg["ablation"] if keep("ablation") else ():
                t = train([f"parl/K{k}"], "parl", {**parl, "layers": k})
                targets += [] if any(t == n for n, _ in targets) else [(t, False)]
            names = [n for n, _ in targets]
            atk = dict(attacks=list(cfg["attacks"]), steps=cfg["steps"], restarts=cfg["restarts"],
                       decay=cfg["decay"], step_size=None, attack_seed=0, test_data=test_id)
            add("blackbox", ds, seed, ["blackbox"], {**atk, "targets": names, "surrogate": sur,
                                                      "eps": list(cfg["eps"]),
                                                      "n_examples": cfg["n_examples"]}, [sur, *names])
            for t, white in targets:
                role = next(u for u in units.values() if u.name == t).roles[0]
                if white:
                    add("whitebox", ds, seed, [f"whitebox/{role}"],
                        {**atk, "targets": [t], "eps": list(cfg["wb_eps"] or cfg["eps"]),
                         "n_examples": cfg["wb_n_examples"]}, [t])
                add("cka", ds, seed, [f"cka/{role}"], {"target": t, "n_examples": cfg["cka_n"],
                                                       "batch_size": cfg["cka_batch"],
                                                       "estimator": "minibatch", "test_data": test_id}, [t])
    order = sorted(units.values(), key=lambda u: ["train", "blackbox", "whitebox", "cka"].index(u.kind))
    return Plan(scale, {**cfg, "scale": scale}, order, index, None if data_root is None else str(data_root))


def _defaults(method: str) -> dict:
    from .losses import make_method
    return dict(make_method(method).params)


# --------------------------------------------------------------------------- running units
def _marker(out: Path, name: str) -> Path:
    return out / "units" / f"{name}.json"


def _ckpt(out: Path, name: str) -> Path:
    return out / "checkpoints" / f"{name}.safetensors"


def unit_done(out, unit: Unit):
    """The unit's marker (a dict) if it finished with these settings and its outputs are
    intact (a training's checkpoint hashes as recorded), else None."""
    from .checkpoints import file_hash
    out, f = Path(out), _marker(Path(out), unit.name)
    try:
        rec = json.loads(f.read_text())
        if rec.get("settings") != json.loads(json.dumps(unit.settings)):
            return None
        if unit.kind == "train" and file_hash(_ckpt(out, unit.name)) != rec["outputs"]["checkpoint_hash"]:
            return None
        return rec
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _call_cli(argv: list) -> int:
    """`python -m parl_core train ...` in this process; sys.argv is set to that command
    for the call so the checkpoint records the command that rebuilds it."""
    from . import cli
    saved = sys.argv
    sys.argv = ["parl_core", *argv]
    try:
        return cli.main(argv)
    except SystemExit as e:  # the train command's own refusals (e.g. resume settings differ)
        raise RuntimeError(f"train {' '.join(argv)}: {e.code}") from None
    finally:
        sys.argv = saved


def _train_argv(u: Unit, out: Path, ckpt: Path, ctx: dict) -> list:
    s = u.settings
    argv = ["train", "--dataset", s["dataset"], "--arch", s["arch"], "--members", str(s["members"]),
            "--method", s["method"], "--epochs", str(s["epochs"]), "--batch-size", str(s["batch_size"]),
            "--lr", repr(s["lr"]), "--schedule", s["schedule"], "--eval-size", str(s["eval_size"]),
            "--seed", str(s["seed"]), "--out", str(ckpt)]
    for k, v in s["params"].items():
        argv += [f"--{k}", repr(v)] if k in ("gamma1", "gamma2", "layers") else ["--param", f"{k}={v}"]
    argv += ["--train-subset", str(s["train_subset"])] if s["train_subset"] else []
    argv += [] if s["augment"] else ["--no-augment"]
    argv += ["--init", str(_ckpt(out, s["init"]))] if s["init"] else []
    argv += ["--data-root", str(ctx["data_root"])] if ctx["data_root"] else []
    argv += ["--device", str(ctx["device"])] if ctx["device"] else []
    return argv + (["--quiet"] if ctx["quiet"] else [])


def _run_train(u: Unit, out: Path, ctx: dict) -> dict:
    from .checkpoints import file_hash, read_metadata
    ckpt = _ckpt(out, u.name)
    resume = ckpt.with_name(ckpt.name + ".resume.pt")
    try:
        finished = not resume.exists() and read_metadata(ckpt).get("epochs_done") == u.settings["epochs"]
    except (OSError, ValueError):  # absent or unreadable: train (again)
        finished = False
    if not finished:  # resume an interrupted run, else start (over) from scratch
        argv = _train_argv(u, out, ckpt, ctx)
        argv += ["--resume"] if resume.is_file() else ["--force"] if ckpt.exists() else []
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        rc = _call_cli(argv)
        if rc == 130:
            raise Interrupted(f"training {u.name} interrupted; its last finished epoch is kept")
        if rc != 0:
            raise RuntimeError(f"training {u.name} failed (exit {rc}); see the error above")
    meta = read_metadata(ckpt)
    return {"checkpoint": str(ckpt.relative_to(out)), "checkpoint_hash": file_hash(ckpt),
            "clean_acc": meta.get("clean_acc"), "r_mean": meta.get("r_mean"),
            "train_size": meta.get("train_size"), "epochs_done": meta.get("epochs_done"),
            "params": meta.get("params"), "command": meta.get("command"),
            "train_seconds": (meta.get("history") or [{}])[-1].get("time")}


def _run_eval(u: Unit, out: Path, ctx: dict) -> dict:
    from .checkpoint_eval import evaluate_checkpoints
    from .progress import Progress
    s = u.settings
    prog = Progress(f"{u.kind} {u.name}", unit="row-step", quiet=ctx["quiet"])

    def show(ev):
        if ev["event"] == "start":
            prog.start(ev["total"])
        elif ev["event"] == "progress":
            prog.update_to(ev["done"], attack=ev.get("attack"))
    try:
        res = evaluate_checkpoints(
            [str(_ckpt(out, t)) for t in s["targets"]],
            surrogate=str(_ckpt(out, s["surrogate"])) if s.get("surrogate") else None,
            n_examples=s["n_examples"], seed=s["attack_seed"], attacks=s["attacks"], eps=s["eps"],
            steps=s["steps"], step_size=s["step_size"], restarts=s["restarts"], decay=s["decay"],
            data_root=ctx["data_root"], device=ctx["device"], on_progress=show)
    finally:
        prog.close()
    if any(r.cancelled for r in res):
        raise Interrupted(f"evaluation {u.name} cancelled")
    return {"results": {t: r.to_dict() for t, r in zip(s["targets"], res)}}


def _run_cka(u: Unit, out: Path, ctx: dict) -> dict:
    from .checkpoint_eval import evaluation_data
    from .checkpoints import load_checkpoint
    from .cka import ensemble_cka
    s = u.settings
    ens, meta = load_checkpoint(_ckpt(out, s["target"]), device=ctx["device"])
    test, fingerprint = evaluation_data(meta, s["n_examples"], ctx["data_root"])
    res = ensemble_cka(ens, test.images, batch_size=s["batch_size"], estimator=s["estimator"])
    pairs = [{"pair": [i, j], "label": p["label"], "diagonal": [float(v) for v in p["diagonal"]],
              "overall": p["overall"]} for (i, j), p in res["pairs"].items()]
    return {"pairs": pairs, "overall": res["overall"], "n": res["n"], "estimator": res["estimator"],
            "batch_size": res["batch_size"], "data_fingerprint": fingerprint,
            "data_source": test.info.get("source", f"{test.name} test split")}


def check_data(plan: Plan, data_root) -> None:
    """FileNotFoundError naming the dataset when its training data is not found."""
    for ds in plan.config["datasets"]:
        if data_identity(ds, data_root, "train") is None:
            raise FileNotFoundError(f"{ds}: no training data under the data root "
                                    f"{data_root or '$PARL_DATA or ./data'}; pass --data-root, or run "
                                    f"`python -m parl_core data {ds}`")


def reusable(out: Path, u: Unit, records: dict):
    """The unit's marker when it finished and was made from its dependencies' current
    weights, else None (a stale output of a retrained dependency is removed)."""
    rec = unit_done(out, u)
    if rec is not None and any(records[d]["outputs"]["checkpoint_hash"] != h
                               for d, h in rec["dep_hashes"].items()):
        _ckpt(out, u.name).unlink(missing_ok=True)
        return None
    return rec


def run_unit(u: Unit, out: Path, ctx: dict) -> dict:
    """A unit's outputs (it writes its checkpoint or caches into `out`)."""
    return (_run_train(u, out, ctx) if u.kind == "train" else
            _run_cka(u, out, ctx) if u.kind == "cka" else _run_eval(u, out, ctx))


def finish_unit(out: Path, u: Unit, outputs: dict, records: dict, seconds: float, device,
                **extra) -> dict:
    """Write the unit's marker (atomically, after its outputs) and keep it in `records`."""
    from .checkpoint_eval import _write_atomic
    rec = {"name": u.name, "kind": u.kind, "roles": u.roles, "dataset": u.dataset, "seed": u.seed,
           "settings": u.settings, "deps": list(u.deps), "outputs": outputs,
           "dep_hashes": {d: records[d]["outputs"]["checkpoint_hash"] for d in u.deps},
           "seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
           "device": str(device or "default"), **extra}
    _write_atomic(_marker(out, u.name), json.dumps(rec, indent=1))
    records[u.name] = rec
    return rec


def reproduce(plan: Plan, out, *, device=None, data_root=None, quiet=True, on_event=None,
              command=None) -> Path:
    """Run every unfinished unit of `plan` into `out`, then write the report; returns the
    path of report.md. on_event(dict) gets {"event": "unit_start" | "unit_done", "unit": name,
    "kind", "index", "total", "reused" (unit_done: True when it was already finished),
    "seconds"}. Ctrl-C (or an exception from on_event) stops after the last finished unit.
    data_root: default, the plan's. On a Ray cluster: `parl_core.reproduce_ray`."""
    from .report import write_report
    out, data_root = Path(out), plan.data_root if data_root is None else data_root
    check_data(plan, data_root)
    (out / "units").mkdir(parents=True, exist_ok=True)
    ctx = {"device": device, "data_root": data_root, "quiet": quiet}
    emit, records = on_event or (lambda ev: None), {}
    for i, u in enumerate(plan.units, 1):
        rec = reusable(out, u, records)
        if rec is not None:
            records[u.name] = rec
            emit({"event": "unit_done", "unit": u.name, "kind": u.kind, "index": i,
                  "total": len(plan.units), "reused": True, "seconds": 0.0})
            continue
        emit({"event": "unit_start", "unit": u.name, "kind": u.kind, "index": i, "total": len(plan.units)})
        if not quiet:
            print(f"[{i}/{len(plan.units)}] {u.name} ({', '.join(u.roles)})", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        outputs = run_unit(u, out, ctx)
        rec = finish_unit(out, u, outputs, records, time.perf_counter() - t0, device)
        emit({"event": "unit_done", "unit": u.name, "kind": u.kind, "index": i,
              "total": len(plan.units), "reused": False, "seconds": rec["seconds"]})
    return write_report(plan, out, records, command=command)
