"""The guided lesson through AppTest: five steps on the shipped CIFAR-10 ensembles that
paint at once from the shipped results, their numbers equal to those results, the step in
the link, and captions that say so when the expected effect is absent (a run fed with a
reversed effect)."""
import json

import numpy as np
import pandas as pd
import pytest

import parl_core as pc
from conftest import REPO, open_page, rerun
from dashboard import findings, state
from test_app_cifar_folders import copy_digits

PAGE = "pages/lesson.py"
SHIPPED = all((REPO / "checkpoints" / f"cifar10_{n}.safetensors").is_file() for n in ("ens_u", "parl", "surrogate"))
cifar_only = pytest.mark.skipif(not SHIPPED, reason="the shipped CIFAR-10 checkpoints are absent")


def _open(step=None, **query):
    return open_page(PAGE, query={**({"step": str(step)} if step else {}), **query}, timeout=300)


def _md(at, start: str) -> str:
    return next(m.value for m in at.markdown if start in m.value)


def _header(at) -> str:
    return at.subheader[0].value


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return copy_digits(tmp_path_factory.mktemp("lesson_digits") / "checkpoints")


@pytest.fixture
def digits_env(digits_folder, monkeypatch):
    monkeypatch.setenv("PARL_CHECKPOINTS", str(digits_folder))
    monkeypatch.setenv("PARL_DEBUG", "1")
    monkeypatch.delenv("PARL_READONLY", raising=False)
    return digits_folder


# --------------------------------------------------------------------------- shipped CIFAR-10
@cifar_only
def test_train_step_numbers_are_the_checkpoints(app_env):
    at = _open()
    assert _header(at).startswith("1 · Train")
    meta = {n: pc.read_metadata(app_env / f"cifar10_{n}.safetensors") for n in ("ens_u", "parl")}
    text = _md(at, "Clean test accuracy")
    assert f"ENS_U (cifar10_ens_u): {meta['ens_u']['clean_acc']:.1%}" in text
    assert f"PARL (cifar10_parl): {meta['parl']['r_mean']:+.2f}" in text and "floor −1/(M−1) = -0.50" in text
    verdict = "point further apart than ENS_U's" if meta["parl"]["r_mean"] < meta["ens_u"]["r_mean"] - 0.02 \
        else "is not lower than ENS_U's"
    assert verdict in text
    assert len(at.get("plotly_chart")) == 2 and any("Playground" in p.proto.label for p in at.get("page_link"))


@cifar_only
def test_every_step_paints_at_once_from_the_shipped_results(app_env):
    """Steps 2-4 read the shipped cosine distributions, CKA and black-box curves: no button."""
    from dashboard import compute, persist
    for step, start in [(2, "2 · Compare gradients"), (3, "3 · Compare CKA"), (4, "4 · Attack"), (5, "5 · Explain")]:
        at = _open(step)
        assert _header(at).startswith(start)
        assert not [b for b in at.button if b.key not in ("ls_prev", "ls_next")], step
        assert at.get("plotly_chart"), step
    # the numbers are those of the shipped results
    at = _open(3)
    fp = compute._images_fingerprint("cifar10", 450)
    cka = {n: persist.load(("cka", (str(app_env / f"cifar10_{n}.safetensors"),
                                    pc.file_hash(app_env / f"cifar10_{n}.safetensors")), "cifar10", 450, 128,
                            "minibatch"), fp) for n in ("ens_u", "parl")}
    assert all(v is not None for v in cka.values())
    k7 = {n: findings.first_k_cka(v, 7) for n, v in cka.items()}
    text = _md(at, "Mean same-layer CKA")
    assert f"ENS_U (cifar10_ens_u): {k7['ens_u']:.2f} over the first 7 layers" in text
    assert ("are not less similar" in text) == (k7["parl"] >= k7["ens_u"] - findings.CLOSE)
    at = _open(4)
    text = _md(at, "PGD: PARL − ENS_U")
    assert "0.03 (≈ 7.6/255)" in text and findings.robustness_verdict(text) is not None


@cifar_only
def test_explain_step_lists_each_link_with_its_verdict(app_env):
    at = _open(5)
    table = at.dataframe[0].value
    assert list(table["step"]) == ["1 Train", "2 Gradients", "3 CKA", "4 Attack"]
    assert set(table["here"]) <= {"holds", "absent"}
    n_hold = int((table["here"] == "holds").sum())
    text = _md(at, "links hold on these checkpoints**")
    assert f"**{n_hold} of 4 links hold on these checkpoints**" in text
    fig = next(f for f in (json.loads(c.proto.spec) for c in at.get("plotly_chart"))
               if "R/K ↓" in str(f["layout"].get("annotations")))
    assert [a["text"] for a in fig["layout"]["annotations"]] == [
        f"{q}<br>{h}" for q, h in zip(["R/K ↓", "cosine ↓", "CKA ↓", "accuracy ↑"], table.here)]
    assert all(tr["x"] == ["ENS_U", "PARL"] for tr in fig["data"])
    absent = list(table.step[table.here == "absent"])
    assert (f"; absent: {', '.join(absent)}." in text) if absent else "absent" not in text
    glossary = _md(at, "**ε (epsilon)**")
    assert "7.6/255" in glossary and "−1/(M−1) (-0.50 for 3 members)" in glossary and "cifar10_surrogate" in glossary


