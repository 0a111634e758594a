"""The opendp measurements a query is made of, and which of them each aggregate needs.

Every primitive reads a float64 vector without NaN under the symmetric
distance, so all of a query's primitives share one input space and
`dp.c.make_composition` can price them together. Noise always comes from an
opendp measurement: discrete Laplace or Gaussian on integer counts, continuous
ones on float sums, the exponential mechanism for quantiles
(`make_private_quantile`, which prices itself in zCDP directly when delta > 0).

opendp's vector API has no parallel composition, so a grouped sum or quantile
is one measurement per group composed sequentially (its cost grows with the
number of groups). Grouped counts and histograms are a single
`count_by_categories`, whose map already knows that a row lands in one cell.

A count by categories is priced as `make_cast_default` (float64 codes to
integers, 1-stable) chained with the measurement that counts integer codes,
so that it shares the float64 input space. A release runs that second part,
`Primitive.runner`, on the integer codes `prepare` computes directly (the
values the cast would give), which spares a float copy and a cast of every row.
For every other kind the runner is the priced measurement itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import opendp.prelude as dp

from dp_engine.prepare import MAX_ROWS, cell_dtype
from dp_engine.spec import AggKind, Aggregate, ColumnInfo, Limits, NumericColumn

dp.enable_features("contrib")

_FLOATS = dp.vector_domain(dp.atom_domain(T=float, nan=False))
_ROWS = dp.symmetric_distance()
#: opendp's name for each integer type cell_dtype may give.
_CELL_TYPES = {np.int32: "i32", np.int64: "i64"}

COUNT, SUM, QUANTILE, CATEGORIES = "count", "sum", "quantile", "categories"
_SLOW_DISCRETE_GAUSSIAN = 1e4


@dataclass(frozen=True)
class Primitive:
    """One opendp measurement, up to its noise scale."""

    kind: str  # COUNT, SUM, QUANTILE or CATEGORIES
    bounds: tuple[float, float] = (0.0, 0.0)  # clamp bounds (sum) or candidate range (quantile)
    candidates: tuple[float, ...] = ()  # quantile
    alpha: float = 0.0  # quantile
    categories: int = 0  # count_by_categories over codes 0..categories-1

    def build(self, scale: float, zcdp: bool) -> dp.Measurement:
        """The measurement with this noise scale, pure DP (Laplace) or zCDP (Gaussian), on float64 vectors.

        This is what composition prices. For CATEGORIES it is a cast of the float codes to integers
        followed by `runner`; for the other kinds it is `runner`.
        """
        runner = self.runner(scale, zcdp)
        if self.kind == CATEGORIES:
            return dp.t.make_cast_default(_FLOATS, _ROWS, TOA=self._cell_type) >> runner
        return runner

    @property
    def _cell_type(self) -> str:
        return _CELL_TYPES[cell_dtype(self.categories)]

    def runner(self, scale: float, zcdp: bool) -> dp.Measurement:
        """What a release invokes on `prepare`'s arrays: `build` without the leading cast for CATEGORIES."""
        noise = dp.m.then_gaussian(scale) if zcdp else dp.m.then_laplace(scale)
        if self.kind == COUNT:
            return dp.t.make_count(_FLOATS, _ROWS) >> noise
        if self.kind == SUM:
            # make_sum on an unknown size assumes at most 2**20 rows and drops the rest;
            # the checked pairwise sum takes a public size limit instead.
            return (dp.t.make_clamp(_FLOATS, _ROWS, bounds=self.bounds)
                    >> dp.t.make_bounded_float_checked_sum(MAX_ROWS, self.bounds, S="Pairwise<f64>")
                    >> noise)
        if self.kind == QUANTILE:
            measure = dp.zero_concentrated_divergence() if zcdp else dp.max_divergence()
            return dp.m.make_private_quantile(_FLOATS, _ROWS, measure, candidates=list(self.candidates),
                                              alpha=self.alpha, scale=scale)
        metric = dp.L2Distance[int] if zcdp else dp.L1Distance[int]
        codes = dp.vector_domain(dp.atom_domain(T=self._cell_type))
        return (dp.t.make_count_by_categories(codes, _ROWS, categories=list(range(self.categories)),
                                              null_category=False, MO=metric)
                >> noise)

    def mechanism(self, zcdp: bool) -> str:
        if self.kind == QUANTILE:
            return "exponential"
        family = "gaussian" if zcdp else "laplace"
        return family if self.kind == SUM else f"discrete {family}"

    def half_width(self, scale: float, zcdp: bool, alpha: float = 0.05) -> float | None:
        """Half-width of the (1 - alpha) interval around the noisy value; None for the exponential mechanism."""
        if self.kind == QUANTILE:
            return None
        if self.kind == SUM:
            accuracy = dp.gaussian_scale_to_accuracy if zcdp else dp.laplacian_scale_to_accuracy
            return float(accuracy(float(scale), alpha))
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
class Slot:
    """`copies` identical primitives in one aggregate: one per group for sums and quantiles."""

    role: str  # "cells" (a count-like input) or "values" (one value array per group)
    primitive: Primitive
    copies: int


def layout(aggregates: tuple[Aggregate, ...], columns: Mapping[str, ColumnInfo], groups: int, grouped: bool,
           limits: Limits) -> tuple[tuple[Slot, ...], ...]:
    """The primitives each aggregate needs, in query order (assumes a validated query)."""
    out: list[tuple[Slot, ...]] = []
    for agg in aggregates:
        cells = Slot("cells", Primitive(CATEGORIES, categories=groups) if grouped else Primitive(COUNT), 1)
        if agg.kind is AggKind.COUNT:
            out.append((cells,))
            continue
        column = columns[agg.column]
        assert isinstance(column, NumericColumn)
        bounds = (float(column.lower), float(column.upper))
        if agg.kind is AggKind.SUM:
            out.append((Slot("values", Primitive(SUM, bounds=bounds), groups),))
        elif agg.kind is AggKind.MEAN:
            out.append((Slot("values", Primitive(SUM, bounds=bounds), groups), cells))
        elif agg.kind is AggKind.QUANTILE:
            quantile = Primitive(QUANTILE, bounds=bounds, candidates=candidates(column, limits.quantile_candidates),
                                 alpha=float(agg.q))
            out.append((Slot("values", quantile, groups),))
        else:
            histogram = Primitive(CATEGORIES, categories=groups * (len(agg.edges) + 1))
            out.append((Slot("cells", histogram, 1),))
    return tuple(out)


def candidates(column: NumericColumn, count: int) -> tuple[float, ...]:
    """Public quantile candidates: every integer of an integer column if few enough, else an even grid."""
    lower, upper = float(column.lower), float(column.upper)
    if column.integer and 1 <= math.floor(upper) - math.ceil(lower) + 1 <= count:
        return tuple(float(v) for v in range(math.ceil(lower), math.floor(upper) + 1))
    return tuple(float(v) for v in np.linspace(lower, upper, max(count, 2)))
