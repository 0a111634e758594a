"""A grant's use over time, from its audit entries, drawn as inline SVG on the server (no script, no assets).

What a grant spent is read from the audit log, not from the ledger: each reservation (status ``RESERVED``, the
entry committed with the charge) adds its epsilon and one call to the quota; an HE scoring reservation adds the
number of entities its request named (``entities`` in the entry's canonical request, when the entry has one),
which is what the quota counts there. The chart's numbers are positions computed here; the template writes
them into SVG attributes, escaped like every other value.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from clients import types as t

__all__ = ["UsagePoint", "usage_series", "StepChart", "step_chart"]

CHARGED = "RESERVED"


@dataclass(frozen=True)
class UsagePoint:
    time: dt.datetime
    epsilon: Decimal  # spent so far
    quota: int  # used so far


def _entities(request: str) -> int | None:
    try:
        doc = json.loads(request) if request else None
    except ValueError:
        return None
    # HE Score: "entities"; verification: "items" (Verify) or "points" (VerifyPrivate), as sandbox/describe.py writes
    value = next((doc[k] for k in ("entities", "items", "points") if k in doc), None) if isinstance(doc, dict) else None
    if isinstance(value, list):
        return len(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_series(entries: Iterable[t.AuditEntry], *, kind: str) -> list[UsagePoint]:
    """Cumulative epsilon and quota after each charged entry of one grant, in log order."""
    points: list[UsagePoint] = []
    epsilon, quota = Decimal(0), 0
    for e in sorted(entries, key=lambda e: e.seq):
        if e.status != CHARGED:
            continue
        epsilon += e.epsilon
        counted = _entities(e.request) if kind in ("HE_SCORING", "VERIFICATION") else None
        quota += 1 if counted is None else counted
        points.append(UsagePoint(e.time, epsilon, quota))
    return points


@dataclass(frozen=True)
class StepChart:
    """A step line of a running total against its cap, in a ``width`` x ``height`` SVG."""

    title: str
    width: int
    height: int
    points: str  # the polyline's "x,y x,y ..." (empty: nothing spent yet)
    cap_y: float  # where the cap's line is drawn
    cap_label: str
    y_labels: tuple[tuple[float, str], ...]
    x_labels: tuple[tuple[float, str], ...]
    left: int
    right: int
    top: int
    bottom: int
    last: str  # the latest value, as text


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def step_chart(title: str, series: Sequence[tuple[dt.datetime, float]], cap: float, *, start: dt.datetime,
               end: dt.datetime, width: int = 560, height: int = 200) -> StepChart:
    """``series`` (time, running total) as steps from ``start`` (zero) to ``end``, scaled to fit the cap."""
    left, right, top, bottom = 56, width - 12, 16, height - 28
    span = max((end - start).total_seconds(), 1.0)
    top_value = max([cap, *(v for _, v in series)]) or 1.0

    def x(when: dt.datetime) -> float:
        return round(left + (right - left) * min(max((when - start).total_seconds() / span, 0.0), 1.0), 1)

    def y(value: float) -> float:
        return round(bottom - (bottom - top) * (value / top_value), 1)

    coords: list[tuple[float, float]] = [(x(start), y(0.0))] if series else []
    previous = 0.0
    for when, value in series:
        coords += [(x(when), y(previous)), (x(when), y(value))]
        previous = value
    if series:
        coords.append((x(end), y(previous)))
    y_labels = tuple((y(v), _fmt(v)) for v in (0.0, top_value / 2, top_value))
    x_labels = ((float(left), start.strftime("%m-%d %H:%M")), (float(right), end.strftime("%m-%d %H:%M")))
    return StepChart(title, width, height, " ".join(f"{a},{b}" for a, b in coords), y(cap), f"cap {_fmt(cap)}",
                     y_labels, x_labels, left, right, top, bottom, _fmt(previous))
