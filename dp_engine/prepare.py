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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dp_engine.spec import AggKind, CategoricalColumn, ColumnInfo, Filter, Op, Query, QueryError

#: Most rows a dataset may have: the public size limit of opendp's float sum (rows past it would be dropped).
MAX_ROWS = 2**30


@dataclass(frozen=True)
class AggInputs:
    """The arrays one aggregate's measurements read: `cells` for a count-like one, `values` per group."""

    cells: np.ndarray | None = None  # float64: zeros (plain count), group codes, or group*bins + bin
    values: tuple[np.ndarray, ...] = ()  # float64 values without NaN, one array per group


@dataclass(frozen=True)
class Prepared:
    groups: int
    inputs: tuple[AggInputs, ...]  # one per aggregate, in query order


def prepare(query: Query, columns: Mapping[str, ColumnInfo], data: Mapping[str, np.ndarray]) -> Prepared:
    """Apply the filters and group-by in numpy and build each aggregate's input arrays."""
    arrays = _checked_arrays(query, columns, data)
    n = len(next(iter(arrays.values()))) if arrays else _row_count(data)
    mask = np.ones(n, dtype=bool)
    for flt in query.filters:
        mask &= _filter_mask(flt, columns[flt.column], arrays[flt.column])
    codes = np.zeros(n, dtype=np.int64)
    groups = 1
    for name in query.group_by:
        column = columns[name]
        assert isinstance(column, CategoricalColumn)
        col = arrays[name]
        k = len(column.categories)
        mask &= (col >= 0) & (col < k)
        codes = codes * k + np.where(mask, col, 0)
        groups *= k
    grouped = bool(query.group_by)
    codes = codes[mask] if grouped else codes[:0]
    rows = int(np.count_nonzero(mask))
    values_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    split_cache: dict[str, tuple[np.ndarray, ...]] = {}

    def values(name: str) -> tuple[np.ndarray, np.ndarray]:
        """The column's filtered non-missing values, and their group codes."""
        if name not in values_cache:
            col = arrays[name][mask].astype(np.float64, copy=False)
            present = ~np.isnan(col)
            if present.all():
                values_cache[name] = (np.ascontiguousarray(col), codes)
            else:
                values_cache[name] = (col[present], codes[present] if grouped else codes)
        return values_cache[name]

    def split(name: str) -> tuple[np.ndarray, ...]:
        if name not in split_cache:
            vals, val_codes = values(name)
            split_cache[name] = _split_by_group(vals, val_codes, groups) if grouped else (vals,)
        return split_cache[name]

    inputs = []
    for agg in query.aggregates:
        if agg.kind is AggKind.COUNT:
            inputs.append(AggInputs(cells=codes.astype(np.float64) if grouped else np.zeros(rows)))
        elif agg.kind in (AggKind.SUM, AggKind.QUANTILE):
            inputs.append(AggInputs(values=split(agg.column)))
        elif agg.kind is AggKind.MEAN:
            vals, val_codes = values(agg.column)
            cells = val_codes.astype(np.float64) if grouped else vals
            inputs.append(AggInputs(cells=cells, values=split(agg.column)))
        else:
            vals, val_codes = values(agg.column)
            bins = np.searchsorted(np.asarray(agg.edges, dtype=np.float64), vals, side="right")
            cells = val_codes * (len(agg.edges) + 1) + bins if grouped else bins
            inputs.append(AggInputs(cells=cells.astype(np.float64)))
    return Prepared(groups=groups, inputs=tuple(inputs))


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


def _filter_mask(flt: Filter, column: ColumnInfo, col: np.ndarray) -> np.ndarray:
    if isinstance(column, CategoricalColumn):
        values = tuple(flt.value) if isinstance(flt.value, (tuple, list)) else (flt.value,)
        wanted = np.array([column.categories.index(v) for v in values], dtype=np.int64)
        if flt.op is Op.NE:
            return (col >= 0) & (col < len(column.categories)) & (col != wanted[0])
        return np.isin(col, wanted)
    present = ~np.isnan(col) if col.dtype.kind == "f" else np.ones(len(col), dtype=bool)
    if flt.op is Op.IN:
        return np.isin(col, np.asarray(flt.value, dtype=np.float64)) & present
    value = float(flt.value)  # type: ignore[arg-type]
    compare = {
        Op.EQ: np.equal, Op.NE: np.not_equal, Op.LT: np.less,
        Op.LE: np.less_equal, Op.GT: np.greater, Op.GE: np.greater_equal,
    }[flt.op]
    return compare(col, value) & present


def _split_by_group(values: np.ndarray, codes: np.ndarray, groups: int) -> tuple[np.ndarray, ...]:
    order = np.argsort(codes, kind="stable")
    ordered = values[order]
    starts = np.searchsorted(codes[order], np.arange(groups + 1))
    return tuple(ordered[starts[g]:starts[g + 1]] for g in range(groups))
