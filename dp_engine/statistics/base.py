"""What a statistic is made of, and the building blocks every statistic module shares.

A statistic (count, sum, mean, ...) is one module of this package defining one
object that satisfies `StatisticKind`: it checks its aggregate's arguments,
says which opendp measurements (`Primitive`s, in `Slot`s) it needs, builds
their input arrays and the complements of those arrays (the timing defence,
see `dp_engine.prepare`), and turns the measurements' noisy outputs into
released `Statistic`s with their 95% intervals. `dp_engine.statistics.STATISTICS`
maps each `AggKind` to that object; the generic modules (`validate`,
`primitives`, `prepare`, `intervals`) dispatch through that table and know no
statistic by name.

Every primitive reads a float64 vector without NaN under the symmetric
distance (`FLOATS`, `ROWS`), so all of a query's primitives share one input
space and `dp.c.make_composition` can price them together. Noise always comes
from an opendp measurement: `Primitive.build` is what composition prices,
`Primitive.runner` what a release runs (the same measurement without a leading
1-stable cast or clamp whose row-wise map `prepare` applies in numpy; opendp's
map of the runner must not exceed the priced one's, checked at calibration).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import opendp.prelude as dp

from dp_engine.spec import (
    Aggregate,
    ColumnInfo,
    Limits,
    NumericColumn,
    QueryError,
    Statistic,
    StatisticEstimate,
)

dp.enable_features("contrib")

#: Most rows a dataset may have: the public size limit of opendp's float sum (rows past it would be dropped).
MAX_ROWS = 2**30
#: Most cells one aggregate may release (groups, times histogram bins).
MAX_CELLS = 65_536
#: 1 - the coverage of a released interval.
ALPHA = 0.05

#: The input space every primitive reads: float64 vectors without NaN, rows added or removed.
FLOATS = dp.vector_domain(dp.atom_domain(T=float, nan=False))
ROWS = dp.symmetric_distance()
#: What a plain count's runner reads: booleans, of which it reads only the number (opendp copies an eighth of
#: the bytes a float64 vector would need).
BOOLS = dp.vector_domain(dp.atom_domain(T=bool))

#: A slot's calibrated noise scale.
ScaleOf = Callable[["Slot"], float]


def cell_dtype(cells: int) -> type[np.signedinteger]:
    """The integer type of group codes and histogram cells 0..cells-1: int32 unless there are more cells."""
    return np.int32 if cells <= np.iinfo(np.int32).max else np.int64


def noise(scale: float, zcdp: bool) -> Any:
    """opendp's additive noise at this scale: Gaussian under zCDP, Laplace under pure DP (discrete on integers)."""
    return dp.m.then_gaussian(scale) if zcdp else dp.m.then_laplace(scale)


def family(zcdp: bool) -> str:
    return "gaussian" if zcdp else "laplace"


# ---------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Primitive:
    """One opendp measurement, up to its noise scale; each statistic module defines the ones it owns.

    Subclasses are frozen dataclasses (calibrations are cached on them, so equal fields mean the same
    measurement) and set `kind`, a short name for messages and tests.
    """

    kind: ClassVar[str] = ""

    def build(self, scale: float, zcdp: bool) -> dp.Measurement:
        """The measurement with this noise scale, pure DP (Laplace) or zCDP (Gaussian), on float64 vectors.

        This is what composition prices: `cast()` (if any) followed by `runner`.
        """
        runner = self.runner(scale, zcdp)
        cast = self.cast()
        return runner if cast is None else cast >> runner

    def cast(self) -> dp.Transformation | None:
        """A 1-stable transformation from `FLOATS` to what `runner` reads, if that is not `FLOATS` itself."""
        return None

    def runner(self, scale: float, zcdp: bool) -> dp.Measurement:
        """What a release invokes on `prepare`'s arrays: `build` without the leading cast (or clamp), whose
        row-wise map `prepare` applies."""
        raise NotImplementedError

    def mechanism(self, zcdp: bool) -> str:
        raise NotImplementedError

    def half_width(self, scale: float, zcdp: bool, alpha: float = ALPHA) -> float | None:
        """Half-width of the (1 - alpha) interval around the noisy value; None where there is none."""
        raise NotImplementedError


