"""Projector-ready figures: `dashboard.ui.projector_fonts` raises every explicit font size
below the minimum (layout, annotations, axes, colour bars, trace text) and leaves larger
ones and the data alone."""
import plotly.graph_objects as go

from dashboard.ui import MIN_FONT_PX, TEMPLATE, projector_fonts


def _small_figure():
    fig = go.Figure(go.Heatmap(z=[[1, 2], [3, 4]], text=[["a", "b"], ["c", "d"]],
                               texttemplate="%{text}", textfont={"size": 8},
                               colorbar={"tickfont": {"size": 9}, "title": {"font": {"size": 10}}}))
    fig.update_layout(title={"text": "t", "font": {"size": 11}}, legend={"font": {"size": 20}},
                      xaxis={"tickfont": {"size": 7}})
    fig.add_annotation(text="note", font={"size": 9}, x=0, y=0)
    return fig


def test_every_small_font_is_raised_and_larger_ones_kept():
    fig = projector_fonts(_small_figure())
    assert fig.layout.title.font.size == MIN_FONT_PX
    assert fig.layout.xaxis.tickfont.size == MIN_FONT_PX
    assert fig.layout.annotations[0].font.size == MIN_FONT_PX
    assert fig.layout.legend.font.size == 20  # already large enough: untouched
    tr = fig.data[0]
    assert tr.textfont.size == MIN_FONT_PX
    assert tr.colorbar.tickfont.size == MIN_FONT_PX
    assert tr.colorbar.title.font.size == MIN_FONT_PX
    assert [list(r) for r in tr.z] == [[1, 2], [3, 4]] and [list(r) for r in tr.text] == [["a", "b"], ["c", "d"]]


def test_text_without_a_size_takes_the_template_minimum():
    assert TEMPLATE["layout"]["font"]["size"] == MIN_FONT_PX
    fig = projector_fonts(go.Figure(go.Scatter(x=[1], y=[2])))
    assert fig.layout.font.size is None  # inherits the template's size when drawn


def test_a_custom_minimum():
    fig = projector_fonts(_small_figure(), minimum=18)
    assert fig.layout.legend.font.size == 20 and fig.layout.title.font.size == 18
