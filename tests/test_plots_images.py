"""Images drawn as people recognise them: colour in colour, enlarged without blurring,
square, perturbations magnified by a stated round factor; ε also in /255."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import parl_core.plots as pp


def test_colour_image_is_enlarged_blockwise_in_pixel_coordinates():
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(3, 32, 32))
    t = pp.image_trace(img)
    assert t.type == "image"
    z = np.asarray(t.z)
    assert z.shape == (160, 160, 3) and z.dtype == np.uint8  # 5 × 5 blocks: ≥ 160 px a side
    want = np.clip(img.transpose(1, 2, 0) * 255, 0, 255).round().astype(np.uint8)
    np.testing.assert_array_equal(z[::5, ::5], want)
    np.testing.assert_array_equal(z[4::5, 4::5], want)
    assert t.dx == pytest.approx(0.2) and t.x0 == pytest.approx(-0.4)  # pixel j spans j ± 0.5
    grey = pp.image_trace(rng.uniform(size=(1, 8, 8)))
    assert grey.type == "heatmap" and np.asarray(grey.z).shape == (8, 8)
    with pytest.raises(ValueError, match="factor"):
        pp.upscale(z, 0)


def test_gradient_maps_name_the_input_and_keep_pixels_square():
    rng = np.random.default_rng(1)
    fig = pp.gradient_maps_figure(rng.uniform(size=(3, 32, 32)), rng.normal(size=(2, 3, 32, 32)),
                                  ["A", "B"], input_label="input: cat")
    assert "input: cat" in [a.text for a in fig.layout.annotations]
    assert fig.layout.yaxis2.scaleanchor == "x2" and fig.layout.yaxis3.scaleanchor == "x3"
    go.Figure(fig.to_dict())  # a valid figure


@pytest.mark.parametrize("peak,factor", [(0.03, 10), (0.07, 5), (0.3, 1), (0.0, 1), (0.001, 500)])
def test_magnification_is_a_round_factor(peak, factor):
    assert pp.nice_magnification(peak) == factor


def test_adversarial_example_colour_square_and_magnified_as_stated():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.1, 0.9, size=(3, 32, 32))
    delta = rng.choice([-0.03, 0.03], size=x.shape)
    fig = pp.adversarial_example_figure(x, x + delta, labels=("voted cat", "voted dog"))
    assert [t.type for t in fig.data] == ["image"] * 3
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0] == "clean: voted cat" and titles[1] == "adversarial: voted dog"
    assert titles[2].startswith("perturbation × 10<br>") and "max |δ| 0.030 = 7." in titles[2]
    pert = np.asarray(fig.data[2].z)[::5, ::5].astype(float) / 255
    np.testing.assert_allclose(pert, 0.5 + 10 * delta.transpose(1, 2, 0), atol=1 / 255)
    for k in (1, 2, 3):  # every panel square, the perturbation included
        assert fig.layout[f"yaxis{k if k > 1 else ''}"].scaleanchor == ("x" if k == 1 else f"x{k}")


def test_adversarial_example_grey_uses_the_given_factor():
    x = np.full((1, 8, 8), 0.5)
    fig = pp.adversarial_example_figure(x, x + 0.1, magnify=4)
    assert [t.type for t in fig.data] == ["heatmap"] * 3
    np.testing.assert_allclose(np.asarray(fig.data[2].z), 0.4)
    assert fig.layout.annotations[2].text.startswith("perturbation × 4")
    assert fig.layout.yaxis3.scaleanchor == "x3"


def test_eps_in_255_units_on_request():
    df = pd.DataFrame({"attack": ["clean", "pgd", "pgd"], "eps": [0.0, 0.01, 0.03], "acc": [0.6, 0.4, 0.1],
                       "ci_low": [0.5, 0.3, 0.05], "ci_high": [0.7, 0.5, 0.2]})
    fig = pp.accuracy_vs_eps_figure({"A": df}, per255=True)
    assert list(fig.layout.xaxis.ticktext) == ["0", "0.01<br>2.6/255", "0.03<br>7.6/255"]
    assert "/255" in fig.data[1].hovertemplate
    plain = pp.accuracy_vs_eps_figure({"A": df})
    assert plain.layout.xaxis.ticktext is None and "/255" not in plain.data[1].hovertemplate
    title = pp.transfer_matrix_figure(np.eye(2), eps=0.03, per255=True).layout.title.text
    assert "ε = 0.03 (≈ 7.6/255)" in title
