"""The reproduction report: Tables 1 and 2 beside the paper's numbers, figures, a verdict
per claim computed from the numbers, sanity checks and provenance.

Written from the finished units' markers only (`parl_core.reproduce`), as report.md,
report.html (self-contained: plotly inlined once) and CSV files. Over seeds an accuracy is
mean ± std (population std, as the figures' bands) with the 95 % Wilson interval of the
correct counts pooled over seeds × examples (for one seed: that evaluation's interval).
Comparisons of two ensembles are paired (same examples, same surrogate): exact McNemar
test and paired interval (`parl_core.stats.paired_difference`), pooled over the seeds both
have; "significant" means p < 0.05.
"""
from __future__ import annotations

import html
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .paper_numbers import PAPER_TABLE2, PAPER_TABLE2_NOTE, deviations, paper_value
from .report_figures import METHOD_ORDER, label, report_figures

__all__ = ["write_report", "collect", "table", "wide_table", "verdicts", "plan_text", "label", "ALPHA"]

ALPHA = 0.05
CLAIMS = ("(1) PARL's black-box accuracy is above every baseline's at large ε",
          "(2) PARL's clean accuracy is within ~2 points of ENS_U's",
          "(3) PARL's early-layer CKA is lower than ENS_U's",
          "(4) PARL's white-box gain over ENS_U is small",
          "(5) fewer regularised layers (smaller K) give higher clean accuracy")


# --------------------------------------------------------------------------- collecting
def collect(plan, records: dict) -> dict:
    """{"bb"|"wb": {(dataset, seed): {role: RobustnessResult}}, "cka": {(dataset, seed):
    {role: cka outputs}}} from the markers."""
    from .evaluate import RobustnessResult
    got = {"bb": {}, "wb": {}, "cka": {}}
    for u in plan.units:
        rec, key = records[u.name], (u.dataset, u.seed)
        if u.kind == "cka":
            for r in plan.unit(u.settings["target"]).roles:
                got["cka"].setdefault(key, {})[r] = rec["outputs"]
        elif u.kind in ("blackbox", "whitebox"):
            for t, d in rec["outputs"]["results"].items():
                res = RobustnessResult.from_json(json.dumps(d))
                for r in plan.unit(t).roles:
                    got["bb" if u.kind == "blackbox" else "wb"].setdefault(key, {})[r] = res
    return got


def _row(res, attack, eps):
    t = res.table
    m = t[(t.attack == attack) & (np.isclose(t.eps, 0.0 if attack == "clean" else eps))]
    return m.iloc[0] if len(m) else None


def _summary(results, attack, eps) -> dict | None:
    """mean ± std over seeds and the pooled Wilson interval of one table cell (fractions)."""
    from .stats import wilson_interval
    rows = [r for r in (_row(res, attack, eps) for res in results) if r is not None]
    if not rows:
        return None
    acc = np.array([r.acc for r in rows])
    k, n = int(sum(r.correct for r in rows)), int(sum(r.n for r in rows))
    lo, hi = wilson_interval(k, n)
    return {"seeds": len(rows), "n": int(rows[0].n), "mean": acc.mean(), "std": acc.std(),
            "ci_low": lo, "ci_high": hi, "per_seed": ";".join(f"{a:.4f}" for a in acc)}


def _roles(got, mode, dataset, pred):
    seen = {r for (d, _), by in got[mode].items() if d == dataset for r in by if pred(r)}
    key = (lambda r: METHOD_ORDER.index(r)) if all(r in METHOD_ORDER for r in seen) else \
        (lambda r: int(r[6:]))
    return sorted(seen, key=key)


def _by_role(got, mode, dataset, role):
    return [by[role] for (d, _), by in sorted(got[mode].items()) if d == dataset and role in by]


