"""The statistics a DP query may ask for: one module each, listed in one table.

`AggKind` names them (as a query and the wire do) and `STATISTICS` maps each
to the object that holds everything specific to it (`base.StatisticKind`).
The generic modules of dp_engine dispatch through `STATISTICS` and name no
kind. To add a statistic: write its module here, add its `AggKind` member and
its `STATISTICS` entry below, the matching `AGG_<MEMBER>` value of
`AggregateKind` in protos/sandbox/v1/dp.proto (the sandbox maps proto values
to kinds by that name), and a builder method in the client SDK
(clients/query.py).
"""

from __future__ import annotations

import enum

from dp_engine.statistics.count import COUNT
from dp_engine.statistics.histogram import HISTOGRAM
from dp_engine.statistics.mean import MEAN
from dp_engine.statistics.quantile import QUANTILE
from dp_engine.statistics.sum import SUM
from dp_engine.statistics.base import StatisticKind


class AggKind(str, enum.Enum):
    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    QUANTILE = "quantile"
    HISTOGRAM = "histogram"


#: Every kind's statistic, in AggKind's order; each kind's object lives in the module named as its value.
STATISTICS: dict[AggKind, StatisticKind] = {
    AggKind.COUNT: COUNT,
    AggKind.SUM: SUM,
    AggKind.MEAN: MEAN,
    AggKind.QUANTILE: QUANTILE,
    AggKind.HISTOGRAM: HISTOGRAM,
}

__all__ = ["STATISTICS", "AggKind", "StatisticKind"]
