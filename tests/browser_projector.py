"""Projector checks for the browser tests: text cut off by its box, and figure text
smaller than a projector can show. Helpers only (no tests here)."""
from __future__ import annotations

SIZES = [(1600, 1000), (1024, 768)]
MIN_FIGURE_PX = 14

# Elements whose text is cut: narrower than their content, with overflow hidden or an
# ellipsis (how Streamlit truncates a button label or a select box). Hidden elements and
# scroll containers (tables, code) are not "clipped"; one pixel of rounding is allowed.
_TRUNCATED_JS = """(root) => {
  const out = [];
  const scope = root ? document.querySelector(root) : document.body;
  for (const el of scope.querySelectorAll('*')) {
    if (!el.offsetParent || el.closest('[data-testid="stDataFrame"], pre, .js-plotly-plot, canvas')) continue;
    const cs = getComputedStyle(el);
    const cuts = cs.textOverflow === 'ellipsis' || cs.overflowX === 'hidden' || cs.overflow === 'hidden';
    if (!cuts || cs.overflowX === 'auto' || cs.overflowX === 'scroll') continue;
    const text = (el.innerText || '').trim();
    if (!text || el.children.length > 3) continue;
    if (el.scrollWidth > el.clientWidth + 1) out.push(text.slice(0, 60));
  }
  return out;
}"""

# Every text of every plotly figure on the page, with its rendered font size.
_FIGURE_TEXT_JS = """() => {
  const out = [];
  for (const t of document.querySelectorAll('.js-plotly-plot svg text')) {
    const text = (t.textContent || '').trim();
    if (!text) continue;
    out.push([text.slice(0, 40), parseFloat(getComputedStyle(t).fontSize)]);
  }
  return out;
}"""


def truncated_texts(page, root: str | None = '[data-testid="stMain"]') -> list[str]:
    """Texts in `root` (CSS selector; None: the whole page) cut off by their box."""
    return page.evaluate(_TRUNCATED_JS, root)


def small_figure_texts(page, minimum: float = MIN_FIGURE_PX) -> list:
    """(text, px) of plotly figure texts smaller than `minimum` pixels."""
    return [(t, px) for t, px in page.evaluate(_FIGURE_TEXT_JS) if px < minimum - 0.01]


def buttons_fit(page, labels) -> dict:
    """{label: whether its button shows the whole label} for buttons named `labels`."""
    return page.evaluate("""(labels) => Object.fromEntries(labels.map(l => {
      const b = [...document.querySelectorAll('button')].find(b => b.innerText.trim().endsWith(l));
      if (!b) return [l, false];
      const label = [...b.querySelectorAll('p, div, span')].find(e => e.innerText.trim() === l) || b;
      return [l, label.scrollWidth <= label.clientWidth + 1 && b.scrollWidth <= b.clientWidth + 1];
    }))""", list(labels))