def table(got, plan, roles_of, columns, paper) -> pd.DataFrame:
    """Long table (percent): dataset, role, label, column, eps, seeds, n, mean, std, ci_low,
    ci_high, per_seed, paper."""
    rows, eps = [], max(plan.config["eps"])
    for ds in plan.config["datasets"]:
        for role in roles_of(ds):
            results = _by_role(got, "bb", ds, role)
            for col in columns:
                s = _summary(results, col, eps)
                if s is not None:
                    pct = {k: 100 * s[k] for k in ("mean", "std", "ci_low", "ci_high")}
                    rows.append({"dataset": ds, "role": role, "label": label(role), "column": col,
                                 "eps": 0.0 if col == "clean" else eps, "seeds": s["seeds"],
                                 "n": s["n"], **pct, "per_seed": s["per_seed"],
                                 "paper": paper(ds, role, col, eps)})
    return pd.DataFrame(rows)


def _fmt(r) -> str:
    sd = f" ± {r['std']:.1f}" if r["seeds"] > 1 else ""
    return f"{r['mean']:.1f}{sd} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"


def wide_table(long: pd.DataFrame, row_key: str = "label") -> pd.DataFrame:
    """One row per dataset and `row_key` (Table 1/2 as printed): every column's
    "mean ± std [95 % interval]" beside the paper's number; `long` as table1.csv."""
    out = []
    for (ds, key), g in long.groupby(["dataset", row_key], sort=False):
        row = {"dataset": ds, row_key: key, "seeds": int(g.seeds.max())}
        for r in g.to_dict("records"):
            name = r["column"].upper() if r["column"] != "clean" else "clean"
            row[name] = _fmt(r)
            paper = r["paper"]
            row[f"{name} (paper)"] = "–" if paper is None or paper != paper else f"{paper:g}"
        out.append(row)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- verdicts
def _paired(got, mode, ds, a, b, attack, eps) -> dict | None:
    """B − A pooled over the seeds both have (paired per example)."""
    from .stats import paired_difference
    va, vb = [], []
    for (d, _), by in sorted(got[mode].items()):
        if d == ds and a in by and b in by:
            x, y = by[a].verdict(attack, 0.0 if attack == "clean" else eps), \
                by[b].verdict(attack, 0.0 if attack == "clean" else eps)
            if x is not None and y is not None:
                va.append(x), vb.append(y)
    return paired_difference(np.concatenate(va), np.concatenate(vb)) if va else None


def _pp(p: dict, what: str) -> str:
    return (f"{what}: {100 * p['diff']:+.1f} points [{100 * p['diff_low']:+.1f}, "
            f"{100 * p['diff_high']:+.1f}], p = {p['p_value']:.3g}, n = {p['n']}")


def _combine(states: list) -> str:
    if not states:
        return "inconclusive at this scale"
    if "does not hold" in states:
        return "does not hold"
    return "holds" if all(s == "holds" for s in states) else "inconclusive at this scale"


