"""The `reproduce` command: `python -m parl_core reproduce --scale ... --out ...`
(parl_core.reproduce runs the units, parl_core.report writes the report,
parl_core.reproduce_estimate times the plan for --dry-run)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from .paper_numbers import SCALES
from .reproduce import Interrupted, data_identity, make_plan, reproduce, unit_done
from .reproduce_estimate import estimate

__all__ = ["add_reproduce_command", "cmd_reproduce"]

_OVERRIDES = (("datasets", str, "e.g. cifar10,cifar100"),
              ("methods", str, "e.g. ce_only,parl,adp,gal,dverge"),
              ("seeds", int, "e.g. 0,1,2"), ("ablation", int, "PARL's K values, e.g. 3,5,7"),
              ("epochs", None, "training epochs (the paper is silent)"),
              ("dverge-epochs", None, "DVERGE's epochs from its ENS_U warm start"),
              ("batch-size", None, "training batch (the paper is silent)"))


def _csv(kind):
    def parse(text):
        try:
            return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, "
                                             f"got {text!r}")
    return parse


def add_reproduce_command(sub, common) -> None:
    """Register `reproduce` on the CLI's subparsers (`common` carries --threads)."""
    p = sub.add_parser("reproduce", parents=[common], help="reproduce the paper's experiments into a report",
                       description="Train, evaluate and report the paper's experiments at a scale "
                                   "(parl_core.paper_numbers.SCALES); finished units are reused, an "
                                   "interrupted run continues where it stopped.")
    p.add_argument("--scale", required=True, choices=tuple(SCALES))
    p.add_argument("--out", default=None, help="report folder (default reports/<scale>)")
    for name, kind, text in _OVERRIDES:
        p.add_argument(f"--{name}", type=_csv(kind) if kind else int, default=None, help=text)
    p.add_argument("--schedule", default=None, help="cosine | step | constant (the paper is silent)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--data-root", default=None, help="folder holding the CIFAR folders")
    p.add_argument("--dry-run", action="store_true", help="print the plan and a timed estimate; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the units on a Ray cluster: ADDRESS as ray.init takes it (auto, "
                        "HOST:6379, ray://HOST:10001); without one, the cluster in RAY_ADDRESS or a "
                        "new local one. --out must be on a filesystem every node sees")
    p.add_argument("--ray-cpus", type=float, default=1, metavar="N", help="CPUs each unit asks for")
    p.add_argument("--ray-gpus", type=float, default=None, metavar="N",
                   help="GPUs each unit asks for (default: 1 on a cluster with GPUs, else 0)")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args) -> int:
    from .report import plan_text
    keys = [n.replace("-", "_") for n, _, _ in _OVERRIDES] + ["schedule"]
    plan = make_plan(args.scale, data_root=args.data_root, **{k: getattr(args, k) for k in keys})
    out = Path(args.out or f"reports/{args.scale}")
    if args.dry_run:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > 0.75 * cores and args.device != "cuda":
            print(f"note: load average {load:.1f} on {cores} cores: other processes share the CPU, "
                  "so these timings overstate an idle machine's", file=sys.stderr)
        print(plan_text(plan, out, estimate(plan, device=args.device),
                        {u.name for u in plan.units if unit_done(out, u)}, args.device,
                        {d: data_identity(d, args.data_root, "train") is not None
                         for d in plan.config["datasets"]}))
        return 0
    text = (lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v))  # noqa: E731
    flags = [f"--{k.replace('_', '-')} {shlex.quote(text(v))}" for k, v in vars(args).items()
             if k not in ("command", "func", "scale", "dry_run", "quiet", "ray", "ray_cpus",
                          "ray_gpus") and v is not None]
    command = f"python -m parl_core reproduce --scale {args.scale} " + " ".join(flags)
    try:
        if args.ray is not None:  # the same units, files and report, on a Ray cluster
            from .reproduce_ray import _print_event, reproduce_on_ray
            path = reproduce_on_ray(plan, out, address=args.ray or None, cpus=args.ray_cpus,
                                    gpus=args.ray_gpus, threads=getattr(args, "threads", None),
                                    device=args.device, data_root=args.data_root, quiet=args.quiet,
                                    on_event=None if args.quiet else _print_event, command=command)
        else:
            path = reproduce(plan, out, device=args.device, data_root=args.data_root, quiet=args.quiet,
                             command=command)
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"interrupted ({e or 'Ctrl-C'}); finished units are kept: rerun the same command to "
              "continue", file=sys.stderr)
        return 130
    except RuntimeError as e:  # a unit failed; finished units are kept
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"report: {path} (and report.html, CSV tables in {out})")
    return 0
