"""The structured query description: what a client may ask, never SQL text or a serialised plan.

Column metadata comes from the dataset's schema (public clamp bounds, declared
categories), never from the data. Data is passed as numpy arrays:
numeric columns as float64 (NaN = missing) or int64, categorical columns as
integer codes into their declared categories (-1 = missing).

The kinds of aggregate (`AggKind`) and what each one does live in
`dp_engine.statistics`, one module per statistic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dp_engine.statistics import AggKind


class QueryError(ValueError):
    """A query that is malformed or not answerable; the message names no data value."""


@dataclass(frozen=True)
class NumericColumn:
    name: str
    lower: float
    upper: float
    integer: bool = False


@dataclass(frozen=True)
class CategoricalColumn:
    name: str
    categories: tuple[str, ...]


ColumnInfo = NumericColumn | CategoricalColumn


class Op(str, enum.Enum):
    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"


@dataclass(frozen=True)
class Filter:
    column: str
    op: Op
    value: float | str | tuple[float | str, ...]


@dataclass(frozen=True)
class Aggregate:
    kind: AggKind
    column: str = ""
    q: float = 0.0
    edges: tuple[float, ...] = ()

    @property
    def label(self) -> str:
        """The aggregate's name in released statistics, e.g. 'count' or 'quantile(age, 0.5)'."""
        from dp_engine.statistics import STATISTICS  # imported here: every statistic module imports this one

        return STATISTICS[self.kind].label(self)


@dataclass(frozen=True)
class Query:
    aggregates: tuple[Aggregate, ...]
    filters: tuple[Filter, ...] = ()
    group_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a query cheap to validate and plan (huge filter lists, huge `in` sets, ...)."""

    max_filters: int = 16
    max_in_values: int = 256
    max_aggregates: int = 8
    max_group_by: int = 2
    max_groups: int = 4096
    max_edges: int = 256
    quantile_candidates: int = 1025


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Statistic:
    """One released number (or one cell of a histogram or group-by)."""

    aggregate: str  # Aggregate.label
    group: tuple[str, ...]  # group-by labels, then the histogram bin label if any
    value: float
    low: float | None  # 95% interval; None where the mechanism gives no value interval (quantile)
    high: float | None
    mechanism: str  # e.g. "discrete laplace", "laplace", "discrete gaussian", "gaussian", "exponential"
    scale: float


@dataclass(frozen=True)
class StatisticEstimate:
    aggregate: str
    mechanism: str
    scale: float
    half_width: float | None  # 95% half-width before release; None where not known in advance
    note: str = ""


@dataclass(frozen=True)
class Cost:
    epsilon: float
    delta: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
