"""The Robustness page's several surrogates and masking diagnostics (app layer: parl_core
evaluates and decides, `dashboard.findings` words it, this module looks up, runs, shows).

- Several surrogates: the active ensemble attacked black-box from the page's surrogate and
  from every surrogate under "Also attack from", each one ordinary evaluation (its cache
  entry is the one a single-surrogate evaluation with that surrogate has), combined with
  `pc.worst_over_surrogates` into a `pc.SurrogateSuite`: per-surrogate accuracies, the
  worst over surrogates per example, the weakest surrogate and the kinds present/missing.
  (`pc.transfer_suite` does the same from checkpoints, but writes the cache itself; the
  page goes through `dashboard.robust.lookup` / `evaluate` so that a read-only server
  keeps what it computes in memory.)
- Masking diagnostics: every result's own checks (`res.checks`, with the "more steps"
  check when the evaluation ran with convergence=True), and "white-box ≤ black-box"
  (`pc.white_below_black`) from two results of the active ensemble that already exist —
  looked up, never computed here.
"""
from __future__ import annotations

import streamlit as st

import parl_core as pc
import parl_core.plots as pp
from parl_core.diagnostics import FACTOR
from parl_core.surrogates import surrogate_kinds

from . import cache, compute, robust, ui
from . import findings_masking as findings

WORST = "worst over surrogates"


def with_surrogate(kw: dict, path) -> dict:
    """The evaluation keywords `kw` with another surrogate (None: white-box)."""
    if not isinstance(kw, dict):
        raise ValueError(f"kw must be a dict of evaluate_checkpoints keywords, got {type(kw).__name__}")
    return {**kw, "surrogate": str(path) if path is not None else None}


def lookup_suite(target_path, kw: dict, surrogates: dict) -> dict:
    """{surrogate name: the black-box result of `target_path` from it with settings `kw`,
    or None when not computed} (`robust.lookup`: the cache, or a read-only server's memory)."""
    if not isinstance(surrogates, dict) or not surrogates:
        raise ValueError(f"surrogates must map names to checkpoint paths, got {surrogates!r}")
    return {s: robust.lookup(target_path, with_surrogate(kw, p)) for s, p in surrogates.items()}


def suite_estimate(missing: dict, target_path, dataset: str, kw: dict) -> str:
    """The work and time still to do to attack the target from the `missing` surrogates
    ({name: path}): one crafting per surrogate, scored on the target and the surrogate."""
    a, e, s, r, n = kw["attacks"], kw["eps"], kw["steps"], kw["restarts"], kw["n_examples"]
    conv = bool(kw.get("convergence"))
    work = robust.attack_work(a, e, s, r, n, conv)
    rows = robust.adversarial_rows(a, e, r, n, conv)
    t = lambda p, what: compute.seconds_per_example(compute.ref(p), dataset, what)  # noqa: E731
    seconds = sum(work * t(p, "step") + rows * (t(p, "forward") + t(target_path, "forward"))
                  for p in missing.values())
    return (f"Not computed yet from {', '.join(missing)}: {len(missing) * work:,} attack steps (crafted on "
            f"each surrogate, scored on the target), **about {robust.duration(seconds)} on this machine**.")


def run_suite(target_path, kw: dict, missing: dict) -> bool:
    """Evaluate the target from each missing surrogate ({name: path}) with a progress bar."""
    bar = st.progress(0.0, "Starting…")
    for k, (name, path) in enumerate(missing.items()):
        def tick(ev, k=k, name=name):
            frac = (k + ev.get("done", 0) / max(1, ev.get("total") or 1)) / len(missing)
            bar.progress(min(1.0, frac), f"from {name}: {(ev.get('attack') or '').upper()}")
        try:
            robust.evaluate([target_path], with_surrogate(kw, path), on_progress=tick)
        except (ValueError, RuntimeError) as e:
            ui.show_error(f"The evaluation from the surrogate {name} failed", e, "Check the settings above.")
            return False
    return True


def build_suite(target: str, target_path, results: dict, surrogates: dict) -> pc.SurrogateSuite:
    """A SurrogateSuite from the per-surrogate results ({name: RobustnessResult}, the page's
    surrogate first) of one target, with the kinds of each surrogate from the metadata and
    a warning for a surrogate whose file is the target's own."""
    if set(results) != set(surrogates) or any(r is None for r in results.values()):
        raise ValueError(f"results must hold a result for every surrogate {list(surrogates)}, got "
                         f"{[s for s, r in results.items() if r is not None]}")
    worst = pc.worst_over_surrogates(list(results.values()), list(results))
    tmeta, thash = cache.metadata(target_path), cache.checkpoint_hash(target_path)
    kinds = {s: surrogate_kinds(tmeta, cache.metadata(p)) for s, p in surrogates.items()}
    warnings = [f"the surrogate {s} is the target itself: its examples are white-box, not a transfer"
                for s, p in surrogates.items() if cache.checkpoint_hash(p) == thash]
    return pc.SurrogateSuite(target, dict(results), worst, kinds, warnings)


