"""sum: the sum of a numeric column's values clamped to its public bounds, overall or per group.

Priced: `make_clamp` then `make_bounded_float_checked_sum` (a pairwise float sum
with a public size limit: `make_sum` on an unknown size assumes at most 2**20
rows and drops the rest), then Laplace (pure DP) or Gaussian (zCDP) noise.
Run: the same checked sum and noise on values `prepare` already clamped with
numpy, the bounds widened to take in 0 (an ungrouped sum reads 0.0 for every
row it leaves out); opendp's maps give the same price, which the calibration
checks before every first use. opendp's vector API has no parallel
composition, so a grouped sum is one measurement per group composed
sequentially: its cost grows with the number of groups. The interval is the
noisy value plus or minus opendp's accuracy at alpha.

The sum measurement is also the numerator of a mean, which imports it from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import opendp.prelude as dp

from dp_engine.spec import Aggregate, ColumnInfo, Limits, Statistic, StatisticEstimate
from dp_engine.statistics.base import (
    ALPHA,
    FLOATS,
    MAX_ROWS,
    ROWS,
    AggInputs,
    OneNumericColumn,
    Primitive,
    ScaleOf,
    Selection,
    Slot,
    bounds_of,
    family,
    noise,
    sum_inputs,
)


@dataclass(frozen=True)
class SumPrimitive(Primitive):
    """Clamp to `bounds`, sum, add continuous noise."""

    kind: ClassVar[str] = "sum"
    bounds: tuple[float, float] = (0.0, 0.0)

    def build(self, scale: float, zcdp: bool) -> dp.Measurement:
        # make_sum on an unknown size assumes at most 2**20 rows and drops the rest;
        # the checked pairwise sum takes a public size limit instead.
        return (dp.t.make_clamp(FLOATS, ROWS, bounds=self.bounds)
                >> dp.t.make_bounded_float_checked_sum(MAX_ROWS, self.bounds, S="Pairwise<f64>")
                >> noise(scale, zcdp))

    def runner(self, scale: float, zcdp: bool) -> dp.Measurement:
        # The clamp is numpy's clip in `prepare` (opendp's make_clamp took three quarters of a release on a
        # million rows), and an ungrouped sum reads every row with 0.0 for the rows it leaves out, so the
        # bounds widen to take in 0. Its map is the same: the sensitivity and the float relaxation depend
        # on the largest magnitude, which 0 never raises (the calibration checks it against `build`).
        lower, upper = self.bounds
        wide = (min(lower, 0.0), max(upper, 0.0))
        return dp.t.make_bounded_float_checked_sum(MAX_ROWS, wide, S="Pairwise<f64>") >> noise(scale, zcdp)

    def mechanism(self, zcdp: bool) -> str:
        return family(zcdp)

    def half_width(self, scale: float, zcdp: bool, alpha: float = ALPHA) -> float | None:
        accuracy = dp.gaussian_scale_to_accuracy if zcdp else dp.laplacian_scale_to_accuracy
        return float(accuracy(float(scale), alpha))


def sums_slot(agg: Aggregate, columns: Mapping[str, ColumnInfo], groups: int) -> Slot:
    """One clamped sum of the aggregate's column per group."""
    return Slot("values", SumPrimitive(bounds=bounds_of(agg, columns)), groups)


@dataclass(frozen=True)
class Sum(OneNumericColumn):
    def label(self, agg: Aggregate) -> str:
        return f"sum({agg.column})"

    def slots(self, agg: Aggregate, columns: Mapping[str, ColumnInfo], groups: int, grouped: bool,
              limits: Limits) -> tuple[Slot, ...]:
        return (sums_slot(agg, columns, groups),)

    def prepare(self, agg: Aggregate, selection: Selection) -> AggInputs:
        return sum_inputs(agg, selection)

    def estimate(self, agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, groups: int,
                 columns: Mapping[str, ColumnInfo], n_hint: int | None) -> StatisticEstimate:
        (main,) = slots
        scale = scale_of(main)
        return StatisticEstimate(agg.label, main.primitive.mechanism(zcdp), scale,
                                 main.primitive.half_width(scale, zcdp, ALPHA),
                                 "sum of values clamped to the column's bounds")

    def release(self, agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, outputs: list[Any],
                labels: list[tuple[str, ...]], columns: Mapping[str, ColumnInfo]) -> list[Statistic]:
        (main,) = slots
        scale = scale_of(main)
        mechanism = main.primitive.mechanism(zcdp)
        hw = main.primitive.half_width(scale, zcdp, ALPHA)
        assert hw is not None
        return [Statistic(agg.label, label, float(v), float(v) - hw, float(v) + hw, mechanism, scale)
                for label, v in zip(labels, outputs[0])]


SUM = Sum()
