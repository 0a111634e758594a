"""The opendp measurements a query is made of, and which of them each aggregate needs.

A `Primitive` is one opendp measurement up to its noise scale, a `Slot` holds
`copies` identical ones (one per group for sums and quantiles); both are
defined in `dp_engine.statistics.base`, and each statistic module defines the
primitives it owns (count and count by categories in `count`, the clamped sum
in `sum`, the exponential-mechanism quantile in `quantile`; a mean reuses the
sum and a count, a histogram the count by categories). `layout` asks each
aggregate's statistic for its slots.

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

What composition prices is `Primitive.build`; what a release runs is
`Primitive.runner`, the same measurement without a leading 1-stable cast where
the primitive has one (the count by categories: see `statistics.count`), or
without the clamp numpy applies (the sum: see `statistics.sum`).
"""

from __future__ import annotations

from collections.abc import Mapping

from dp_engine.spec import Aggregate, ColumnInfo, Limits
from dp_engine.statistics import STATISTICS
from dp_engine.statistics.base import Primitive, Slot

__all__ = ["Primitive", "Slot", "layout"]


def layout(aggregates: tuple[Aggregate, ...], columns: Mapping[str, ColumnInfo], groups: int, grouped: bool,
           limits: Limits) -> tuple[tuple[Slot, ...], ...]:
    """The primitives each aggregate needs, in query order (assumes a validated query)."""
    return tuple(STATISTICS[agg.kind].slots(agg, columns, groups, grouped, limits) for agg in aggregates)