def find_suite(target: str, paths: dict, names: list, kw: dict) -> tuple:
    """(suite, missing, error) for the target attacked from the surrogates `names` (the
    page's first): the SurrogateSuite when every result exists (looked up only), else
    None with the missing {name: path}; error: why existing results cannot be combined."""
    found = lookup_suite(paths[target], kw, {s: paths[s] for s in names})
    missing = {s: paths[s] for s, r in found.items() if r is None}
    if missing:
        return None, missing, None
    try:
        return build_suite(target, paths[target], found, {s: paths[s] for s in names}), {}, None
    except ValueError as e:
        return None, {}, e


def show_suite(target: str, paths: dict, found: tuple, kw: dict, dataset: str, p255: bool,
               prov: dict) -> None:
    """The 'Several surrogates' section from `find_suite`'s answer: an estimate and a Run
    button while some results are missing, else the table, the finding and the curves."""
    suite, missing, error = found
    st.subheader("Several surrogates")
    if error is not None:
        ui.show_error("The surrogates' results cannot be combined", error, "Run them again with the same settings.")
        return
    if missing:
        st.markdown(suite_estimate(missing, paths[target], dataset, kw))
        if st.button(f"Attack from {len(missing)} more surrogate{'s' * (len(missing) > 1)}", key="rb_suite_go",
                     icon=":material/play_arrow:") and run_suite(paths[target], kw, missing):
            st.rerun()
        return
    names = list(suite.per_surrogate)
    table = suite.table().rename(columns={"worst": WORST, "ci_low": "95 % low", "ci_high": "95 % high"})
    pct = [*names, WORST, "95 % low", "95 % high"]
    ui.show_table(table, f"Accuracy of {target} on examples crafted on each surrogate, and the worst over "
                  "surrogates per example (robust only if no surrogate's example fools it; 95 % interval); "
                  "'weakest': the surrogate whose examples alone fool it most at that row.",
                  key="rb_suite", prov=prov, title=f"surrogates_{target}", hide_index=True,
                  column_config={c: st.column_config.NumberColumn(c, format="percent") for c in pct})
    st.markdown(findings.surrogate_finding(suite.table(), suite.kinds, kw["attacks"], per255=p255,
                                           warnings=suite.warnings))
    curves = {s: r.table for s, r in suite.per_surrogate.items()}
    ui.show_figure(pp.accuracy_vs_eps_figure({**curves, WORST: suite.worst.table}, per255=p255),
                   f"Accuracy of {target} as ε grows, one line per surrogate and the worst over surrogates "
                   "(per example); bands are 95 % intervals.", key="rb_suite_curve", prov=prov,
                   title=f"surrogates_curve_{target}")


# --------------------------------------------------------------------------- diagnostics
def lookup_mode(target_path, kw: dict, surrogate_path):
    """The result of `target_path` with the page's settings but this adversary (surrogate
    path, or None for white-box), looked up only; with or without the convergence check
    (it adds a check, the table is the same). None when neither exists."""
    base = with_surrogate(kw, surrogate_path)
    for conv in (bool(kw.get("convergence")), not kw.get("convergence")):
        res = robust.lookup(target_path, {**{k: v for k, v in base.items() if k != "convergence"},
                                          **({"convergence": True} if conv else {})})
        if res is not None:
            return res
    return None


def white_black_lines(target: str, target_path, kw: dict, surrogate: str | None, surrogate_path,
                      suite=None) -> list:
    """The "white-box ≤ black-box" checks as [(check dict or None, line)]: the verdict from
    the two existing results (and, with several surrogates, against their worst), or
    (None, which result is missing)."""
    if surrogate is None:
        return [(None, findings.white_black_text(None, target, None))]
    white = lookup_mode(target_path, kw, None)
    black = lookup_mode(target_path, kw, surrogate_path)
    missing = [m for m, r in (("white-box", white), ("black-box", black)) if r is None]
    if missing:
        return [(None, findings.white_black_text(None, target, surrogate, missing))]
    lines = []
    for name, b in [(surrogate, black)] + ([(f"the worst of {len(suite.per_surrogate)} surrogates", suite.worst)]
                                           if suite is not None and suite.worst is not None else []):
        try:
            chk = pc.white_below_black(white, b)
            lines.append((chk, findings.white_black_text(chk, target, name)))
        except ValueError as e:
            lines.append((None, f"**white-box ≤ black-box** (black-box from {name}) — cannot be compared: {e}"))
    return lines


def show_checks(results: dict, extra: list, convergence: bool) -> None:
    """The sanity-checks expander: every result's checks (label -> RobustnessResult), the
    comparisons' (check or None, line) pairs (`white_black_lines`) and a note when the
    convergence check is off. Its title counts what fails; it opens when something does."""
    checks = [c for r in results.values() for c in getattr(r, "checks", [])] + \
        [c for c, _ in extra if c is not None]
    failing = any(not c["ok"] or findings.not_converged(c) for c in checks)
    head = findings.checks_headline(checks)
    with st.expander(f"Sanity checks — {head}", expanded=failing):
        for label, r in results.items():
            if len(results) > 1:
                st.markdown(f"**{label}**")
            for c in getattr(r, "checks", []):
                st.markdown(findings.check_line(c))
        for _, ln in extra:
            st.markdown(ln)
        if not convergence:
            st.caption(f"More steps (convergence): not run. Tick *Check convergence ({FACTOR}× steps)* "
                       f"above to rerun PGD at the largest ε with {FACTOR}× the steps on the same "
                       "examples (a separate evaluation, cached on its own).")
