"""Robustness evaluation: accuracy under attack over ε, white-box or black-box, with checks.

White-box: adversarial examples are crafted on the target itself. Black-box (the paper's
zero-knowledge adversary A_Z): crafted on a surrogate, scored on the target. An example
counts as robust only if the scored model classifies every restart's example correctly
(DESIGN §3). Every accuracy comes with its 95 % Wilson interval.

Each evaluation runs the sanity checks Carlini et al. (2019) ask of a robustness claim and
reports the failed ones as warnings a person reads (`RobustnessResult.checks` holds all).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import __version__
from .attacks import (ATTACKS, AttackCancelled, _spec, attack, attack_restarts,  # noqa: F401
                      eval_mode, input_loss)  # (attack is re-exported through this module)
from .ensemble import Ensemble

__all__ = ["RobustnessResult", "robustness_curve", "transferability_matrix", "wilson_interval",
           "evaluate_checkpoint", "cached_evaluation"]

Z95 = 1.959963984540054
MAX_ROWS = 8192  # default adversarial rows (ε × restarts × examples) per pass
CACHE_VERSION = 2  # part of every cache key: bump when a change alters evaluation results


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n (fractions; (0, 1) when n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # The exact ends at k = 0 and k = n (the formula leaves rounding crumbs there).
    return (0.0 if k == 0 else max(0.0, mid - half)), (1.0 if k == n else min(1.0, mid + half))


@dataclass
class RobustnessResult:
    """One evaluation: `table` (one row per attack × ε, plus the clean row), the sanity
    `checks` ({"check", "ok", "detail"}), `warnings` (details of failed checks and notes),
    `settings` (every setting and library version), `cancelled` (partial table)."""
    table: pd.DataFrame
    warnings: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    cancelled: bool = False

    def to_dict(self) -> dict:
        return {"table": self.table.to_dict(orient="records"),  # exact floats (to_json rounds)
                "columns": list(self.table.columns), "warnings": list(self.warnings),
                "settings": self.settings, "checks": self.checks, "cancelled": self.cancelled}

    def to_json(self, path=None) -> str:
        """JSON text (written to `path` too, when given)."""
        text = json.dumps(self.to_dict(), indent=1, default=_plain)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source) -> "RobustnessResult":
        """From JSON text or a path to a JSON file written by `to_json`."""
        text = source
        if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
            text = Path(source).read_text()
        d = json.loads(text)
        table = pd.DataFrame(d["table"], columns=d.get("columns"))
        return cls(table, d.get("warnings", []), d.get("settings", {}), d.get("checks", []),
                   bool(d.get("cancelled", False)))

    def summary(self) -> str:
        """The table and the checks as text a person reads (the CLI prints it)."""
        s = self.settings
        head = (f"{s.get('checkpoint', 'ensemble')}: {s.get('mode')}"
                + (f" from {s['surrogate']}" if s.get("surrogate") else "")
                + f", {s.get('n')} examples, {s.get('steps')} steps, PGD restarts {s.get('restarts')}")
        cols = ["attack", "eps", "acc", "ci_low", "ci_high"] + \
            [c for c in self.table.columns if c.startswith("member_acc_")] + ["source_acc"]
        body = self.table[[c for c in cols if c in self.table]].to_string(
            index=False, float_format=lambda v: f"{v:.3f}")
        lines = [head, body] + [f"  [{'ok' if c['ok'] else 'WARN'}] {c['detail']}" for c in self.checks]
        details = {c["detail"] for c in self.checks}
        lines += [f"  [note] {w}" for w in self.warnings if w not in details]
        return "\n".join(lines)

    def to_csv(self, path=None) -> str:
        """The table as CSV text (written to `path` too, when given)."""
        buf = io.StringIO()
        self.table.to_csv(buf, index=False)
        if path is not None:
            Path(path).write_text(buf.getvalue())
        return buf.getvalue()


# --------------------------------------------------------------------------- helpers
def _plain(v):
    """numpy scalars -> Python numbers for json.dumps."""
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")


def _device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _members(model) -> int:
    return len(model.members) if isinstance(model, Ensemble) else 1


@torch.no_grad()
def _score(model, x, y, batch: int):
    """(vote correct (N,), member correct (M, N)) of `model` on x, in eval mode."""
    dev, votes, members = _device(model), [], []
    with eval_mode(model):
        for i in range(0, len(x), batch):
            xb, yb = x[i:i + batch].to(dev), y[i:i + batch].to(dev)
            ml = model.member_logits(xb) if isinstance(model, Ensemble) else model(xb)[None]
            votes.append((Ensemble.vote(ml) == yb).cpu())
            members.append((ml.argmax(-1) == yb).cpu())
    return torch.cat(votes), torch.cat(members, 1)


def _zero_grad_share(model, x, y, loss: str, batch: int) -> float:
    """Share of examples whose input gradient of the attacked loss is exactly zero."""
    dev, zero = _device(model), 0
    with eval_mode(model), torch.enable_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch].to(dev).requires_grad_(True)
            per, _ = input_loss(model, xb, y[i:i + batch].to(dev), loss)
            (g,) = torch.autograd.grad(per.sum(), xb)
            zero += (g.flatten(1).abs().sum(1) == 0).sum().item()
    return zero / max(1, len(x))


class _Progress:
    """Counts work units (adversarial rows × steps) and reports them with an ETA."""

    def __init__(self, total: int, callback, mode: str):
        self.total, self.done, self.cb, self.mode = max(1, total), 0, callback, mode
        self.t0 = time.perf_counter()
        self.attack = None
        self.emit("start")

    def emit(self, event: str, **extra):
        if self.cb is None:
            return
        el = time.perf_counter() - self.t0
        eta = el / self.done * (self.total - self.done) if self.done else None
        self.cb({"event": event, "mode": self.mode, "attack": self.attack, "done": self.done,
                 "total": self.total, "elapsed": el, "eta": eta, **extra})

    def tick(self, units: int):
        self.done = min(self.total, self.done + units)
        self.emit("progress")


def _validate(attacks, eps, batch_size):
    attacks = (attacks,) if isinstance(attacks, str) else tuple(attacks)
    bad = [a for a in attacks if a not in ATTACKS]
    if not attacks or bad or len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks must be distinct names from {ATTACKS}, got {attacks!r}")
    if eps is None:
        raise ValueError("eps is required: a number or a list (see parl_core.default_eps_grid)")
    eps = [eps] if isinstance(eps, Real) else list(eps)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    return attacks, eps


# --------------------------------------------------------------------------- the curve
def robustness_curve(target, x, y, *, attacks=ATTACKS, eps=None, surrogate=None, steps=50,
                     step_size=None, restarts=1, decay=0.01, seed=0, bounds=(0.0, 1.0),
                     loss="ensemble", early_stop=False, batch_size=None, on_progress=None,
                     cancel=None) -> RobustnessResult:
    """Accuracy of `target` under each attack at each ε -> RobustnessResult.

    target, surrogate: Ensemble or nn.Module. With a surrogate the examples are crafted on
    it (black-box transfer), else on the target (white-box). x (N, ...), y (N,): the
    evaluation examples. Attack parameters as in `parl_core.attack`; `restarts` applies to
    PGD, and an example is robust only if every restart's example is classified correctly.
    early_stop applies to white-box only. batch_size: adversarial rows (ε × restarts ×
    examples) per pass (default 8192); examples are split into chunks of that many rows,
    chunk c attacked with seed + 7919·c. on_progress(dict) gets {"event": "start" |
    "progress" | "attack" | "end", "mode", "attack", "done", "total" (work units: rows ×
    steps), "elapsed", "eta" (seconds)}; cancel (Event or callable) stops early with a
    partial table and `cancelled=True`.

    table columns: attack ("clean" for the clean row, eps 0), eps, mode, n, correct, acc,
    ci_low, ci_high (95 % Wilson interval of the majority-vote accuracy), clean_acc,
    member_acc_0 .. member_acc_{M-1}, source_acc (accuracy of the attacked model on its
    own examples: the surrogate's in black-box mode), steps, step_size, restarts.
    """
    attacks, eps = _validate(attacks, eps, batch_size)
    black = surrogate is not None
    notes = []
    if black and early_stop:
        notes.append("early_stop applies to white-box evaluation only; it was not used here "
                     "(the surrogate being fooled says little about the target).")
    kw = dict(steps=steps, step_size=step_size, restarts=restarts, decay=decay, bounds=bounds,
              loss=loss, early_stop=early_stop and not black)
    specs = {a: _spec(a, eps, seed=seed, **kw) for a in attacks}  # validates every parameter
    source, mode = (surrogate, "black-box") if black else (target, "white-box")
    cap = batch_size or MAX_ROWS
    x, y = x.detach().cpu(), y.detach().cpu()
    n = len(x)
    clean_vote, clean_mem = _score(target, x, y, cap)
    clean_acc = int(clean_vote.sum()) / n if n else float("nan")
    table = [_row("clean", 0.0, mode, clean_vote, clean_mem, clean_acc, clean_vote, 1, 0.0, 1)]
    prog = _Progress(sum(n * len(s.eps) * s.restarts * s.steps for s in specs.values()),
                     on_progress, mode)
    cancelled = False
    for name in attacks:
        prog.attack = name
        try:
            table += _one_attack(specs[name], kw, target, source, x, y, cap, prog, cancel, mode,
                                 clean_acc)
        except AttackCancelled:
            cancelled = True
            break
        prog.emit("attack")
    df = pd.DataFrame(table)
    checks = [] if cancelled else run_checks(df, specs, kw, target, source, x, y, cap, mode)
    warnings = notes + [c["detail"] for c in checks if not c["ok"]]
    if cancelled:
        warnings.append("evaluation cancelled: the table holds only the attacks that finished.")
    prog.emit("end", cancelled=cancelled)
    return RobustnessResult(df, warnings, _settings(attacks, eps, mode, n, seed, kw, cap, target,
                                                    surrogate), checks, cancelled)


def _settings(attacks, eps, mode, n, seed, kw, cap, target, surrogate) -> dict:
    """Every setting of an evaluation, and the versions that produced it."""
    return {"attacks": list(attacks), "eps": [float(e) for e in eps], "mode": mode, "n": n,
            "seed": seed, **kw, "bounds": list(kw["bounds"]) if kw["bounds"] is not None else None,
            "batch_size": cap, "target_members": _members(target),
            "surrogate_members": _members(surrogate) if surrogate is not None else None,
            "device": str(_device(target)), "library_version": __version__,
            "torch_version": torch.__version__}


def _one_attack(spec, kw, target, source, x, y, cap, prog, cancel, mode, clean_acc) -> list:
    e_n, r_n = len(spec.eps), spec.restarts
    chunk = max(1, cap // (e_n * r_n))
    vote, mem, src = [], [], []
    for c, start in enumerate(range(0, len(x), chunk)):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        before = prog.done
        adv = attack_restarts(spec.name, source, xb, yb, spec.eps, seed=spec.seed + 7919 * c,
                              on_step=prog.tick, cancel=cancel, **kw)  # (E, R, n, ...)
        prog.done = before + len(xb) * e_n * r_n * spec.steps  # early-stopped rows count as done
        flat, yr = adv.reshape(-1, *xb.shape[1:]), yb.repeat(e_n * r_n)
        v, m = _score(target, flat, yr, cap)
        vote.append(v.view(e_n, r_n, -1).all(1))  # robust only if every restart is
        mem.append(m.view(len(m), e_n, r_n, -1).all(2))
        src.append(vote[-1] if source is target else
                   _score(source, flat, yr, cap)[0].view(e_n, r_n, -1).all(1))
    vote, mem, src = torch.cat(vote, 1), torch.cat(mem, 2), torch.cat(src, 1)
    return [_row(spec.name, e, mode, vote[i], mem[:, i], clean_acc, src[i], spec.steps,
                 spec.alpha[i], r_n) for i, e in enumerate(spec.eps)]


def _row(attack, eps, mode, vote, mem, clean_acc, src, steps, alpha, restarts) -> dict:
    n, k = len(vote), int(vote.sum())
    frac = (lambda t: int(t.sum()) / n) if n else (lambda t: float("nan"))
    lo, hi = wilson_interval(k, n)
    row = {"attack": attack, "eps": float(eps), "mode": mode, "n": n, "correct": k,
           "acc": frac(vote), "ci_low": lo, "ci_high": hi, "clean_acc": clean_acc}
    row.update({f"member_acc_{j}": frac(mem[j]) for j in range(len(mem))})
    row.update({"source_acc": frac(src), "steps": steps, "step_size": float(alpha),
                "restarts": restarts})
    return row


# --------------------------------------------------------------------------- sanity checks
def _check(name: str, ok: bool, detail: str) -> dict:
    return {"check": name, "ok": bool(ok), "detail": detail}


def run_checks(df, specs, kw, target, source, x, y, cap, mode) -> list:
    """The sanity checks of one evaluation (Carlini et al. 2019), as {"check", "ok", "detail"}."""
    attacked = df[df.attack != "clean"]
    checks = [_check_eps0(df, specs, kw, target, source, x, y, cap), _check_monotone(df)]
    if mode == "white-box":
        checks += [_check_iterative(attacked), _check_largest(attacked, "acc", "white-box")]
    else:
        checks.append(_check_largest(attacked, "source_acc", "black-box"))
    share = _zero_grad_share(source, x, y, kw["loss"], cap)
    who = "target" if source is target else "surrogate"
    checks.append(_check("zero gradients", share <= 0.01,
                         f"{100 * share:.1f} % of the examples have an exactly zero input gradient "
                         f"on the attacked model ({who})" + ("" if share <= 0.01 else
                         ": gradient masking; gradient attacks understate its weakness")))
    return checks


def _check_eps0(df, specs, kw, target, source, x, y, cap) -> dict:
    xs, ys = x[:64], y[:64]
    for name, spec in specs.items():
        sub = dict(kw, steps=min(spec.steps, 3), restarts=min(spec.restarts, 2))
        adv = attack_restarts(name, source, xs, ys, 0.0, seed=spec.seed, **sub)
        if not all(torch.equal(a, xs) for a in adv):
            return _check("eps = 0", False, f"{name} at ε = 0 moved its input: a bug in the attack")
    zero = df[(df.attack != "clean") & (df.eps == 0.0)]
    bad = zero[zero.acc != zero.clean_acc]
    if len(bad):
        return _check("eps = 0", False, f"ε = 0 rows differ from clean accuracy: "
                      f"{', '.join(bad.attack)}")
    return _check("eps = 0", True, f"ε = 0 reproduces the input exactly for every attack "
                  f"({len(xs)} examples), hence the clean accuracy")


def _check_monotone(df) -> dict:
    """Accuracy must not rise with ε beyond noise (the Wilson upper bound of the lower ε)."""
    clean = df[df.attack == "clean"].iloc[0]
    rises = []
    for name, g in df[df.attack != "clean"].groupby("attack", sort=False):
        g = g.sort_values("eps")
        prev_acc, prev_hi, prev_eps = clean.acc, clean.ci_high, 0.0
        for r in g.itertuples():
            if r.acc > prev_hi and r.eps > prev_eps:
                rises.append(f"{name} ε {prev_eps:g}→{r.eps:g}: {prev_acc:.3f}→{r.acc:.3f}")
            prev_acc, prev_hi, prev_eps = r.acc, wilson_interval(r.correct, r.n)[1], r.eps
    return _check("monotone in eps", not rises,
                  "accuracy does not rise with ε beyond noise" if not rises else
                  "accuracy rises with ε beyond noise (gradient masking or a bug): " + "; ".join(rises))


def _check_iterative(attacked) -> dict:
    """White-box: BIM/MIM/PGD at least as strong as FGSM at every ε (up to noise)."""
    fg = attacked[attacked.attack == "fgsm"].set_index("eps")
    worse = []
    for r in attacked[attacked.attack.isin(["bim", "mim", "pgd"])].itertuples():
        if r.eps in fg.index and r.acc > fg.loc[r.eps, "ci_high"]:
            worse.append(f"{r.attack} ε {r.eps:g}: {r.acc:.3f} > fgsm {fg.loc[r.eps, 'acc']:.3f}")
    if fg.empty:
        return _check("iterative >= fgsm", True, "not checked: no FGSM in this evaluation")
    short = attacked[attacked.steps * attacked.step_size < attacked.eps - 1e-12]
    why = ("too few steps: steps × step size < ε, so they cannot reach the ball's boundary"
           if len(short) else "gradient masking or too few steps?")
    return _check("iterative >= fgsm", not worse,
                  "iterative attacks are at least as strong as FGSM at every ε" if not worse else
                  f"white-box iterative attacks weaker than FGSM ({why}): " + "; ".join(worse))


def _check_largest(attacked, column, mode) -> dict:
    """The strongest attack at the largest ε should leave the attacked model near 0 %."""
    if attacked.empty:
        return _check("largest eps", True, "not checked: no attack finished")
    top = attacked[attacked.eps == attacked.eps.max()]
    top = top.iloc[::-1]  # on ties name the later (iterative) attack
    best = top.loc[top[column].idxmin()]
    acc = float(best[column])
    ok = acc <= 0.1
    if mode == "white-box":
        detail = (f"white-box: the strongest attack ({best.attack}) at the largest ε = {best.eps:g} "
                  f"leaves {100 * acc:.1f} % accuracy" + ("" if ok else
                  "; a plain ensemble should be near 0 %: if this one is plain, ε is too small "
                  "or its gradients are masked"))
    else:
        detail = (f"black-box: the surrogate's own accuracy on its examples at the largest ε = "
                  f"{best.eps:g} is {100 * acc:.1f} % ({best.attack})" + ("" if ok else
                  "; the surrogate is barely fooled by its own examples, so the transfer numbers "
                  "say little"))
    return _check("largest eps", ok, detail)


# --------------------------------------------------------------------------- transferability
def transferability_matrix(ens, x, y, *, attack="pgd", eps, steps=50, step_size=None, restarts=1,
                           decay=0.01, seed=0, bounds=(0.0, 1.0), batch_size=None,
                           metric="accuracy") -> np.ndarray:
    """(M, M) matrix between members: row i = examples crafted on member i, column j = member j.

    metric "accuracy" (default): member j's ACCURACY on every example crafted on member i,
      so the diagonal is each member's white-box accuracy.
    metric "success_rate": as DVERGE's figures report it, the share of the examples member
      j classifies correctly when clean that the attack from member i makes it misclassify.
    With restarts, an example counts as correct only if every restart's example is.
    """
    if not isinstance(ens, Ensemble):
        raise ValueError(f"ens must be a parl_core.Ensemble, got {type(ens).__name__}")
    if not isinstance(eps, Real):
        raise ValueError(f"eps must be one number, got {eps!r}")
    if metric not in ("accuracy", "success_rate"):
        raise ValueError(f"metric must be 'accuracy' or 'success_rate', got {metric!r}")
    x, y = x.detach().cpu(), y.detach().cpu()
    cap = batch_size or MAX_ROWS
    m_n = len(ens.members)
    clean = _score(ens, x, y, cap)[1]  # (M, N)
    out = np.zeros((m_n, m_n))
    for i, member in enumerate(ens.members):
        adv = attack_restarts(attack, member, x, y, eps, steps, step_size, restarts, decay, seed,
                              bounds)  # (R, N, ...)
        r_n = adv.shape[0]
        _, mem = _score(ens, adv.reshape(-1, *x.shape[1:]), y.repeat(r_n), cap)
        correct = mem.view(m_n, r_n, -1).all(1)  # (M, N)
        if metric == "accuracy":
            out[i] = correct.double().mean(1).numpy()
        else:
            out[i] = ((clean & ~correct).sum(1).double() / clean.sum(1).clamp(min=1)).numpy()
    return out


# --------------------------------------------------------------------------- checkpoints + cache
def _resolve(path, surrogate, n_examples, seed, attacks, eps, steps, step_size, restarts, decay,
             early_stop, loss, batch_size) -> tuple[dict, Path]:
    """The settings that identify an evaluation and its cache file (no weights loaded)."""
    from .checkpoints import file_hash, read_metadata
    from .data import default_eps_grid
    meta, smeta = read_metadata(path), None
    if surrogate is not None:
        smeta = read_metadata(surrogate)
        if smeta.get("dataset") != meta.get("dataset") or \
                smeta["model"].get("num_classes") != meta["model"].get("num_classes"):
            raise ValueError(f"surrogate {surrogate} is for {smeta.get('dataset')} "
                             f"({smeta['model'].get('num_classes')} classes), the checkpoint for "
                             f"{meta.get('dataset')} ({meta['model'].get('num_classes')} classes)")
    if not isinstance(n_examples, int) or n_examples < 1:
        raise ValueError(f"n_examples must be an int >= 1, got {n_examples!r}")
    attacks, eps = _validate(attacks, default_eps_grid(meta["dataset"]) if eps is None else eps,
                             batch_size)
    key = {"checkpoint_hash": file_hash(path),
           "surrogate_hash": file_hash(surrogate) if surrogate is not None else None,
           "n_examples": n_examples, "seed": seed, "attacks": list(attacks),
           "eps": [float(e) for e in eps], "steps": steps, "step_size": step_size,
           "restarts": restarts, "decay": decay, "early_stop": early_stop, "loss": loss,
           "batch_size": batch_size or MAX_ROWS, "library_version": __version__,
           "cache_version": CACHE_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(path)
    return {**key, "meta": meta, "smeta": smeta}, path.parent / ".cache" / f"eval_{path.stem}_{digest}.json"


def evaluate_checkpoint(path, *, surrogate=None, n_examples=1000, seed=0, attacks=ATTACKS, eps=None,
                        steps=50, step_size=None, restarts=1, decay=0.01, early_stop=False,
                        loss="ensemble", batch_size=None, data_root=None, device=None, cache=True,
                        on_progress=None, cancel=None) -> RobustnessResult:
    """Evaluate the ensemble in checkpoint `path` (black-box from `surrogate`, a checkpoint
    path, when given) on `n_examples` test examples sampled with `seed`.

    eps None: the dataset's default grid. The result is cached as JSON in
    `<checkpoint folder>/.cache/`, keyed by the checkpoint's (and surrogate's) file hash
    and every setting; with cache=True a cached result is returned without computing.
    A cancelled evaluation is never cached.
    """
    args = (path, surrogate, n_examples, seed, attacks, eps, steps, step_size, restarts, decay,
            early_stop, loss, batch_size)
    key, file = _resolve(*args)
    if cache and file.is_file():
        return RobustnessResult.from_json(file)
    from .checkpoints import load_checkpoint
    from .data import load_dataset
    from .train import default_device
    device = torch.device(device) if device is not None else default_device()
    target, meta = load_checkpoint(path, device=device)
    sur = load_checkpoint(surrogate, device=device)[0] if surrogate is not None else None
    info = meta.get("dataset_info", {})
    test = load_dataset(meta["dataset"], "test", data_root,
                        **{k: info[k] for k in ("n_samples", "noise", "seed") if k in info})
    test = test.subset(n_examples, seed=seed)
    res = robustness_curve(target, test.images, test.labels, attacks=key["attacks"], eps=key["eps"],
                           surrogate=sur, steps=steps, step_size=step_size, restarts=restarts,
                           decay=decay, seed=seed, bounds=test.bounds, loss=loss,
                           early_stop=early_stop, batch_size=batch_size, on_progress=on_progress,
                           cancel=cancel)
    res.settings.update({k: v for k, v in key.items() if k not in ("meta", "smeta")})
    res.settings.update({"checkpoint": str(path), "surrogate": None if sur is None else str(surrogate),
                         "dataset": meta["dataset"], "method": meta.get("method"),
                         "surrogate_method": (key["smeta"] or {}).get("method")})
    if cache and not res.cancelled:
        try:
            _write_atomic(file, res.to_json())
        except OSError as e:  # a read-only folder: the result is still good, only not kept
            res.warnings.append(f"could not cache the result in {file.parent}: {e}")
    return res


def cached_evaluation(path, *, surrogate=None, n_examples=1000, seed=0, attacks=ATTACKS, eps=None,
                      steps=50, step_size=None, restarts=1, decay=0.01, early_stop=False,
                      loss="ensemble", batch_size=None, **_ignored) -> RobustnessResult | None:
    """The cached result of `evaluate_checkpoint` with these arguments, or None; never computes."""
    _, file = _resolve(path, surrogate, n_examples, seed, attacks, eps, steps, step_size, restarts,
                       decay, early_stop, loss, batch_size)
    return RobustnessResult.from_json(file) if file.is_file() else None


def _write_atomic(file: Path, text: str) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=file.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is an ordinary file
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
