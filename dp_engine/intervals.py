"""From noisy outputs to labelled statistics with 95% intervals, and the half-widths known before release.

Intervals are the noisy value plus or minus opendp's accuracy at alpha = 0.05
for the mechanism's scale. A mean is a noisy sum over a noisy count: its
interval is the range of ratios over the sum's and the count's 97.5%
intervals (both hold together with probability at least 95%, by the union
bound), intersected with the clamp bounds; if the count's interval reaches
zero or below the interval is the clamp bounds. Counts are clipped at zero
after the interval is computed, by clipping the value and both ends: a true
count is never negative, so clipping never moves it out of the interval.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dp_engine.primitives import QUANTILE, SUM, Slot
from dp_engine.spec import (
    AggKind,
    Aggregate,
    CategoricalColumn,
    ColumnInfo,
    NumericColumn,
    Statistic,
    StatisticEstimate,
)

ALPHA = 0.05
ScaleOf = Callable[[Slot], float]


def group_labels(group_by: tuple[str, ...], columns: Mapping[str, ColumnInfo]) -> list[tuple[str, ...]]:
    """Labels of every group in group-code order (first group-by column varies slowest)."""
    declared = []
    for name in group_by:
        column = columns[name]
        assert isinstance(column, CategoricalColumn)
        declared.append(column.categories)
    return [tuple(labels) for labels in itertools.product(*declared)]


def bin_labels(edges: Sequence[float]) -> list[str]:
    """'(-inf, e0)', '[e0, e1)', ..., '[e_last, inf)': the bins np.searchsorted(side='right') assigns."""
    shown = [_number(e) for e in edges]
    return [f"(-inf, {shown[0]})"] + [f"[{a}, {b})" for a, b in zip(shown, shown[1:])] + [f"[{shown[-1]}, inf)"]


def estimate(agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, groups: int,
             columns: Mapping[str, ColumnInfo], n_hint: int | None) -> StatisticEstimate:
    """What one aggregate's statistics will look like: mechanism, scale and 95% half-width if known."""
    main = slots[0]
    scale = scale_of(main)
    mechanism = _mechanism(slots, zcdp)
    if main.primitive.kind == QUANTILE:
        return StatisticEstimate(agg.label, mechanism, scale, None, "exponential mechanism: no value interval")
    if agg.kind is AggKind.MEAN:
        return _mean_estimate(agg, slots, scale_of, zcdp, groups, columns, n_hint, mechanism)
    note = {AggKind.COUNT: "per group" if groups > 1 else "",
            AggKind.HISTOGRAM: "per bin",
            AggKind.SUM: "sum of values clamped to the column's bounds"}[agg.kind]
    return StatisticEstimate(agg.label, mechanism, scale, main.primitive.half_width(scale, zcdp, ALPHA), note)


def statistics(agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, outputs: list[Any],
               labels: list[tuple[str, ...]], columns: Mapping[str, ColumnInfo]) -> list[Statistic]:
    """The released statistics of one aggregate, from its slots' raw outputs (same order as `slots`)."""
    mechanism = _mechanism(slots, zcdp)
    main, scale = slots[0], scale_of(slots[0])
    if agg.kind is AggKind.COUNT:
        cells = outputs[0] if isinstance(outputs[0], list) else [outputs[0]]
        hw = main.primitive.half_width(scale, zcdp, ALPHA)
        return [_count(agg.label, label, v, hw, mechanism, scale) for label, v in zip(labels, cells)]
    if agg.kind is AggKind.HISTOGRAM:
        hw = main.primitive.half_width(scale, zcdp, ALPHA)
        bins = bin_labels(agg.edges)
        cells = [label + (b,) for label in labels for b in bins]
        return [_count(agg.label, cell, v, hw, mechanism, scale) for cell, v in zip(cells, outputs[0])]
    if agg.kind is AggKind.QUANTILE:
        return [Statistic(agg.label, label, float(v), None, None, mechanism, scale)
                for label, v in zip(labels, outputs[0])]
    if agg.kind is AggKind.SUM:
        hw = main.primitive.half_width(scale, zcdp, ALPHA)
        assert hw is not None
        return [Statistic(agg.label, label, float(v), float(v) - hw, float(v) + hw, mechanism, scale)
                for label, v in zip(labels, outputs[0])]
    column = columns[agg.column]
    assert isinstance(column, NumericColumn)
    counts = outputs[1] if isinstance(outputs[1], list) else [outputs[1]]
    sum_hw = main.primitive.half_width(scale, zcdp, ALPHA / 2)
    count_hw = slots[1].primitive.half_width(scale_of(slots[1]), zcdp, ALPHA / 2)
    assert sum_hw is not None and count_hw is not None
    return [_mean(agg.label, label, float(s), float(c), sum_hw, count_hw, column, mechanism, scale)
            for label, s, c in zip(labels, outputs[0], counts)]


def _count(label: str, group: tuple[str, ...], value: int, hw: float | None, mechanism: str,
           scale: float) -> Statistic:
    assert hw is not None
    v = float(value)
    return Statistic(label, group, max(v, 0.0), max(v - hw, 0.0), max(v + hw, 0.0), mechanism, scale)


def _mean(label: str, group: tuple[str, ...], noisy_sum: float, noisy_count: float, sum_hw: float,
          count_hw: float, column: NumericColumn, mechanism: str, scale: float) -> Statistic:
    lower, upper = float(column.lower), float(column.upper)
    low, high = lower, upper
    if noisy_count - count_hw > 0:
        ratios = [(noisy_sum + ds) / (noisy_count + dc) for ds in (-sum_hw, sum_hw) for dc in (-count_hw, count_hw)]
        if max(min(ratios), lower) <= min(max(ratios), upper):
            low, high = max(min(ratios), lower), min(max(ratios), upper)
    value = noisy_sum / noisy_count if noisy_count > 0 else (lower + upper) / 2
    value = min(max(value, low), high)
    return Statistic(label, group, value, low, high, mechanism, scale)


def _mean_estimate(agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, groups: int,
                   columns: Mapping[str, ColumnInfo], n_hint: int | None, mechanism: str) -> StatisticEstimate:
    column = columns[agg.column]
    assert isinstance(column, NumericColumn)
    scale = scale_of(slots[0])
    if n_hint is None:
        return StatisticEstimate(agg.label, mechanism, scale, None, "needs n_hint (the expected row count)")
    sum_hw = slots[0].primitive.half_width(scale, zcdp, ALPHA / 2)
    count_hw = slots[1].primitive.half_width(scale_of(slots[1]), zcdp, ALPHA / 2)
    assert sum_hw is not None and count_hw is not None
    rows = n_hint / groups
    widest = (float(column.upper) - float(column.lower)) / 2
    bound = max(abs(float(column.lower)), abs(float(column.upper)))
    hw = min((sum_hw + bound * count_hw) / (rows - count_hw), widest) if rows > count_hw else widest
    spread = f", spread evenly over {groups} groups" if groups > 1 else ""
    return StatisticEstimate(agg.label, mechanism, scale, hw, f"approximate, assuming {n_hint} rows{spread}")


def _mechanism(slots: tuple[Slot, ...], zcdp: bool) -> str:
    if len(slots) == 2 and slots[0].primitive.kind == SUM:
        return f"{slots[0].primitive.mechanism(zcdp)} sum / {slots[1].primitive.mechanism(zcdp)} count"
    return slots[0].primitive.mechanism(zcdp)


def _number(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)