def verdicts(got, plan) -> list[dict]:
    """One verdict per claim: {"claim", "verdict", "rule", "numbers"}."""
    cfg, out = plan.config, []
    eps, wb_eps = max(cfg["eps"]), cfg["wb_eps"] or cfg["eps"]
    sig = (lambda p, sign: p["p_value"] < ALPHA and np.sign(p["diff"]) == sign)
    checks = {k: ([], []) for k in range(5)}  # per claim: states, numbers
    for ds in cfg["datasets"]:
        present = _roles(got, "bb", ds, lambda r: r in METHOD_ORDER)
        # (1) PARL vs every baseline, iterative attacks at the largest ε (Table 1)
        for b in [r for r in present if r != "parl"] if "parl" in present else []:
            for a in [a for a in ("bim", "mim", "pgd") if a in cfg["attacks"]]:
                p = _paired(got, "bb", ds, b, "parl", a, eps)
                checks[0][0].append("holds" if sig(p, 1) else "does not hold" if sig(p, -1) else "?")
                checks[0][1].append(_pp(p, f"{ds} {a.upper()} ε={eps:g}, PARL − {label(b)}"))
        if {"parl", "ce_only"} <= set(present):
            p = _paired(got, "bb", ds, "ce_only", "parl", "clean", 0.0)  # (2)
            checks[1][0].append("holds" if p["diff_low"] >= -0.02 else
                                "does not hold" if p["diff_high"] < -0.02 else "?")
            checks[1][1].append(_pp(p, f"{ds} clean, PARL − ENS_U"))
            k = cfg["parl"]["layers"]  # (3) mean same-layer CKA over layers 1..K, per pair and seed
            vals = {r: [np.mean(p_["diagonal"][:k]) for (d, _), by in got["cka"].items() if d == ds
                        and r in by for p_ in by[r]["pairs"]] for r in ("parl", "ce_only")}
            if all(vals.values()):
                p_, u_ = vals["parl"], vals["ce_only"]
                checks[2][0].append("holds" if max(p_) < min(u_) else
                                    "does not hold" if min(p_) > max(u_) else "?")
                checks[2][1].append(f"{ds} CKA over layers 1–{k}: PARL pairs {np.mean(p_):.3f} "
                                    f"(range {min(p_):.3f}–{max(p_):.3f}), ENS_U pairs {np.mean(u_):.3f} "
                                    f"(range {min(u_):.3f}–{max(u_):.3f}), {len(p_)} PARL pairs × seeds")
            for e in wb_eps if "pgd" in cfg["attacks"] else ():  # (4) white-box PGD, gain ≤ 5 points
                p = _paired(got, "wb", ds, "ce_only", "parl", "pgd", e)
                if p is not None:
                    checks[3][0].append("holds" if p["diff_high"] <= 0.05 else
                                        "does not hold" if p["diff_low"] > 0.05 else "?")
                    checks[3][1].append(_pp(p, f"{ds} white-box PGD ε={e:g}, PARL − ENS_U"))
        ks = _roles(got, "bb", ds, lambda r: r.startswith("parl/K"))  # (5) K ablation, clean
        if len(ks) >= 2:
            pairs = list(zip(ks, ks[1:])) + ([(ks[0], ks[-1])] if len(ks) > 2 else [])
            for small, large in pairs:
                p = _paired(got, "bb", ds, large, small, "clean", 0.0)
                extreme = (small, large) == (ks[0], ks[-1])
                checks[4][0].append("does not hold" if sig(p, -1) else
                                    ("holds" if sig(p, 1) else "?") if extreme else "holds")
                checks[4][1].append(_pp(p, f"{ds} clean, {label(small)} − {label(large)}"))
    rules = ("holds if PARL is significantly above every baseline on BIM, MIM and PGD at the "
             "largest ε; does not hold if any baseline is significantly above PARL",
             "holds if the paired 95 % interval of PARL − ENS_U lies above −2 points; does not "
             "hold if it lies below −2 points",
             f"mean same-layer linear CKA over layers 1–K (K = {cfg['parl']['layers']}), per member "
             "pair and seed: holds if every PARL pair is below every ENS_U pair; does not hold if "
             "every PARL pair is above every ENS_U pair",
             "white-box PGD at every ε: holds if the paired 95 % interval of PARL − ENS_U stays "
             "below +5 points; does not hold if it lies above +5 points at some ε",
             "clean accuracy of PARL/K: holds if the smallest K is significantly above the largest "
             "and no smaller K is significantly below a larger one; does not hold if one is")
    for i, claim in enumerate(CLAIMS):
        states, numbers = checks[i]
        out.append({"claim": claim, "verdict": _combine(states), "rule": rules[i],
                    "numbers": numbers or ["not evaluated at this scale (methods or ablation missing)"]})
    return out


# --------------------------------------------------------------------------- figures
def _curves(got) -> pd.DataFrame:
    rows = []
    for mode in ("bb", "wb"):
        for (ds, seed), by in sorted(got[mode].items()):
            for role, res in by.items():
                t = res.table[["attack", "eps", "n", "correct", "acc", "ci_low", "ci_high"]]
                rows.append(t.assign(dataset=ds, seed=seed, mode=res.settings.get("mode"), role=role))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def _cka_rows(got) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": ds, "seed": seed, "role": role, "pair": p["label"], "layer": i + 1,
                          "cka": v}
                         for (ds, seed), by in sorted(got["cka"].items()) for role, o in by.items()
                         for p in o["pairs"] for i, v in enumerate(p["diagonal"])])


