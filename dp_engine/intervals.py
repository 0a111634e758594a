"""From noisy outputs to labelled statistics with 95% intervals, and the half-widths known before release.

Intervals are the noisy value plus or minus opendp's accuracy at alpha = 0.05
for the mechanism's scale, where the mechanism gives one; how each statistic
builds its interval (a mean's ratio of two intervals, a count's clipping at
zero, a quantile's none) is in its module of `dp_engine.statistics`, which
`estimate` and `statistics` dispatch to.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from dp_engine.spec import Aggregate, CategoricalColumn, ColumnInfo, Statistic, StatisticEstimate
from dp_engine.statistics import STATISTICS
from dp_engine.statistics.base import ALPHA, ScaleOf, Slot

__all__ = ["ALPHA", "ScaleOf", "estimate", "group_labels", "statistics"]


def group_labels(group_by: tuple[str, ...], columns: Mapping[str, ColumnInfo]) -> list[tuple[str, ...]]:
    """Labels of every group in group-code order (first group-by column varies slowest)."""
    declared = []
    for name in group_by:
        column = columns[name]
        assert isinstance(column, CategoricalColumn)
        declared.append(column.categories)
    return [tuple(labels) for labels in itertools.product(*declared)]


def estimate(agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, groups: int,
             columns: Mapping[str, ColumnInfo], n_hint: int | None) -> StatisticEstimate:
    """What one aggregate's statistics will look like: mechanism, scale and 95% half-width if known."""
    return STATISTICS[agg.kind].estimate(agg, slots, scale_of, zcdp, groups, columns, n_hint)


def statistics(agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, outputs: list[Any],
               labels: list[tuple[str, ...]], columns: Mapping[str, ColumnInfo]) -> list[Statistic]:
    """The released statistics of one aggregate, from its slots' raw outputs (same order as `slots`)."""
    return STATISTICS[agg.kind].release(agg, slots, scale_of, zcdp, outputs, labels, columns)
