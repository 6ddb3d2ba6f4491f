"""Charts drawn on the server as inline SVG: no script, no library, nothing fetched by the browser."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from markupsafe import Markup, escape

COLOURS = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df")


def line_chart(times_ms: Sequence[int], series: dict[str, Sequence[float | None]], *,
               band: tuple[Sequence[float | None], Sequence[float | None]] | None = None,
               spans: Sequence[tuple[int, int]] = (), dots: bool = False,
               title: str = "", unit: str = "", width: int = 560, height: int = 160) -> Markup:
    """Lines over time; ``band`` (lower, upper) is shaded behind them, e.g. an uncertainty interval;
    ``spans`` (start, end) times are marked across the whole height, e.g. anomalous periods; ``dots``
    draws a dot at each value (for few, irregular samples such as studies)."""
    points = [v for values in [*series.values(), *(band or ())] for v in values if _finite(v)]
    if not times_ms or not points:
        return Markup(f'<p class="empty">{escape(title)}: no data yet</p>')
    pad_left, pad_right, pad_top, pad_bottom = 56, 8, 18, 20
    t0, t1 = min(times_ms), max(times_ms)
    lo, hi = min(points), max(points)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    span_t = (t1 - t0) or 1

    def at(t, v) -> tuple[float, float]:
        return (pad_left + (t - t0) / span_t * (width - pad_left - pad_right),
                pad_top + (hi - v) / (hi - lo) * (height - pad_top - pad_bottom))

    def xy(t, v) -> str:
        return "{:.1f},{:.1f}".format(*at(t, v))

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}">',
             f'<text x="{pad_left}" y="12" class="title">{escape(title)}{escape(f" ({unit})" if unit else "")}</text>',
             f'<text x="{pad_left - 4}" y="{pad_top + 4}" class="tick" text-anchor="end">{_number(hi)}</text>',
             f'<text x="{pad_left - 4}" y="{height - pad_bottom}" class="tick" text-anchor="end">{_number(lo)}</text>',
             f'<text x="{pad_left}" y="{height - 4}" class="tick">{_time(t0)}</text>',
             f'<text x="{width - pad_right}" y="{height - 4}" class="tick" text-anchor="end">{_time(t1)}</text>',
             f'<line x1="{pad_left}" y1="{height - pad_bottom}" x2="{width - pad_right}" y2="{height - pad_bottom}" '
             'class="axis"/>']
    for start, end in spans:
        x0, x1 = (at(min(max(t, t0), t1), hi)[0] for t in (start, end))
        parts.append(f'<rect class="span" x="{x0:.1f}" y="{pad_top}" width="{max(x1 - x0, 1.5):.1f}" '
                     f'height="{height - pad_top - pad_bottom}"/>')
    if band:
        lower, upper = band
        pairs = [(t, lo_v, up_v) for t, lo_v, up_v in zip(times_ms, lower, upper) if _finite(lo_v) and _finite(up_v)]
        if pairs:
            outline = [xy(t, u) for t, _, u in pairs] + [xy(t, lv) for t, lv, _ in reversed(pairs)]
            parts.append(f'<polygon class="band" points="{" ".join(outline)}"/>')
    for i, (name, values) in enumerate(series.items()):
        line = " ".join(xy(t, v) for t, v in zip(times_ms, values) if _finite(v))
        parts.append(f'<polyline class="line" fill="none" stroke="{COLOURS[i % len(COLOURS)]}" '
                     f'points="{line}"><title>{escape(name)}</title></polyline>')
        if dots:
            parts += ['<circle class="point" cx="{:.1f}" cy="{:.1f}" r="3" '.format(*at(t, v))
                      + f'fill="{COLOURS[i % len(COLOURS)]}"><title>{escape(name)} {_number(v)}</title></circle>'
                      for t, v in zip(times_ms, values) if _finite(v)]
    parts.append("</svg>")
    return Markup("".join(parts))


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _number(value: float) -> str:
    return f"{value:.4g}"


def _time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
