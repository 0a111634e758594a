"""A fluent description of a DP query, e.g.

    Query("adult_census").where("age", ">=", 30).group_by("sex").count().mean("hours_per_week")

It is a structured description (never SQL text, never a serialised plan); the
server validates it against the dataset's schema and the grant. Plain data:
``clients.serde.query_to_pb`` turns it into the wire's ``DpQuery``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

__all__ = ["Query", "Filter", "Aggregate"]

#: Operator as written -> the filter's op, the name of the wire's ``FILTER_<OP>``.
_OPS = {"=": "eq", "==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge", "in": "in"}


def _literal(value: float | int | str) -> float | str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("filter values are numbers or strings")
    return float(value)


@dataclass(frozen=True)
class Filter:
    """Keep rows where ``column op values``: ``op`` is eq, ne, lt, le, gt, ge or in (one value except for in)."""

    column: str
    op: str
    values: tuple[float | str, ...]


@dataclass(frozen=True)
class Aggregate:
    """One statistic: ``kind`` names the wire's ``AGG_<KIND>`` (count, sum, mean, quantile, histogram, ...)."""

    kind: str
    column: str = ""
    q: float = 0.0  # quantile only
    edges: tuple[float, ...] = ()  # histogram only


@dataclass(frozen=True)
class Query:
    dataset: str
    _filters: tuple[Filter, ...] = field(default=(), repr=False)
    _group_by: tuple[str, ...] = ()
    _aggregates: tuple[Aggregate, ...] = field(default=(), repr=False)

    @property
    def filters(self) -> tuple[Filter, ...]:
        return self._filters

    @property
    def grouping(self) -> tuple[str, ...]:
        return self._group_by

    @property
    def aggregates(self) -> tuple[Aggregate, ...]:
        return self._aggregates

    def where(self, column: str, op: str, value: float | int | str | Sequence[float | int | str]) -> Query:
        """Keep rows where ``column op value``; ``op`` is one of = != < <= > >= in."""
        if op not in _OPS:
            raise ValueError(f"unknown operator {op!r}; use one of {', '.join(_OPS)}")
        if op == "in" and isinstance(value, Sequence) and not isinstance(value, str):
            values: list[float | int | str] = list(value)
        elif isinstance(value, (int, float, str)):
            values = [value]
        else:
            raise TypeError("'in' takes a sequence of values; the other operators one value")
        f = Filter(column, _OPS[op], tuple(_literal(v) for v in values))
        return replace(self, _filters=(*self._filters, f))

    def group_by(self, *columns: str) -> Query:
        return replace(self, _group_by=(*self._group_by, *columns))

    def _agg(self, aggregate: Aggregate) -> Query:
        return replace(self, _aggregates=(*self._aggregates, aggregate))

    def count(self) -> Query:
        return self._agg(Aggregate("count"))

    def sum(self, column: str) -> Query:
        return self._agg(Aggregate("sum", column))

    def mean(self, column: str) -> Query:
        return self._agg(Aggregate("mean", column))

    def quantile(self, column: str, q: float) -> Query:
        return self._agg(Aggregate("quantile", column, q=q))

    def median(self, column: str) -> Query:
        return self.quantile(column, 0.5)

    def histogram(self, column: str, edges: Sequence[float]) -> Query:
        return self._agg(Aggregate("histogram", column, edges=tuple(float(e) for e in edges)))
