"""Statistics of accuracies: Wilson intervals, the paired comparison of two ensembles on
the same examples (exact McNemar, paired interval) and the verdicts results keep for it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import parl_core as pc
from parl_core.stats import mcnemar_p, paired_difference

CKPT = Path(__file__).resolve().parents[1] / "checkpoints"


def test_mcnemar_exact_known_values():
    assert mcnemar_p(2, 8) == pytest.approx(112 / 1024)  # 2·(1 + 10 + 45)/2^10
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(0, 10) == pytest.approx(2 / 1024)


def test_mcnemar_matches_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    for a, b in [(3, 17), (40, 61), (12, 9), (0, 4)]:
        assert mcnemar_p(a, b) == pytest.approx(stats.binomtest(min(a, b), a + b).pvalue, rel=1e-9)


def test_paired_difference_on_known_counts():
    # 100 examples: 60 right for both, 10 only A, 25 only B, 5 neither
    a = np.array([1] * 60 + [1] * 10 + [0] * 25 + [0] * 5, bool)
    b = np.array([1] * 60 + [0] * 10 + [1] * 25 + [0] * 5, bool)
    d = paired_difference(a, b)
    assert (d["only_a"], d["only_b"], d["n"]) == (10, 25, 100)
    assert d["acc_a"] == 0.70 and d["acc_b"] == 0.85 and d["diff"] == pytest.approx(0.15)
    se = np.sqrt(35 - 15 ** 2 / 100) / 100
    assert d["diff_low"] == pytest.approx(0.15 - 1.959963984540054 * se)
    assert d["diff_low"] > 0 and d["p_value"] < 0.05
    with pytest.raises(ValueError, match="equal length"):
        paired_difference(a, b[:50])


@pytest.mark.usefixtures("one_torch_thread")
def test_results_keep_verdicts_for_a_paired_comparison(tmp_path):
    ens_u = pc.load_checkpoint(CKPT / "digits_ens_u.safetensors", device="cpu")[0]
    parl = pc.load_checkpoint(CKPT / "digits_parl.safetensors", device="cpu")[0]
    sur = pc.load_checkpoint(CKPT / "digits_surrogate.safetensors", device="cpu")[0]
    ds = pc.evaluation_subset(pc.load_dataset("digits", "test"), 90)
    a, b = pc.robustness_curve([ens_u, parl], ds.images, ds.labels, attacks=["fgsm"],
                               eps=[0.1, 0.2], surrogate=sur)
    clean = a.verdict("clean", 0.0)
    assert clean.dtype == bool and len(clean) == 90
    assert np.array_equal(clean, (ens_u.predict(ds.images) == ds.labels).numpy())
    back = pc.RobustnessResult.from_json(a.to_json())
    assert np.array_equal(back.verdict("fgsm", 0.2), a.verdict("fgsm", 0.2))
    cmp = pc.paired_comparison(a, b)
    assert list(cmp.attack) == ["clean", "fgsm", "fgsm"]
    row = cmp.iloc[2]
    t = b.table
    assert row.acc_b == pytest.approx(t[(t.attack == "fgsm") & (t.eps == 0.2)].acc.iloc[0])
    other = pc.robustness_curve(ens_u, ds.images[:50], ds.labels[:50], attacks=["fgsm"], eps=0.1)
    with pytest.raises(ValueError, match="same examples"):
        pc.paired_comparison(a, other)
