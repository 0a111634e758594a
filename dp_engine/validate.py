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
    AggKind,
    Aggregate,
    CategoricalColumn,
    ColumnInfo,
    Filter,
    Limits,
    NumericColumn,
    Op,
    Query,
    QueryError,
)

#: Most cells one aggregate may release (groups, times histogram bins).
MAX_CELLS = 65_536
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
        if agg.kind is AggKind.HISTOGRAM and groups * (len(agg.edges) + 1) > MAX_CELLS:
            raise QueryError(f"{agg.label} over the groups releases more than {MAX_CELLS} cells")


def check_budget(epsilon: float, delta: float) -> None:
    """Raise QueryError unless epsilon is finite in [1e-6, 1e6] and delta is finite in [0, 1)."""
    if not _is_real(epsilon) or not math.isfinite(epsilon) or not MIN_EPSILON <= epsilon <= MAX_EPSILON:
        raise QueryError(f"epsilon must be a finite number between {MIN_EPSILON:g} and {MAX_EPSILON:g}")
    if not _is_real(delta) or not math.isfinite(delta) or not 0.0 <= delta < 1.0:
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
        if agg.kind is AggKind.COUNT:
            if agg.column:
                raise QueryError("count takes no column")
        else:
            column = _known(agg.column, columns)
            if not isinstance(column, NumericColumn):
                raise QueryError(f"{agg.kind.value} needs a numeric column; {_name(agg.column)} is not numeric")
            _check_bounds(column)
        if agg.kind is AggKind.QUANTILE:
            if not _is_real(agg.q) or not math.isfinite(agg.q) or not 0.0 <= agg.q <= 1.0:
                raise QueryError("quantile q must be a finite number in [0, 1]")
        elif agg.q != 0.0:
            raise QueryError(f"q applies only to quantile, not to {agg.kind.value}")
        if agg.kind is AggKind.HISTOGRAM:
            _check_edges(agg.edges, limits)
        elif agg.edges:
            raise QueryError(f"edges apply only to histogram, not to {agg.kind.value}")


def _check_edges(edges: tuple[float, ...], limits: Limits) -> None:
    if not isinstance(edges, tuple) or not 1 <= len(edges) <= limits.max_edges:
        raise QueryError(f"a histogram needs between 1 and {limits.max_edges} edges")
    if not all(_is_real(e) and math.isfinite(e) for e in edges):
        raise QueryError("histogram edges must be finite numbers")
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise QueryError("histogram edges must be strictly increasing")


def _check_filters(filters: tuple[Filter, ...], columns: Mapping[str, ColumnInfo], limits: Limits) -> None:
    if not isinstance(filters, tuple):
        raise QueryError("filters must be a tuple")
    if len(filters) > limits.max_filters:
        raise QueryError(f"a query may have at most {limits.max_filters} filters")
    for flt in filters:
        if not isinstance(flt, Filter) or not isinstance(flt.op, Op):
            raise QueryError("each filter must be a Filter with a known operator")
        column = _known(flt.column, columns)
        if flt.op is Op.IN:
            if not isinstance(flt.value, (tuple, list)) or not 1 <= len(flt.value) <= limits.max_in_values:
                raise QueryError(f"'in' on {_name(flt.column)} needs between 1 and {limits.max_in_values} values")
            values = tuple(flt.value)
        else:
            if isinstance(flt.value, (tuple, list)):
                raise QueryError(f"'{flt.op.value}' on {_name(flt.column)} takes a single value")
            values = (flt.value,)
        if isinstance(column, CategoricalColumn):
            if flt.op not in _CATEGORICAL_OPS:
                raise QueryError(f"'{flt.op.value}' does not apply to categorical column {_name(flt.column)}")
            if not all(isinstance(v, str) and v in column.categories for v in values):
                raise QueryError(f"a filter on {_name(flt.column)} names a category the column does not declare")
        elif not all(_is_real(v) and math.isfinite(float(v)) for v in values):
            raise QueryError(f"a filter on numeric column {_name(flt.column)} needs finite numbers")


def _check_group_by(group_by: tuple[str, ...], columns: Mapping[str, ColumnInfo], limits: Limits) -> int:
    if not isinstance(group_by, tuple):
        raise QueryError("group_by must be a tuple")
    if len(group_by) > limits.max_group_by:
        raise QueryError(f"a query may group by at most {limits.max_group_by} columns")
    if len(set(group_by)) != len(group_by):
        raise QueryError("group_by names a column twice")
    for name in group_by:
        column = _known(name, columns)
        if not isinstance(column, CategoricalColumn):
            raise QueryError(f"group_by needs categorical columns; {_name(name)} is not categorical")
        if not column.categories:
            raise QueryError(f"group_by column {_name(name)} declares no categories")
    groups = group_count(group_by, columns)
    if groups > limits.max_groups:
        raise QueryError(f"group_by gives more than {limits.max_groups} groups")
    return groups


def _known(name: str, columns: Mapping[str, ColumnInfo]) -> ColumnInfo:
    if not isinstance(name, str) or name not in columns:
        raise QueryError(f"unknown column {_name(name)}")
    return columns[name]


def _categorical(column: ColumnInfo) -> CategoricalColumn:
    if not isinstance(column, CategoricalColumn):
        raise QueryError(f"{_name(column.name)} is not categorical")
    return column


def _check_bounds(column: NumericColumn) -> None:
    lower, upper = column.lower, column.upper
    if not (_is_real(lower) and _is_real(upper) and math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise QueryError(f"column {_name(column.name)} declares invalid clamp bounds")


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _name(name: object) -> str:
    """A column name for a message, shortened so a client cannot echo long text through errors."""
    text = repr(name) if isinstance(name, str) else "<not a name>"
    return text if len(text) <= 66 else text[:62] + "...'"
