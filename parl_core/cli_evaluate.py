"""`python -m parl_core evaluate`: robustness of one or more checkpoints, from the command line."""
from __future__ import annotations

import signal
import threading

from .attacks import ALL_ATTACKS, ATTACK_LOSSES, ATTACKS
from .diagnostics import FACTOR
from .progress import Progress
from .result import _plain


def add_evaluate(sub, common):
    p = sub.add_parser(
        "evaluate", parents=[common], help="accuracy under FGSM/BIM/MIM/PGD over a grid of eps",
        description="Robustness of checkpoints: white-box, or black-box (transfer) from "
                    "--surrogate, whose examples are crafted once and scored on every target; "
                    "with --surrogate given more than once, one table per surrogate and the worst "
                    "over surrogates (per example: robust only if no surrogate's examples fool "
                    "it). "
                    "Every checkpoint of a dataset is evaluated on the same test examples (the "
                    "first --n of the canonical evaluation order). Defaults follow the paper: "
                    "1000 test examples, 50 steps of eps/5, MIM decay 0.01 (the paper's 10 PGD restarts: "
                    "--restarts 10).")
    p.add_argument("checkpoint", nargs="*", help="target checkpoint(s)")
    p.add_argument("--target", action="append", default=[], metavar="CKPT",
                   help="another target checkpoint (repeatable)")
    p.add_argument("--surrogate", action="append", default=[], metavar="CKPT",
                   help="craft the examples on this ensemble (black-box transfer); repeatable: "
                        "pick surrogates of other seeds, another architecture and one trained "
                        "with the target's defence (see parl_core.surrogates)")
    p.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated subset of "
                   f"{','.join(ALL_ATTACKS)} (default: the paper's four)")
    p.add_argument("--square-queries", type=int, default=None, metavar="Q",
                   help="Square's query budget (default: --steps)")
    p.add_argument("--eps", default=None, help="comma-separated eps (default: the dataset's grid)")
    p.add_argument("--n", type=int, default=1000, help="test examples (the canonical first n)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--step-size", type=float, default=None, help="default eps/5")
    p.add_argument("--restarts", type=int, default=1,
                   help="PGD random restarts (the API's and dashboard's default too; the paper: 10)")
    p.add_argument("--restart-select", default=None, choices=("source", "target", "mean"),
                   help="how restarts combine: the attacker's pick on the surrogate (default "
                        "black-box), robust only if every restart fails on the target (default "
                        "white-box), or the mean over restarts")
    p.add_argument("--decay", type=float, default=0.01, help="MIM momentum decay")
    p.add_argument("--loss", default="ensemble", choices=ATTACK_LOSSES,
                   help="the loss of FGSM/BIM/MIM/PGD: CE of the log-mean-softmax, the members' "
                        "mean CE, the margin (CW) loss, the vote loss, DLR (APGD-CE/-DLR, apgd-t, "
                        "Square and pgd-vote fix their own)")
    p.add_argument("--per-attack", action="store_true",
                   help="evaluate and cache each attack on its own, then merge (worst-case row "
                        "from the per-example verdicts): a long evaluation resumes at the first "
                        "attack not finished; one surrogate at most")
    p.add_argument("--convergence", action="store_true",
                   help=f"also rerun PGD at the largest eps with {FACTOR}x the steps and check that "
                        "more steps do not help the defender (a masking diagnostic)")
    p.add_argument("--early-stop", action="store_true",
                   help="white-box: stop attacking examples already misclassified")
    p.add_argument("--seed", type=int, default=0, help="PGD's random starts")
    p.add_argument("--batch-size", type=int, default=None,
                   help="at most this many adversarial rows per pass (default: sized from the "
                        "model and free memory; changes memory and speed, never the result)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-cache", action="store_true", help="recompute and do not write the cache")
    p.add_argument("--csv", default=None, help="write the table as CSV (several targets: one "
                   "file, with a 'checkpoint' column)")
    p.add_argument("--json", default=None, help="write table, checks and settings as JSON "
                   "(several targets: a list)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    targets = list(args.checkpoint) + list(args.target)
    if not targets:
        raise ValueError("evaluate: give at least one checkpoint (positional or --target)")
    try:
        eps = [float(v) for v in args.eps.split(",") if v.strip()] if args.eps else None
    except ValueError:
        raise SystemExit(f"--eps expects comma-separated numbers, got {args.eps!r}") from None
    kw = dict(n_examples=args.n, seed=args.seed, eps=eps,
              attacks=[a.strip() for a in args.attacks.split(",") if a.strip()],
              steps=({"default": args.steps, "square": args.square_queries}
                     if args.square_queries else args.steps), step_size=args.step_size,
              restarts=args.restarts, decay=args.decay, early_stop=args.early_stop, loss=args.loss,
              batch_size=args.batch_size, restart_select=args.restart_select,
              convergence=args.convergence, data_root=args.data_root, device=args.device,
              cache=not args.no_cache)
    bar, stop = {"p": Progress("black-box" if args.surrogate else "white-box", quiet=args.quiet)}, \
        threading.Event()

    def on_progress(ev):
        prog = bar["p"]
        mode = ev["mode"] + (f" from {ev['surrogate']}" if ev.get("surrogate") else "")
        if ev["event"] == "start":
            if prog.total is not None:  # the next surrogate: a fresh bar
                prog.close()
                prog = bar["p"] = Progress(mode, quiet=args.quiet)
            prog.desc = mode
            prog.start(ev["total"])
        elif ev["event"] == "progress":
            prog.update_to(ev["done"], attack=ev["attack"] or "-")
        elif ev["event"] == "attack" and not args.quiet:
            prog.note(f"{mode}: {ev['attack']} done ({100 * ev['done'] / ev['total']:.0f}% "
                      f"of the work, {ev['elapsed']:.0f}s)")

    old = signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.per_attack and len(args.surrogate) > 1:
        raise SystemExit("--per-attack takes one --surrogate at most; run it once per surrogate")
    try:
        if args.per_attack:
            from .per_attack import evaluate_per_attack
            results = evaluate_per_attack(
                targets, surrogate=args.surrogate[0] if args.surrogate else None,
                on_progress=on_progress, cancel=stop,
                on_attack=None if args.quiet else lambda a, i, k, sec: bar["p"].note(
                    f"{a}: finished ({i + 1}/{k}, {sec:.0f}s)"),
                **kw)
        elif len(args.surrogate) > 1:
            from .surrogates import transfer_suite
            suites = transfer_suite(targets, args.surrogate, on_progress=on_progress, cancel=stop, **kw)
        else:
            from .checkpoint_eval import evaluate_checkpoints
            results = evaluate_checkpoints(targets, surrogate=args.surrogate[0] if args.surrogate
                                           else None, on_progress=on_progress, cancel=stop, **kw)
    finally:
        signal.signal(signal.SIGINT, old)
        bar["p"].close()
    if len(args.surrogate) > 1:
        return _report_suites(args, targets, suites)
    print("\n\n".join(r.summary() for r in results))
    for t, r in list(zip(targets, results))[1:]:
        print(_paired_text(targets[0], results[0], t, r))
    _write(args, [r.table.assign(checkpoint=t) for r, t in zip(results, targets)],
           [r.to_dict() for r in results], drop_checkpoint=len(results) == 1)
    return 130 if any(r.cancelled for r in results) else 0


def _report_suites(args, targets, suites) -> int:
    """Several surrogates: every suite's tables, the paired comparison of the targets' worst
    over surrogates, and --csv (a 'surrogate' column; 'worst' rows) / --json."""
    print("\n\n".join(s.summary() for s in suites))
    if all(s.worst is not None for s in suites):
        for t, s in list(zip(targets, suites))[1:]:
            print(_paired_text(targets[0], suites[0].worst, t, s.worst).replace(
                "paired, same examples:", "paired, same examples, worst over surrogates:"))
    tables = [r.table.assign(surrogate=name, checkpoint=s.target)
              for s in suites for name, r in s.per_surrogate.items()]
    tables += [s.worst.table.assign(surrogate="worst", checkpoint=s.target)
               for s in suites if s.worst is not None]
    _write(args, tables, [s.to_dict() for s in suites], drop_checkpoint=len(suites) == 1)
    return 130 if any(s.cancelled for s in suites) else 0


def _write(args, tables, dicts, *, drop_checkpoint: bool) -> None:
    """--csv: the tables as one CSV (a 'checkpoint' column only with several targets);
    --json: one object, or a list of them with several."""
    import json

    import pandas as pd
    if args.csv:
        table = pd.concat(tables)
        (table.drop(columns="checkpoint") if drop_checkpoint else table).to_csv(args.csv, index=False)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dicts[0] if len(dicts) == 1 else dicts, f, indent=1, default=_plain)


def _paired_text(name_a, res_a, name_b, res_b) -> str:
    """B − A on the same examples, row by row, with the paired interval and McNemar's p."""
    from .stats import paired_comparison
    try:
        cmp = paired_comparison(res_a, res_b)
    except ValueError as e:
        return f"\npaired comparison not possible: {e}"
    lines = [f"\npaired, same examples: {name_b} minus {name_a} (accuracy points, 95 % interval, "
             "exact McNemar p)"]
    for r in cmp.itertuples():
        lines.append(f"  {r.attack:>10} {r.eps:<5g} {100 * r.diff:+6.1f} [{100 * r.diff_low:+.1f}, "
                     f"{100 * r.diff_high:+.1f}]  p = {r.p_value:.3g}")
    return "\n".join(lines)