# --------------------------------------------------------------------------- tables of record
def _sanity(plan, records) -> pd.DataFrame:
    rows = []
    for u in plan.units:
        for t, d in records[u.name]["outputs"].get("results", {}).items() if u.kind != "cka" else ():
            failed = [c["detail"] for c in d.get("checks", []) if not c["ok"]]
            rows.append({"unit": u.name, "target": ", ".join(plan.unit(t).roles), "seed": u.seed,
                         "checks passed": f"{len(d['checks']) - len(failed)}/{len(d['checks'])}",
                         "failed checks and notes":
                             " | ".join(dict.fromkeys(failed + d.get("warnings", []))) or "–"})
    return pd.DataFrame(rows)


def _units(plan, records) -> pd.DataFrame:
    rows = []
    for u in plan.units:
        o = records[u.name]["outputs"]
        rows.append({"unit": u.name, "kind": u.kind, "roles": ", ".join(u.roles), "seed": u.seed,
                     "training seed": u.settings.get("seed", ""),
                     "seconds": round(records[u.name]["seconds"], 1),
                     "checkpoint sha256": o.get("checkpoint_hash") or "",
                     "clean acc (training)": "" if o.get("clean_acc") is None else f"{o['clean_acc']:.4f}",
                     "finished": records[u.name]["finished"], "train command": o.get("command") or ""})
    return pd.DataFrame(rows)


def _versions() -> dict:
    import plotly
    import torch
    from . import __version__
    return {"parl_core": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "pandas": pd.__version__, "plotly": plotly.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "torch threads": torch.get_num_threads()}


def plan_text(plan, out, est: dict, done: set, device, data_found: dict) -> str:
    """The dry run's listing: every unit, its roles, settings and estimated time."""
    from .progress import format_seconds
    lines = [f"scale {plan.scale}: {len(plan.units)} units into {out} ({len(done)} finished); "
             f"estimates from timed steps on {device or 'the default device'}"]
    for i, u in enumerate(plan.units, 1):
        shown = {k: v for k, v in u.settings.items()
                 if k not in ("kind", "dataset", "version", "data", "test_data")}
        when = "done" if u.name in done else "est. " + format_seconds(est[u.name])
        lines += [f"{i:>3}. {u.name}  [{', '.join(u.roles)}]  {when}", f"     {json.dumps(shown)}"]
    total = sum(est[u.name] for u in plan.units if u.name not in done)
    return "\n".join(lines + [f"estimated total: {format_seconds(total)} (data: " + "; ".join(
        f"{d} {'found' if ok else 'NOT FOUND'}" for d, ok in data_found.items()) + ")"])


# --------------------------------------------------------------------------- writing
def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "(none)"
    cells = [[str(c) for c in df.columns]] + [[str(v).replace("|", "\\|") for v in r]
                                              for r in df.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(df.columns)]
                     + ["| " + " | ".join(r) + " |" for r in cells[1:]])


def _render(blocks) -> tuple[str, str]:
    md, body, first = [], [], True
    for kind, item in blocks:
        if kind in ("h1", "h2", "h3"):
            md.append("#" * int(kind[1]) + " " + item)
            body.append(f"<{kind}>{html.escape(item)}</{kind}>")
        elif kind == "p":
            md.append(item)
            body.append(f"<p>{html.escape(item)}</p>")
        elif kind == "ul":
            md.append("\n".join(f"- {x}" for x in item))
            body.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in item) + "</ul>")
        elif kind == "table":
            md.append(_md_table(item))
            body.append(item.to_html(index=False, escape=True, border=0, classes="t"))
        elif kind == "pre":
            md.append(f"```\n{item}\n```")
            body.append(f"<pre>{html.escape(item)}</pre>")
        elif kind == "fig":
            title, fig = item
            md.append(f"*Figure: {title}* (interactive in report.html)")
            body.append(fig.to_html(full_html=False, include_plotlyjs=True if first else False))
            first = False
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
             "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{border:1px solid #ccc;"
             "padding:3px 6px}pre{background:#f5f5f5;padding:8px;overflow-x:auto}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>PARL reproduction</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return "\n\n".join(md) + "\n", page


