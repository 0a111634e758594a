"""histogram: row counts per bin of a numeric column, overall or per group.

Bins are '(-inf, e0)', '[e0, e1)', ..., '[e_last, inf)' (what
np.searchsorted(side='right') assigns); a missing value is in no bin. One
`make_count_by_categories` (`count.CategoriesPrimitive`) over the cells
group * bins + bin, so the whole grouped histogram costs one count; groups
times bins is capped at MAX_CELLS. Released like counts: integer noise, the
interval computed and then clipped at zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dp_engine.spec import Aggregate, ColumnInfo, Limits, QueryError, Statistic, StatisticEstimate
from dp_engine.statistics.base import (
    ALPHA,
    MAX_CELLS,
    AggInputs,
    ScaleOf,
    Selection,
    Slot,
    cell_dtype,
    check_no_q,
    check_numeric_column,
    is_real,
)
from dp_engine.statistics.count import CategoriesPrimitive, clipped


def bin_labels(edges: Sequence[float]) -> list[str]:
    """'(-inf, e0)', '[e0, e1)', ..., '[e_last, inf)': the bins np.searchsorted(side='right') assigns."""
    shown = [_number(e) for e in edges]
    return [f"(-inf, {shown[0]})"] + [f"[{a}, {b})" for a, b in zip(shown, shown[1:])] + [f"[{shown[-1]}, inf)"]


def _number(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def _check_edges(edges: tuple[float, ...], limits: Limits) -> None:
    if not isinstance(edges, tuple) or not 1 <= len(edges) <= limits.max_edges:
        raise QueryError(f"a histogram needs between 1 and {limits.max_edges} edges")
    if not all(is_real(e) and math.isfinite(e) for e in edges):
        raise QueryError("histogram edges must be finite numbers")
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise QueryError("histogram edges must be strictly increasing")


@dataclass(frozen=True)
class Histogram:
    def label(self, agg: Aggregate) -> str:
        return f"histogram({agg.column})"

    def check(self, agg: Aggregate, columns: Mapping[str, ColumnInfo], limits: Limits) -> None:
        check_numeric_column(agg, columns)
        check_no_q(agg)
        _check_edges(agg.edges, limits)

    def check_groups(self, agg: Aggregate, groups: int) -> None:
        if groups * (len(agg.edges) + 1) > MAX_CELLS:
            raise QueryError(f"{agg.label} over the groups releases more than {MAX_CELLS} cells")

    def columns(self, agg: Aggregate) -> tuple[str, ...]:
        return (agg.column,)

    def slots(self, agg: Aggregate, columns: Mapping[str, ColumnInfo], groups: int, grouped: bool,
              limits: Limits) -> tuple[Slot, ...]:
        return (Slot("cells", CategoriesPrimitive(categories=groups * (len(agg.edges) + 1)), 1),)

    def prepare(self, agg: Aggregate, selection: Selection) -> AggInputs:
        nbins = len(agg.edges) + 1
        dtype = cell_dtype(selection.groups * nbins)
        edges = np.asarray(agg.edges, dtype=np.float64)
        every_cell = np.searchsorted(edges, selection.full(agg.column), side="right").astype(dtype)
        if selection.codes is not None:
            every_cell += selection.codes.astype(dtype, copy=False) * nbins
        cells, rest_cells = selection.take_present(agg.column, every_cell)
        return AggInputs(cells=cells, complement_cells=rest_cells)

    def estimate(self, agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, groups: int,
                 columns: Mapping[str, ColumnInfo], n_hint: int | None) -> StatisticEstimate:
        (main,) = slots
        scale = scale_of(main)
        return StatisticEstimate(agg.label, main.primitive.mechanism(zcdp), scale,
                                 main.primitive.half_width(scale, zcdp, ALPHA), "per bin")

    def release(self, agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, outputs: list[Any],
                labels: list[tuple[str, ...]], columns: Mapping[str, ColumnInfo]) -> list[Statistic]:
        (main,) = slots
        scale = scale_of(main)
        mechanism = main.primitive.mechanism(zcdp)
        hw = main.primitive.half_width(scale, zcdp, ALPHA)
        bins = bin_labels(agg.edges)
        cells = [label + (b,) for label in labels for b in bins]
        return [clipped(agg.label, cell, v, hw, mechanism, scale) for cell, v in zip(cells, outputs[0])]


HISTOGRAM = Histogram()
