"""quantile: the q-quantile of a numeric column, overall or per group, by the exponential mechanism.

`make_private_quantile` over public candidates (every integer of an integer
column if few enough, else an even grid over the clamp bounds), priced in
zCDP directly when delta > 0. One measurement per group, composed
sequentially. The exponential mechanism gives no value interval: released
quantiles have none, and their estimates no half-width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import opendp.prelude as dp

from dp_engine.spec import Aggregate, ColumnInfo, Limits, NumericColumn, QueryError, Statistic, StatisticEstimate
from dp_engine.statistics.base import (
    ALPHA,
    FLOATS,
    ROWS,
    AggInputs,
    Primitive,
    ScaleOf,
    Selection,
    Slot,
    bounds_of,
    check_no_edges,
    check_numeric_column,
    is_real,
    split_inputs,
)


@dataclass(frozen=True)
class QuantilePrimitive(Primitive):
    """`make_private_quantile` at quantile `alpha` over `candidates` (within `bounds`)."""

    kind: ClassVar[str] = "quantile"
    bounds: tuple[float, float] = (0.0, 0.0)
    candidates: tuple[float, ...] = ()
    alpha: float = 0.0

    def runner(self, scale: float, zcdp: bool) -> dp.Measurement:
        measure = dp.zero_concentrated_divergence() if zcdp else dp.max_divergence()
        return dp.m.make_private_quantile(FLOATS, ROWS, measure, candidates=list(self.candidates),
                                          alpha=self.alpha, scale=scale)

    def mechanism(self, zcdp: bool) -> str:
        return "exponential"

    def half_width(self, scale: float, zcdp: bool, alpha: float = ALPHA) -> float | None:
        return None


def candidates(column: NumericColumn, count: int) -> tuple[float, ...]:
    """Public quantile candidates: every integer of an integer column if few enough, else an even grid."""
    lower, upper = float(column.lower), float(column.upper)
    if column.integer and 1 <= math.floor(upper) - math.ceil(lower) + 1 <= count:
        return tuple(float(v) for v in range(math.ceil(lower), math.floor(upper) + 1))
    return tuple(float(v) for v in np.linspace(lower, upper, max(count, 2)))


@dataclass(frozen=True)
class Quantile:
    def label(self, agg: Aggregate) -> str:
        return f"quantile({agg.column}, {agg.q:g})"

    def check(self, agg: Aggregate, columns: Mapping[str, ColumnInfo], limits: Limits) -> None:
        check_numeric_column(agg, columns)
        if not is_real(agg.q) or not math.isfinite(agg.q) or not 0.0 <= agg.q <= 1.0:
            raise QueryError("quantile q must be a finite number in [0, 1]")
        check_no_edges(agg)

    def check_groups(self, agg: Aggregate, groups: int) -> None:
        pass

    def columns(self, agg: Aggregate) -> tuple[str, ...]:
        return (agg.column,)

    def slots(self, agg: Aggregate, columns: Mapping[str, ColumnInfo], groups: int, grouped: bool,
              limits: Limits) -> tuple[Slot, ...]:
        column = columns[agg.column]
        assert isinstance(column, NumericColumn)
        quantile = QuantilePrimitive(bounds=bounds_of(agg, columns),
                                     candidates=candidates(column, limits.quantile_candidates), alpha=float(agg.q))
        return (Slot("values", quantile, groups),)

    def prepare(self, agg: Aggregate, selection: Selection) -> AggInputs:
        return split_inputs(agg, selection)

    def estimate(self, agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, groups: int,
                 columns: Mapping[str, ColumnInfo], n_hint: int | None) -> StatisticEstimate:
        (main,) = slots
        return StatisticEstimate(agg.label, main.primitive.mechanism(zcdp), scale_of(main), None,
                                 "exponential mechanism: no value interval")

    def release(self, agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, outputs: list[Any],
                labels: list[tuple[str, ...]], columns: Mapping[str, ColumnInfo]) -> list[Statistic]:
        (main,) = slots
        mechanism, scale = main.primitive.mechanism(zcdp), scale_of(main)
        return [Statistic(agg.label, label, float(v), None, None, mechanism, scale)
                for label, v in zip(labels, outputs[0])]


QUANTILE = Quantile()