@dataclass(frozen=True)
class Slot:
    """`copies` identical primitives in one aggregate: one per group for sums and quantiles."""

    role: str  # "cells" (a count-like input) or "values" (one value array per group)
    primitive: Primitive
    copies: int


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class AggInputs:
    """The arrays one aggregate's measurements read: `cells` for a count-like one, `values` per group.

    `complement_cells` and `complement_values` are the same kinds of array built from every row the
    others leave out (values in one array, whatever the group), so that kept and complement together
    hold all n rows: a release runs the measurements on them too, for the time only, and discards the
    outputs.
    """

    # booleans for a plain count (only its length matters); otherwise group codes or group*bins + bin,
    # of cell_dtype(cells)
    cells: np.ndarray | None = None
    # float64 values without NaN, one array per group (a grouped sum's are made as they are read)
    values: Sequence[np.ndarray] = ()
    complement_cells: np.ndarray | None = None
    complement_values: np.ndarray | None = None  # None: `values` already cover every row (an ungrouped sum)


class Selection(Protocol):
    """What `prepare` computed once for the whole query (filters, group-by), for every aggregate to read.

    Every method returns the kept part and the left-out part (the complement), which together hold
    every row, and costs a full pass over the n rows whatever the filters keep.
    """

    groups: int  # group-by cells (1 without group-by)
    codes: np.ndarray | None  # every row's group code (0 for a row in no group), if grouped

    def kept_zeros(self) -> tuple[np.ndarray, np.ndarray]:
        """False values, one per kept row and one per other row: what a plain count reads (only lengths)."""
        ...

    def take_kept(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A per-row array's entries for the kept rows and for the rest."""
        ...

    def full(self, column: str) -> np.ndarray:
        """A numeric column as float64 for every row, a missing value replaced by the column's lower bound."""
        ...

    def take_present(self, column: str, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A per-row array's entries for the rows kept and not missing `column`, and for the rest."""
        ...

    def split(self, column: str) -> tuple[np.ndarray, ...]:
        """The column's kept, present values, one float64 array per group, then (last) every other row's, each
        in ascending order."""
        ...

    def split_clamped(self, column: str) -> tuple[np.ndarray, ...]:
        """As `split`, with every value clamped to the column's public bounds."""
        ...

    def present_zeros(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """As `kept_zeros`, for the rows kept and not missing `column`, and the rest."""
        ...

    def masked_clamped(self, column: str) -> np.ndarray:
        """n values, one per row: the column's value clamped to its bounds where the row is kept and not
        missing it, 0.0 elsewhere (ungrouped queries only). Summed, it is the kept rows' clamped sum, and
        it covers every row: it needs no complement."""
        ...

    def masked_clamped_by_group(self, column: str) -> Sequence[np.ndarray]:
        """One array of n values per group (grouped queries only), each made as it is read: the column's clamped
        value where the row is kept, not missing it and in that group, 0.0 elsewhere. Each covers every row: no
        complement."""
        ...


def split_inputs(agg: Aggregate, selection: Selection) -> AggInputs:
    """One value array per group and the complement: what per-group quantiles read."""
    *values, rest = selection.split(agg.column)
    return AggInputs(values=tuple(values), complement_values=rest)


#: Grouped sums over at most this many groups read one masked array of n values per group (no sort, no gather,
#: the same work whichever rows fall in which group); over more, the clamped values split by group.
MASKED_GROUPS = 16


def sum_inputs(agg: Aggregate, selection: Selection) -> AggInputs:
    """What a sum's runner reads: every row's masked clamped value, one array of n per group (no complement
    needed: each covers all n rows); over more than `MASKED_GROUPS` groups, the clamped values split by group and
    the complement."""
    if selection.codes is None:
        return AggInputs(values=(selection.masked_clamped(agg.column),))
    if selection.groups <= MASKED_GROUPS:
        return AggInputs(values=selection.masked_clamped_by_group(agg.column))
    *values, rest = selection.split_clamped(agg.column)
    return AggInputs(values=tuple(values), complement_values=rest)


# ---------------------------------------------------------------- the protocol


@runtime_checkable
class StatisticKind(Protocol):
    """Everything specific to one kind of statistic; the generic modules call nothing else of it."""

    def label(self, agg: Aggregate) -> str:
        """The aggregate's name in released statistics, e.g. 'sum(income)'."""
        ...

    def check(self, agg: Aggregate, columns: Mapping[str, ColumnInfo], limits: Limits) -> None:
        """Raise QueryError unless the aggregate's arguments (column, q, edges) fit this statistic."""
        ...

    def check_groups(self, agg: Aggregate, groups: int) -> None:
        """Raise QueryError if the aggregate over `groups` group-by cells would release too much."""
        ...

    def columns(self, agg: Aggregate) -> tuple[str, ...]:
        """The data columns the aggregate reads (besides the filters' and the group-by's)."""
        ...

    def slots(self, agg: Aggregate, columns: Mapping[str, ColumnInfo], groups: int, grouped: bool,
              limits: Limits) -> tuple[Slot, ...]:
        """The primitives the aggregate needs (assumes a validated query); the first is the main one."""
        ...

    def prepare(self, agg: Aggregate, selection: Selection) -> AggInputs:
        """The arrays the slots read ("cells" slots read `cells`, "values" slots `values`) and their complements."""
        ...

    def estimate(self, agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, groups: int,
                 columns: Mapping[str, ColumnInfo], n_hint: int | None) -> StatisticEstimate:
        """Mechanism, scale and 95% half-width if known before release."""
        ...

    def release(self, agg: Aggregate, slots: tuple[Slot, ...], scale_of: ScaleOf, zcdp: bool, outputs: list[Any],
                labels: list[tuple[str, ...]], columns: Mapping[str, ColumnInfo]) -> list[Statistic]:
        """The released statistics, from the slots' raw outputs (same order as `slots`; a "values" slot's
        output is a list, one per group)."""
        ...


# ---------------------------------------------------------------- checks


def is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def shown(column: object) -> str:
    """A column name for a message, shortened so a client cannot echo long text through errors."""
    text = repr(column) if isinstance(column, str) else "<not a name>"
    return text if len(text) <= 66 else text[:62] + "...'"


def known(column: str, columns: Mapping[str, ColumnInfo]) -> ColumnInfo:
    if not isinstance(column, str) or column not in columns:
        raise QueryError(f"unknown column {shown(column)}")
    return columns[column]


def check_bounds(column: NumericColumn) -> None:
    lower, upper = column.lower, column.upper
    if not (is_real(lower) and is_real(upper) and math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise QueryError(f"column {shown(column.name)} declares invalid clamp bounds")


def check_numeric_column(agg: Aggregate, columns: Mapping[str, ColumnInfo]) -> None:
    """The aggregate names a known numeric column with valid clamp bounds."""
    column = known(agg.column, columns)
    if not isinstance(column, NumericColumn):
        raise QueryError(f"{agg.kind.value} needs a numeric column; {shown(agg.column)} is not numeric")
    check_bounds(column)


def check_no_q(agg: Aggregate) -> None:
    if agg.q != 0.0:
        raise QueryError(f"q applies only to quantile, not to {agg.kind.value}")


def check_no_edges(agg: Aggregate) -> None:
    if agg.edges:
        raise QueryError(f"edges apply only to histogram, not to {agg.kind.value}")


class OneNumericColumn:
    """What a statistic over one numeric column, with neither ``q`` nor ``edges``, checks (sum, mean)."""

    def check(self, agg: Aggregate, columns: Mapping[str, ColumnInfo], limits: Limits) -> None:
        check_numeric_column(agg, columns)
        check_no_q(agg)
        check_no_edges(agg)

    def check_groups(self, agg: Aggregate, groups: int) -> None:
        pass

    def columns(self, agg: Aggregate) -> tuple[str, ...]:
        return (agg.column,)


def bounds_of(agg: Aggregate, columns: Mapping[str, ColumnInfo]) -> tuple[float, float]:
    """The aggregated column's public clamp bounds (assumes a validated query)."""
    column = columns[agg.column]
    assert isinstance(column, NumericColumn)
    return float(column.lower), float(column.upper)
