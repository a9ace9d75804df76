"""The full attack suite on the shipped ensembles (issue 14's closing table), every number
from the project's own functions, resumable: each attack is evaluated and cached on its own
(`parl_core.per_attack`) beside the checkpoints, so an interrupted run continues where it
stopped and a finished one prints at once.

For each target, on the first --n test examples of the canonical evaluation order:

  black-box   crafted once on the surrogate (an ENS_U of another seed), scored on every
              target: the paper's four (FGSM, BIM, MIM, PGD), APGD-CE, APGD-DLR, PGD-vote
              (PGD on the vote loss), Square (--square-queries, on the surrogate), and the
              worst case per example; restarts combined by the black-box default ("source")
  white-box   on the target itself: PGD, APGD-CE, APGD-DLR, Square and the worst case, with
              the "more steps" check (PGD at 4x the steps); restart rule "target"
  checks      every evaluation's masking checks, and white-box <= black-box per ε
              (`parl_core.white_below_black`)
  paired      each target minus the first on the same examples (exact McNemar test)
  transfer    PGD and MI-DI from several surrogates (`parl_core.surrogates.transfer_suite`):
              the shipped one (ENS_U, another seed), one of another architecture and, on
              digits, one trained with PARL (another seed), and the worst over surrogates
              per example; the extra surrogates are trained on first use into --surrogates
              (an ignored folder; the train commands are printed and resumable)

    python -m bench.table_suite --dataset cifar10 --data-root ../shared/data --threads 2
    python -m bench.table_suite --dataset digits

Writes --out/<dataset>.md (the tables, checks and the command) and <dataset>.csv.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import parl_core as pc
from parl_core.per_attack import evaluate_per_attack, merge_results
from parl_core.stats import paired_comparison

SETUPS = {
    "cifar10": dict(targets=("cifar10_ens_u", "cifar10_parl"), surrogate="cifar10_surrogate",
                    eps=(0.01, 0.03, 0.05, 0.07), steps=20, n=1000),
    "digits": dict(targets=("digits_ens_u", "digits_parl", "digits_adp", "digits_gal",
                            "digits_dverge", "digits_trs"), surrogate="digits_surrogate",
                   eps=(0.1, 0.2, 0.3), steps=20, n=450),
}
# Surrogates beside the shipped one: (label, train arguments); trained like the targets.
TRAIN_COMMON = {"digits": ["--dataset", "digits", "--members", "3", "--epochs", "15", "--batch-size", "64"],
                "cifar10": ["--dataset", "cifar10", "--members", "3", "--epochs", "15", "--batch-size", "128",
                            "--lr", "1e-3"]}
EXTRA_SURROGATES = {
    "digits": (("resnet20", ["--arch", "resnet20", "--method", "ce_only", "--seed", "100"]),
               ("parl", ["--method", "parl", "--seed", "100"])),
    "cifar10": (("smallcnn", ["--arch", "smallcnn", "--method", "ce_only", "--seed", "100"]),),
}
TRANSFER = ("pgd", "mi-di")
BLACK_EXTRA = ("apgd-ce", "apgd-dlr", "pgd-vote", "square")
WHITE = ("pgd", "apgd-ce", "apgd-dlr", "square")


def _note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(args):
    cfg = SETUPS[args.dataset]
    folder = Path(args.folder)
    paths = [str(folder / f"{t}.safetensors") for t in cfg["targets"]]
    sur = str(folder / f"{cfg['surrogate']}.safetensors")
    kw = dict(n_examples=args.n or cfg["n"], seed=0, steps={"default": cfg["steps"],
              "square": args.square_queries}, restarts=1, data_root=args.data_root)
    log = lambda a, i, k, s: _note(f"{a} done ({i + 1}/{k}, {s:.0f}s)")
    # The paper's four in one evaluation over the whole ε grid (the cached result the
    # dashboard opens on, where one is shipped), the other attacks one by one at `eps`.
    _note("black-box: the paper's four")
    four = pc.evaluate_checkpoints(paths, surrogate=sur, attacks=list(pc.ATTACKS),
                                   eps=pc.default_eps_grid(args.dataset),
                                   **dict(kw, steps=cfg["steps"]))
    extra = evaluate_per_attack(paths, surrogate=sur, attacks=list(BLACK_EXTRA),
                                eps=list(cfg["eps"]), on_attack=log, **kw)
    black = [merge_results([a, b]) for a, b in zip(four, extra)]
    white = []
    for p in paths:
        _note(f"white-box: {Path(p).stem}")
        pgd = pc.evaluate_checkpoints([p], attacks=["pgd"], eps=list(cfg["eps"]),
                                      convergence=True, **dict(kw, steps=cfg["steps"]))
        rest = evaluate_per_attack([p], attacks=list(WHITE[1:]), eps=list(cfg["eps"]),
                                   on_attack=log, **kw)
        white.append(merge_results([pgd[0], rest[0]]))
    suites = transfer(args, paths, sur, cfg, kw)
    return cfg, paths, black, white, suites


def extra_surrogates(args) -> list:
    """The extra surrogates' paths, each trained first when missing (resumed when
    interrupted): `python -m parl_core train ...` as printed."""
    import subprocess
    out = []
    folder = Path(args.surrogates)
    for label, extra in EXTRA_SURROGATES[args.dataset]:
        path = folder / f"{args.dataset}_surrogate_{label}.safetensors"
        argv = [sys.executable, "-m", "parl_core", "train", *TRAIN_COMMON[args.dataset], *extra,
                "--out", str(path), "--quiet"] + (["--data-root", args.data_root] if args.data_root else []) \
            + (["--threads", str(args.threads)] if args.threads else [])
        done = path.is_file() and not path.with_name(path.name + ".resume.pt").is_file()
        if not done:
            resume = path.with_name(path.name + ".resume.pt").is_file()
            _note("training surrogate: " + " ".join(argv[1:]) + (" --resume" if resume else ""))
            subprocess.run(argv + (["--resume"] if resume else []), check=True)
        out.append(str(path))
    return out


def transfer(args, paths, shipped, cfg, kw):
    from parl_core.surrogates import transfer_suite
    surrogates = [shipped] + extra_surrogates(args)
    _note("transfer from " + ", ".join(Path(s).stem for s in surrogates))
    return transfer_suite(paths, surrogates, attacks=list(TRANSFER), eps=list(cfg["eps"]),
                          **dict(kw, steps=cfg["steps"]))


def _cell(row) -> str:
    return f"{100 * row.acc:.1f} [{100 * row.ci_low:.1f}, {100 * row.ci_high:.1f}]"


def _table(results, names, eps) -> str:
    attacks = list(dict.fromkeys(a for r in results for a in r.table.attack if a != "clean"))
    head = ["ensemble", "clean"] + [f"{a} {e:g}" for e in eps for a in attacks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in zip(names, results):
        t = r.table
        cells = [name, _cell(t[t.attack == "clean"].iloc[0])]
        for e in eps:
            for a in attacks:
                hit = t[(t.attack == a) & ((t.eps - e).abs() < 1e-9)]
                cells.append(_cell(hit.iloc[0]) if len(hit) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _long_table(results, names, eps) -> str:
    """Attacks as rows, ensembles as columns (readable for many attacks)."""
    attacks = list(dict.fromkeys(a for r in results for a in r.table.attack))
    lines = ["| attack | ε | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for a in attacks:
        for e in ([0.0] if a == "clean" else eps):
            cells = []
            for r in results:
                t = r.table
                hit = t[(t.attack == a) & ((t.eps - e).abs() < 1e-9)]
                cells.append(_cell(hit.iloc[0]) if len(hit) else "–")
            lines.append(f"| {a} | {e:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _checks(results, names, title) -> list:
    out = [f"**Checks, {title}:**", ""]
    for name, r in zip(names, results):
        bad = [c for c in r.checks if not c["ok"]]
        out.append(f"- {name}: {len(r.checks) - len(bad)}/{len(r.checks)} passed ("
                   + ", ".join(c["check"] for c in r.checks if c["ok"]) + ")"
                   + ("" if not bad else "; failed: " + " · ".join(c["detail"] for c in bad)))
    return out + [""]


def _findings(results, names, eps, threat) -> str:
    """One computed sentence: which ensembles' worst-case accuracy differs from the first's
    (exact McNemar p < 0.05) at which ε, and plainly when none does."""
    up, down = [], []
    for name, r in list(zip(names, results))[1:]:
        cmp = paired_comparison(results[0], r)
        for x in cmp[cmp.attack == "worst-case"].itertuples():
            if x.p_value < 0.05 and any(abs(x.eps - e) < 1e-9 for e in eps):
                (up if x.diff > 0 else down).append(f"{name} at ε {x.eps:g} ({100 * x.diff:+.1f} points, "
                                                     f"p = {x.p_value:.2g})")
    if not up and not down:
        return (f"**{threat}, worst case over the attacks:** no ensemble differs from {names[0]} beyond "
                f"noise at any ε (exact McNemar p ≥ 0.05): the expected advantage of the diversity "
                f"methods does not show here.")
    return (f"**{threat}, worst case over the attacks, against {names[0]} (p < 0.05):** "
            + (f"above: {'; '.join(up)}. " if up else "none above. ")
            + (f"below: {'; '.join(down)}." if down else "none below.")
            + ("" if any(u.startswith("PARL ") for u in up) else " PARL is not above it at any ε."))


def _paired(results, names, eps) -> list:
    out = [f"**Paired, same examples, minus {names[0]}** (points, 95 % interval, exact McNemar p):", ""]
    for name, r in list(zip(names, results))[1:]:
        cmp = paired_comparison(results[0], r)
        cmp = cmp[cmp.attack.isin(["clean", "pgd", "worst-case"])]
        cells = [f"{x.attack} {x.eps:g}: {100 * x.diff:+.1f} [{100 * x.diff_low:+.1f}, "
                 f"{100 * x.diff_high:+.1f}] p={x.p_value:.2g}" for x in cmp.itertuples()
                 if x.attack == "clean" or any(abs(x.eps - e) < 1e-9 for e in eps)]
        out.append(f"- {name}: " + "; ".join(cells))
    return out + [""]


def _describe(label, result) -> str:
    """A surrogate as what it is: method, architecture, seed (from its checkpoint)."""
    from parl_core.checkpoints import read_metadata
    try:
        m = read_metadata(result.settings["surrogate"])
        return (f"{label} ({pc.method_label(m.get('method') or '?')}, {m['model'].get('arch')}, "
                f"seed {m.get('seed')})")
    except (OSError, ValueError, KeyError, TypeError):
        return label


def _transfer_table(suites, names, eps) -> list:
    labels = list(suites[0].per_surrogate)
    described = {lab: _describe(lab, suites[0].per_surrogate[lab]) for lab in labels}
    lines = ["| attack | ε | surrogate | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for a in TRANSFER:
        for e in eps:
            for lab in labels + ["worst"]:
                cells = []
                for s in suites:
                    r = s.worst if lab == "worst" else s.per_surrogate[lab]
                    t = r.table
                    hit = t[(t.attack == a) & ((t.eps - e).abs() < 1e-9)]
                    cells.append(_cell(hit.iloc[0]) if len(hit) else "–")
                lines.append(f"| {a} | {e:g} | {described.get(lab, lab)} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(SETUPS), default="cifar10")
    ap.add_argument("--folder", default="checkpoints")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n", type=int, default=None, help="test examples (default: the setup's)")
    ap.add_argument("--square-queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="docs/evaluation")
    ap.add_argument("--surrogates", default="reports/surrogates",
                    help="where the extra surrogates are trained (kept between runs)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg, paths, black, white, suites = measure(args)
    names = [pc.method_label(r.settings.get("method") or "?") for r in black]
    eps = list(cfg["eps"])
    wbb = [pc.white_below_black(w, b) for w, b in zip(white, black)]
    cmd = "python -m bench.table_suite " + " ".join(sys.argv[1:] if argv is None else argv)
    s = black[0].settings
    text = [f"# The attack suite on the shipped {args.dataset} ensembles", "",
            f"`{cmd}` ({(time.perf_counter() - t0) / 60:.0f} min of this run; cached evaluations "
            f"are reused). The first {s['n']} test images of the canonical evaluation order (image "
            f"fingerprint {s.get('data_fingerprint')}), {cfg['steps']} steps "
            f"(step ε/5 for BIM/MIM/PGD/PGD-vote, APGD's own schedule), Square "
            f"{args.square_queries} queries, 1 restart; black-box crafted on "
            f"`{cfg['surrogate']}` (restart rule {s.get('restart_select')}), white-box on each "
            "target. Accuracy of the majority vote, % [95 % Wilson interval]; worst-case: per "
            "example, the minimum over the attacks of that table.", "",
            _findings(black, names, eps, "Black-box"), "", _findings(white, names, eps, "White-box"), "",
            "## Black-box (transfer from the surrogate)", "", _long_table(black, names, eps), ""]
    text += _checks(black, names, "black-box") + _paired(black, names, eps)
    text += ["## White-box (on each target)", "", _long_table(white, names, eps), ""]
    text += _checks(white, names, "white-box") + _paired(white, names, eps)
    text += ["**White-box ≤ black-box** (every attack and ε both tables have):", ""]
    text += [f"- {n}: {'ok' if c['ok'] else 'FAILED'}: {c['detail']}" for n, c in zip(names, wbb)] + [""]
    text += ["## Transfer from several surrogates (PGD, MI-DI)", "",
             "Each surrogate's examples scored on every target; *worst*: per example, robust only "
             "if no surrogate's examples fool it.", ""]
    text += _transfer_table(suites, names, eps) + [""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.dataset}.md").write_text("\n".join(text))
    pd.concat([r.table.assign(ensemble=n, threat=m) for m, rs in (("black-box", black), ("white-box", white))
               for n, r in zip(names, rs)]).to_csv(out / f"{args.dataset}.csv", index=False)
    print("\n".join(text))


if __name__ == "__main__":
    main()
