"""Inline SVG charts for the dashboard, and the per-minute series they draw (pure, no I/O).

    minute_series(points, start, minutes, agg)   bucket (t, value) points into per-minute values
    line_chart(title, series, ...) -> str        an ``<svg>`` with axes, gridlines, one polyline
                                                 per series and a legend; no JavaScript, no CDN

Values are escaped; the SVG is self-contained so the page works offline and in a headless browser.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")


@dataclass(frozen=True)
class Series:
    label: str
    values: tuple[float | None, ...]  # one per x step; None: no data


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]


def minute_series(points: Sequence[tuple[float, float]], start: float, minutes: int,
                  agg: Callable[[Sequence[float]], float] = len) -> tuple[float | None, ...]:
    """``agg`` over each minute's values (``len`` counts); minutes without points give None
    (or 0 when counting)."""
    buckets: list[list[float]] = [[] for _ in range(minutes)]
    for t, v in points:
        i = int((t - start) // 60)
        if 0 <= i < minutes:
            buckets[i].append(v)
    counting = agg is len
    return tuple(float(agg(b)) if b else (0.0 if counting else None) for b in buckets)


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.2g}"


def line_chart(title: str, series: Sequence[Series], *, unit: str = "", width: int = 560, height: int = 200,
               x_label: str = "minutes ago", chart_id: str = "") -> str:
    pad_l, pad_r, pad_t, pad_b = 48, 12, 28, 34
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    n = max((len(s.values) for s in series), default=0)
    finite = [v for s in series for v in s.values if v is not None]
    top = _nice_max(max(finite, default=0.0))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" id="{escape(chart_id)}" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'aria-label="{escape(title)}">',
           f'<text x="{pad_l}" y="18" class="chart-title" font-size="13" font-weight="600">{escape(title)}</text>']
    for k in range(5):  # horizontal gridlines and y labels
        y = pad_t + h - h * k / 4
        out.append(f'<line x1="{pad_l}" y1="{y:.1f}" x2="{pad_l + w}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{pad_l - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
                   f'{escape(_fmt(top * k / 4))}{escape(unit) if k == 4 else ""}</text>')
    if n:
        for frac in (0.0, 0.5, 1.0):
            x = pad_l + w * frac
            ago = round((1 - frac) * (n - 1))
            out.append(f'<text x="{x:.1f}" y="{pad_t + h + 14}" font-size="10" text-anchor="middle">{ago}</text>')
    out.append(f'<text x="{pad_l + w / 2:.1f}" y="{height - 4}" font-size="10" text-anchor="middle">'
               f'{escape(x_label)}</text>')
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        segments: list[list[str]] = [[]]
        for j, v in enumerate(s.values):
            if v is None:
                segments.append([])
                continue
            x = pad_l + (w * j / (n - 1) if n > 1 else w / 2)
            y = pad_t + h - h * min(v, top) / top
            segments[-1].append(f"{x:.1f},{y:.1f}")
        for seg in segments:
            if len(seg) == 1:
                x, y = seg[0].split(",")
                out.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>')
            elif seg:
                out.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2" '
                           f'points="{" ".join(seg)}"/>')
        lx = pad_l + 8 + 110 * i
        out.append(f'<rect x="{lx}" y="{pad_t + 4}" width="10" height="3" fill="{color}"/>'
                   f'<text x="{lx + 14}" y="{pad_t + 9}" font-size="10">{escape(s.label)}</text>')
    if not finite:
        out.append(f'<text x="{pad_l + w / 2:.1f}" y="{pad_t + h / 2:.1f}" font-size="12" '
                   f'text-anchor="middle" fill="#6b7280">no data yet</text>')
    out.append("</svg>")
    return "".join(out)
