"""Reject malformed or oversized queries and budgets before any planning or data access.

Messages name columns and limits, never a data value or a filter literal. Which
columns a caller may filter or group on (the level policy) is the caller's job.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from dp_engine.spec import (
    DEFAULT_LIMITS,
    Aggregate,
    CategoricalColumn,
    ColumnInfo,
    Filter,
    Limits,
    Op,
    Query,
    QueryError,
)
from dp_engine.statistics import STATISTICS, AggKind
from dp_engine.statistics.base import MAX_CELLS, is_real, known, shown  # noqa: F401 (MAX_CELLS: re-exported)

#: Smallest and largest epsilon a plan accepts.
MIN_EPSILON = 1e-6
MAX_EPSILON = 1e6

_CATEGORICAL_OPS = frozenset({Op.EQ, Op.NE, Op.IN})


def validate(query: Query, columns: Mapping[str, ColumnInfo], limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise QueryError unless the query is well formed and within the limits."""
    if not isinstance(query, Query):
        raise QueryError("the query must be a Query")
    _check_aggregates(query, columns, limits)
    _check_filters(query.filters, columns, limits)
    groups = _check_group_by(query.group_by, columns, limits)
    for agg in query.aggregates:
        STATISTICS[agg.kind].check_groups(agg, groups)


def check_budget(epsilon: float, delta: float) -> None:
    """Raise QueryError unless epsilon is finite in [1e-6, 1e6] and delta is finite in [0, 1)."""
    if not is_real(epsilon) or not math.isfinite(epsilon) or not MIN_EPSILON <= epsilon <= MAX_EPSILON:
        raise QueryError(f"epsilon must be a finite number between {MIN_EPSILON:g} and {MAX_EPSILON:g}")
    if not is_real(delta) or not math.isfinite(delta) or not 0.0 <= delta < 1.0:
        raise QueryError("delta must be a finite number in [0, 1)")


def check_unit(unit: int) -> None:
    """Raise QueryError unless the privacy unit (most rows per person) is a positive integer."""
    if isinstance(unit, bool) or not isinstance(unit, numbers.Integral) or unit < 1:
        raise QueryError("the privacy unit (rows per person) must be a positive integer")


def group_count(group_by: tuple[str, ...], columns: Mapping[str, ColumnInfo]) -> int:
    """Number of group-by cells: the product of the declared category counts (1 without group-by)."""
    return math.prod(len(_categorical(columns[name]).categories) for name in group_by)


def _check_aggregates(query: Query, columns: Mapping[str, ColumnInfo], limits: Limits) -> None:
    aggregates = query.aggregates
    if not isinstance(aggregates, tuple) or not aggregates:
        raise QueryError("a query needs at least one aggregate")
    if len(aggregates) > limits.max_aggregates:
        raise QueryError(f"a query may have at most {limits.max_aggregates} aggregates")
    for agg in aggregates:
        if not isinstance(agg, Aggregate) or not isinstance(agg.kind, AggKind):
            raise QueryError("each aggregate must be an Aggregate with a known kind")
        STATISTICS[agg.kind].check(agg, columns, limits)


def _check_filters(filters: tuple[Filter, ...], columns: Mapping[str, ColumnInfo], limits: Limits) -> None:
    if not isinstance(filters, tuple):
        raise QueryError("filters must be a tuple")
    if len(filters) > limits.max_filters:
        raise QueryError(f"a query may have at most {limits.max_filters} filters")
    for flt in filters:
        if not isinstance(flt, Filter) or not isinstance(flt.op, Op):
            raise QueryError("each filter must be a Filter with a known operator")
        column = known(flt.column, columns)
        if flt.op is Op.IN:
            if not isinstance(flt.value, (tuple, list)) or not 1 <= len(flt.value) <= limits.max_in_values:
                raise QueryError(f"'in' on {shown(flt.column)} needs between 1 and {limits.max_in_values} values")
            values = tuple(flt.value)
        else:
            if isinstance(flt.value, (tuple, list)):
                raise QueryError(f"'{flt.op.value}' on {shown(flt.column)} takes a single value")
            values = (flt.value,)
        if isinstance(column, CategoricalColumn):
            if flt.op not in _CATEGORICAL_OPS:
                raise QueryError(f"'{flt.op.value}' does not apply to categorical column {shown(flt.column)}")
            if not all(isinstance(v, str) and v in column.categories for v in values):
                raise QueryError(f"a filter on {shown(flt.column)} names a category the column does not declare")
        elif not all(is_real(v) and math.isfinite(float(v)) for v in values):
            raise QueryError(f"a filter on numeric column {shown(flt.column)} needs finite numbers")


def _check_group_by(group_by: tuple[str, ...], columns: Mapping[str, ColumnInfo], limits: Limits) -> int:
    if not isinstance(group_by, tuple):
        raise QueryError("group_by must be a tuple")
    if len(group_by) > limits.max_group_by:
        raise QueryError(f"a query may group by at most {limits.max_group_by} columns")
    if len(set(group_by)) != len(group_by):
        raise QueryError("group_by names a column twice")
    for name in group_by:
        column = known(name, columns)
        if not isinstance(column, CategoricalColumn):
            raise QueryError(f"group_by needs categorical columns; {shown(name)} is not categorical")
        if not column.categories:
            raise QueryError(f"group_by column {shown(name)} declares no categories")
    groups = group_count(group_by, columns)
    if groups > limits.max_groups:
        raise QueryError(f"group_by gives more than {limits.max_groups} groups")
    return groups


def _categorical(column: ColumnInfo) -> CategoricalColumn:
    if not isinstance(column, CategoricalColumn):
        raise QueryError(f"{shown(column.name)} is not categorical")
    return column
