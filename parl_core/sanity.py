"""The sanity checks Carlini et al. (2019) ask of a robustness claim, run on every
evaluation's table: ε = 0 reproduces clean accuracy, accuracy does not rise with ε,
iterative attacks beat FGSM (white-box), the strongest attack at the largest ε fools the
attacked model, and the attacked model's input gradients are not zero (masking).
Each check is {"check", "ok", "detail"}; `detail` is the sentence a person reads."""
from __future__ import annotations

import torch

from .attacks import attack_restarts, eval_mode, input_loss
from .stats import wilson_interval

__all__ = ["run_checks", "table_checks"]


def _zero_grad_share(model, x, y, loss: str, batch: int) -> float:
    """Share of examples whose input gradient of the attacked loss is exactly zero."""
    p = next(model.parameters(), None)
    dev, zero = (p.device if p is not None else torch.device("cpu")), 0
    with eval_mode(model), torch.enable_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch].to(dev).requires_grad_(True)
            per, _ = input_loss(model, xb, y[i:i + batch].to(dev), loss)
            (g,) = torch.autograd.grad(per.sum(), xb)
            zero += (g.flatten(1).abs().sum(1) == 0).sum().item()
    return zero / max(1, len(x))


def _check(name: str, ok: bool, detail: str) -> dict:
    return {"check": name, "ok": bool(ok), "detail": detail}


def run_checks(df, specs, kw, target, source, x, y, cap, mode) -> list:
    """The sanity checks of one evaluation (Carlini et al. 2019), as {"check", "ok", "detail"}."""
    checks = [_check_eps0(df, specs, kw, target, source, x, y, cap)] + table_checks(df, mode)
    share = _zero_grad_share(source, x, y, kw["loss"], cap)
    who = "target" if source is target else "surrogate"
    checks.append(_check("zero gradients", share <= 0.01,
                         f"{100 * share:.1f} % of the examples have an exactly zero input gradient "
                         f"on the attacked model ({who})" + ("" if share <= 0.01 else
                         ": gradient masking; gradient attacks understate its weakness")))
    return checks


def table_checks(df, mode: str) -> list:
    """The checks read off an evaluation's table alone (no model needed): accuracy does not
    rise with ε; white-box, iterative attacks beat FGSM; the strongest attack at the largest
    ε fools the attacked model; gradient-free Square is not stronger than the gradient
    attacks. `parl_core.per_attack` reruns them on a table merged from several evaluations."""
    attacked = df[df.attack != "clean"]
    checks = [_check_monotone(df)]
    if mode == "white-box":
        checks += [_check_iterative(attacked), _check_largest(attacked, "acc", "white-box")]
    else:
        checks.append(_check_largest(attacked, "source_acc", "black-box"))
    if "square" in set(attacked.attack) and set(attacked.attack) & GRADIENT_ATTACKS:
        checks.append(_check_gradient_free(attacked))
    return checks


GRADIENT_ATTACKS = {"fgsm", "bim", "mim", "pgd", "apgd-ce", "apgd-dlr", "mi-di", "pgd-vote",
                    "apgd-t"}


def _check_gradient_free(attacked) -> dict:
    """Gradient-free Square should not beat every gradient attack: if it does (beyond noise:
    its upper 95 % bound below their best), gradients are masked or the attacks too weak."""
    sq = attacked[attacked.attack == "square"].set_index("eps")
    grad = attacked[attacked.attack.isin(GRADIENT_ATTACKS)]
    beaten = []
    for e, g in grad.groupby("eps"):
        if e in sq.index and sq.loc[e, "ci_high"] < g.acc.min():
            beaten.append(f"ε {e:g}: square {sq.loc[e, 'acc']:.3f} < best gradient attack "
                          f"{g.acc.min():.3f} ({g.loc[g.acc.idxmin(), 'attack']})")
    return _check("gradient-free <= gradient", not beaten,
                  "the gradient-free attack (Square) is not stronger than the gradient attacks"
                  if not beaten else "the gradient-free Square attack beats every gradient attack "
                  "(gradient masking, or the gradient attacks need more steps): " + "; ".join(beaten))


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
