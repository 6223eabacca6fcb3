"""Histograms drawn as SVG markup for the pages a user opens first (Poison candidates, Explain).

Streamlit draws a plotly chart only after the browser has fetched and compiled plotly's code, a
4.7 MB script, on every page load: about a second on 2 cores, more than the rest of those pages
together. A histogram is a few dozen rectangles, so these pages send them as SVG (through
`st.markdown(..., unsafe_allow_html=True)`, which keeps SVG; `st.html` strips it), drawn by the
browser at once. Every bar carries a `<title>`, the browser's own tooltip, so hovering a bar still
says what it counts. Pure functions: values in, markup out.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FONT = "font-family:'Source Sans Pro',sans-serif;font-size:11px;fill:#31333f"
AXIS = "#c4c8d0"


@dataclass(frozen=True)
class Bars:
    """One series of a histogram: a count per bin."""

    name: str
    counts: Sequence[int]
    colour: str


@dataclass(frozen=True)
class Mark:
    """A vertical line at `x` with a label at its top."""

    x: float
    label: str
    colour: str
    dashed: bool = False


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def histogram_svg(
    edges: Sequence[float],
    series: Sequence[Bars],
    *,
    stacked: bool = True,
    marks: Sequence[Mark] = (),
    x_title: str = "",
    unit: str = "samples",
    title: str = "",
    width: int = 900,
    height: int = 200,
) -> str:
    """An SVG histogram `width` × `height` (viewBox units; it scales to its container's width):
    bins between `edges` (len = bins + 1), the series stacked or overlaid (each half transparent),
    vertical `marks`, a legend when there is more than one series, 3 y ticks and 5 x ticks."""
    edges = np.asarray(edges, dtype=float)
    if len(edges) < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError(f"histogram_svg needs increasing bin edges; got {edges.tolist()}")
    counts = np.asarray([s.counts for s in series], dtype=float).reshape(len(series), len(edges) - 1)
    left, right, top, bottom = 44, 10, 22 if (title or len(series) > 1) else 8, 32 if x_title else 18
    pw, ph = width - left - right, height - top - bottom
    peak = float((counts.sum(axis=0) if stacked else counts).max(initial=0)) or 1.0
    lo, hi = float(edges[0]), float(edges[-1])
    xs = lambda v: left + (float(v) - lo) / (hi - lo) * pw
    ys = lambda c: top + ph - float(c) / peak * ph
    esc = html.escape
    out = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'style="{FONT};display:block">'
    ]
    if title:
        out.append(f'<text x="{left}" y="14" style="font-weight:600">{esc(title)}</text>')
    base = np.zeros(len(edges) - 1)
    for s, row in zip(series, counts, strict=True):
        opacity = "" if stacked else ' fill-opacity="0.6"'
        for b, c in enumerate(row):
            if c <= 0:
                continue
            y0 = base[b] if stacked else 0.0
            x0, x1 = xs(edges[b]), xs(edges[b + 1])
            tip = f"{s.name}: {int(c):,} {unit}, {x_title or 'value'} {_fmt(edges[b])} to {_fmt(edges[b + 1])}"
            out.append(
                f'<rect x="{x0:.1f}" y="{ys(y0 + c):.1f}" width="{max(x1 - x0 - 0.5, 0.5):.1f}" '
                f'height="{ys(y0) - ys(y0 + c):.1f}" fill="{s.colour}"{opacity}><title>{esc(tip)}</title></rect>'
            )
        if stacked:
            base = base + row
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="{AXIS}"/>')
    for i, v in enumerate(np.linspace(lo, hi, 5)):  # the outer ticks stay inside the drawing
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(f'<text x="{xs(v):.1f}" y="{top + ph + 13}" text-anchor="{anchor}">{_fmt(v)}</text>')
    for c in (0, peak / 2, peak):
        label = f"{c:,.0f}" if peak >= 4 or c == 0 else f"{c:.1f}"
        out.append(f'<text x="{left - 6}" y="{ys(c) + 4:.1f}" text-anchor="end">{label}</text>')
    if x_title:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 3}" text-anchor="middle">{esc(x_title)}</text>')
    for m in marks:
        if lo <= m.x <= hi:
            dash = ' stroke-dasharray="5 3"' if m.dashed else ""
            x = xs(m.x)
            anchor = "end" if x > left + pw * 0.7 else "start"
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="{m.colour}"{dash}/>')
            out.append(
                f'<text x="{x + (-4 if anchor == "end" else 4):.1f}" y="{top + 10}" text-anchor="{anchor}" '
                f'style="fill:{m.colour}">{esc(m.label)}</text>'
            )
    if len(series) > 1:
        x = width - right
        for s in reversed(series):
            w = 12 + 6.2 * len(s.name)
            x -= w
            out.append(f'<rect x="{x:.1f}" y="5" width="9" height="9" fill="{s.colour}"/>')
            out.append(f'<text x="{x + 12:.1f}" y="13">{esc(s.name)}</text>')
    out.append("</svg>")
    return "".join(out)
