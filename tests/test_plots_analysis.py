"""Every analysis plot builder returns a figure with the expected traces for tiny inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import parl_core.plots as pp


def _cos3():
    v = np.array([[1.0, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 0, 1.0, 0]])
    return v @ v.T  # angles 53.13°, 90°, 90°


def test_gradient_maps_signed_shared_scale():
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(3, 4, 5))
    grads = rng.normal(size=(2, 3, 4, 5))
    grads[0, 0, 0, 0] = 1e3  # an outlier: clipped, not the colour range
    fig = pp.gradient_maps_figure(img, grads, ["A", "B"], clip_percentile=90)
    assert isinstance(fig, go.Figure)
    assert [t.type for t in fig.data] == ["image", "heatmap", "heatmap"]
    summed = grads.sum(1)
    r = np.percentile(np.abs(summed), 90)
    for t in fig.data[1:]:
        assert t.zmin == pytest.approx(-r) and t.zmax == pytest.approx(r) and t.zmid == 0
        assert np.abs(np.asarray(t.z)).max() <= r + 1e-12
    np.testing.assert_allclose(np.asarray(fig.data[2].z), summed[1].clip(-r, r))
    assert [t.showscale for t in fig.data[1:]] == [False, True]
    text = fig.layout.title.text
    assert "sum over channels" in text and "90th percentile" in text and "shared" in text


def test_gradient_maps_magnitude_per_map_grey_image():
    rng = np.random.default_rng(1)
    grads = rng.normal(size=(3, 1, 8, 8))
    fig = pp.gradient_maps_figure(rng.uniform(size=(1, 8, 8)), grads, ["a", "b", "c"],
                                  mode="magnitude", shared_scale=False)
    assert [t.type for t in fig.data] == ["heatmap"] * 4
    for t, g in zip(fig.data[1:], grads):
        assert t.zmin == 0 and t.zmax == pytest.approx(np.percentile(np.abs(g), 99))
    assert "L2 norm" in fig.layout.title.text and "per map" in fig.layout.title.text
    with pytest.raises(ValueError, match="mode"):
        pp.gradient_maps_figure(np.zeros((8, 8)), grads, ["a", "b", "c"], mode="abs")
    with pytest.raises(ValueError, match="names"):
        pp.gradient_maps_figure(np.zeros((8, 8)), grads, ["a"])


def test_angle_matrix_figure():
    fig = pp.angle_matrix_figure(_cos3(), ["p", "q", "r"])
    assert [t.type for t in fig.data] == ["heatmap"]
    z = np.asarray(fig.data[0].z)
    assert z[0, 1] == pytest.approx(53.13, abs=0.01) and z[0, 2] == pytest.approx(90)
    assert "53.1°" in fig.data[0].text[0][1]
    assert fig.data[0].zmin == 0 and fig.data[0].zmax == 180


def test_directions_3d_figure_writes_true_angles_and_exactness():
    for webgl in (False, True):
        fig = pp.directions_3d_figure(_cos3(), ["p", "q", "r"], webgl=webgl)
        rays = [t for t in fig.data if t.name in ("p", "q", "r")]
        assert [t.type for t in rays] == ["scatter3d" if webgl else "scatter"] * 3
        labels = next(t for t in fig.data if t.name == "true angles")
        assert list(labels.text) == ["53.1°", "90.0°", "90.0°"]
        assert "angles exact in 3-D" in fig.layout.title.text
        assert "p–q: 53.1°" in fig.layout.annotations[0].text
    v = np.random.default_rng(2).normal(size=(5, 20))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    fig5 = pp.directions_3d_figure(v @ v.T, list("abcde"))
    assert "off by up to" in fig5.layout.title.text


def test_directions_svg_frames_are_projections_of_the_true_directions():
    """Seen from the side (elevation 0), the views at azimuth 0 and 90 show (y, z) and
    (-x, z) of each ray tip: together they give the 3-D tips back, whose Gram matrix must
    be the cosine matrix, and every view draws the same rays (a rotation of one set)."""
    cos = _cos3()
    fig = pp.directions_3d_figure(cos, ["p", "q", "r"], views=4, elevation=0)
    go.Figure(fig.to_dict())  # every property valid (the builder skips plotly's validation)
    assert len(fig.frames) == 4 and [f.name for f in fig.frames] == ["0", "90", "180", "270"]
    assert len(fig.layout.sliders[0].steps) == 4
    rays = [i for i, t in enumerate(fig.data) if t.name in ("p", "q", "r")]

    def tips(frame):
        at = {i: d for i, d in zip(frame.traces, frame.data)}
        return np.array([[at[i].x[1], at[i].y[1]] for i in rays], dtype=float)

    side, front = tips(fig.frames[0]), tips(fig.frames[1])
    np.testing.assert_allclose(side[:, 1], front[:, 1], atol=1e-6)  # z is z from both sides
    p3 = np.stack([-front[:, 0], side[:, 0], side[:, 1]], 1)
    np.testing.assert_allclose(p3 @ p3.T, cos, atol=1e-5)
    for f in fig.frames:  # a unit ray never projects longer than 1
        assert np.all(np.hypot(*tips(f).T) <= 1 + 1e-6)
    with pytest.raises(ValueError, match="views"):
        pp.directions_3d_figure(cos, ["p", "q", "r"], views=0)
    with pytest.raises(ValueError, match="elevation"):
        pp.directions_3d_figure(cos, ["p", "q", "r"], elevation=120)


def test_directions_svg_handles_one_ray_and_a_zero_gradient():
    fig = pp.directions_3d_figure(np.ones((1, 1)), ["only"])
    assert len(fig.frames) == 36
    ortho = pp.directions_3d_figure(np.eye(3), list("abc"), views=4, elevation=0)  # any plane fits
    go.Figure(ortho.to_dict())
    assert all(np.isfinite(d.x).all() for f in ortho.frames for d in f.data[:3])
    zero = np.diag([1.0, 0.0])  # the second model's gradient is zero
    fig = pp.directions_3d_figure(zero, ["a", "b"])
    assert "zero gradient" in next(t for t in fig.data if t.name == "b").text[1]


def _dist(values):
    values = np.asarray(values, dtype=float)
    return {"all": values, "n": len(values), "gradient": "loss (cross-entropy)",
            "summary": {"all": {"mean": values.mean(), "q50": float(np.median(values))}}}


def test_cosine_histogram_figure():
    fig = pp.cosine_histogram_figure({"ENS_U": _dist([0.5, 0.6, 0.7]), "PARL": _dist([-0.1, 0.0])})
    assert [t.type for t in fig.data] == ["histogram", "histogram"]
    assert fig.data[0].name.startswith("ENS_U (mean 0.60") and fig.data[1].name.startswith("PARL")
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    with pytest.raises(ValueError):
        pp.cosine_histogram_figure({})


def test_cka_heatmap_figure():
    m = np.array([[1.0, 0.4, 0.2], [0.5, 0.9, 0.3]])
    fig = pp.cka_heatmap_figure(m, "pair", "full")
    (t,) = fig.data
    assert t.type == "heatmap" and t.zmin == 0 and t.zmax == 1 and t.texttemplate
    assert list(t.x) == [1, 2, 3] and list(t.y) == [1, 2]
    assert "Kornblith" in fig.layout.title.text


def _cka_result(vals, estimator="minibatch"):
    pairs = {}
    for k, (ij, d) in enumerate(zip([(0, 1), (0, 2), (1, 2)], vals)):
        d = np.asarray(d)
        pairs[ij] = {"matrix": np.diag(d), "diagonal": d, "overall": float(d.mean()),
                     "label": f"M{ij[0] + 1}–M{ij[1] + 1}"}
    return {"pairs": pairs, "overall": float(np.mean([p["overall"] for p in pairs.values()])),
            "estimator": estimator, "n": 10, "batch_size": 8, "members": 3}


def test_cka_curves_figure_one_result_and_several():
    r = _cka_result([[0.9, 0.8], [0.7, 0.6], [0.5, 0.5]])
    fig = pp.cka_curves_figure(r)
    assert [t.type for t in fig.data] == ["scatter"] * 3
    assert fig.data[0].name == "M1–M2 {0.850}"
    assert list(fig.data[0].x) == [1, 2]
    both = pp.cka_curves_figure({"ENS_U": r, "PARL": _cka_result([[0.3, 0.2]] * 3, "full")})
    assert len(both.data) == 6 and both.data[3].name == "PARL M1–M2 {0.250}"
    assert "Nguyen" in both.layout.title.text and "Kornblith" in both.layout.title.text


def _table(acc_by_attack, clean=0.95):
    rows = [("clean", 0.0, clean, clean - 0.02, clean + 0.02)]
    for attack, accs in acc_by_attack.items():
        rows += [(attack, eps, a, a - 0.05, a + 0.05) for eps, a in zip([0.1, 0.2], accs)]
    return pd.DataFrame(rows, columns=["attack", "eps", "acc", "ci_low", "ci_high"])


def test_accuracy_vs_eps_single_table_ci_band_and_clean_at_zero():
    fig = pp.accuracy_vs_eps_figure({"ENS_U": _table({"fgsm": [0.6, 0.4], "pgd": [0.3, 0.1]})})
    assert [t.type for t in fig.data] == ["scatter"] * 4  # (band, line) per attack
    band, line = fig.data[0], fig.data[1]
    assert list(line.x) == [0.0, 0.1, 0.2]
    np.testing.assert_allclose(line.y, [95, 60, 40])
    np.testing.assert_allclose(band.y, [97, 65, 45, 35, 55, 93])  # hi forward, lo backward
    assert band.fill == "toself" and not band.showlegend
    assert [a.text for a in fig.layout.annotations] == ["FGSM", "PGD"]
    assert "95 % CI" in fig.layout.title.text


def test_accuracy_vs_eps_seeds_give_mean_and_std_band_and_attack_choice():
    seeds = [_table({"fgsm": [0.6, 0.4]}), _table({"fgsm": [0.8, 0.2]})]
    fig = pp.accuracy_vs_eps_figure({"PARL": seeds, "ENS_U": _table({"fgsm": [0.1, 0.0]})},
                                    attacks=["fgsm"])
    assert len(fig.data) == 4 and fig.data[1].name == "PARL" and fig.data[3].name == "ENS_U"
    np.testing.assert_allclose(fig.data[1].y, [95, 70, 30])
    np.testing.assert_allclose(fig.data[0].y, [95, 80, 40, 20, 60, 95])  # mean ± std (std 10)
    assert "std over 2 seeds" in fig.layout.title.text
    with pytest.raises(ValueError, match="columns"):
        pp.accuracy_vs_eps_figure({"x": pd.DataFrame({"eps": [0.1]})})
