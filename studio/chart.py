"""The loss chart as inline SVG: one line per run, drawn whole on every update.

Gradio's LinePlot keeps the colour scale of the series it was first given, so a run added for comparison
would not be drawn; an SVG written from the data each time has no such state.
"""
from __future__ import annotations

import html
import math

PALETTE = ("#4f46e5", "#f97316", "#16a34a", "#dc2626", "#0891b2", "#9333ea", "#ca8a04", "#64748b")
W, H = 640, 300  # viewBox; the SVG scales to its box
LEFT, RIGHT, TOP, BOTTOM = 52, 16, 34, 44


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round numbers covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if step * m >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.1e}"


def line_chart(series: dict[str, list[tuple[float, float]]], *, title: str, x_title: str, y_title: str) -> str:
    """An SVG chart of ``{name: [(x, y), ...]}``; a placeholder line when there is nothing to draw."""
    points = [p for pts in series.values() for p in pts]
    head = (f'<svg class="studio-chart" viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg" role="img" '
            f'aria-label="{html.escape(title)}" style="width:100%;height:auto;font-family:inherit">'
            f'<text x="{LEFT}" y="20" font-size="14" font-weight="600" '
            f'fill="currentColor">{html.escape(title)}</text>')
    if not points:
        return head + (f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" font-size="13" fill="#64748b">'
                       "no points yet: the loss appears here as the training logs it</text></svg>")
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    pad = (y_hi - y_lo) * 0.05 or 0.5
    xs, ys = _ticks(min(x_lo, 0), x_hi), _ticks(y_lo - pad, y_hi + pad)
    x0, x1, y0, y1 = xs[0], max(xs[-1], x_hi), min(ys[0], y_lo), max(ys[-1], y_hi)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def sy(y: float) -> float:
        return H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM)

    parts = [head]
    for t in xs:
        parts.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#e2e8f0"/>'
                     f'<text x="{sx(t):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle" font-size="11" '
                     f'fill="#64748b">{_label(t)}</text>')
    for t in ys:
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e2e8f0"/>'
                     f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#64748b">{_label(t)}</text>')
    parts.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 8}" text-anchor="middle" font-size="12" '
                 f'fill="#475569">{html.escape(x_title)}</text>'
                 f'<text transform="translate(14 {(TOP + H - BOTTOM) / 2}) rotate(-90)" text-anchor="middle" '
                 f'font-size="12" fill="#475569">{html.escape(y_title)}</text>')
    legend_x = W - RIGHT - sum(22 + 7 * len(name) for name in series)  # right-aligned, beside the title
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        if pts:
            d = "M" + " L".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(pts))
            parts.append(f'<path class="loss-line" data-run="{html.escape(name)}" d="{d}" fill="none" '
                         f'stroke="{color}" stroke-width="2" stroke-linejoin="round"/>')
        parts.append(f'<rect x="{legend_x}" y="11" width="10" height="10" rx="2" fill="{color}"/>'
                     f'<text x="{legend_x + 14}" y="20" font-size="11" fill="#334155">{html.escape(name)}</text>')
        legend_x += 22 + 7 * len(name)
    return "".join(parts) + "</svg>"
