"""Robustness evaluation: accuracy under attack over ε, white-box or black-box, with checks.

White-box: adversarial examples are crafted on the target itself. Black-box (the paper's
zero-knowledge adversary A_Z): crafted on a surrogate, scored on the target; several
targets share one crafting (`robustness_curve([a, b], ..., surrogate=s)`). PGD's restarts
combine by one rule everywhere (`restart_select`): white-box, an example counts as robust
only if the scored model classifies every restart's example correctly (DESIGN §3);
black-box, the attacker keeps the restart it prefers on the surrogate, since choosing by
the target would give a zero-knowledge adversary one target query per restart. Every
accuracy comes with its 95 % interval (Wilson).

Memory is bounded by design: examples are attacked in blocks of BLOCK, and each block's
(ε, restart) rows in passes sized from the model and the memory budget
(`parl_core.memory`). Block b's PGD starts are drawn with seed + 7919·b and restart r's
start from its own seeded generator, so results do not depend on the pass size: a batch
size is a memory knob, never part of a result's identity.

Each evaluation runs the sanity checks Carlini et al. (2019) ask of a robustness claim
(`parl_core.sanity`) and reports the failed ones as warnings a person reads.
"""
from __future__ import annotations

import math
import time
from numbers import Real

import pandas as pd
import torch

from . import __version__
from .attacks import (ALL_ATTACKS, ATTACKS, AttackCancelled, _spec, attack,  # noqa: F401
                      attack_restarts, eval_mode)
from .ensemble import Ensemble
from .memory import rows_per_pass
from .result import RobustnessResult, _pack, verdict_key  # noqa: F401  (re-exported)
from .sanity import run_checks
from .stats import Z95, wilson_interval  # noqa: F401  (re-exported)

__all__ = ["RobustnessResult", "robustness_curve", "transferability_matrix", "wilson_interval",
           "BLOCK", "RESTART_RULES", "resolve_restart_select"]

BLOCK = 100  # examples per attack block (fixes which PGD starts each example gets)


# --------------------------------------------------------------------------- helpers
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
    bad = [a for a in attacks if a not in ALL_ATTACKS]
    if not attacks or bad or len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks must be distinct names from {ALL_ATTACKS}, got {attacks!r}")
    if eps is None:
        raise ValueError("eps is required: a number or a list (see parl_core.default_eps_grid)")
    eps = [eps] if isinstance(eps, Real) else list(eps)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    return attacks, eps


