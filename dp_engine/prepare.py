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

Speed (a million rows): filters compare in the column's own type (categorical
codes with `==` or a lookup table, integer columns against the equivalent
integer threshold, e.g. x > 2.5 as x > 2), rows are selected only when some
row fails, integer columns are never checked for NaN, group codes and
histogram cells are int32 (what the counting measurement reads, with no cast),
and a plain count reads an array that already exists (a column's values, or a
shared read-only array of zeros), since only its length matters.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dp_engine.spec import AggKind, CategoricalColumn, ColumnInfo, Filter, Op, Query, QueryError

#: Most rows a dataset may have: the public size limit of opendp's float sum (rows past it would be dropped).
MAX_ROWS = 2**30
#: Up to this many wanted values, `in` is an OR of `==` passes; past it, one lookup-table pass.
_FEW_VALUES = 8
#: Plain counts of up to this many rows share one read-only zeros array (8 bytes a row).
_SHARED_ZEROS_MAX = 2**24


def cell_dtype(cells: int) -> type[np.signedinteger]:
    """The integer type of group codes and histogram cells 0..cells-1: int32 unless there are more cells."""
    return np.int32 if cells <= np.iinfo(np.int32).max else np.int64


@dataclass(frozen=True)
class AggInputs:
    """The arrays one aggregate's measurements read: `cells` for a count-like one, `values` per group."""

    # float64 for a plain count (only its length matters); otherwise group codes or group*bins + bin,
    # of cell_dtype(cells)
    cells: np.ndarray | None = None
    values: tuple[np.ndarray, ...] = ()  # float64 values without NaN, one array per group


@dataclass(frozen=True)
class Prepared:
    inputs: tuple[AggInputs, ...]  # one per aggregate, in query order


def prepare(query: Query, columns: Mapping[str, ColumnInfo], data: Mapping[str, np.ndarray]) -> Prepared:
    """Apply the filters and group-by in numpy and build each aggregate's input arrays."""
    arrays = _checked_arrays(query, columns, data)
    n = len(next(iter(arrays.values()))) if arrays else _row_count(data)
    mask: np.ndarray | None = None  # None: every row is kept
    for flt in query.filters:
        mask = _and(mask, _filter_mask(flt, columns[flt.column], arrays[flt.column]))
    groups = 1
    for name in query.group_by:
        column = columns[name]
        assert isinstance(column, CategoricalColumn)
        mask = _and(mask, _valid_codes(arrays[name], len(column.categories)))
        groups *= len(column.categories)
    if mask is not None and mask.all():
        mask = None
    rows = n if mask is None else int(np.count_nonzero(mask))

    def kept(array: np.ndarray) -> np.ndarray:
        return array if mask is None else array[mask]

    grouped = bool(query.group_by)
    codes = np.zeros(0, dtype=cell_dtype(groups))
    if grouped:
        for i, name in enumerate(query.group_by):
            col = kept(arrays[name]).astype(codes.dtype, copy=False)
            codes = col if i == 0 else codes * len(columns[name].categories) + col  # type: ignore[union-attr]
        codes = _writable(codes)
    values_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    split_cache: dict[str, tuple[np.ndarray, ...]] = {}

    def values(name: str) -> tuple[np.ndarray, np.ndarray]:
        """The column's filtered non-missing values (float64, contiguous), and their group codes."""
        if name not in values_cache:
            col = kept(arrays[name])
            val_codes = codes
            if col.dtype.kind == "f":  # integer columns cannot hold NaN
                missing = np.isnan(col)
                if missing.any():
                    present = ~missing
                    col = col[present]
                    val_codes = codes[present] if grouped else codes
            values_cache[name] = (_writable(np.ascontiguousarray(col, dtype=np.float64)), val_codes)
        return values_cache[name]

    def split(name: str) -> tuple[np.ndarray, ...]:
        if name not in split_cache:
            vals, val_codes = values(name)
            split_cache[name] = _split_by_group(vals, val_codes, groups) if grouped else (vals,)
        return split_cache[name]

    inputs: list[AggInputs | None] = []
    for agg in query.aggregates:
        if agg.kind is AggKind.COUNT:
            inputs.append(AggInputs(cells=codes) if grouped else None)  # a plain count: filled in below
        elif agg.kind in (AggKind.SUM, AggKind.QUANTILE):
            inputs.append(AggInputs(values=split(agg.column)))
        elif agg.kind is AggKind.MEAN:
            vals, val_codes = values(agg.column)
            inputs.append(AggInputs(cells=val_codes if grouped else vals, values=split(agg.column)))
        else:
            vals, val_codes = values(agg.column)
            nbins = len(agg.edges) + 1
            dtype = cell_dtype(groups * nbins)
            bins = np.searchsorted(np.asarray(agg.edges, dtype=np.float64), vals, side="right").astype(dtype)
            cells = val_codes.astype(dtype, copy=False) * nbins + bins if grouped else bins
            inputs.append(AggInputs(cells=cells))
    if None in inputs:
        # A plain count reads only the length of its float64 input: any array of `rows` values will do.
        same_length = [vals for vals, _ in values_cache.values() if len(vals) == rows]
        plain = AggInputs(cells=same_length[0] if same_length else _zeros(rows))
        inputs = [plain if item is None else item for item in inputs]
    return Prepared(inputs=tuple(inputs))  # type: ignore[arg-type]


