"""mean: a noisy clamped sum over a noisy count, overall or per group.

Two measurements: the sum's (`sum.SumPrimitive`, one per group) and the
count's (`count.cells_slot`: one `make_count`, or one count by categories when
grouped), each priced in the composition. The interval is the range of ratios
over the sum's and the count's 97.5% intervals (both hold together with
probability at least 95%, by the union bound), intersected with the clamp
bounds; if the count's interval reaches zero or below, the interval is the
clamp bounds. The value is the ratio (the bounds' midpoint if the noisy count
is not positive), clipped into the interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dp_engine.spec import Aggregate, ColumnInfo, Limits, NumericColumn, Statistic, StatisticEstimate
from dp_engine.statistics.base import (
    ALPHA,
    AggInputs,
    OneNumericColumn,
    ScaleOf,
    Selection,
    Slot,
    sum_inputs,
)
from dp_engine.statistics.count import cells_slot
from dp_engine.statistics.sum import sums_slot


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


def _mechanism(slots: tuple[Slot, ...], zcdp: bool) -> str:
    sums, count = slots
    return f"{sums.primitive.mechanism(zcdp)} sum / {count.primitive.mechanism(zcdp)} count"


@dataclass(frozen=True)
class Mean(OneNumericColumn):
    def label(self, agg: Aggregate) -> str:
        return f"mean({agg.column})"

    def slots(self, agg: Aggregate, columns: Mapping[str, ColumnInfo], groups: int, grouped: bool,
              limits: Limits) -> tuple[Slot, ...]:
        return (sums_slot(agg, columns, groups), cells_slot(groups, grouped))

    def prepare(self, agg: Aggregate, selection: Selection) -> AggInputs:
        sums = sum_inputs(agg, selection)
        if selection.codes is None:
            cells, rest_cells = selection.present_zeros(agg.column)  # the count reads only the length
        else:
            cells, rest_cells = selection.take_present(agg.column, selection.codes)
        return dataclasses.replace(sums, cells=cells, complement_cells=rest_cells)

    def estimate(self, agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, groups: int,
                 columns: Mapping[str, ColumnInfo], n_hint: int | None) -> StatisticEstimate:
        column = columns[agg.column]
        assert isinstance(column, NumericColumn)
        mechanism = _mechanism(slots, zcdp)
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

    def release(self, agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, outputs: list[Any],
                labels: list[tuple[str, ...]], columns: Mapping[str, ColumnInfo]) -> list[Statistic]:
        column = columns[agg.column]
        assert isinstance(column, NumericColumn)
        mechanism = _mechanism(slots, zcdp)
        main, scale = slots[0], scale_of(slots[0])
        counts = outputs[1] if isinstance(outputs[1], list) else [outputs[1]]
        sum_hw = main.primitive.half_width(scale, zcdp, ALPHA / 2)
        count_hw = slots[1].primitive.half_width(scale_of(slots[1]), zcdp, ALPHA / 2)
        assert sum_hw is not None and count_hw is not None
        return [_mean(agg.label, label, float(s), float(c), sum_hw, count_hw, column, mechanism, scale)
                for label, s, c in zip(labels, outputs[0], counts)]


MEAN = Mean()