def _passes(spec, n_block: int, rows: int):
    """[(e0, e1, r0, r1)]: the (ε, restart) ranges of one block's passes, each at most
    `rows` adversarial rows (at least one ε × one restart)."""
    e_n, r_n = len(spec.eps), spec.restarts
    per = max(1, rows // max(1, n_block))  # (ε, restart) combinations per pass
    if per >= e_n * r_n:
        return [(0, e_n, 0, r_n)]
    ge, gr = (per // r_n, r_n) if per >= r_n else (1, per)
    return [(e0, min(e_n, e0 + ge), r0, min(r_n, r0 + gr))
            for e0 in range(0, e_n, ge) for r0 in range(0, r_n, gr)]


def _crafted(spec, source, x, y, rows, prog=None, cancel=None):
    """Yield (block slice, e0, e1, r0, adv (e1−e0, r1−r0, nb, ...)) for every pass of the attack
    on `source`, in the order that makes results independent of `rows`."""
    for b, start in enumerate(range(0, len(x), BLOCK)):
        xb, yb = x[start:start + BLOCK], y[start:start + BLOCK]
        for e0, e1, r0, r1 in _passes(spec, len(xb), rows):
            before = prog.done if prog is not None else 0
            adv = attack_restarts(spec.name, source, xb, yb, spec.eps[e0:e1], spec.steps,
                                  spec.alpha[e0:e1], r1 - r0, spec.decay, spec.seed + 7919 * b,
                                  spec.bounds, loss=spec.loss, early_stop=spec.early_stop,
                                  on_step=prog.tick if prog is not None else None, cancel=cancel,
                                  first_restart=r0)
            if prog is not None:  # early-stopped rows count as done
                prog.done = before + len(xb) * (e1 - e0) * (r1 - r0) * spec.steps
            yield slice(start, start + len(xb)), e0, e1, r0, adv


def _steps_for(steps, name: str) -> int:
    """An attack's steps: `steps`, or `steps[name]` when a dict gives them per attack
    (e.g. Square's queries), else steps["default"] (50)."""
    if isinstance(steps, dict):
        return steps.get(name, steps.get("default", 50))
    return steps


# --------------------------------------------------------------------------- the curve
RESTART_RULES = ("source", "target", "mean")


def resolve_restart_select(rule, black_box: bool) -> str:
    """The restart rule to use: `rule`, or the mode's default ("source" black-box,
    "target" white-box)."""
    if rule is None:
        return "source" if black_box else "target"
    if rule not in RESTART_RULES:
        raise ValueError(f"restart_select must be one of {RESTART_RULES} or None, got {rule!r}")
    return rule


def robustness_curve(target, x, y, *, attacks=ATTACKS, eps=None, surrogate=None, steps=50,
                     step_size=None, restarts=1, decay=0.01, seed=0, bounds=(0.0, 1.0),
                     loss="ensemble", early_stop=False, batch_size=None, on_progress=None,
                     cancel=None, restart_select=None, convergence=False):
    """Accuracy of `target` under each attack at each ε -> RobustnessResult.

    target: Ensemble or nn.Module, or a list of them -> a list of results. surrogate: with
    one, the examples are crafted on it once and scored on every target (black-box
    transfer), else on each target (white-box). x (N, ...), y (N,): the evaluation
    examples. Attacks: any of `parl_core.attacks.ALL_ATTACKS` (the paper's four, APGD-CE,
    APGD-DLR, Square, MI-DI, "apgd-t": AutoAttack's targeted APGD, "pgd-vote": PGD on the
    vote loss). Attack parameters as in `parl_core.attack`; `steps` may be a dict per
    attack ({"square": 1000, "default": 50}); `restarts` applies to PGD, PGD-vote, APGD
    (APGD-T: one target each), Square and MI-DI.
    restart_select: how PGD's restarts combine into one verdict per example —
      "target": robust only if the scored model classifies every restart's example
        correctly (the worst case; default white-box);
      "source": the attacker keeps, per example, the restart it prefers on the model it
        attacks (fooled there first, then the highest loss), and only that one is scored —
        the zero-knowledge adversary A_Z of the paper (default black-box; in black-box
        mode "target" would let the attacker query the target once per restart);
      "mean": the share of restarts classified correctly, averaged (interval: normal
        approximation over the per-example shares).
    convergence: also run the opt-in "more steps" check (`parl_core.diagnostics`): PGD at
    the largest ε again with 4× the steps, on the same examples; its verdict joins `checks`.
    early_stop applies to white-box only. batch_size: at most this many adversarial rows
    per pass (default: sized from the model and the memory budget, `parl_core.memory`);
    it changes memory and speed, never the result. on_progress(dict) gets {"event":
    "start" | "progress" | "attack" | "end", "mode", "attack", "done", "total" (work
    units: rows × steps), "elapsed", "eta" (seconds)}; cancel (Event or callable) stops
    early with a partial table and `cancelled=True`.

    With more than one attack, "worst-case" rows give, per ε, the accuracy when each
    example faces the attack that fools it (the minimum over the suite, as AutoAttack
    reports; steps and restarts 0 there).
    table columns: attack ("clean" for the clean row, eps 0), eps, mode, n, correct, acc,
    ci_low, ci_high (95 % Wilson interval of the majority-vote accuracy), clean_acc,
    member_acc_0 .. member_acc_{M-1}, source_acc (accuracy of the attacked model: the
    surrogate's in black-box mode, on the clean examples in the clean row and on its own
    examples in the attack rows), steps, step_size, restarts.
    """
    many = isinstance(target, (list, tuple))
    targets = list(target) if many else [target]
    if not targets:
        raise ValueError("target: give at least one model")
    common = dict(attacks=attacks, eps=eps, steps=steps, step_size=step_size, restarts=restarts,
                  decay=decay, seed=seed, bounds=bounds, loss=loss, early_stop=early_stop,
                  batch_size=batch_size, on_progress=on_progress, cancel=cancel,
                  restart_select=restart_select, convergence=convergence)
    if surrogate is None and many:  # white-box: every target attacks itself
        return [robustness_curve(t, x, y, **common) for t in targets]
    out = _curve(targets, x, y, surrogate=surrogate, **common)
    return out if many else out[0]


def _curve(targets, x, y, *, attacks, eps, surrogate, steps, step_size, restarts, decay, seed,
           bounds, loss, early_stop, batch_size, on_progress, cancel, restart_select,
           convergence) -> list:
    if not isinstance(convergence, bool):
        raise ValueError(f"convergence must be True or False, got {convergence!r}")
    attacks, eps = _validate(attacks, eps, batch_size)
    black = surrogate is not None
    rule = resolve_restart_select(restart_select, black)
    notes = []
    if black and early_stop:
        notes.append("early_stop applies to white-box evaluation only; it was not used here "
                     "(the surrogate being fooled says little about the target).")
    kw = dict(steps=steps, step_size=step_size, restarts=restarts, decay=decay, bounds=bounds,
              loss=loss, early_stop=early_stop and not black)
    specs = {a: _spec(a, eps, seed=seed, **dict(kw, steps=_steps_for(steps, a)))
             for a in attacks}  # validates every parameter
    source, mode = (surrogate, "black-box") if black else (targets[0], "white-box")
    x, y = x.detach().cpu(), y.detach().cpu()
    n = len(x)
    rows = rows_per_pass(source, x[0], grad=True, cap=batch_size) if n else 1
    score_rows = [rows_per_pass(t, x[0], grad=False, cap=batch_size) if n else 1 for t in targets]
    clean = [_score(t, x, y, r) for t, r in zip(targets, score_rows)]
    clean_acc = [int(v.sum()) / n if n else float("nan") for v, _ in clean]
    src_clean = _score(source, x, y, rows)[0] if black else None
    tables = [[_row("clean", 0.0, mode, v, m, a, src_clean if black else v, 1, 0.0, 1)]
              for (v, m), a in zip(clean, clean_acc)]
    verdicts = [{verdict_key("clean", 0.0): _pack(v)} for v, _ in clean]
    scores = [{} for _ in targets]  # per target: ε -> [(vote, members, source) per attack]
    prog = _Progress(sum(n * len(s.eps) * s.restarts * s.steps for s in specs.values()),
                     on_progress, mode)
    cancelled = False
    for name in attacks:
        prog.attack = name
        try:
            rows_out = _one_attack(specs[name], targets, source, x, y, rows, score_rows, prog,
                                   cancel, mode, clean_acc, rule)
        except AttackCancelled:
            cancelled = True
            break
        for t, vd, sc, (r, per_eps) in zip(tables, verdicts, scores, rows_out):
            t += r
            for e, (v, m, src) in zip(specs[name].eps, per_eps):
                vd[verdict_key(name, e)] = _pack(v)
                sc.setdefault(float(e), []).append((v, m, src))
        prog.emit("attack")
    if len(attacks) > 1 and not cancelled:  # AutoAttack's report: per example, the worst attack
        for i, (t, vd, sc) in enumerate(zip(tables, verdicts, scores)):
            for e, per in sc.items():
                v, m, src = (_worst([p[j] for p in per]) for j in range(3))
                t.append(_row("worst-case", e, mode, v, m, clean_acc[i], src, 0, 0.0, 0))
                vd[verdict_key("worst-case", e)] = _pack(v)
    results = []
    for t, table, vd in zip(targets, tables, verdicts):
        df = pd.DataFrame(table)
        checks = [] if cancelled else run_checks(df, specs, kw, t, source, x, y, rows, mode)
        warnings = notes + [c["detail"] for c in checks if not c["ok"]]
        if cancelled:
            warnings.append("evaluation cancelled: the table holds only the attacks that finished.")
        settings = _settings(attacks, eps, mode, n, seed, kw, rows, t, surrogate)
        settings["restart_select"] = rule
        results.append(RobustnessResult(df, warnings, settings, checks, cancelled, vd))
    if convergence and not cancelled:
        from .diagnostics import add_convergence
        add_convergence(results, targets, x, y, surrogate, eps, _steps_for(steps, "pgd"), step_size,
                        kw, seed, rule, batch_size, cancel)
    prog.emit("end", cancelled=cancelled)
    return results


def _settings(attacks, eps, mode, n, seed, kw, rows, target, surrogate) -> dict:
    """Every setting of an evaluation, and the versions that produced it (rows per pass
    is recorded for the record; it does not change results)."""
    return {"attacks": list(attacks), "eps": [float(e) for e in eps], "mode": mode, "n": n,
            "seed": seed, **kw, "bounds": list(kw["bounds"]) if kw["bounds"] is not None else None,
            "rows_per_pass": rows, "block": BLOCK, "target_members": _members(target),
            "surrogate_members": _members(surrogate) if surrogate is not None else None,
            "device": str(_device(target)), "library_version": __version__,
            "torch_version": torch.__version__, **_attack_options(attacks)}


def _attack_options(attacks) -> dict:
    """Options an attack takes beside `attack`'s arguments, recorded only when it runs:
    MI-DI's transform ({"mi_di": {"prob", "ratio"}}, `parl_core.midi.options`)."""
    if "mi-di" not in attacks:
        return {}
    from .midi import current_options
    return {"mi_di": current_options()}


def _one_attack(spec, targets, source, x, y, rows, score_rows, prog, cancel, mode, clean_acc,
                rule):
    """One attack over every ε -> per target, (its table rows, per ε the per-example scores
    (vote, members, source)); restarts combined by `rule`."""
    e_n, r_n, n = len(spec.eps), spec.restarts, len(x)
    vote = [torch.zeros(e_n, r_n, n, dtype=torch.bool) for _ in targets]  # correct per restart
    mem = [torch.zeros(_members(t), e_n, r_n, n, dtype=torch.bool) for t in targets]
    src = torch.zeros(e_n, r_n, n, dtype=torch.bool)
    pick = torch.zeros(e_n, r_n, n)  # the attacker's preference among restarts (rule "source")
    for sl, e0, e1, r0, adv in _crafted(spec, source, x, y, rows, prog, cancel):
        shape = adv.shape[:3]  # (e, r, nb)
        rs = slice(r0, r0 + shape[1])
        flat, yr = adv.reshape(-1, *x.shape[1:]), y[sl].repeat(shape[0] * shape[1])
        for i, (t, r) in enumerate(zip(targets, score_rows)):
            v, m = _score(t, flat, yr, r)
            vote[i][e0:e1, rs, sl] = v.view(shape)
            mem[i][:, e0:e1, rs, sl] = m.view(len(m), *shape)
        if any(t is source for t in targets):
            src[e0:e1, rs, sl] = vote[targets.index(source)][e0:e1, rs, sl]
        else:
            src[e0:e1, rs, sl] = _score(source, flat, yr, rows)[0].view(shape)
        if rule == "source" and r_n > 1:
            pick[e0:e1, rs, sl] = _source_preference(source, flat, yr, spec.loss, rows).view(shape)
    choose = _chooser(rule, pick)
    src = choose(src)
    out = []
    for i in range(len(targets)):
        v, m = choose(vote[i]), choose(mem[i])
        out.append(([_row(spec.name, e, mode, v[k], m[:, k], clean_acc[i], src[k], spec.steps,
                          spec.alpha[k], r_n) for k, e in enumerate(spec.eps)],
                    [(v[k], m[:, k], src[k]) for k in range(e_n)]))
    return out


@torch.no_grad()
def _source_preference(source, x, y, loss, batch):
    """Per row: fooled on the source first, then the source's loss (what `attack` uses to
    pick among restarts) — everything the zero-knowledge attacker can see."""
    from .attacks import input_loss
    dev, out = _device(source), []
    with eval_mode(source):
        for i in range(0, len(x), batch):
            per, pred = input_loss(source, x[i:i + batch].to(dev), y[i:i + batch].to(dev), loss,
                                   need_pred=True)
            out.append((per.nan_to_num(posinf=1e30).clamp(max=1e30)
                        + (pred != y[i:i + batch].to(dev)).to(per.dtype) * 1e31).cpu())
    return torch.cat(out)


def _chooser(rule, pick):
    """Combine per-restart correctness (..., E, R, N) into per-example scores (..., E, N):
    "target": correct only if every restart is (the worst case for the scored model);
    "source": the restart the attacker prefers on the source (`pick`); "mean": the share
    of restarts classified correctly (a float score)."""
    if rule == "target":
        return lambda c: c.all(-2)
    if rule == "mean":
        return lambda c: c.float().mean(-2)
    best = pick.argmax(1)  # (E, N)

    def by_source(c):
        idx = best.view(*([1] * (c.dim() - 3)), best.shape[0], 1, best.shape[1])
        return c.gather(-2, idx.expand(*c.shape[:-2], 1, c.shape[-1])).squeeze(-2)
    return by_source


def _worst(scores: list) -> torch.Tensor:
    """Per example, the lowest score over attacks (bool: robust only if every attack fails)."""
    st = torch.stack(scores)
    return st.all(0) if st.dtype == torch.bool else st.min(0).values


def _interval(scores: torch.Tensor) -> tuple[float, float]:
    """95 % interval of a mean accuracy: Wilson for 0/1 scores, else the normal interval
    of the per-example scores (rule "mean"), clipped to [0, 1]."""
    n = len(scores)
    if scores.dtype == torch.bool or bool(((scores == 0) | (scores == 1)).all()):
        return wilson_interval(int(scores.sum()), n)
    s = scores.double()
    half = Z95 * float(s.std()) / math.sqrt(n) if n > 1 else 1.0
    m = float(s.mean())
    return max(0.0, m - half), min(1.0, m + half)


def _row(attack, eps, mode, vote, mem, clean_acc, src, steps, alpha, restarts) -> dict:
    n = len(vote)
    k = int(vote.sum()) if vote.dtype == torch.bool else float(vote.double().sum())
    frac = (lambda t: float(t.double().sum()) / n) if n else (lambda t: float("nan"))
    lo, hi = _interval(vote) if n else (0.0, 1.0)
    row = {"attack": attack, "eps": float(eps), "mode": mode, "n": n, "correct": k,
           "acc": frac(vote), "ci_low": lo, "ci_high": hi, "clean_acc": clean_acc}
    row.update({f"member_acc_{j}": frac(mem[j]) for j in range(len(mem))})
    row.update({"source_acc": frac(src), "steps": steps, "step_size": float(alpha),
                "restarts": restarts})
    return row


from .transfer import transferability_matrix  # noqa: E402,F401  (re-exported)
