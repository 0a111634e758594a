"""Turn a dataset and a query into the plain arrays each opendp measurement reads.

Everything here is a row-wise filter or map: keeping rows that pass the
filters, dropping rows with a missing group-by value or a missing aggregated
value, computing a row's group code or histogram bin, splitting rows by
group. Each is 1-stable under the symmetric distance (adding or removing one
person's k rows adds or removes at most k rows of every derived array), so
the measurements that read these arrays keep their privacy map with d_in =
unit. That is why this step costs nothing and needs no opendp transformation;
doing it in numpy keeps a release on a million rows fast.

Missing values never pass a filter: a NaN or a -1 code fails `!=` as well as
`=` (as NULL does in SQL).

Timing. A release's duration must not tell how many rows the filters keep: an
audit told "the filter keeps every row" from "it keeps none" with one call at
epsilon 1e-6, a row count for almost no budget. So the work here is built to
depend on n (the table's rows) and on the query's shape, not on the data (what
is still measurable in-process is in THREATS.md, "Timing"). Besides the
kept arrays, every aggregate gets their complement: the same kind of array
built from every row they leave out (failed a filter, has no group, misses the
value), with missing values replaced by an in-domain one, so that kept plus
complement always cover all n rows; `Plan.release` runs each measurement on
the complement too and discards what it gives. Every step is a full pass over
the n rows in both cases: a column is cast (NaN filled) whole, the kept and
left-out row indices come from two `flatnonzero` (cheaper than boolean
indexing, whose time grows with how mixed the mask is, though it has a fast
path of its own for all-true and all-false masks) and are gathered with
`take`, and only when an aggregate reads row values (a plain count reads
`np.count_nonzero` of the mask); a grouped split sorts every row, the left-out ones as one more group,
with two sentinel keys in front so that numpy's radix sort takes neither its
already-sorted nor its constant-byte shortcut; a plain count reads a slice of
one shared array of n False values and the complement reads the rest. What remains:
the noise samplers' time, opendp's own internals (e.g. the quantile's
exponential mechanism over the candidates, constant in n), memory allocation
and caches (a kept set of scattered rows gathers a little slower than a block).

Sums. What a sum's runner reads is clamped here, by numpy's clip (the row-wise
map opendp's `make_clamp` applies, which the priced measurement still holds;
in opendp it took three quarters of a release on a million rows). An ungrouped
sum reads one value per row, the clamped value where the row is kept and 0.0
where it is not (value times the 0/1 mask, one branch-free pass): it sums to
the kept rows' clamped sum and covers every row, so it needs no complement,
gather or index. A grouped sum over at most `MASKED_GROUPS` groups does the same
once per group (the value where the row is kept and in that group): the split
by group's sort ran faster when every row fell in one group, and one call's
latency told "all kept" from "none kept" through the server (THREATS.md).

Quantiles. Each part a quantile reads is in ascending order of value: opendp's
scoring binary-searches every value among the candidates, and those branches
cost less on values in a narrow range (as a filter on the column itself leaves
them) than on values in any order. The column's order is found once and kept
with its cast; a query gathers its mask in that order.

Column loading off the request path: casting a column to float64 with its
missing values filled, and clamping it, depend on the column only, so they are
kept (`CAST_CACHE`, 1 GiB) for the next query on the same read-only array,
which is what the server's column cache hands over.

Speed (a million rows): filters compare in the column's own type (categorical
codes with `==` or a lookup table, integer columns against the equivalent
integer threshold, e.g. x > 2.5 as x > 2), integer columns are never checked
for NaN, and group codes and histogram cells are int32 (what the counting
measurement reads, with no cast).
"""

from __future__ import annotations

import gc
import math
import operator
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import overload
from dataclasses import dataclass

import numpy as np

from dp_engine.spec import CategoricalColumn, ColumnInfo, Filter, NumericColumn, Op, Query, QueryError
from dp_engine.statistics import STATISTICS
from dp_engine.statistics.base import MAX_ROWS, AggInputs, cell_dtype

__all__ = ["MAX_ROWS", "AggInputs", "Prepared", "cell_dtype", "prepare"]

#: Up to this many wanted values, `in` is an OR of `==` passes; past it, one sorted look-up per row.
_FEW_VALUES = 8
#: Plain counts on tables of up to this many rows share one array of False values, never written (a byte a row).
_SHARED_ZEROS_MAX = 2**24
#: Most buckets the radix-sorted grouped split handles (keys below the sentinels' high byte 0xFF).
_RADIX_BUCKETS = 0xFF00