def _and(mask: np.ndarray | None, other: np.ndarray) -> np.ndarray:
    if mask is None:
        return other
    mask &= other
    return mask


def _writable(array: np.ndarray) -> np.ndarray:
    """The array, or a copy if it is read-only (a column as stored): opendp does not accept read-only arrays."""
    return array if array.flags.writeable else array.copy()


_shared_zeros = np.zeros(0)


def _zeros(rows: int) -> np.ndarray:
    """A float64 array of `rows` zeros, a view of one shared array when not too long.

    Writable, because opendp does not accept read-only arrays; nothing here writes to it, and a plain
    count reads only its length.
    """
    global _shared_zeros
    if rows > _SHARED_ZEROS_MAX:
        return np.zeros(rows)
    zeros = _shared_zeros
    if len(zeros) < rows:
        zeros = np.zeros(rows)
        _shared_zeros = zeros  # another thread may replace it too: both arrays are zeros
    return zeros[:rows]


def _checked_arrays(query: Query, columns: Mapping[str, ColumnInfo],
                    data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The query's columns as 1-D numpy arrays of one length; QueryError (naming the column) otherwise."""
    names = [f.column for f in query.filters] + list(query.group_by)
    names += [a.column for a in query.aggregates if a.kind is not AggKind.COUNT]
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
            return _any_equal(col, [int(v) for v in wanted if v.is_integer()])
        if len(wanted) <= _FEW_VALUES:
            return _any_equal(col, [np.float64(v) for v in wanted])  # NaN equals nothing
        return np.isin(col, np.asarray(wanted, dtype=np.float64)) & ~np.isnan(col)
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
    """Rows equal to any wanted value: one `==` pass per value if few, else np.isin."""
    if not wanted:
        return np.zeros(len(col), dtype=bool)
    if len(wanted) > _FEW_VALUES:
        return np.isin(col, np.asarray(wanted))
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


def _split_by_group(values: np.ndarray, codes: np.ndarray, groups: int) -> tuple[np.ndarray, ...]:
    if groups <= 2**16:
        codes = codes.astype(np.uint16)  # exact (codes are 0..groups-1); numpy's stable sort is a radix sort on it
    order = np.argsort(codes, kind="stable")
    ordered = values[order]
    starts = np.searchsorted(codes[order], np.arange(groups + 1))
    return tuple(ordered[starts[g]:starts[g + 1]] for g in range(groups))
