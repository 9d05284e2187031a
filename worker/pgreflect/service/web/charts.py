"""Charts as inline SVG, drawn on the server from the analyst views' rows (no script, no build step): a
reliability diagram, lines over days, and horizontal bars. Labels are escaped; sizes are fixed so that the pages
read at a glance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

W, H, PAD = 360, 260, 36
COLORS = ("#2563eb", "#d97706", "#059669", "#9333ea")


def _frame(title: str, body: str, width: int = W, height: int = H) -> Markup:
    return Markup(f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
                  f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
                  f'<title>{escape(title)}</title>{body}</svg>')


def _axes(width: int = W, height: int = H, top: float = 12) -> str:
    x0, y0, x1, y1 = PAD, height - PAD, width - 12, top
    ticks = "".join(f'<line x1="{x0}" x2="{x1}" y1="{y0 - (y0 - y1) * t}" y2="{y0 - (y0 - y1) * t}" stroke="#eee"/>'
                    f'<text x="{x0 - 4}" y="{y0 - (y0 - y1) * t + 4}" text-anchor="end" font-size="10">{t:.1f}</text>'
                    for t in (0, 0.25, 0.5, 0.75, 1.0))
    return ticks + f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#444"/>' \
                   f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#444"/>'


def reliability(rows: Sequence[dict[str, Any]]) -> Markup:
    """Accuracy per confidence bin (bars, with each bin's count) against the diagonal a calibrated model follows."""
    x0, y0, x1, y1 = PAD, H - PAD, W - 12, 12
    sx, sy = (x1 - x0), (y0 - y1)
    parts = [_axes(), f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#999" stroke-dasharray="4 3"/>']
    for r in rows:
        left, right = x0 + sx * float(r["bin_low"]), x0 + sx * float(r["bin_high"])
        top = y0 - sy * float(r["accuracy"])
        tip = escape("{:.1f}-{:.1f}: accuracy {:.3f}, n {}".format(
            float(r["bin_low"]), float(r["bin_high"]), float(r["accuracy"]), r["n"]))
        parts.append(f'<rect x="{left + 1:.1f}" y="{top:.1f}" width="{right - left - 2:.1f}" height="{y0 - top:.1f}" '
                     f'fill="{COLORS[0]}" fill-opacity="0.75"><title>{tip}</title></rect>')
        parts.append(f'<text x="{(left + right) / 2:.1f}" y="{top - 3:.1f}" text-anchor="middle" font-size="9">'
                     f'{r["n"]}</text>')
    parts.append(f'<text x="{(x0 + x1) / 2}" y="{H - 6}" text-anchor="middle" font-size="11">confidence</text>')
    parts.append(f'<text x="10" y="{(y0 + y1) / 2}" font-size="11" transform="rotate(-90 10 {(y0 + y1) / 2})" '
                 'text-anchor="middle">accuracy</text>')
    return _frame("Reliability diagram", "".join(parts))


def _legend(names: Sequence[str], x0: float, x1: float) -> tuple[str, float]:
    """The series' names in their colours, wrapped into rows across the chart; returns the SVG and its height."""
    parts, x, y = [], x0 + 8, 14.0
    for i, name in enumerate(names):
        width = 6.5 * len(name) + 14  # ~6.5 px per character at font-size 11
        if x + width > x1 and x > x0 + 8:
            x, y = x0 + 8, y + 14
        parts.append(f'<text x="{x:.0f}" y="{y:.0f}" font-size="11" fill="{COLORS[i % len(COLORS)]}">'
                     f'{escape(name)}</text>')
        x += width
    return "".join(parts), y


def lines(days: Sequence[str], series: dict[str, Sequence[float | None]], title: str) -> Markup:
    """Values in [0, 1] over days, one line per series, with a legend."""
    legend, legend_bottom = _legend(list(series), PAD, W - 12)
    x0, y0, x1, y1 = PAD, H - PAD, W - 12, legend_bottom + 10  # 1.0 just below the legend
    n = max(len(days), 1)
    step = (x1 - x0) / max(n - 1, 1)
    parts = [_axes(top=y1), legend]
    for i, (name, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        points = [(x0 + step * k, y0 - (y0 - y1) * float(v)) for k, v in enumerate(values) if v is not None]
        if len(points) > 1:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                         + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"><title>{escape(name)}: {v:.3f}'
                  '</title></circle>' for (x, y), v in zip(points, (v for v in values if v is not None), strict=True)]
    if days:
        parts.append(f'<text x="{x0}" y="{H - 6}" font-size="10">{escape(days[0])}</text>')
        parts.append(f'<text x="{x1}" y="{H - 6}" font-size="10" text-anchor="end">{escape(days[-1])}</text>')
    return _frame(title, "".join(parts))


def bars(items: Sequence[tuple[str, float | None]], title: str, reference: float = 0.5) -> Markup:
    """Horizontal bars in [0, 1] (e.g. each signal's AUROC), with a reference line (0.5: no information)."""
    row_h, left = 20, 130
    width, height = W + 40, 16 + row_h * max(len(items), 1)
    scale = width - left - 40
    parts = [f'<line x1="{left + scale * reference:.1f}" y1="4" x2="{left + scale * reference:.1f}" y2="{height - 4}" '
             'stroke="#999" stroke-dasharray="4 3"/>']
    for i, (name, value) in enumerate(items):
        y = 8 + row_h * i
        parts.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" font-size="11">{escape(name)}</text>')
        if value is not None:
            parts.append(f'<rect x="{left}" y="{y + 3}" width="{scale * float(value):.1f}" height="{row_h - 6}" '
                         f'fill="{COLORS[2]}" fill-opacity="0.8"/>'
                         f'<text x="{left + scale * float(value) + 4:.1f}" y="{y + 13}" font-size="10">'
                         f'{float(value):.3f}</text>')
    return _frame(title, "".join(parts), width, height)