# --------------------------------------------------------------------------- navigation
def test_step_from_the_link_next_previous_and_back_to_the_link(digits_env):
    at = _open(2)
    assert _header(at).startswith("2 · Compare gradients")
    assert "digits_ens_u" in at.caption[0].value and "digits_parl" in at.caption[0].value
    next(b for b in at.button if b.key == "ls_next").click()
    rerun(at)
    assert _header(at).startswith("3 · Compare CKA") and at.query_params["step"] in ("3", ["3"])
    next(b for b in at.button if b.key == "ls_prev").click()
    next_at = rerun(at)
    assert _header(next_at).startswith("2 · ")
    at.button_group(key="k_ls_step").set_value(1)
    rerun(at)
    assert _header(at).startswith("1 · Train") and "step" not in at.query_params  # the default is left out


def test_a_bad_step_in_the_link_is_ignored(digits_env):
    at = _open("9")
    assert _header(at).startswith("1 · Train")
    assert state.parse_int_in(1, 5)("4") == 4
    with pytest.raises(ValueError, match="from 1 to 5, got 9"):
        state.parse_int_in(1, 5)("9")


def test_missing_results_are_computed_on_request(digits_env):
    at = _open(3)
    assert not at.get("plotly_chart") and any(b.key == "ls_cka_go" for b in at.button)
    next(b for b in at.button if b.key == "ls_cka_go").click()
    rerun(at)
    assert len(at.get("plotly_chart")) == 2 and "Mean same-layer CKA" in _md(at, "Mean same-layer CKA")
    assert not any(b.key == "ls_cka_go" for b in at.button)


# --------------------------------------------------------------------------- reversed effect
def _dist(center):
    v = center + 0.02 * np.random.default_rng(0).standard_normal(30)
    return {"all": v, "n": 10, "cosines": {(0, 1): v[:10], (0, 2): v[10:20], (1, 2): v[20:]},
            "labels": ["M1–M2", "M1–M3", "M2–M3"], "summary": {"all": {"mean": float(v.mean())}}}


def _cka(value, layers=4):
    d = np.full(layers, value)
    m = np.full((layers, layers), 0.2) + np.diag(d - 0.2)
    return {"pairs": {p: {"matrix": m, "diagonal": d, "label": "", "overall": value} for p in [(0, 1), (0, 2), (1, 2)]},
            "overall": value, "estimator": "minibatch"}


def _eval(accs, n=200):
    eps = pc.default_eps_grid("digits")
    rows = [{"attack": "clean", "eps": 0.0, "acc": 0.9}] + [{"attack": "pgd", "eps": e, "acc": a} for e, a in zip(eps, accs)]
    for r in rows:
        r["n"] = n
        r["ci_low"], r["ci_high"] = pc.wilson_interval(round(r["acc"] * n), n)
    return pc.RobustnessResult(pd.DataFrame(rows), settings={"mode": "black-box", "n": n})


@pytest.fixture
def reversed_results(digits_env, monkeypatch):
    """PARL worse than ENS_U on every link: higher R/K, more aligned gradients, higher CKA,
    lower accuracy under the transferred attack."""
    from dashboard import compute, lesson
    fake = {"cosdist": {"digits_parl": _dist(0.6), "digits_ens_u": _dist(0.1)},
            "cka": {"digits_parl": _cka(0.9), "digits_ens_u": _cka(0.5)}}
    real = compute.stored

    def stored(key):
        name = key[1][0].rsplit("/", 1)[-1][:-12]
        return fake[key[0]][name] if key[0] in fake else real(key)
    monkeypatch.setattr(compute, "stored", stored)
    evals = {"digits_parl": _eval([0.5, 0.3, 0.1, 0.05, 0.02, 0.01]),
             "digits_ens_u": _eval([0.8, 0.7, 0.6, 0.5, 0.4, 0.3])}
    monkeypatch.setattr(pc, "cached_evaluation", lambda path, **kw: evals[path.rsplit("/", 1)[-1][:-12]])
    monkeypatch.setattr(lesson, "final_rk", lambda c: {lesson.label(c.ens_u): -0.3, lesson.label(c.parl): 0.2})
    return fake


def test_reversed_effect_is_said_at_every_step(reversed_results):
    at = _open(1)
    assert "**PARL's R/K is not lower than ENS_U's here (+0.50)" in _md(at, "Mean pairwise R/K")
    at = _open(2)
    assert "**PARL's members' gradients are not less aligned than ENS_U's here" in _md(at, "Median cosine")
    at = _open(3)
    assert "**PARL's members are not less similar than ENS_U's in the first 4 layers here (+0.40" in \
        _md(at, "Mean same-layer CKA")
    assert any("the expected effect is absent" in c.value for c in at.caption)
    at = _open(4)
    assert "**PARL is not more robust than ENS_U here.**" in _md(at, "PGD: PARL − ENS_U")
    at = _open(5)
    assert list(at.dataframe[0].value["here"]) == ["absent"] * 4
    text = _md(at, "links hold on these checkpoints**")
    assert "**0 of 4 links hold on these checkpoints**; absent: 1 Train, 2 Gradients, 3 CKA, 4 Attack." in text


def test_rk_finding_words():
    methods = {"PARL": "parl", "ENS_U": "ce_only"}
    less = findings.rk_finding({"ENS_U": 0.0, "PARL": -0.4}, methods, 3)
    assert "floor −1/(M−1) = -0.50 for 3 members" in less and "80% of the way" in less
    missing = findings.rk_finding({"ENS_U": None, "PARL": -0.4}, methods, 3)
    assert "ENS_U: not recorded" in missing and "**" not in missing
    with pytest.raises(ValueError, match="members must be an int >= 2"):
        findings.rk_finding({}, methods, 1)
