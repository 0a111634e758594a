"""CSV fields to typed columns: the checks and conversions an import applies to each batch of records.

A batch is a list of records (lists of strings) and the lines they start on. Each column is converted whole
when it is clean (the fast path) and value by value otherwise; a bad value makes its row rejected with a reason
that names the column, never the value. What a batch gives back depends only on its own rows, so a table cut
into batches converts exactly as it would whole: the same values, the same reasons.

Rows are compared across batches by keys (``row_keys``, ``person_keys``): 128 bits of BLAKE2b over a row's
parsed values (the numeric ones as their stored bytes, strings as their UTF-8 with lengths), or a numeric
person key itself. Equal parsed rows have equal keys; different rows collide with probability 2^-128.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from sandbox.domain import ColumnSchema, ColumnType, DatasetSchema
from sandbox.errors import ErrorCode, SandboxError

MAX_STRING_CHARS = 256  # string columns are stored fixed-width
COLUMN_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NAN = float("nan")  # a missing numeric value


def _invalid_csv(detail: str) -> SandboxError:
    return SandboxError(ErrorCode.INVALID_CSV, public_detail=detail)


def check_header(schema: DatasetSchema, header: list[str]) -> None:
    names = {c.name for c in schema.columns}
    # Header fields are echoed only when they look like names and most of the header is known:
    # a file without its header row would otherwise echo its first data row.
    echo = 2 * sum(h in names for h in header) >= len(header)

    def shown(i: int, h: str) -> str:
        return f"'{h}'" if echo and COLUMN_RE.fullmatch(h) else f"header field {i}"

    counts = Counter(header)
    dupes = [shown(i, h) for i, h in enumerate(header, 1) if counts[h] > 1 and header.index(h) < i - 1]
    if dupes:
        raise _invalid_csv("duplicate header column(s): " + ", ".join(dupes[:10]))
    unknown = [shown(i, h) for i, h in enumerate(header, 1) if h not in names]
    missing = [f"'{c.name}'" for c in schema.columns if c.name not in counts]
    problems = ["unknown column(s): " + ", ".join(unknown[:10])] if unknown else []
    problems += ["missing column(s): " + ", ".join(missing[:10])] if missing else []
    if problems:
        raise _invalid_csv("; ".join(problems) + ("" if echo else " (the header does not match this schema: another "
                                                           "file, or no header row?)"))


def _fast_column(col: ColumnSchema, raw: tuple[str, ...]) -> np.ndarray | None:
    """Whole-column conversion for the usual clean column; None sends it to the careful path."""
    try:
        if col.type is ColumnType.CATEGORICAL:
            lookup = {c: i for i, c in enumerate(col.categories)} | ({"": -1} if col.nullable else {})
            return _to_array(col, [lookup[v] for v in raw])
        if col.type is ColumnType.STRING:
            ok = (col.nullable or "" not in raw) and max(map(len, raw), default=0) <= MAX_STRING_CHARS
            return _to_array(col, list(raw)) if ok else None
        text = "".join(raw)
        if not text.isascii() or "_" in text:  # int()/float() would accept non-ASCII digits and 1_000
            return None
        if col.type is ColumnType.INTEGER and not col.nullable:
            try:
                return np.array([int(v) for v in raw], dtype=np.int64)
            except ValueError:  # integral float text such as "3.0"
                pass
        arr = np.array([float(v) if v else _NAN for v in raw], dtype=np.float64)
        missing = np.isnan(arr)
        if np.isinf(arr).any() or int(missing.sum()) != (raw.count("") if col.nullable else 0):
            return None
        if col.type is ColumnType.FLOAT:
            return arr
        if not np.all(missing | ((arr == np.trunc(arr)) & (np.abs(arr) <= 2**53))):
            return None
        return arr if col.nullable else arr.astype(np.int64)
    except (KeyError, ValueError, OverflowError):
        return None


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_column(col: ColumnSchema, raw: tuple[str, ...]) -> tuple[np.ndarray, dict[int, str]]:
    """Parsed column (placeholders where bad) and {row index: reason}; reasons never quote the value."""
    fast = _fast_column(col, raw)
    if fast is not None:
        return fast, {}
    kind = col.type
    out: list[object] = []
    bad: dict[int, str] = {}
    missing_value = {ColumnType.STRING: "", ColumnType.CATEGORICAL: -1}.get(kind, _NAN if col.nullable else 0)
    codes = {c: i for i, c in enumerate(col.categories)}
    for i, v in enumerate(raw):
        t = v if kind is ColumnType.STRING else v.strip()
        value: object = 0
        if not t:
            value = missing_value
            if not col.nullable:
                bad[i] = "empty value in a non-nullable column"
        elif kind is ColumnType.CATEGORICAL:
            value = codes.get(t, -1)
            if t not in codes:
                bad[i] = "not one of the declared categories"
        elif kind is ColumnType.STRING:
            value = t
            if len(t) > MAX_STRING_CHARS:
                bad[i] = f"longer than {MAX_STRING_CHARS} characters"
        elif not t.isascii() or "_" in t:
            bad[i] = "not an integer" if kind is ColumnType.INTEGER else "not a number"
        else:
            f = _float_or_none(t)
            if kind is ColumnType.FLOAT:
                value = f if f is not None and math.isfinite(f) else 0.0
                if f is None or not math.isfinite(f):
                    bad[i] = "not a number" if f is None else "not a finite number"
            elif f is None or not math.isfinite(f) or not f.is_integer():
                bad[i] = "not an integer"
            else:
                n = int(t) if t.lstrip("+-").isdigit() else int(f)  # exact for long integer text
                value = float(n) if col.nullable else n
                if not _INT64_MIN <= n <= _INT64_MAX or (col.nullable and abs(n) > 2**53):
                    bad[i] = "integer out of range"
                    value = 0
        out.append(value)
    return _to_array(col, out), bad


def stored_dtype(col: ColumnSchema, string_chars: int = 1) -> np.dtype:
    """The dtype a column is stored with (a string column's width is its longest value, at least 1)."""
    if col.type is ColumnType.INTEGER:
        return np.dtype(np.float64 if col.nullable else np.int64)
    if col.type is ColumnType.FLOAT:
        return np.dtype(np.float64)
    if col.type is ColumnType.CATEGORICAL:
        return np.dtype(np.int16 if len(col.categories) < 2**15 else np.int32)
    return np.dtype(f"<U{max(1, string_chars)}")


def _to_array(col: ColumnSchema, values: list[object]) -> np.ndarray:
    width = max([1, *map(len, values)]) if col.type is ColumnType.STRING else 1  # type: ignore[arg-type]
    return np.array(values, dtype=stored_dtype(col, width))


@dataclass
class Batch:
    """One batch of records, converted: the columns of its rows that have the right number of fields (in file
    order; bad values hold placeholders), and the problems."""

    columns: dict[str, np.ndarray]
    lines: list[int]  # the line of each row in ``columns``
    #: line -> (column, reason) of rows with the wrong number of fields ("" column) or a bad value
    rejected: dict[int, tuple[str, str]]
    valid: np.ndarray  # positions in ``columns`` of the rows without a problem


def parse_batch(schema: DatasetSchema, header: list[str], rows: list[list[str]], lines: list[int]) -> Batch:
    """Convert one batch (the header holds exactly the schema's columns)."""
    rejected: dict[int, tuple[str, str]] = {}
    width = len(header)
    if any(len(row) != width for row in rows):
        for line, row in zip(lines, rows):
            if len(row) != width:
                rejected[line] = ("", f"expected {width} fields, found {len(row)}")
        lines = [line for line, row in zip(lines, rows) if len(row) == width]
        rows = [row for row in rows if len(row) == width]
    raw_columns = list(zip(*rows)) if rows else [() for _ in header]
    parsed: dict[str, np.ndarray] = {}
    bad_rows: dict[int, tuple[str, str]] = {}
    for name, raw in zip(header, raw_columns):
        column = schema.column(name)
        assert column is not None
        parsed[name], bad = _parse_column(column, raw)
        for i, reason in bad.items():
            bad_rows.setdefault(i, (name, reason))  # a row's first bad field, left to right in the file
    for i, problem in bad_rows.items():
        rejected[lines[i]] = problem
    valid = np.array([i for i in range(len(lines)) if i not in bad_rows], dtype=np.int64)
    return Batch({c.name: parsed[c.name] for c in schema.columns}, lines, rejected, valid)


def row_keys(columns: list[np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) uint64 keys of the given rows' parsed values: equal rows, equal keys (module docstring).

    Parsed values are canonical (one NaN bit pattern for a missing value), so a row's stored bytes say what it is.
    """
    fixed = [a for a in columns if a.dtype.kind != "U"]
    texts = [a[rows].tolist() for a in columns if a.dtype.kind == "U"]
    packed = np.empty(len(rows), dtype=[(f"c{i}", a.dtype) for i, a in enumerate(fixed)])
    for i, arr in enumerate(fixed):
        packed[f"c{i}"] = arr[rows]
    view, size = memoryview(packed.tobytes()), packed.dtype.itemsize
    blake = hashlib.blake2b
    if not texts:
        digests = b"".join([blake(view[i:i + size], digest_size=16).digest()
                            for i in range(0, len(rows) * size, size)])
    else:
        parts = []
        for i, values in enumerate(zip(*texts)):
            h = blake(view[i * size:(i + 1) * size], digest_size=16)
            for value in values:
                encoded = value.encode("utf-8", "surrogatepass")
                h.update(len(encoded).to_bytes(4, "little"))
                h.update(encoded)
            parts.append(h.digest())
        digests = b"".join(parts)
    pairs = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def person_keys(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) keys of person-key values that are equal exactly when the values are equal as Python objects."""
    if values.dtype.kind == "U":
        return row_keys([values], np.arange(len(values)))
    if values.dtype.kind == "f":
        values = values + 0.0  # -0.0 and 0.0 are one person
        hi = values.astype(np.float64).view(np.uint64)
    else:
        hi = values.astype(np.int64).view(np.uint64)
    return hi.copy(), np.zeros(len(values), dtype=np.uint64)
