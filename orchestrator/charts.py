"""Inline SVG pieces for the HTML report: a time axis with ticks a person reads (seconds to days,
labels kept inside the chart) and a value axis in seconds, both with grid lines."""

from __future__ import annotations

import html
from datetime import datetime, timedelta, timezone

_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
          172800, 604800]


def time_ticks(t0: datetime, t1: datetime, most: int = 8) -> list[datetime]:
    """Round instants between t0 and t1, at most ``most`` of them, spaced by a readable step."""
    span = max((t1 - t0).total_seconds(), 1.0)
    step = next((s for s in _STEPS if span / s <= most), _STEPS[-1])
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    first = epoch + timedelta(seconds=((t0 - epoch).total_seconds() // step + 1) * step)
    out, t = [], first
    while t <= t1:
        out.append(t)
        t += timedelta(seconds=step)
    return out


def _label(t: datetime, span: float) -> str:
    return t.strftime("%m-%d %H:%M" if span > 2 * 86400 else "%H:%M" if span >= 600 else "%H:%M:%S")


def time_axis(t0: datetime, t1: datetime, x, top: float, bottom: float, left: float, right: float) -> str:
    """Vertical grid lines from ``top`` to ``bottom`` and a label under each (UTC), never cut off."""
    span = (t1 - t0).total_seconds()
    parts = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>']
    for t in time_ticks(t0, t1):
        px = x(t)
        anchor = "end" if px > right - 40 else "start" if px < left + 40 else "middle"
        parts.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{bottom}" stroke="#e0e0e0"/>')
        parts.append(f'<text x="{px:.1f}" y="{bottom + 14}" font-size="11" text-anchor="{anchor}" '
                     f'fill="#444">{html.escape(_label(t, span))}</text>')
    parts.append(f'<text x="{right}" y="{bottom + 28}" font-size="11" text-anchor="end" fill="#777">UTC</text>')
    return "".join(parts)


def value_ticks(top_value: float, most: int = 5) -> list[float]:
    step = next((s for s in _STEPS if top_value / s <= most), _STEPS[-1])
    return [step * i for i in range(0, int(top_value // step) + 1)]


def seconds_label(v: float) -> str:
    if v >= 3600 and v % 3600 == 0:
        return f"{v / 3600:g} h"
    if v >= 60 and v % 60 == 0:
        return f"{v / 60:g} min"
    return f"{v:g} s"


def value_axis(top_value: float, y, left: float, right: float) -> str:
    """Horizontal grid lines with their values (seconds) left of the chart."""
    parts = []
    for v in value_ticks(top_value):
        py = y(v)
        parts.append(f'<line x1="{left}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" stroke="#e0e0e0"/>')
        parts.append(f'<text x="{left - 6}" y="{py + 4:.1f}" font-size="11" text-anchor="end" fill="#444">'
                     f'{seconds_label(v)}</text>')
    return "".join(parts)
