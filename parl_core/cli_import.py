"""The `import` command: member weight files from other codebases (or any PyTorch
model) into an ordinary checkpoint.

  python -m parl_core import MEMBER.pth [MEMBER.pth ...] --layout {dverge,trs,parl,state-dict}
      --method M [--arch resnet20] [--dataset cifar10] [--normalize MEAN STD] --out NAME.safetensors
  python -m parl_core import MEMBER.pth ... --model package.module:factory [--layers a,b,...]
      --method M --dataset D --out NAME.safetensors

Files are read with torch.load(weights_only=True): no code in them runs
(parl_core.importers). `--model` imports and calls the named factory, which runs that
code: it is a person's own explicit choice on their own machine (the dashboard never
does it), and the checkpoint names the factory so that `load_checkpoint(...,
allow_code=True)` can rebuild it where the module is importable.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .checkpoints import save_checkpoint, sanitize_name
from .data import DATASETS
from .importers import LAYOUTS, import_members
from .losses import METHODS, method_label

__all__ = ["add_import_command", "cmd_import"]


def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return vals


def add_import_command(sub, common) -> None:
    """Register `import` on the CLI's subparsers (`common` carries --threads)."""
    p = sub.add_parser("import", parents=[common], help="import member weights (.pth) as a checkpoint",
                       description="Read member weight files without running code in them, map "
                                   "their names onto the lab's models and write a checkpoint.")
    p.add_argument("files", nargs="+", metavar="MEMBER.pth",
                   help="one file per member (a DVERGE file may hold them all: model_0, model_1, ...)")
    p.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="whose key names: dverge, trs (their ResNet20s), parl (the lab's state "
                        "dicts with mean/std), state-dict (the lab's names, no normalisation)")
    p.add_argument("--arch", default=None, choices=("resnet20", "smallcnn", "mlp"),
                   help="the lab architecture (default resnet20; dverge/trs are resnet20)")
    p.add_argument("--dataset", default="cifar10", choices=DATASETS)
    p.add_argument("--normalize", nargs=2, type=_floats, metavar=("MEAN", "STD"), default=None,
                   help="per-channel mean and std, comma-separated (e.g. 0.4914,0.4822,0.4465 "
                        "0.2023,0.1994,0.2010), overriding the file's or the layout's")
    p.add_argument("--method", required=True, choices=sorted(METHODS),
                   help="what the members were trained with (recorded for labels; nothing trains)")
    p.add_argument("--model", default=None, metavar="PACKAGE.MODULE:FACTORY",
                   help="any nn.Module: an importable function returning the model (runs that "
                        "code); the files hold its state_dict()")
    p.add_argument("--layers", default=None, metavar="NAME1,NAME2,...",
                   help="with --model: the submodules whose outputs are the layers (default "
                        "every conv/linear in registration order)")
    p.add_argument("--out", required=True, help="checkpoint path (.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    p.set_defaults(func=cmd_import)


def _check_args(args) -> None:
    if args.model is None:
        if args.layout is None:
            raise SystemExit("import: give --layout (dverge, trs, parl, state-dict), or --model "
                             "PACKAGE.MODULE:FACTORY for any nn.Module")
        if args.layers is not None:
            raise SystemExit("import: --layers applies to --model only")
    elif args.layout is not None or args.arch is not None:
        raise SystemExit("import: --model builds the members itself; drop --layout and --arch")


def cmd_import(args) -> int:
    _check_args(args)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        out = out.with_name(sanitize_name(out.name) + ".safetensors")
    if out.exists() and not args.force:
        raise SystemExit(f"{out} exists: pass --force to overwrite it, or choose another --out")
    normalize = tuple(args.normalize) if args.normalize else None
    if args.model is not None:
        from .hooked import import_module_members
        ens, meta = import_module_members(args.files, args.model, args.layers, args.dataset,
                                          normalize, method=args.method)
    else:
        ens, meta = import_members(args.files, args.layout, args.arch or "resnet20", args.dataset,
                                   normalize, method=args.method)
    meta["command"] = "python -m parl_core " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if sys.argv and sys.argv[0].endswith(("parl_core", "__main__.py", "cli.py")) else None
    save_checkpoint(out, ens, meta)
    imp, cfg = meta["imported"], ens.members[0].config
    print(f"saved {out}: {len(ens.members)} x {cfg['arch']} ({method_label(args.method)}, "
          f"{args.dataset}) from {imp['layout']} layout")
    for f in imp["files"]:
        print(f"  {f['name']}  sha256 {f['sha256'][:16]}…  {f['members']} member(s)")
    print(f"  normalisation  mean {_short(cfg['mean'])} std {_short(cfg['std'])} "
          f"({', '.join(sorted(set(imp['normalize_source'])))})")
    if cfg["arch"] == "hooked":
        print(f"  factory {cfg['factory']}, layers {', '.join(cfg['layers'][:8])}"
              + (" …" if len(cfg["layers"]) > 8 else ""))
    renamed = [r for r in imp["renames"] if r[0] != r[1]]
    if renamed:
        print(f"  {len(imp['renames'])} modules mapped, e.g. "
              + "; ".join(f"{a} -> {b}" for a, b in renamed[:3]))
    if imp["filled_counters"]:
        print(f"  {imp['filled_counters']} missing num_batches_tracked counters set to 0")
    return 0


def _short(v: list) -> str:
    return "[" + ", ".join(f"{x:.4g}" for x in v[:4]) + (", …]" if len(v) > 4 else "]")
