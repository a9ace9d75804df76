"""Two masking diagnostics that compare evaluations rather than read one table
(`parl_core.sanity` holds the per-table checks):

- "more steps": PGD at the largest ε rerun with `factor`× (default 4) the steps, on the
  same examples, the same starts and the same step size. More steps never help the
  defender: the check fails when the longer attack leaves significantly *more* examples
  robust — counted per example, McNemar-style: b = robust after factor·N steps but not
  after N, c = robust after N but not after factor·N; it fails when b > c and the exact
  two-sided McNemar p < alpha. Opt-in: `robustness_curve(..., convergence=True)`,
  `evaluate_checkpoints(..., convergence=True)`, the CLI's `evaluate --convergence`, or
  `step_convergence` by hand. When the longer attack lowers accuracy significantly, the
  detail says so: the N-step numbers then overstate robustness (not converged).
- "white-box <= black-box": a white-box result of a target and a black-box result of the
  same target (`white_below_black`) — an attacker who sees the target's gradients
  should do at least as well as one who transfers from a surrogate, at every ε.

Each check is {"check", "ok", "detail", ...numbers}, as `parl_core.sanity`'s are.
"""
from __future__ import annotations

import numpy as np

from .stats import mcnemar_p

__all__ = ["step_convergence", "convergence_check", "white_below_black", "FACTOR", "ALPHA"]

FACTOR = 4    # the longer run's steps over the evaluation's
ALPHA = 0.05  # significance of a per-example imbalance


def _check_alpha(alpha):
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")


def convergence_check(at_n, at_more, *, steps: int, more_steps: int, eps: float,
                      alpha: float = ALPHA, note: str = "") -> dict:
    """The "more steps" check from per-example verdicts (bool arrays, same examples) of PGD
    after `steps` (at_n) and `more_steps` (at_more) steps at ε `eps`."""
    _check_alpha(alpha)
    a, b = np.asarray(at_n, bool), np.asarray(at_more, bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"at_n and at_more must be 1-D verdicts of equal, non-zero length, got "
                         f"{a.shape} and {b.shape}")
    only_more, only_n = int((b & ~a).sum()), int((a & ~b).sum())
    p = mcnemar_p(only_n, only_more)
    ok = not (only_more > only_n and p < alpha)
    acc_n, acc_more = float(a.mean()), float(b.mean())
    detail = (f"PGD at ε = {eps:g}: {100 * acc_n:.1f} % after {steps} steps, {100 * acc_more:.1f} % "
              f"after {more_steps} (examples robust only after {more_steps} steps: {only_more}, only "
              f"after {steps}: {only_n}; McNemar p = {p:.3g})")
    if not ok:
        detail += (": more steps help the defender beyond noise, so the attack does not converge "
                   "(gradient masking or a noisy loss surface); the table understates the attack")
    elif only_n > only_more and p < alpha:
        detail += (f": {more_steps} steps fool significantly more examples, so {steps} steps had "
                   "not converged and the table overstates robustness")
    else:
        detail += ": more steps do not help the defender"
    return {"check": "more steps", "ok": ok, "detail": detail + note, "eps": float(eps),
            "steps": int(steps), "more_steps": int(more_steps), "acc_steps": acc_n,
            "acc_more_steps": acc_more, "only_more_steps": only_more, "only_steps": only_n,
            "p_value": p}


