"""Command line for long jobs: `python -m parl_core COMMAND ...`.

  train     train an ensemble (any method) and write a checkpoint after every epoch;
            Ctrl-C stops cleanly and keeps the last finished epoch; --resume continues
            an interrupted run exactly. DVERGE fine-tunes a trained ENS_U: --init CKPT
            (or --scratch to start from random weights).
  info      a checkpoint's metadata, history summary and accuracy.
  evaluate  robustness of checkpoints under attack (parl_core.cli_evaluate).
  data      download CIFAR-10/100 into the data root (parl_core.download).
  reproduce the paper's experiments at a scale into a report (parl_core.reproduce).
  prepare   the dashboard's results for checkpoints, ahead of a lecture (parl_core.prepare).

Progress goes to stderr: a bar on a terminal, plain lines in a log file; --quiet hides
the progress but keeps the per-epoch lines. --threads N sets torch's CPU threads.
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
from pathlib import Path

import torch

from . import __version__
from .cli_evaluate import add_evaluate
from .download import add_data_command
from .cli_reproduce import add_reproduce_command
from .cli_import import add_import_command
from .prepare import add_prepare_command
from .checkpoints import load_checkpoint, read_metadata, sanitize_name, save_checkpoint
from .data import DATASETS, TOY_2D, load_dataset
from .losses import METHODS, method_label
from .progress import Progress
from .train import SCHEDULES, build_ensemble, evaluate_accuracy, train, training_meta

DEFAULT_ARCH = {"digits": "smallcnn", "cifar10": "resnet20", "cifar100": "resnet20",
                **{n: "mlp" for n in TOY_2D}}


def _parse_value(text: str):
    """'0.5' -> 0.5, '3' -> 3, 'true' -> True, 'none' -> None, else the string."""
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


# option -> (method parameter, methods it applies to); given only when set, so a run
# without them records exactly the parameters it did before they existed
_METHOD_OPTIONS = {"feature": ("feature", ("parl",)), "bn_grad": ("bn_grad", ("parl", "gal")),
                   "dverge_features": ("feature_space", ("dverge",)),
                   "plus_adv": ("plus_adv", ("dverge",))}


def _method_params(args) -> dict:
    params = {}
    for name in ("gamma1", "gamma2", "layers"):
        v = getattr(args, name)
        if v is not None:
            params[name] = v
    for opt, (key, methods) in _METHOD_OPTIONS.items():
        v = getattr(args, opt, None)
        if v is None or v is False:
            continue
        if args.method not in methods:
            raise SystemExit(f"--{opt.replace('_', '-')} applies to --method "
                             f"{' or '.join(methods)}, got --method {args.method}")
        params[key] = v
    for item in args.param or []:
        if "=" not in item:
            raise SystemExit(f"--param expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        params[k.strip()] = _parse_value(v.strip())
    return params


def _add_train(sub, common):
    p = sub.add_parser("train", parents=[common], help="train an ensemble and save a checkpoint",
                       description="Train an ensemble; a checkpoint is written after every epoch.")
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-root", default=None, help="folder holding the CIFAR folders")
    p.add_argument("--arch", default=None, help="resnet20 | smallcnn | mlp (default by dataset)")
    p.add_argument("--width", type=int, default=None, help="model width (channels/units)")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--method", default="parl", help=f"one of: {', '.join(sorted(METHODS))}")
    p.add_argument("--gamma1", type=float, default=None, help="PARL: weight of the CE term")
    p.add_argument("--gamma2", type=float, default=None, help="PARL: weight of the pairwise term")
    p.add_argument("--layers", type=int, default=None, help="PARL: first K layers (default min(7, L))")
    p.add_argument("--feature", default=None, choices=("pre_bn", "post_bn", "post_relu"),
                   help="PARL: layer outputs F^k whose input-gradients R compares (default "
                        "pre_bn: raw conv outputs, whose layer-1 gradient is the same for every input)")
    p.add_argument("--bn-grad", default=None, choices=("per_example", "batch"),
                   help="PARL, GAL: input-gradients with batch-norm statistics held constant "
                        "(per_example, the default) or through the batch statistics (batch)")
    p.add_argument("--dverge-features", default=None, choices=("pre_bn", "post_bn", "post_relu", "reference"),
                   help="DVERGE: distillation layers (default pre_bn; reference: the DVERGE "
                        "trainer's block outputs before ReLU, logits last)")
    p.add_argument("--plus-adv", action="store_true",
                   help="DVERGE+AdvT: each member also trains on PGD examples of itself "
                        "(adv_eps, adv_step_size, adv_steps, dverge_coeff via --param)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="any other method parameter, e.g. --param alpha=2.0 (repeatable)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="Adam's L2 penalty (paper: 0; the DVERGE/TRS references: 1e-4)")
    p.add_argument("--schedule", default="cosine", choices=SCHEDULES)
    p.add_argument("--train-subset", type=int, default=None, help="train on N seeded examples")
    p.add_argument("--eval-size", type=int, default=2000, help="test examples per epoch (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: batch norm over the global batch (SyncBatchNorm, CUDA); "
                        "default: each process's shard")
    p.add_argument("--no-augment", action="store_true", help="no crop/flip on CIFAR")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="start from this checkpoint's weights (DVERGE's warm start: a trained ENS_U)")
    p.add_argument("--scratch", action="store_true",
                   help="DVERGE: train from random weights instead of a trained ENS_U (--init)")
    p.add_argument("--out", default=None, help="checkpoint path (default checkpoints/<name>.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run at --out")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="train every combination of the values (repeatable: seed, method, layers, "
                        "gamma2, ...); --out names each run, e.g. 'runs/{method}_s{seed}.safetensors' "
                        "(parl_core.sweep); rerun to finish an interrupted sweep")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="with --sweep: run the trainings on a Ray cluster (see `reproduce --ray`)")
    p.add_argument("--ray-cpus", type=float, default=1, metavar="N", help="CPUs each run asks for")
    p.add_argument("--ray-gpus", type=float, default=None, metavar="N",
                   help="GPUs each run asks for (default: 1 on a cluster with GPUs, else 0)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar or progress lines (the per-epoch lines stay)")
    p.set_defaults(func=cmd_train)


def _resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume.pt")


def _run_settings(args, params) -> dict:
    """What must match for --resume to continue a run exactly."""
    keys = ("dataset", "arch", "width", "members", "method", "epochs", "batch_size", "lr",
            "schedule", "train_subset", "eval_size", "seed", "no_augment", "init")
    out = {**{k: getattr(args, k) for k in keys}, "params": params}
    if args.weight_decay:  # absent when 0, so runs interrupted before the option resume
        out["weight_decay"] = args.weight_decay
    return out


def _check_warm_start(args) -> None:
    """DVERGE fine-tunes a trained plain ensemble (its paper; the reference's default
    --start-from baseline): without --init it is refused unless --scratch says so."""
    scratch = getattr(args, "scratch", False)
    if scratch and args.method != "dverge":
        raise SystemExit(f"--scratch applies to --method dverge, got --method {args.method}")
    if scratch and args.init:
        raise SystemExit("--scratch and --init exclude each other: --init CKPT starts from "
                         "CKPT's weights, --scratch from random ones")
    if args.method == "dverge" and not args.init and not scratch:
        ens_u = f"checkpoints/{args.dataset}_ce_only_s{args.seed}.safetensors"
        raise SystemExit(
            "--method dverge needs --init CKPT: DVERGE starts from a trained plain ensemble "
            "(ENS_U), as in its paper and reference trainer. Train one first with the same "
            f"dataset and --members, e.g.\n  python -m parl_core train --method ce_only "
            f"--dataset {args.dataset} --members {args.members} --out {ens_u}\nthen add "
            f"--init {ens_u}; or pass --scratch to train DVERGE from random weights.")


def cmd_train(args) -> int:
    if args.sweep:
        from .sweep import run_sweep
        return run_sweep(args)
    if args.ray is not None:
        raise SystemExit("--ray trains on a cluster with --sweep; for one training on several "
                         "GPUs use torchrun (README, 'Scaling out')")
    if args.method not in METHODS:
        raise SystemExit(f"unknown method {args.method!r}; expected one of {', '.join(sorted(METHODS))}")
    params = _method_params(args)
    _check_warm_start(args)
    args.arch = args.arch or DEFAULT_ARCH[args.dataset]
    name = f"{args.dataset}_{args.method}_s{args.seed}"
    out = Path(args.out) if args.out else Path("checkpoints") / f"{name}.safetensors"
    if out.suffix != ".safetensors":
        out = out.with_name(sanitize_name(out.name) + ".safetensors")
    resume_file = _resume_path(out)
    settings = _run_settings(args, params)
    from .distributed import from_env
    ctx = from_env(args.device)  # torchrun: this process's rank; None: one process
    main = ctx is None or ctx.is_main
    if ctx is not None:
        ctx.check_batch(args.batch_size)
    elif args.sync_bn:
        raise SystemExit("--sync-bn applies to data-parallel training: start the command with torchrun")
    from .resume_state import ResumeStateError, load_resume_state, save_resume_state
    from .runlock import RunLock, RunLockedError
    resume = None
    if args.resume:
        if not resume_file.is_file():
            raise SystemExit(f"--resume: no resume state {resume_file} (was the run started with --out {out}?)")
        try:  # tensors and plain types only; a truncated or foreign file gets a message
            saved = load_resume_state(resume_file)
        except ResumeStateError as e:
            raise SystemExit(f"--resume: {e}") from None
        if saved["settings"] != settings:
            diff = {k: (saved["settings"].get(k), v) for k, v in settings.items()
                    if saved["settings"].get(k) != v}
            raise SystemExit(f"--resume: settings differ from the interrupted run (saved, now): {diff}")
        resume = saved["state"]
    elif out.exists() and not args.force:
        raise SystemExit(f"{out} exists: pass --force to overwrite, --resume to continue it, "
                         "or choose another --out")
    lock = RunLock(out, owner="python -m parl_core train")  # one live run per --out (rank 0's)
    try:
        lock.acquire() if main else None
    except RunLockedError as e:
        raise SystemExit(f"--out: {e}") from None
    train_ds = load_dataset(args.dataset, "train", args.data_root)
    test_ds = load_dataset(args.dataset, "test", args.data_root)
    if args.train_subset:
        train_ds = train_ds.subset(args.train_subset, seed=args.seed)
    kw = {"width": args.width} if args.width else {}
    ens = build_ensemble(args.arch, args.members, train_ds, seed=args.seed, **kw)
    if args.init and resume is None:
        init, _ = load_checkpoint(args.init)
        if len(init.members) != args.members:
            raise SystemExit(f"--init {args.init} has {len(init.members)} members, --members is {args.members}")
        ens.load_state_dict(init.state_dict())
    info = train_ds.info
    if info.get("n_batches") and info["n_batches"] < info["expected_batches"]:
        print(f"note: {args.dataset} train: read {info['n_batches']} of {info['expected_batches']} "
              f"batches ({len(train_ds)} images)", file=sys.stderr)
    command = "python -m parl_core " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if sys.argv and sys.argv[0].endswith(("parl_core", "__main__.py", "cli.py")) else None
    meta_kw = dict(method=args.method, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
                   lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule, augment=not args.no_augment,
                   train_subset=args.train_subset, command=command, init=args.init)
    prog = Progress("train", quiet=args.quiet or not main)
    stop = threading.Event()

    def on_progress(ev):
        _show_progress(prog, ev)
        if ev["event"] == "epoch":  # save every finished epoch: nothing finished is ever lost
            # the resume state first (atomic: temp file, fsync, rename): killed between the two
            # writes, the checkpoint is one epoch behind and --resume still continues
            save_resume_state(resume_file, settings, ev["state"])
            save_checkpoint(out, ens, training_meta(train_ds, ev["state"]["history"],
                                                    params=params_used, **meta_kw))

    from .losses import make_method
    params_used = dict(make_method(args.method, **params).params)
    if params_used.get("layers", 0) is None:
        params_used["layers"] = min(7, min(m.num_layers for m in ens.members))
    # Ctrl-C, and the SIGTERM torchrun sends its workers, stop after the last finished epoch
    old = signal.signal(signal.SIGINT, lambda *_: stop.set())
    old_term = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        hist = train(ens, train_ds, test_ds, method=args.method, epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, schedule=args.schedule, seed=args.seed,
                     device=args.device, augment=None if not args.no_augment else False, amp=args.amp,
                     eval_size=args.eval_size or None, on_progress=on_progress if main else None,
                     cancel=stop, resume=resume, weight_decay=args.weight_decay, distributed=ctx,
                     sync_bn=args.sync_bn, **params)
    finally:
        signal.signal(signal.SIGINT, old)
        signal.signal(signal.SIGTERM, old_term)
        prog.close()
        if ctx is not None:
            import torch.distributed as dist
            dist.destroy_process_group()
    if not main:  # rank 0 saved every epoch and reports
        return 130 if hist.cancelled else 0
    if hist.cancelled:
        print(f"interrupted after {len(hist)} finished epoch(s); {out} holds epoch {len(hist)}. "
              f"Continue with the same command and --resume.", file=sys.stderr)
        lock.release()
        return 130
    resume_file.unlink(missing_ok=True)
    lock.release()
    last = hist[-1]
    print(f"saved {out}: {method_label(args.method)} ensemble test accuracy "
          f"{last.get('test_acc', float('nan')):.4f}, mean pairwise R/K {last['r_mean']:.4f} "
          f"(K_eval={last['k_eval']}), {last['time']:.1f}s")
    return 0


def _show_progress(prog: Progress, ev: dict) -> None:
    """Training events -> the progress display; every finished epoch gets its line."""
    if ev["event"] == "start":
        prog.start(ev["total_steps"], ev["global_step"])
    elif ev["event"] == "step":
        prog.update_to(ev["global_step"], epoch=f"{ev['epoch']}/{ev['epochs']}",
                       loss=f"{ev['loss']:.3f}")
    elif ev["event"] == "epoch":
        r = ev["record"]
        acc = r.get("test_acc")
        prog.note(f"epoch {r['epoch']}: loss {r['loss']:.4f}"
                  + (f", test acc {acc:.4f}" if acc is not None else "")
                  + f", R/K {r['r_mean']:.4f}, {r['time']:.1f}s")


def _add_info(sub):
    p = sub.add_parser("info", help="show a checkpoint's metadata, history and accuracy")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.add_argument("--eval", action="store_true",
                   help="recompute clean accuracy on the full test split")
    p.add_argument("--data-root", default=None)
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    meta = read_metadata(args.checkpoint)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    cfg = meta["model"]
    print(f"{args.checkpoint}")
    print(f"  method     {method_label(meta.get('method', '?'))} ({meta.get('method')}) "
          f"params {json.dumps(meta.get('params', {}))}")
    print(f"  model      {meta['members']} x {cfg['arch']} ({cfg['num_classes']} classes, "
          f"input {meta.get('input_shape')})")
    print(f"  dataset    {meta.get('dataset')}  train size {meta.get('train_size')}")
    print(f"  training   {meta.get('epochs_done')}/{meta.get('epochs')} epochs, batch "
          f"{meta.get('batch_size')}, lr {meta.get('lr')} ({meta.get('schedule')}), seed {meta.get('seed')}")
    print(f"  written    {meta.get('created')} by parl_core {meta.get('library_version')}")
    if meta.get("command"):
        print(f"  command    {meta['command']}")
    hist = meta.get("history") or []
    if hist:
        print("  epoch   loss      test_acc  R/K")
        for r in hist:
            acc = r.get("test_acc")
            print(f"  {r['epoch']:>5}   {r.get('loss', float('nan')):<8.4f}  "
                  f"{'-' if acc is None else f'{acc:.4f}':<8}  {r.get('r_mean', float('nan')):.4f}")
    if args.eval:
        ens, meta = load_checkpoint(args.checkpoint)
        test = load_dataset(meta["dataset"], "test", args.data_root,
                            **{k: meta["dataset_info"][k] for k in ("n_samples", "noise", "seed")
                               if k in meta.get("dataset_info", {})})
        acc, members = evaluate_accuracy(ens, test)
        print(f"  clean accuracy on {len(test)} test examples: ensemble {acc:.4f}, members "
              + ", ".join(f"{a:.4f}" for a in members))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parl_core",
                                     description=f"PARL Lab {__version__}: ensembles, attacks, diversity")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's choice, usually all cores)")
    _add_train(sub, common)
    _add_info(sub)
    add_evaluate(sub, common)
    add_data_command(sub)
    add_reproduce_command(sub, common)
    add_prepare_command(sub, common)
    add_import_command(sub, common)
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # as typed (train --sweep rebuilds it)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            parser.error(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
