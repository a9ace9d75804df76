"""Sentences about the Robustness page's masking checks and several surrogates, computed
from the results (pure functions, no Streamlit; `dashboard.findings` holds the others,
whose conventions these follow: the numbers, and plainly when a check fails or an
expected effect is absent)."""
from __future__ import annotations

from .findings import _fmt_list, eps_text

__all__ = ["check_line", "not_converged", "checks_headline", "white_black_text", "surrogate_finding"]


# --------------------------------------------------------------------------- masking checks
def check_line(chk: dict) -> str:
    """One check ({"check", "ok", "detail"}) as a line: a mark, its name, plainly whether it
    passes, and the library's sentence."""
    for k in ("check", "ok", "detail"):
        if not isinstance(chk, dict) or k not in chk:
            raise ValueError(f"chk must be a check dict with 'check', 'ok' and 'detail', got {chk!r}")
    if chk["ok"] and not_converged(chk):
        return (f":material/warning: **{chk['check']}** passes (more steps do not help the defender), "
                f"**but the attack has not converged** — {chk['detail']}")
    if chk["ok"]:
        return f":material/check_circle: **{chk['check']}** passes — {chk['detail']}"
    return f":material/warning: **{chk['check']}: fails** — {chk['detail']}"


def not_converged(chk: dict) -> bool:
    """Whether a passing "more steps" check (`parl_core.diagnostics.convergence_check`) found
    that the longer attack fools significantly more examples: the evaluation's steps had
    not converged, so its accuracies overstate robustness."""
    from parl_core.diagnostics import ALPHA
    return (chk.get("check") == "more steps" and "p_value" in chk
            and chk.get("only_steps", 0) > chk.get("only_more_steps", 0) and chk["p_value"] < ALPHA)


def checks_headline(checks) -> str:
    """'all 5 pass' or '2 of 5 fail', short for the sanity checks' title (the lines inside
    name them), with ', not converged' when the "more steps" check found the attack not
    converged."""
    checks = list(checks)
    if not checks:
        return "none recorded"
    bad = [c["check"] for c in checks if not c["ok"]]
    note = ", not converged" if any(map(not_converged, checks)) else ""
    return f"all {len(checks)} pass{note}" if not bad else f"{len(bad)} of {len(checks)} fail{note}"


def white_black_text(check: dict | None, target: str, surrogate: str | None,
                     missing: list | None = None) -> str:
    """The "white-box ≤ black-box" line of the sanity checks: the verdict when both results
    exist (check from `pc.white_below_black`), else which one is missing and how to get it."""
    if check is not None:
        return check_line({**check, "check": f"white-box ≤ black-box (black-box from {surrogate})"})
    if surrogate is None:
        return ("**white-box ≤ black-box** — not checked: this dataset has no second checkpoint to "
                f"serve as the surrogate of {target}.")
    missing = list(missing or [])
    if not missing:
        raise ValueError("missing must name the missing result(s) when check is None")
    how = {"white-box": "switch the adversary to white-box",
           "black-box": f"switch the adversary to black-box with the surrogate {surrogate}"}
    return (f"**white-box ≤ black-box** — not checked yet: no {' and no '.join(missing)} result of "
            f"{target} with these settings (examples, attacks, ε, steps, restarts) has been computed. "
            f"To see it, {' and '.join(how[m] for m in missing)} and run the evaluation; this check "
            "computes nothing itself.")


def surrogate_finding(table, kinds: dict, attacks, *, per255: bool = False, all_kinds=None,
                      warnings=()) -> str:
    """What attacking one target from several surrogates shows, from `SurrogateSuite.table()`
    (attack, eps, one accuracy column per surrogate — the first is the page's surrogate —
    then worst, ci_low, ci_high, weakest): each surrogate's mean accuracy over ε > 0 under
    the main attack (PGD if evaluated, else the last), the worst over surrogates, which
    surrogate is weakest (lowest mean; the library's per-row weakest counted), how far the
    page's surrogate alone overstates robustness at the largest ε — or plainly that the
    other surrogates do not lower it — and the surrogate kinds present and missing.
    kinds: surrogate -> its kinds (`parl_core.surrogates.surrogate_kinds`); all_kinds:
    the kinds a reviewer asks for (default `parl_core.surrogates.KINDS`)."""
    from parl_core.surrogates import KINDS
    all_kinds = KINDS if all_kinds is None else tuple(all_kinds)
    cols = list(table.columns)
    if not {"attack", "eps", "worst", "weakest"} <= set(cols):
        raise ValueError(f"table must be a SurrogateSuite.table() (attack, eps, surrogates..., worst, "
                         f"weakest), got columns {cols}")
    names = cols[cols.index("eps") + 1:cols.index("worst")]
    if len(names) < 2:
        raise ValueError(f"table must hold at least two surrogates, got {names}")
    attacks = list(attacks)
    main = "pgd" if "pgd" in attacks else attacks[-1]
    rows = table[(table.attack == main) & (table.eps > 0)].sort_values("eps")
    if rows.empty:
        return f"{main.upper()}: no ε > 0 to compare the surrogates at."
    mean = {s: float(rows[s].mean()) for s in names}
    worst = float(rows.worst.mean())
    weakest = min(names, key=lambda s: mean[s])
    times = int((rows.weakest == weakest).sum())
    first, top = names[0], rows.iloc[-1]
    text = (f"{main.upper()} from {len(names)} surrogates, mean accuracy over ε — "
            + ", ".join(f"{s} {100 * mean[s]:.1f} %" for s in names)
            + f"; the worst over surrogates (an example counts only if no surrogate fools the target) "
            f"{100 * worst:.1f} %. The weakest surrogate for this target is **{weakest}** (its examples "
            f"fool it most: lowest mean, weakest at {times} of {len(rows)} ε). ")
    gap = float(top[first]) - float(top.worst)
    at = eps_text(float(top.eps), per255)
    if gap > 1e-9:
        text += (f"At ε = {at} the worst case is {100 * float(top.worst):.1f} % against "
                 f"{100 * float(top[first]):.1f} % from {first} alone: **a single surrogate overstates "
                 f"robustness here by {100 * gap:.1f} points.**")
    else:
        text += (f"**The other surrogates do not lower the accuracy at ε = {at}: the worst case equals "
                 f"{first}'s {100 * float(top[first]):.1f} %.**")
    if kinds:
        text += " Kinds: " + "; ".join(f"{s}: {', '.join(k) if k else 'same seed and architecture, another method'}"
                                       for s, k in kinds.items()) + "."
        present = {k for ks in kinds.values() for k in ks}
        absent = [k for k in all_kinds if k not in present]
        if absent:
            text += (f" No surrogate of kind: {_fmt_list(absent)} — a transfer claim is only as strong as "
                     "its strongest surrogate (see parl_core.surrogates on picking surrogates).")
    for w in warnings:
        text += f" **{w}.**"
    return text