def step_convergence(target, x, y, *, eps, steps=50, factor: int = FACTOR, surrogate=None,
                     step_size=None, restarts=1, seed=0, bounds=(0.0, 1.0), loss="ensemble",
                     early_stop=False, restart_select=None, batch_size=None,
                     alpha: float = ALPHA, at_steps=None, cancel=None):
    """The "more steps" check of `target` (a model or a list of them -> a list of checks):
    PGD at ε `eps` (a number: the evaluation's largest) after `steps` and `factor`·steps
    steps, white-box or from `surrogate` (as `robustness_curve`, same seed, restarts,
    step size — ε/5 unless given — and restart rule; rule "mean" keeps no per-example
    verdicts, so the mode's default rule is used and the detail says so).
    at_steps: per target, the verdicts after `steps` steps when already known (an
    evaluation's PGD row with these settings), else they are computed.
    Returns None for a target when `cancel` stopped it."""
    from .evaluate import resolve_restart_select, robustness_curve
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
        raise ValueError(f"factor must be an int >= 2, got {factor!r}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise ValueError(f"eps must be one number (the largest ε), got {eps!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    _check_alpha(alpha)
    many = isinstance(target, (list, tuple))
    targets = list(target) if many else [target]
    rule = resolve_restart_select(restart_select, surrogate is not None)
    note = ""
    if rule == "mean":
        rule = resolve_restart_select(None, surrogate is not None)
        note = f" (restart rule {rule!r}: 'mean' keeps no per-example verdicts)"
    kw = dict(attacks=["pgd"], eps=[float(eps)], surrogate=surrogate, step_size=step_size,
              restarts=restarts, seed=seed, bounds=bounds, loss=loss, early_stop=early_stop,
              restart_select=rule,
              batch_size=batch_size, cancel=cancel)
    known = list(at_steps) if at_steps is not None else [None] * len(targets)
    if len(known) != len(targets):
        raise ValueError(f"at_steps must give one verdict array per target ({len(targets)}), "
                         f"got {len(known)}")
    runs = {}
    for s in ([steps] if any(k is None for k in known) else []) + [factor * steps]:
        res = robustness_curve(targets, x, y, steps=s, **kw)
        runs[s] = res if isinstance(res, list) else [res]
    out = []
    for i, k in enumerate(known):
        if any(runs[s][i].cancelled for s in runs):
            out.append(None)
            continue
        at_n = k if k is not None else runs[steps][i].verdict("pgd", eps)
        out.append(convergence_check(at_n, runs[factor * steps][i].verdict("pgd", eps), steps=steps,
                                     more_steps=factor * steps, eps=float(eps), alpha=alpha,
                                     note=note))
    return out if many else out[0]


def add_convergence(results, targets, x, y, surrogate, eps, n_steps, step_size, kw, seed, rule,
                    batch_size, cancel) -> None:
    """`robustness_curve(..., convergence=True)`: the "more steps" check (`step_convergence`)
    at the largest ε, added to every result's checks (and warnings when it fails); the
    evaluation's own PGD verdicts serve as the N-step run when it has them."""
    e_max = max(eps)
    size = step_size[eps.index(e_max)] if isinstance(step_size, (list, tuple)) else step_size
    known = [r.verdict("pgd", e_max) for r in results]
    checks = step_convergence(targets, x, y, eps=e_max, steps=n_steps, surrogate=surrogate,
                              step_size=size, restarts=kw["restarts"], seed=seed,
                              bounds=kw["bounds"], loss=kw["loss"], early_stop=kw["early_stop"],
                              restart_select=rule, batch_size=batch_size, cancel=cancel,
                              at_steps=None if any(k is None for k in known) else known)
    for r, c in zip(results, checks):
        r.settings.update(convergence=True, convergence_factor=FACTOR)
        if c is None:
            r.cancelled = True
            r.warnings.append("evaluation cancelled during the 'more steps' check.")
            continue
        r.checks.append(c)
        if not c["ok"]:
            r.warnings.append(c["detail"])


# --------------------------------------------------------------------------- white vs black
def _same_examples(a, b, names):
    na, nb = int(a.table.n.iloc[0]), int(b.table.n.iloc[0])
    ia, ib = a.settings.get("indices"), b.settings.get("indices")
    if na != nb or (ia is not None and ib is not None and ia != ib):
        raise ValueError(f"{names[0]} and {names[1]} must be evaluations on the same examples, got "
                         f"n = {na} and n = {nb}" + (" with different indices" if na == nb else ""))
    ha, hb = a.settings.get("checkpoint_hash"), b.settings.get("checkpoint_hash")
    if ha is not None and hb is not None and ha != hb:
        raise ValueError(f"{names[0]} and {names[1]} must be evaluations of the same target, got "
                         f"checkpoints {a.settings.get('checkpoint')} and {b.settings.get('checkpoint')}")


def white_below_black(white, black, *, alpha: float = ALPHA) -> dict:
    """The "white-box <= black-box" check from two RobustnessResults of one target on the
    same examples: at every (attack, ε) row both have (ε > 0; the "worst-case" rows too),
    the white-box accuracy must not exceed the black-box one beyond noise — with both
    rows' per-example verdicts, the check fails when significantly more examples are
    robust white-box but fooled black-box than the reverse (exact McNemar p < alpha);
    without verdicts (restart rule "mean"), when the white-box accuracy lies above the
    black-box row's 95 % interval."""
    from .result import RobustnessResult
    _check_alpha(alpha)
    for name, r, mode in (("white", white, "white-box"), ("black", black, "black-box")):
        if not isinstance(r, RobustnessResult):
            raise ValueError(f"{name} must be a RobustnessResult, got {type(r).__name__}")
        if r.settings.get("mode", mode) != mode:
            raise ValueError(f"{name} must be a {mode} result, got mode {r.settings.get('mode')!r}")
    _same_examples(white, black, ("white", "black"))
    bt = black.table.set_index(["attack", "eps"])
    pairs = [(r.attack, r.eps) for r in white.table.itertuples()
             if r.attack != "clean" and r.eps > 0 and (r.attack, r.eps) in bt.index]
    if not pairs:
        raise ValueError("white and black share no (attack, ε > 0) row to compare")
    wt, bad = white.table.set_index(["attack", "eps"]), []
    for a, e in pairs:
        w_acc, b_acc = float(wt.loc[(a, e), "acc"]), float(bt.loc[(a, e), "acc"])
        vw, vb = white.verdict(a, e), black.verdict(a, e)
        if vw is not None and vb is not None:
            only_w, only_b = int((vw & ~vb).sum()), int((vb & ~vw).sum())
            p = mcnemar_p(only_w, only_b)
            if only_w > only_b and p < alpha:
                bad.append(f"{a} ε {e:g}: white-box {w_acc:.3f} > black-box {b_acc:.3f} "
                           f"({only_w} vs {only_b} examples, p = {p:.2g})")
        elif w_acc > float(bt.loc[(a, e), "ci_high"]):
            bad.append(f"{a} ε {e:g}: white-box {w_acc:.3f} > black-box {b_acc:.3f} (above its interval)")
    ok = not bad
    detail = (f"white-box accuracy is not above black-box at any of {len(pairs)} shared rows"
              if ok else "white-box accuracy above black-box beyond noise (the target's own gradients "
              "mislead the attack: gradient masking): " + "; ".join(bad))
    return {"check": "white-box <= black-box", "ok": ok, "detail": detail, "rows": len(pairs)}