def _write(path: Path, text: str) -> None:
    from .checkpoint_eval import _write_atomic
    _write_atomic(path, text)


def write_report(plan, out, records: dict, *, command=None) -> Path:
    """Write report.md, report.html and the CSV tables into `out`; returns report.md's path."""
    out, cfg = Path(out), plan.config
    got = collect(plan, records)
    eps = max(cfg["eps"])
    methods = lambda ds: _roles(got, "bb", ds, lambda r: r in METHOD_ORDER)  # noqa: E731
    t1 = table(got, plan, methods, ["clean", *cfg["attacks"]],
               lambda ds, r, c, e: paper_value(ds, r, c, e))
    t2 = table(got, plan, lambda ds: _roles(got, "bb", ds, lambda r: r.startswith("parl/K")),
               ["clean", *cfg["attacks"]],
               lambda ds, r, c, e: PAPER_TABLE2.get(ds, {}).get(int(r[6:])) if c == "clean" else None)
    vs = verdicts(got, plan)
    curves, cka = _curves(got), _cka_rows(got)
    csvs = {"table1.csv": t1, "table2.csv": t2, "accuracy_vs_eps.csv": curves,
            "cka_layers.csv": cka, "sanity_checks.csv": _sanity(plan, records),
            "units.csv": _units(plan, records),
            "verdicts.csv": pd.DataFrame([{**v, "numbers": " | ".join(v["numbers"])} for v in vs])}
    for name, df in csvs.items():
        _write(out / name, df.round(4).to_csv(index=False))
    B = [("h1", f"PARL reproduction — scale '{plan.scale}'"),
         ("p", f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} from {len(plan.units)} finished units. "
               f"Command: {command or '(API call)'}"), ("h2", "Verdicts")]
    B.append(("table", pd.DataFrame([{"claim": v["claim"], "verdict": v["verdict"]} for v in vs])))
    for v in vs:
        B += [("h3", f"{v['claim']}: {v['verdict']}"), ("p", "Rule: " + v["rule"] + "."),
              ("ul", v["numbers"])]
    B += [("h2", f"Table 1: clean and black-box accuracy (%) at ε = {eps:g}"),
          ("p", "Ours: mean ± std over seeds [95 % Wilson interval of the counts pooled over seeds]; "
                "paper: Table 1 (ε = 0.07, mean of three runs). Long form with every seed in table1.csv."),
          ("table", wide_table(t1, "label") if len(t1) else t1),
          ("h2", "Table 2: PARL/K ablation, clean and black-box accuracy (%)"), ("p", PAPER_TABLE2_NOTE),
          ("table", wide_table(t2, "label") if len(t2) else t2), ("h2", "Figures")]
    B += [("fig", f) for f in report_figures(curves, cka)]
    B += [("p", "Figure data: accuracy_vs_eps.csv (every evaluation row) and cka_layers.csv.")]
    B += [("h2", "Protocol: differences from the paper and choices"), ("ul", deviations(cfg)),
          ("h2", "Settings"),
          ("pre", "\n".join(f"{k}: {json.dumps(v, default=list)}" for k, v in cfg.items())),
          ("h2", "Sanity checks of every evaluation"), ("table", csvs["sanity_checks.csv"]),
          ("h2", "Units (trainings, evaluations, CKA)"),
          ("p", "Full checkpoint hashes and the train command of every checkpoint: units.csv."),
          ("table", csvs["units.csv"].drop(columns="train command").assign(
              **{"checkpoint sha256": lambda d: d["checkpoint sha256"].str[:16]})),
          ("h2", "Versions"), ("pre", json.dumps(_versions(), indent=1))]
    md, page = _render(B)
    _write(out / "report.html", page)
    _write(out / "report.md", md)
    return out / "report.md"
