"""Plan a query: validate it, calibrate its measurements to a budget, estimate accuracy, release.

    p = plan(query, columns, epsilon=1.0, delta=0.0, unit=1)
    p.cost            # Cost from the composed measurement's own map(unit)
    p.estimates(n)    # 95% half-widths before anything is spent
    p.release(data)   # one Statistic per group x aggregate (x histogram bin)

delta == 0 gives pure DP (Laplace, discrete Laplace, exponential mechanism);
delta > 0 gives zCDP (Gaussian, discrete Gaussian, exponential mechanism in
zCDP) converted to (epsilon, delta). See `calibrate` for the privacy unit and
the cache, `prepare` for why filtering costs nothing, `primitives` for the
measurements and the sequential composition of grouped sums and quantiles.

Timing. How long a release takes must not tell how many rows the filters kept
(an audit read a row count off the latency of one call at epsilon 1e-6). So,
after the real measurements, `release` invokes each slot's measurement once
more on the complement `prepare` builds (every row the real inputs leave out)
and discards the output: nothing of it is returned, logged or stored, and the
measurements, their calibration and their privacy maps are the same objects
as before. The per-row work then covers all n rows whether the filters keep
every row or none; the per-call overhead depends on the query's shape only (a
grouped sum or quantile runs one measurement per group and one on the
complement). An ungrouped sum (a mean's too) needs no complement: it reads
one value for every row, 0.0 for a row it leaves out. What remains is the noise samplers' time (random; about the
same for a count of 0 as of 48,790), opendp's internals (the quantile's
exponential mechanism over its candidates is constant in n) and memory
allocation and caches.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import opendp.prelude as dp

from dp_engine.calibrate import Calibration, Layouts, calibrate, compose, scale_at, unit_costs
from dp_engine.intervals import ScaleOf, estimate, group_labels, statistics
from dp_engine.prepare import Prepared, prepare
from dp_engine.primitives import Slot, layout
from dp_engine.spec import (
    DEFAULT_LIMITS,
    ColumnInfo,
    Cost,
    Limits,
    Query,
    QueryError,
    Statistic,
    StatisticEstimate,
)
from dp_engine.validate import MAX_EPSILON, MIN_EPSILON, check_budget, check_unit, group_count, validate

#: Search range of the global noise parameter in epsilon_for_half_width.
_S_MIN, _S_MAX = 1e-12, 1e15


@dataclass(frozen=True)
class Plan:
    """A validated, calibrated query, ready to estimate or release."""

    query: Query
    columns: Mapping[str, ColumnInfo]
    calibration: Calibration
    scale_factor: float = 1.0

    @property
    def cost(self) -> Cost:
        """The privacy cost: the composed measurement's map(unit), whatever `scale_factor` says."""
        return self.calibration.cost

    @property
    def measurement(self) -> dp.Measurement:
        """The composed opendp measurement at the claimed scales; its map(unit) is `cost`."""
        return self.calibration.composed()

    @property
    def unit(self) -> int:
        """The privacy unit the cost is priced at: the most rows one person contributes."""
        return self.calibration.unit

    def scale(self, slot: Slot) -> float:
        return self.calibration.scale(slot.primitive, self.scale_factor)

    def estimates(self, n_hint: int | None = None) -> list[StatisticEstimate]:
        """Mechanism, noise scale and 95% half-width per aggregate, known before release."""
        return _estimates(self.query, self.columns, self.calibration.layouts, self.scale, self.calibration.zcdp,
                          n_hint)

    def release(self, data: Mapping[str, np.ndarray]) -> list[Statistic]:
        """Run the measurements on the data: one Statistic per group x aggregate (x histogram bin)."""
        prepared = prepare(self.query, self.columns, data)
        labels = group_labels(self.query.group_by, self.columns)
        cal, factor = self.calibration, self.scale_factor
        released: list[Statistic] = []
        for agg, slots, inputs in zip(self.query.aggregates, cal.layouts, prepared.inputs):
            outputs = []
            for slot in slots:
                measurement = cal.measurement(slot.primitive, factor)
                if slot.role == "cells":
                    outputs.append(measurement(inputs.cells))
                else:
                    outputs.append([measurement(values) for values in inputs.values])
            released.extend(statistics(agg, slots, self.scale, cal.zcdp, outputs, labels, self.columns))
        _run_on_complements(cal, factor, prepared)
        return released

    def with_scale_factor(self, factor: float) -> Plan:
        """The same plan with every noise scale multiplied by `factor`, still claiming the original cost.

        For tests only: a deliberately mis-scaled mechanism the empirical privacy tests must catch.
        """
        return dataclasses.replace(self, scale_factor=self.scale_factor * factor)


