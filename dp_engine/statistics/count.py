"""count: how many rows the filters keep, overall or per group.

Ungrouped, `make_count` on the kept rows (it reads only their number, so
`prepare` hands it slices of one array of zeros). Grouped, one
`make_count_by_categories` over the rows' group codes, whose map already knows
that a row lands in one cell, so a grouped count costs what an ungrouped one
does. Noise is discrete Laplace (pure DP) or discrete Gaussian (zCDP) on the
integer counts.

A count by categories is priced as `make_cast_default` (float64 codes to
integers, 1-stable) chained with the measurement that counts integer codes,
so that it shares the float64 input space. A release runs that second part,
`runner`, on the integer codes `prepare` computes directly (the values the
cast would give), which spares a float copy and a cast of every row.

Released counts are clipped at zero after the interval is computed, by
clipping the value and both ends: a true count is never negative, so clipping
never moves it out of the interval.

Both count measurements are also the "cells" of a mean and (by categories) of
a histogram, which import them from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import opendp.prelude as dp

from dp_engine.spec import Aggregate, ColumnInfo, Limits, QueryError, Statistic, StatisticEstimate
from dp_engine.statistics.base import (
    ALPHA,
    BOOLS,
    FLOATS,
    ROWS,
    AggInputs,
    Primitive,
    ScaleOf,
    Selection,
    Slot,
    cell_dtype,
    check_no_edges,
    check_no_q,
    family,
    noise,
)

#: opendp's name for each integer type cell_dtype may give.
_CELL_TYPES = {np.int32: "i32", np.int64: "i64"}
_SLOW_DISCRETE_GAUSSIAN = 1e4


def discrete_half_width(scale: float, zcdp: bool, alpha: float) -> float:
    """Half-width of the (1 - alpha) interval of discrete Laplace or discrete Gaussian noise, from opendp."""
    if zcdp and scale > _SLOW_DISCRETE_GAUSSIAN:
        # opendp's discrete Gaussian accuracy takes time linear in the scale. Past this scale use
        # its continuous accuracy plus two integer steps: the discrete answer never exceeded the
        # continuous one plus one step at any scale checked (0.3 to 2e4, alpha 0.05 and 0.025).
        return float(math.ceil(dp.gaussian_scale_to_accuracy(float(scale), alpha)) + 2)
    accuracy = dp.discrete_gaussian_scale_to_accuracy if zcdp else dp.discrete_laplacian_scale_to_accuracy
    # The errors are integers, so the floor keeps the coverage (opendp's accuracy docs). At tiny
    # scales opendp's formula underflows to -inf: every nonzero error is then far rarer than alpha.
    return float(math.floor(max(accuracy(float(scale), alpha), 0.0)))


@dataclass(frozen=True)
class CountPrimitive(Primitive):
    """`make_count` with integer noise: reads only the length of its input (booleans; priced from float64 vectors
    through opendp's 1-stable cast, like every primitive)."""

    kind: ClassVar[str] = "count"

    def cast(self) -> dp.Transformation:
        return dp.t.make_cast_default(FLOATS, ROWS, TOA="bool")

    def runner(self, scale: float, zcdp: bool) -> dp.Measurement:
        return dp.t.make_count(BOOLS, ROWS) >> noise(scale, zcdp)

    def mechanism(self, zcdp: bool) -> str:
        return f"discrete {family(zcdp)}"

    def half_width(self, scale: float, zcdp: bool, alpha: float = ALPHA) -> float | None:
        return discrete_half_width(scale, zcdp, alpha)


@dataclass(frozen=True)
class CategoriesPrimitive(Primitive):
    """`make_count_by_categories` over integer codes 0..categories-1, with integer noise on every cell."""

    kind: ClassVar[str] = "categories"
    categories: int = 0

    @property
    def _cell_type(self) -> str:
        return _CELL_TYPES[cell_dtype(self.categories)]

    def cast(self) -> dp.Transformation:
        return dp.t.make_cast_default(FLOATS, ROWS, TOA=self._cell_type)

    def runner(self, scale: float, zcdp: bool) -> dp.Measurement:
        metric = dp.L2Distance[int] if zcdp else dp.L1Distance[int]
        codes = dp.vector_domain(dp.atom_domain(T=self._cell_type))
        return (dp.t.make_count_by_categories(codes, ROWS, categories=list(range(self.categories)),
                                              null_category=False, MO=metric)
                >> noise(scale, zcdp))

    def mechanism(self, zcdp: bool) -> str:
        return f"discrete {family(zcdp)}"

    def half_width(self, scale: float, zcdp: bool, alpha: float = ALPHA) -> float | None:
        return discrete_half_width(scale, zcdp, alpha)


def cells_slot(groups: int, grouped: bool) -> Slot:
    """The count of the kept rows: per group code when grouped, else one count."""
    return Slot("cells", CategoriesPrimitive(categories=groups) if grouped else CountPrimitive(), 1)


def clipped(label: str, group: tuple[str, ...], value: int, hw: float | None, mechanism: str,
            scale: float) -> Statistic:
    """A released count with its interval, value and ends clipped at zero."""
    assert hw is not None
    v = float(value)
    return Statistic(label, group, max(v, 0.0), max(v - hw, 0.0), max(v + hw, 0.0), mechanism, scale)


@dataclass(frozen=True)
class Count:
    def label(self, agg: Aggregate) -> str:
        return "count"

    def check(self, agg: Aggregate, columns: Mapping[str, ColumnInfo], limits: Limits) -> None:
        if agg.column:
            raise QueryError("count takes no column")
        check_no_q(agg)
        check_no_edges(agg)

    def check_groups(self, agg: Aggregate, groups: int) -> None:
        pass

    def columns(self, agg: Aggregate) -> tuple[str, ...]:
        return ()

    def slots(self, agg: Aggregate, columns: Mapping[str, ColumnInfo], groups: int, grouped: bool,
              limits: Limits) -> tuple[Slot, ...]:
        return (cells_slot(groups, grouped),)

    def prepare(self, agg: Aggregate, selection: Selection) -> AggInputs:
        if selection.codes is not None:
            cells, rest = selection.take_kept(selection.codes)
        else:
            cells, rest = selection.kept_zeros()  # a plain count reads only the length of its input
        return AggInputs(cells=cells, complement_cells=rest)

    def estimate(self, agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, groups: int,
                 columns: Mapping[str, ColumnInfo], n_hint: int | None) -> StatisticEstimate:
        (main,) = slots
        scale = scale_of(main)
        return StatisticEstimate(agg.label, main.primitive.mechanism(zcdp), scale,
                                 main.primitive.half_width(scale, zcdp, ALPHA), "per group" if groups > 1 else "")

    def release(self, agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, outputs: list[Any],
                labels: list[tuple[str, ...]], columns: Mapping[str, ColumnInfo]) -> list[Statistic]:
        (main,) = slots
        scale = scale_of(main)
        mechanism = main.primitive.mechanism(zcdp)
        cells = outputs[0] if isinstance(outputs[0], list) else [outputs[0]]
        hw = main.primitive.half_width(scale, zcdp, ALPHA)
        return [clipped(agg.label, label, v, hw, mechanism, scale) for label, v in zip(labels, cells)]


COUNT = Count()
