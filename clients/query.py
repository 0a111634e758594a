"""A fluent description of a DP query, e.g.

    Query("adult_census").where("age", ">=", 30).group_by("sex").count().mean("hours_per_week")

It is a structured description (never SQL text, never a serialised plan); the
server validates it against the dataset's schema and the grant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from protos.sandbox.v1 import dp_pb2

__all__ = ["Query"]

_OPS = {"=": dp_pb2.FILTER_EQ, "==": dp_pb2.FILTER_EQ, "!=": dp_pb2.FILTER_NE, "<": dp_pb2.FILTER_LT,
        "<=": dp_pb2.FILTER_LE, ">": dp_pb2.FILTER_GT, ">=": dp_pb2.FILTER_GE, "in": dp_pb2.FILTER_IN}


def _literal(value: float | int | str) -> dp_pb2.Literal:
    if isinstance(value, str):
        return dp_pb2.Literal(text=value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("filter values are numbers or strings")
    return dp_pb2.Literal(number=float(value))


@dataclass(frozen=True)
class Query:
    dataset: str
    _filters: tuple[dp_pb2.QueryFilter, ...] = field(default=(), repr=False)
    _group_by: tuple[str, ...] = ()
    _aggregates: tuple[dp_pb2.QueryAggregate, ...] = field(default=(), repr=False)

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
        f = dp_pb2.QueryFilter(column=column, op=_OPS[op], values=[_literal(v) for v in values])
        return replace(self, _filters=(*self._filters, f))

    def group_by(self, *columns: str) -> Query:
        return replace(self, _group_by=(*self._group_by, *columns))

    def _agg(self, **kw: object) -> Query:
        return replace(self, _aggregates=(*self._aggregates, dp_pb2.QueryAggregate(**kw)))  # type: ignore[arg-type]

    def count(self) -> Query:
        return self._agg(kind=dp_pb2.AGG_COUNT)

    def sum(self, column: str) -> Query:
        return self._agg(kind=dp_pb2.AGG_SUM, column=column)

    def mean(self, column: str) -> Query:
        return self._agg(kind=dp_pb2.AGG_MEAN, column=column)

    def quantile(self, column: str, q: float) -> Query:
        return self._agg(kind=dp_pb2.AGG_QUANTILE, column=column, q=q)

    def median(self, column: str) -> Query:
        return self.quantile(column, 0.5)

    def histogram(self, column: str, edges: Sequence[float]) -> Query:
        return self._agg(kind=dp_pb2.AGG_HISTOGRAM, column=column, edges=[float(e) for e in edges])

    def to_pb(self) -> dp_pb2.DpQuery:
        return dp_pb2.DpQuery(dataset=self.dataset, filters=list(self._filters), group_by=list(self._group_by),
                              aggregates=list(self._aggregates))