def _run_on_complements(cal: Calibration, factor: float, prepared: Prepared) -> None:
    """Each slot's measurement once on the rows its real inputs left out, for the time only: the outputs are dropped.

    The same measurement object as the real call (closest per-row work: opendp's input conversion, clamp,
    sum, scoring or counting), so the total per-row work is that of all n rows.
    """
    for slots, inputs in zip(cal.layouts, prepared.inputs):
        for slot in slots:
            complement = inputs.complement_cells if slot.role == "cells" else inputs.complement_values
            if complement is not None:  # None: the real input already covered every row
                cal.measurement(slot.primitive, factor)(complement)


def plan(query: Query, columns: Mapping[str, ColumnInfo], *, epsilon: float, delta: float, unit: int,
         limits: Limits = DEFAULT_LIMITS) -> Plan:
    """Validate the query and budget, then calibrate (cached per query shape, epsilon, delta and unit)."""
    check_budget(epsilon, delta)
    check_unit(unit)
    validate(query, columns, limits)
    layouts = _layouts(query, columns, limits)
    return Plan(query, columns, calibrate(layouts, float(epsilon), float(delta), int(unit)))


def epsilon_for_half_width(query: Query, columns: Mapping[str, ColumnInfo], half_width: float, *, delta: float,
                           unit: int, n_hint: int | None = None, limits: Limits = DEFAULT_LIMITS) -> float:
    """The smallest epsilon at which every statistic with a known 95% half-width is within `half_width`.

    Every scale grows with the plan's one global parameter s and the cost falls
    as s grows, so rather than calibrating a plan per trial epsilon this
    searches the largest s whose half-widths meet the target (half-widths need
    no map, so the search is cheap) and returns the composed measurement's
    cost at that s. `plan` at that epsilon picks an s no larger, so its
    half-widths meet the target too; that is checked before returning.
    """
    check_budget(1.0, delta)
    check_unit(unit)
    if isinstance(half_width, bool) or not isinstance(half_width, (int, float)) or not (
            math.isfinite(half_width) and half_width > 0):
        raise QueryError("the target half-width must be a finite positive number")
    validate(query, columns, limits)
    layouts = _layouts(query, columns, limits)
    zcdp = delta > 0.0
    costs = unit_costs(layouts, zcdp, unit)

    def widths(scale_of: ScaleOf) -> list[float]:
        return [e.half_width for e in _estimates(query, columns, layouts, scale_of, zcdp, n_hint)
                if e.half_width is not None]

    def fits(s: float) -> bool:
        return max(widths(lambda slot: scale_at(s, costs[slot.primitive], zcdp))) <= half_width

    unreachable = QueryError(f"the target half-width is not reachable below epsilon {MAX_EPSILON:g}")
    if not widths(lambda slot: 1.0):
        raise QueryError("no statistic of this query has a half-width known before release")
    if not fits(_S_MIN):
        raise unreachable
    if fits(_S_MAX):
        return MIN_EPSILON
    s = dp.binary_search(fits, bounds=(_S_MIN, _S_MAX), T=float)
    try:
        spent = compose(layouts, costs, s, zcdp, float(delta)).map(unit)
    except dp.OpenDPException:
        raise unreachable from None
    epsilon = max(float(spent[0] if zcdp else spent), MIN_EPSILON)
    if epsilon > MAX_EPSILON:
        raise unreachable
    checked = plan(query, columns, epsilon=epsilon, delta=delta, unit=unit, limits=limits).estimates(n_hint)
    if any(e.half_width is not None and e.half_width > half_width for e in checked):
        raise unreachable
    return epsilon


def _layouts(query: Query, columns: Mapping[str, ColumnInfo], limits: Limits) -> Layouts:
    return layout(query.aggregates, columns, group_count(query.group_by, columns), bool(query.group_by), limits)


def _estimates(query: Query, columns: Mapping[str, ColumnInfo], layouts: Layouts, scale_of: ScaleOf, zcdp: bool,
               n_hint: int | None) -> list[StatisticEstimate]:
    if n_hint is not None and (isinstance(n_hint, bool) or not isinstance(n_hint, numbers.Integral) or n_hint < 0):
        raise QueryError("n_hint must be a non-negative integer")
    n_hint = None if n_hint is None else int(n_hint)
    groups = group_count(query.group_by, columns)
    return [estimate(agg, slots, scale_of, zcdp, groups, columns, n_hint)
            for agg, slots in zip(query.aggregates, layouts)]