@dataclass(frozen=True)
class Prepared:
    inputs: tuple[AggInputs, ...]  # one per aggregate, in query order


@dataclass(frozen=True)
class _Rows:
    """Indices of the kept rows and of the rest, each in row order: every row is in exactly one."""

    kept: np.ndarray | None  # None: every row (a query without filter or group-by; its shape, not the data)
    rest: np.ndarray

    @staticmethod
    def of(mask: np.ndarray | None) -> _Rows:
        if mask is None:
            return _Rows(None, np.zeros(0, dtype=np.intp))
        # flatnonzero is branch-free: its time does not depend on which rows pass (boolean indexing's does).
        return _Rows(np.flatnonzero(mask), np.flatnonzero(~mask))

    def take(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The array's kept rows and the rest (new arrays, so writable, except `array` itself when all are kept)."""
        return (array if self.kept is None else array.take(self.kept)), array.take(self.rest)


def prepare(query: Query, columns: Mapping[str, ColumnInfo], data: Mapping[str, np.ndarray]) -> Prepared:
    """Apply the filters and group-by in numpy and build each aggregate's input arrays and their complements."""
    arrays = _checked_arrays(query, columns, data)
    n = len(next(iter(arrays.values()))) if arrays else _row_count(data)
    keep: np.ndarray | None = None  # None: the query has no filter and no group-by
    for flt in query.filters:
        keep = _and(keep, _filter_mask(flt, columns[flt.column], arrays[flt.column]))
    groups = 1
    codes: np.ndarray | None = None  # every row's group code (0 for a row in no group), if grouped
    if query.group_by:
        valid: np.ndarray | None = None
        for name in query.group_by:
            column = columns[name]
            assert isinstance(column, CategoricalColumn)
            valid = _and(valid, _valid_codes(arrays[name], len(column.categories)))
            groups *= len(column.categories)
        assert valid is not None
        codes = _group_codes(query.group_by, columns, arrays, valid, groups)
        keep = _and(keep, valid)
    selection = _Selection(n, keep, codes, groups, columns, arrays)
    return Prepared(inputs=tuple(STATISTICS[agg.kind].prepare(agg, selection) for agg in query.aggregates))


class _Selection:
    """The kept rows of one query, for every aggregate's statistic to build its inputs from (`Selection`).

    The kept rows and the rest are found once and only if an aggregate reads row values (a plain count
    needs only how many rows are kept: np.count_nonzero, whose time does not depend on the mask); each
    value column is cast and split once, whichever aggregates read it.
    """

    def __init__(self, n: int, keep: np.ndarray | None, codes: np.ndarray | None, groups: int,
                 columns: Mapping[str, ColumnInfo], arrays: Mapping[str, np.ndarray]) -> None:
        self.n, self.keep, self.codes, self.groups = n, keep, codes, groups
        self._columns, self._arrays = columns, arrays
        self._rows: _Rows | None = None
        self._column_cache: dict[str, _Column] = {}
        self._split_cache: dict[tuple[str, bool], tuple[np.ndarray, ...]] = {}
        self._masked_cache: dict[str, np.ndarray] = {}

    def _kept_rows(self) -> _Rows:
        if self._rows is None:
            self._rows = _Rows.of(self.keep)
        return self._rows

    def _column(self, name: str) -> _Column:
        if name not in self._column_cache:
            column = self._columns[name]
            assert isinstance(column, NumericColumn)
            self._column_cache[name] = _column(self._arrays[name], column, self.keep, self._kept_rows)
        return self._column_cache[name]

    def kept_zeros(self) -> tuple[np.ndarray, np.ndarray]:
        # A plain count reads only the length of its input: two slices of one array of n False values.
        kept = self.n if self.keep is None else int(np.count_nonzero(self.keep))
        zeros = _zeros(self.n)
        return zeros[:kept], zeros[kept:]

    def take_kept(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._kept_rows().take(array)

    def present_zeros(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        col = self._column(column)
        kept = self.n if col.mask is None else int(np.count_nonzero(col.mask))
        zeros = _zeros(self.n)
        return zeros[:kept], zeros[kept:]

    def masked_clamped(self, column: str) -> np.ndarray:
        if column not in self._masked_cache:
            col = self._column(column)
            # One branch-free pass over every row whichever rows are kept: value x 1 or x 0, exact for the finite
            # clamped values (twice as fast as np.where); a fresh array unless every row is kept (then the shared
            # clamped column, which opendp only reads).
            self._masked_cache[column] = col.clamped() if col.mask is None else np.multiply(col.clamped(), col.mask)
        return self._masked_cache[column]

    def masked_clamped_by_group(self, column: str) -> Sequence[np.ndarray]:
        col = self._column(column)
        assert self.codes is not None and col.mask is not None  # a grouped query always has a mask
        return _MaskedByGroup(col.clamped(), self.codes, col.mask, self.groups)

    def full(self, column: str) -> np.ndarray:
        return self._column(column).full

    def take_present(self, column: str, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._column(column).rows.take(array)

    def split(self, column: str) -> tuple[np.ndarray, ...]:
        """The column's kept values, one array per group, then (last) every other row's value."""
        return self._split(column, clamped=False)

    def split_clamped(self, column: str) -> tuple[np.ndarray, ...]:
        return self._split(column, clamped=True)

    def _split(self, column: str, *, clamped: bool) -> tuple[np.ndarray, ...]:
        key = (column, clamped)
        if key not in self._split_cache:
            col = self._column(column)
            if not clamped:
                self._split_cache[key] = self._split_ascending(col)
            elif self.codes is None:
                self._split_cache[key] = col.rows.take(col.clamped())
            else:
                assert col.mask is not None  # a grouped query always has a mask (rows with a valid code)
                group = np.where(col.mask, self.codes, self.groups)  # the rows left out are one more group
                self._split_cache[key] = _split_by_group(col.clamped(), group, self.groups + 1)
        return self._split_cache[key]

    def _split_ascending(self, col: _Column) -> tuple[np.ndarray, ...]:
        # Each part in ascending order of value: opendp's quantile scores a value with a binary search over the
        # candidates, whose branches cost less on values in a narrow range (a filter on the column itself) than
        # on values in any order, unless every input is sorted. The order is found once per column; a query
        # gathers its mask in that order (the same work whatever it keeps) and then the values.
        order, ascending = col.ordered()
        if self.codes is None:
            if col.mask is None:
                return ascending, ascending[:0]
            kept = col.mask.take(order)
            return ascending.take(np.flatnonzero(kept)), ascending.take(np.flatnonzero(~kept))
        assert col.mask is not None  # a grouped query always has a mask (rows with a valid code)
        group = np.where(col.mask, self.codes, self.groups).take(order)  # the rows left out are one more group
        return _split_by_group(ascending, group, self.groups + 1)  # stable: ascending within each group


class _MaskedByGroup(Sequence[np.ndarray]):
    """A grouped sum's inputs, one array of n values per group, each made when it is read and not kept.

    Group g's array is the clamped value where the row is kept and in group g, 0.0 elsewhere: one pass of
    compare, and, multiply over every row, the same work whichever rows are kept and in which group (a split
    by group sorts and gathers, and its time told "all kept" from "none kept"). Made one at a time, the
    release holds one or two of them (n values each) rather than all (groups x n: 1.3 GB for 16 groups of 10M
    rows).
    """

    def __init__(self, clamped: np.ndarray, codes: np.ndarray, mask: np.ndarray, groups: int) -> None:
        self._clamped, self._codes, self._mask, self._groups = clamped, codes, mask, groups

    def __len__(self) -> int:
        return self._groups

    @overload
    def __getitem__(self, g: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, g: slice) -> list[np.ndarray]: ...

    def __getitem__(self, g: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(g, slice):
            return [self[i] for i in range(*g.indices(self._groups))]
        if not -self._groups <= g < self._groups:
            raise IndexError(g)
        # opendp's conversion of a numpy input leaves a reference cycle that holds the array until the next
        # collection, which big arrays alone never trigger: collect the youngest generation, where that cycle is,
        # so that the group read before is freed before the next is made.
        gc.collect(0)
        in_group = np.equal(self._codes, g % self._groups)
        np.logical_and(in_group, self._mask, out=in_group)
        return np.multiply(self._clamped, in_group)


def _and(mask: np.ndarray | None, other: np.ndarray) -> np.ndarray:
    if mask is None:
        return other
    mask &= other
    return mask


def _group_codes(group_by: tuple[str, ...], columns: Mapping[str, ColumnInfo], arrays: Mapping[str, np.ndarray],
                 valid: np.ndarray, groups: int) -> np.ndarray:
    """Every row's group code (0..groups-1), for all n rows; 0 for a row with a missing or undeclared code."""
    dtype = cell_dtype(groups)
    codes: np.ndarray | None = None
    for name in group_by:
        col = arrays[name].astype(dtype)  # a copy: the product below is in place
        codes = col if codes is None else codes * len(columns[name].categories) + col  # type: ignore[union-attr]
    assert codes is not None
    codes *= valid  # the garbage (even wrapped) codes of rows in no group become 0, in one pass over every row
    return codes



class _Column:
    """A value column as float64 for every row (NaN as an in-domain value) and which rows an aggregate reads."""

    def __init__(self, full: np.ndarray, clamped: Callable[[], np.ndarray], mask: np.ndarray | None,
                 rows: Callable[[], _Rows], ordered: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
        self.full = full
        self.mask = mask  # passes the filters, has a group, is not missing; None: every row
        self._clamped, self._rows_of = clamped, rows
        self.ordered = ordered  # the rows in ascending order of value, and `full` in that order
        self._rows: _Rows | None = None

    @property
    def rows(self) -> _Rows:
        """The kept rows of `mask` and the rest (two passes over every row, found once and only if asked)."""
        if self._rows is None:
            self._rows = self._rows_of()
        return self._rows

    def clamped(self) -> np.ndarray:
        """`full` clamped to the column's bounds (never written: it may be shared by later queries)."""
        return self._clamped()


def _column(col: np.ndarray, info: NumericColumn, keep: np.ndarray | None, rows: Callable[[], _Rows]) -> _Column:
    """A value column's float64 values for every row (NaN as the lower bound) and the rows kept and not missing."""
    cast = _cast_column(col, float(info.lower), float(info.upper))
    if cast.present is None:  # integer columns cannot hold NaN
        return _Column(cast.full, cast.clamped, keep, rows, cast.ordered)
    mask = cast.present if keep is None else np.logical_and(cast.present, keep)
    return _Column(cast.full, cast.clamped, mask, lambda: _Rows.of(mask), cast.ordered)


class _Cast:
    """What a query needs of one column whatever its filters: float64 values, which are present, clamped values.

    Each is a full pass over the n rows; `_cast_column` keeps them for the next query on the same column.
    """

    def __init__(self, col: np.ndarray, lower: float, upper: float) -> None:
        self._bounds = (lower, upper)
        if col.dtype.kind != "f":
            self.full = col.astype(np.float64)
            self.present: np.ndarray | None = None
        else:
            missing = np.isnan(col)
            self.full = np.where(missing, lower, col).astype(np.float64, copy=False)  # one pass over every row
            self.present = np.logical_not(missing, out=missing)
            self.present.setflags(write=False)
        self._clamped: np.ndarray | None = None
        self._ordered: tuple[np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()

    def clamped(self) -> np.ndarray:
        with self._lock:
            if self._clamped is None:  # numpy's clip is the clamp's row-wise map (the values hold no NaN)
                self._clamped = np.clip(self.full, *self._bounds)
            return self._clamped

    def ordered(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows in ascending order of value, and `full` in that order (found once per column)."""
        with self._lock:
            if self._ordered is None:
                order = np.argsort(self.full, kind="stable")
                self._ordered = (order, self.full.take(order))
            return self._ordered

    @property
    def nbytes(self) -> int:
        present = 0 if self.present is None else self.present.nbytes
        return self.full.nbytes * 4 + present  # with the clamped copy and the order, once made


class _CastCache:
    """`_Cast`s of read-only columns (the server's column cache hands out only such), kept while the column lives.

    Column loading off the request path: a query on a million rows spent a quarter of its time casting and
    filling the columns it reads. Keyed by the array object (its id, dropped when the array is freed, so an
    id reused by a later array never finds a stale entry) and the bounds; at most `max_bytes` kept, least
    recently used first out. A writable array is cast afresh every time: its values may change between calls.
    The arrays kept are private to this module and never written (opendp needs writable ones to read them).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[int, float, float], _Cast] = OrderedDict()
        self._bytes = 0
        self._watched: set[int] = set()  # ids of the live arrays with a finalizer (one each, however often cast)

    def get(self, col: np.ndarray, lower: float, upper: float) -> _Cast:
        if col.flags.writeable or self.max_bytes <= 0:
            return _Cast(col, lower, upper)
        key = (id(col), lower, upper)
        with self._lock:
            cast = self._items.get(key)
            if cast is not None:
                self._items.move_to_end(key)
                return cast
        cast = _Cast(col, lower, upper)
        with self._lock:
            if key in self._items:  # another thread cast it meanwhile
                return self._items[key]
            self._items[key] = cast
            self._bytes += cast.nbytes
            if key[0] not in self._watched:
                self._watched.add(key[0])
                weakref.finalize(col, self._drop, key[0])
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return cast

    def _drop(self, array_id: int) -> None:
        """The array is freed: forget every cast of it (its id may be reused by another array)."""
        with self._lock:
            self._watched.discard(array_id)
            for key in [k for k in self._items if k[0] == array_id]:
                self._bytes -= self._items.pop(key).nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


#: Column casts kept for later queries: 1 GiB, about 15 numeric columns of 4 million rows (17 bytes a row).
CAST_CACHE = _CastCache(max_bytes=2**30)


def _cast_column(col: np.ndarray, lower: float, upper: float) -> _Cast:
    return CAST_CACHE.get(col, lower, upper)


_shared_zeros = np.zeros(0, dtype=bool)


def _zeros(rows: int) -> np.ndarray:
    """`rows` False values (what a plain count reads: only their number), a view of one shared array when not too
    long.

    Writable, because opendp does not accept read-only arrays; nothing here writes to it, and a plain
    count reads only its length. It grows to n once per table size, so its cost depends on n alone.
    """
    global _shared_zeros
    if rows > _SHARED_ZEROS_MAX:
        return np.zeros(rows, dtype=bool)
    zeros = _shared_zeros
    if len(zeros) < rows:
        zeros = np.zeros(rows, dtype=bool)
        _shared_zeros = zeros  # another thread may replace it too: both arrays are zeros
    return zeros[:rows]


def _checked_arrays(query: Query, columns: Mapping[str, ColumnInfo],
                    data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The query's columns as 1-D numpy arrays of one length; QueryError (naming the column) otherwise."""
    names = [f.column for f in query.filters] + list(query.group_by)
    names += [name for a in query.aggregates for name in STATISTICS[a.kind].columns(a)]
    arrays: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(names):
        array = data.get(name) if isinstance(data, Mapping) else None
        if not isinstance(array, np.ndarray) or array.ndim != 1:
            raise QueryError(f"data for column {name!r} is missing or not a 1-D array")
        kinds = "iu" if isinstance(columns[name], CategoricalColumn) else "iuf"
        if array.dtype.kind not in kinds:
            raise QueryError(f"data for column {name!r} has the wrong type")
        arrays[name] = array
    if len({len(a) for a in arrays.values()}) > 1:
        raise QueryError("the data's columns differ in length")
    if arrays and len(next(iter(arrays.values()))) > MAX_ROWS:
        raise QueryError(f"the dataset has more than {MAX_ROWS} rows")
    return arrays


def _row_count(data: Mapping[str, np.ndarray]) -> int:
    """Rows of a dataset when the query reads no column (a plain count): the length of any column."""
    lengths = {len(a) for a in data.values() if isinstance(a, np.ndarray) and a.ndim == 1} if data else set()
    if len(lengths) != 1:
        raise QueryError("the data must hold 1-D columns of one length")
    (n,) = lengths
    if n > MAX_ROWS:
        raise QueryError(f"the dataset has more than {MAX_ROWS} rows")
    return n


def _unsigned(col: np.ndarray) -> np.ndarray:
    """Integer codes reinterpreted as unsigned, so a negative (missing) code is larger than any declared one."""
    return col.view(f"u{col.dtype.itemsize}") if col.dtype.kind == "i" else col


def _valid_codes(col: np.ndarray, k: int) -> np.ndarray:
    """Rows whose code is one of the k declared categories (0 <= code < k), in one pass."""
    return _unsigned(col) < k


_COMPARE: dict[Op, Callable[[np.ndarray, float], np.ndarray]] = {
    Op.EQ: operator.eq, Op.NE: operator.ne, Op.LT: operator.lt,
    Op.LE: operator.le, Op.GT: operator.gt, Op.GE: operator.ge,
}


def _filter_mask(flt: Filter, column: ColumnInfo, col: np.ndarray) -> np.ndarray:
    if isinstance(column, CategoricalColumn):
        k = len(column.categories)
        if flt.op is Op.IN:
            wanted_codes = sorted({column.categories.index(v) for v in flt.value})  # type: ignore[union-attr]
            return _codes_in(col, wanted_codes, k)
        code = column.categories.index(flt.value)  # type: ignore[arg-type]
        if flt.op is Op.EQ:
            return col == code  # a missing (-1) or undeclared code never equals a declared one
        return _valid_codes(col, k) & (col != code)
    if flt.op is Op.IN:
        wanted = sorted({float(v) for v in flt.value})  # type: ignore[union-attr]
        if col.dtype.kind in "iu":
            limits = np.iinfo(col.dtype)  # a value out of the column type's range matches no row
            return _any_equal(col, [int(v) for v in wanted if v.is_integer() and limits.min <= v <= limits.max])
        return _any_equal(col, [np.float64(v) for v in wanted])  # NaN equals nothing
    value = float(flt.value)  # type: ignore[arg-type]
    if col.dtype.kind in "iu":
        return _integer_compare(flt.op, col, value)
    if flt.op is Op.NE:
        return (col != value) & ~np.isnan(col)
    return _COMPARE[flt.op](col, value)  # NaN compares false


def _integer_compare(op: Op, col: np.ndarray, value: float) -> np.ndarray:
    """`col op value` for an integer column, as a comparison with an integer (exact at any magnitude).

    An integer x is < v iff x < ceil(v), <= v iff x <= floor(v), > v iff x > floor(v), >= v iff
    x >= ceil(v); it never equals a non-integral v. numpy compares a Python int out of the column
    type's range correctly (all true or all false).
    """
    if op in (Op.EQ, Op.NE):
        if value.is_integer():
            return _COMPARE[op](col, int(value))
        return np.full(len(col), op is Op.NE)
    threshold = math.ceil(value) if op in (Op.LT, Op.GE) else math.floor(value)
    return _COMPARE[op](col, threshold)


def _any_equal(col: np.ndarray, wanted: Sequence[float]) -> np.ndarray:
    """Rows equal to any wanted value (each in the column type's range): `==` passes if few, else a sorted look-up.

    Not np.isin: for many values it sorts the column with an adaptive sort, whose time depends on the data;
    a binary search per row does not.
    """
    if not wanted:
        return np.zeros(len(col), dtype=bool)
    if len(wanted) > _FEW_VALUES:
        table = np.unique(np.asarray(wanted, dtype=col.dtype if col.dtype.kind in "iu" else np.float64))
        at = np.searchsorted(table, col)  # NaN sorts after every value
        np.minimum(at, len(table) - 1, out=at)
        return table.take(at) == col  # NaN equals nothing
    mask = col == wanted[0]
    for value in wanted[1:]:
        mask |= col == value
    return mask


def _codes_in(col: np.ndarray, wanted: list[int], k: int) -> np.ndarray:
    """Rows whose code is one of the wanted declared codes: `==` passes if few, else a lookup table."""
    if len(wanted) <= _FEW_VALUES:
        return _any_equal(col, wanted)
    table = np.zeros(k + 1, dtype=bool)  # the last entry stands for every undeclared or missing code
    table[wanted] = True
    return table[np.minimum(_unsigned(col), k)]


def _split_by_group(values: np.ndarray, key: np.ndarray, buckets: int) -> tuple[np.ndarray, ...]:
    """The values grouped by key (0..buckets-1), row order kept within each: one stable sort of every row.

    numpy's stable sort of 16-bit keys is a radix sort that returns at once if the keys are already
    sorted and skips a byte that every key shares, so its time would say whether the rows are all in
    one group (e.g. all left out). Two sentinel keys in front, 0xFFFF then 0xFFFE, make neither
    shortcut ever apply (keys stay below 0xFF00, so no other key has the high byte 0xFF, and the two
    sentinels differ in the low byte); being the largest keys, they sort last and are dropped.
    """
    if buckets <= _RADIX_BUCKETS:
        padded = np.empty(len(key) + 2, dtype=np.uint16)
        padded[:2] = (0xFFFF, 0xFFFE)
        padded[2:] = key  # exact: 0 <= key < buckets
        order = np.argsort(padded, kind="stable")[:-2]
        order -= 2
    else:  # more groups than the default limits allow: an adaptive sort, whose time depends on the data
        order = np.argsort(key, kind="stable")
    ordered = values.take(order)
    starts = np.zeros(buckets + 1, dtype=np.intp)
    np.cumsum(np.bincount(key, minlength=buckets), out=starts[1:])
    return tuple(ordered[starts[g]:starts[g + 1]] for g in range(buckets))
