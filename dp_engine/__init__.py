"""Differential-privacy queries on opendp: query spec -> measurement, cost, accuracy, release.

Pure library: no gRPC, no SQLite, nothing from the sandbox. Every noise comes
from an opendp measurement and every cost from a measurement's own map.
Each statistic (count, sum, mean, ...) is one module of `dp_engine.statistics`,
listed in its `STATISTICS` table; `dp_engine.noise` holds the HE scoring's noise.
"""

from dp_engine.plan import Plan, epsilon_for_half_width, plan
from dp_engine.prepare import prepare
from dp_engine.spec import (
    DEFAULT_LIMITS,
    Aggregate,
    CategoricalColumn,
    ColumnInfo,
    Cost,
    Filter,
    Limits,
    NumericColumn,
    Op,
    Query,
    QueryError,
    Statistic,
    StatisticEstimate,
)
from dp_engine.statistics import AggKind
from dp_engine.validate import check_budget, validate

__all__ = [
    "DEFAULT_LIMITS",
    "AggKind",
    "Aggregate",
    "CategoricalColumn",
    "ColumnInfo",
    "Cost",
    "Filter",
    "Limits",
    "NumericColumn",
    "Op",
    "Plan",
    "Query",
    "QueryError",
    "Statistic",
    "StatisticEstimate",
    "check_budget",
    "epsilon_for_half_width",
    "plan",
    "prepare",
    "validate",
]
