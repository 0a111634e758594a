"""Dataset catalogue: schema validation, all-or-nothing CSV import, versioned columnar storage.

A dataset's content digest is the SHA-256 of its canonical schema and stored
column bytes; its version is HMAC-SHA256 of that digest under the server's
catalogue key. The same CSV under the same schema yields the same version on
one server, but nobody without the key can recompute a version from a guessed
table (an unsalted digest let a one-row table be found by trying values).
The digest stays in the database and never leaves through an RPC.

The catalogue never shows the exact row count: each version's count is
released once, at import, with differential privacy (`dp_engine.counts`) and
that figure is stored and served.

Rejection reasons and error details name lines, columns and counts, never a
data value: the administrator's import error may end up in logs and replies.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import hmac
import io
import json
import math
import os
import re
import secrets
import shutil
import zlib
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from dp_engine.counts import release_count
from sandbox.domain import ColumnSchema, ColumnType, DatasetInfo, DatasetSchema, ImportReport, Level
from sandbox.errors import ErrorCode, SandboxError
from sandbox.registry import canonical_json
from sandbox.state import Row, State, Tx

MAX_CSV_BYTES = 512 * 1024 * 1024  # decompressed
MAX_CATEGORIES = 1000
MAX_COLUMNS = 1000
MAX_STRING_CHARS = 256  # string columns are stored fixed-width
MAX_TEXT_CHARS = 2000  # descriptions and source
REPORTED_REJECTIONS = 100
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_COLUMN_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}")
_VERSION_RE = re.compile(r"[0-9a-f]{64}")
#: What a dataset version's HMAC message starts with (domain separation from the key's other uses).
VERSION_LABEL = b"dataset-version\0"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NAN = float("nan")  # a missing numeric value


def _require(ok: bool, detail: str) -> None:
    if not ok:
        raise SandboxError(ErrorCode.INVALID_SCHEMA, public_detail=detail)


def _invalid_csv(detail: str) -> SandboxError:
    return SandboxError(ErrorCode.INVALID_CSV, public_detail=detail)


def _validate_column(col: ColumnSchema) -> None:
    where = f"column '{col.name}'"
    _require(len(col.description) <= MAX_TEXT_CHARS, f"{where}: description longer than {MAX_TEXT_CHARS} characters")
    has_bounds = col.lower is not None or col.upper is not None
    if col.type is ColumnType.CATEGORICAL:
        cats = col.categories
        _require(not has_bounds, f"{where}: categorical columns take no bounds")
        _require(0 < len(cats) <= MAX_CATEGORIES, f"{where}: declare 1 to {MAX_CATEGORIES} categories")
        _require(len(set(cats)) == len(cats), f"{where}: categories must be unique")
        _require(
            all(isinstance(c, str) and c and c == c.strip() and len(c) <= MAX_STRING_CHARS for c in cats),
            f"{where}: categories must be non-empty text without surrounding spaces",
        )
        return
    _require(not col.categories, f"{where}: only categorical columns declare categories")
    if col.type is ColumnType.STRING:
        _require(not has_bounds, f"{where}: string columns take no bounds")
    elif has_bounds or col.level not in (Level.IDENTIFIER, Level.CORE):
        lo, hi = col.lower, col.upper
        _require(lo is not None and hi is not None, f"{where}: numeric {col.level.value} columns need lower and upper")
        _require(
            all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in (lo, hi))
            and lo < hi,  # type: ignore[operator]
            f"{where}: bounds must be finite numbers with lower < upper",
        )


def validate_schema(schema: DatasetSchema) -> None:
    """Raise INVALID_SCHEMA unless the schema is complete and consistent."""
    good_name = isinstance(schema.name, str) and bool(_NAME_RE.fullmatch(schema.name))
    _require(good_name, "dataset name must match [a-z][a-z0-9_]{0,63}")
    long_text = max(len(schema.description), len(schema.source)) > MAX_TEXT_CHARS
    _require(not long_text, f"description and source are limited to {MAX_TEXT_CHARS} characters")
    _require(0 < len(schema.columns) <= MAX_COLUMNS, f"a dataset needs 1 to {MAX_COLUMNS} columns")
    seen: set[str] = set()
    for index, col in enumerate(schema.columns, start=1):
        good_name = isinstance(col.name, str) and bool(_COLUMN_RE.fullmatch(col.name))
        _require(good_name, f"column {index}: name must match [A-Za-z][A-Za-z0-9_-]{{0,63}}")
        known = isinstance(col.type, ColumnType) and isinstance(col.level, Level)
        _require(known, f"column '{col.name}': unknown type or level")
        # Columns become file names, and names differing only in case collide on some file systems.
        _require(col.name.lower() not in seen, f"column '{col.name}' is declared twice (names ignore case)")
        seen.add(col.name.lower())
        _validate_column(col)
    _require(schema.max_rows_per_person >= 0, "max_rows_per_person must not be negative")
    if schema.person_key:
        key = schema.column(schema.person_key)
        _require(key is not None, f"person_key '{schema.person_key}' is not a column")
        assert key is not None
        _require(not key.nullable, f"person_key column '{key.name}' must not be nullable")
        _require(schema.max_rows_per_person >= 1, "person_key requires max_rows_per_person >= 1")
    else:
        _require(not schema.max_rows_per_person, "max_rows_per_person requires a person_key")
    if schema.partition_column:
        part = schema.column(schema.partition_column)
        where = f"partition_column '{schema.partition_column}'"
        _require(part is not None, f"{where} is not a column")
        assert part is not None
        _require(part.type is ColumnType.CATEGORICAL and not part.nullable, f"{where} must be non-nullable categorical")
        _require(part.level in (Level.OPEN, Level.INTERNAL), f"{where} must be open or internal")
        _require(part.name != schema.person_key, "partition_column and person_key must differ")


def schema_to_json(schema: DatasetSchema) -> str:
    """Canonical JSON of a schema (sorted keys, compact, ASCII): what is stored and hashed."""
    doc = dataclasses.asdict(schema)  # enums are str subclasses and serialise as their values
    for col in doc["columns"]:
        for bound in ("lower", "upper"):  # always floats, so that 17 and 17.0 hash the same
            col[bound] = None if col[bound] is None else float(col[bound])
    return canonical_json(doc).decode()


def schema_from_json(text: str) -> DatasetSchema:
    """Parse JSON made by :func:`schema_to_json`; INVALID_SCHEMA if it is malformed."""
    try:
        doc = json.loads(text)
        columns = tuple(
            ColumnSchema(
                **{**c, "type": ColumnType(c["type"]), "level": Level(c["level"]), "categories": tuple(c["categories"])}
            )
            for c in doc.pop("columns")
        )
        return DatasetSchema(columns=columns, **doc)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SandboxError(ErrorCode.INVALID_SCHEMA, "stored schema is malformed", log_detail=repr(exc)) from exc


def _decode(csv_bytes: bytes) -> str:
    if csv_bytes[:2] == b"\x1f\x8b":
        chunks, size = [], 0
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(csv_bytes)) as gz:
                while size <= MAX_CSV_BYTES and (chunk := gz.read(1 << 20)):  # a bomb stops at the cap
                    chunks.append(chunk)
                    size += len(chunk)
        except (OSError, EOFError, zlib.error) as exc:
            raise SandboxError(ErrorCode.INVALID_CSV, "not a valid gzip stream", log_detail=repr(exc)) from exc
        csv_bytes = b"".join(chunks)
    if len(csv_bytes) > MAX_CSV_BYTES:
        raise _invalid_csv(f"CSV larger than {MAX_CSV_BYTES // (1024 * 1024)} MiB")
    try:
        return csv_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _invalid_csv(f"not valid UTF-8 (byte offset {exc.start})") from None


def _read_records(text: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, non-blank records, and the line (1-based, header = 1) where each record starts."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = list(reader)
        starts = list(range(1, len(rows) + 1))
        if reader.line_num != len(rows) or not all(rows):  # multi-line records or blank lines
            reader = csv.reader(io.StringIO(text, newline=""), strict=True)
            rows, starts, last = [], [], 0
            for row in reader:
                if row:
                    rows.append(row)
                    starts.append(last + 1)
                last = reader.line_num
    except csv.Error:
        raise _invalid_csv(f"malformed CSV near line {reader.line_num}") from None
    if not rows:
        raise _invalid_csv("empty CSV: no header")
    return rows[0], rows[1:], starts[1:]


def _check_header(schema: DatasetSchema, header: list[str]) -> None:
    names = {c.name for c in schema.columns}
    # Header fields are echoed only when they look like names and most of the header is known:
    # a file without its header row would otherwise echo its first data row.
    echo = 2 * sum(h in names for h in header) >= len(header)

    def shown(i: int, h: str) -> str:
        return f"'{h}'" if echo and _COLUMN_RE.fullmatch(h) else f"header field {i}"

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


def _to_array(col: ColumnSchema, values: list[object]) -> np.ndarray:
    if col.type is ColumnType.INTEGER:
        return np.array(values, dtype=np.float64 if col.nullable else np.int64)
    if col.type is ColumnType.FLOAT:
        return np.array(values, dtype=np.float64)
    if col.type is ColumnType.CATEGORICAL:
        return np.array(values, dtype=np.int16 if len(col.categories) < 2**15 else np.int32)
    width = max([1, *map(len, values)])  # type: ignore[arg-type]
    return np.array(values, dtype=f"<U{width}")


def _first_distinct(arrays: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The rows, in order, that are the first occurrence of their exact parsed values."""
    packed = np.empty(len(rows), dtype=[(f"c{i}", a.dtype) for i, a in enumerate(arrays)])
    for i, arr in enumerate(arrays):
        packed[f"c{i}"] = arr[rows]
    # Parsed values are canonical (one NaN bit pattern for missing), so equal rows have equal bytes.
    _, first = np.unique(packed.view(np.dtype((np.void, packed.dtype.itemsize))), return_index=True)
    return rows[np.sort(first)]


def _content_digest(schema_json: str, schema: DatasetSchema, arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the canonical schema and stored column bytes: internal, anyone could recompute it from content."""
    h = hashlib.sha256()
    h.update(schema_json.encode("utf-8"))
    for col in schema.columns:
        arr = np.ascontiguousarray(arrays[col.name])
        raw = arr.tobytes()
        h.update(f"\n{col.name}\0{arr.dtype.str}\0{arr.shape}\0{len(raw)}\n".encode())
        h.update(raw)
    return h.hexdigest()


def keyed_version(version_key: bytes, content_sha256: str) -> str:
    """The public version: HMAC-SHA256 of the content digest under the catalogue key, 64 hex.

    The key is the server's secret, which other HMACs use too (HE pseudonyms), each under a label of its own.
    """
    return hmac.new(version_key, VERSION_LABEL + bytes.fromhex(content_sha256), hashlib.sha256).hexdigest()


def privacy_unit(schema: DatasetSchema) -> int:
    """How far one person can move the row count: the most rows the import lets one person have, else 1."""
    return max(1, schema.max_rows_per_person) if schema.person_key else 1


def public_rows(schema: DatasetSchema, row_count: int, *, epsilon: float) -> int:
    """Release a version's row count (spends ``epsilon`` once): the figure the catalogue stores and shows."""
    return release_count(row_count, epsilon=epsilon, unit=privacy_unit(schema)).value


def public_rows_of_stored(schema_json: str, row_count: int, *, epsilon: float) -> int:
    """:func:`public_rows` for a stored row (the migration of datasets imported before counts were released)."""
    return public_rows(schema_from_json(schema_json), row_count, epsilon=epsilon)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    if path.exists():
        os.chmod(path, 0o700)
        shutil.rmtree(path, ignore_errors=True)


def _write_dataset(target: Path, schema_json: str, arrays: dict[str, np.ndarray]) -> None:
    target.mkdir(mode=0o700)
    files = [(f"{name}.npy", arr) for name, arr in arrays.items()] + [("schema.json", schema_json)]
    for filename, content in files:
        path = target / filename
        with open(path, "xb") as f:
            if isinstance(content, str):
                f.write(content.encode("utf-8"))
            else:
                np.save(f, content, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(path, 0o444)
    _fsync_dir(target)


def _refuse_existing(tx: Tx, name: str, version: str, content_sha256: str) -> None:
    # By content too: a dataset migrated from before keyed versions has the same content under its old version.
    if tx.dataset_exists(name, version, content_sha256):
        raise SandboxError(ErrorCode.ALREADY_EXISTS, f"dataset '{name}' already has this version")


def _parse_rows(
    schema: DatasetSchema, header: list[str], rows: list[list[str]], lines: list[int]
) -> tuple[dict[str, np.ndarray], dict[int, tuple[str, str]], int]:
    """Arrays of the rows to keep, {line: (column, reason)} of rejected rows, and duplicates dropped."""
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
    for name, raw in zip(header, raw_columns):  # the header holds exactly the schema's columns
        column = schema.column(name)
        assert column is not None
        parsed[name], bad = _parse_column(column, raw)
        for i, reason in bad.items():
            bad_rows.setdefault(i, (name, reason))  # a row's first bad field, left to right in the file
    for i, problem in bad_rows.items():
        rejected[lines[i]] = problem
    valid = np.array([i for i in range(len(lines)) if i not in bad_rows], dtype=np.int64)
    keep = _first_distinct([parsed[c.name] for c in schema.columns], valid)
    duplicates = len(valid) - len(keep)
    if schema.person_key:
        seen: Counter[object] = Counter()
        over = []
        for position, key in enumerate(parsed[schema.person_key][keep].tolist()):
            seen[key] += 1
            if seen[key] > schema.max_rows_per_person:
                over.append(position)
                reason = f"more than {schema.max_rows_per_person} rows for one person"
                rejected[lines[keep[position]]] = (schema.person_key, reason)
        keep = np.delete(keep, over)
    return {c.name: parsed[c.name][keep] for c in schema.columns}, rejected, duplicates


def _publish(
    db: State, tx: Tx | None, parent: Path, info: DatasetInfo, schema_json: str,
    arrays: dict[str, np.ndarray], imported_by: str, content_sha256: str, count_epsilon: float,
) -> DatasetInfo:
    """Write the files beside their final place, then rename them in and insert the row in one transaction.

    The row count is released (once per version) inside that transaction: returns the info with it.
    """
    name, version = info.schema.name, info.version
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / version
    tmp = parent / f".tmp-{version[:16]}-{secrets.token_hex(4)}"
    renamed = False
    try:
        _write_dataset(tmp, schema_json, arrays)
        with nullcontext(tx) if tx is not None else db.write() as c:
            _refuse_existing(c, name, version, content_sha256)
            _remove_tree(final)  # we hold the write lock: a directory without a row is debris of a crash
            os.rename(tmp, final)
            renamed = True
            os.chmod(final, 0o555)
            _fsync_dir(parent)
            info = dataclasses.replace(info, public_rows=public_rows(info.schema, info.row_count,
                                                                     epsilon=count_epsilon))
            c.dataset_insert(name, version, schema_json, info.row_count, info.imported_at_ms, imported_by,
                             content_sha256, info.public_rows)
        return info
    except BaseException:
        if renamed:
            _remove_tree(final)
        raise
    finally:
        _remove_tree(tmp)


def import_csv(
    db: State,
    datasets_dir: Path,
    schema: DatasetSchema,
    csv_bytes: bytes,
    *,
    imported_by: str,
    version_key: bytes,
    count_epsilon: float,
    max_rejected: int = 0,
    dry_run: bool = False,
    now_ms: int,
    tx: Tx | None = None,
) -> ImportReport:
    """Validate a (possibly gzipped) CSV against ``schema`` and store it as a new dataset version.

    All or nothing: on any error no row and no directory is left behind. With
    ``tx`` the catalogue row is inserted in the caller's open write transaction.
    ``version_key`` is the catalogue key; ``count_epsilon`` is spent on the public row
    count of a new version (a dry run releases nothing and reports 0).
    """
    if len(version_key) < 16:
        raise ValueError("the catalogue key is missing or too short")
    validate_schema(schema)
    if max_rejected < 0:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "max_rejected must not be negative")
    header, rows, lines = _read_records(_decode(csv_bytes))
    header = [h.strip() for h in header]
    _check_header(schema, header)
    if not rows:
        raise _invalid_csv("no data rows after the header")
    arrays, rejected, duplicates = _parse_rows(schema, header, rows, lines)
    rejections = tuple((line, *rejected[line]) for line in sorted(rejected))
    if len(rejections) > max_rejected:
        examples = "; ".join(
            f"line {line}, column '{column}': {reason}" if column else f"line {line}: {reason}"
            for line, column, reason in rejections[:3]
        )
        raise SandboxError(
            ErrorCode.ROWS_REJECTED, f"{len(rejections)} rows rejected (limit {max_rejected}); first: {examples}"
        )
    row_count = len(next(iter(arrays.values())))
    if not row_count:
        raise _invalid_csv("no rows left to import")
    schema_json = schema_to_json(schema)
    digest = _content_digest(schema_json, schema, arrays)
    info = DatasetInfo(schema, keyed_version(version_key, digest), row_count, now_ms, public_rows=0)
    if tx is not None:
        _refuse_existing(tx, schema.name, info.version, digest)
    else:
        with db.read() as read:
            _refuse_existing(read, schema.name, info.version, digest)
    if not dry_run:
        parent = Path(datasets_dir) / schema.name
        info = _publish(db, tx, parent, info, schema_json, arrays, imported_by, digest, count_epsilon)
    return ImportReport(info, row_count, duplicates, rejections[:REPORTED_REJECTIONS], len(rejections))


def _info_from_row(row: Row) -> DatasetInfo:
    _, version, schema_json, row_count, imported_at_ms, shown_rows = row
    return DatasetInfo(schema_from_json(schema_json), version, int(row_count), int(imported_at_ms), int(shown_rows))


def _latest(rows: list[Row]) -> dict[str, Row]:
    """Each dataset's latest version: the last imported at the latest import time (rows in import order)."""
    latest: dict[str, tuple[int, int, Row]] = {}
    for order, row in enumerate(rows):
        key = (int(row[4]), order)
        if row[0] not in latest or key > latest[row[0]][:2]:
            latest[row[0]] = (*key, row)
    return {name: found[2] for name, found in latest.items()}


def list_catalogue(tx: Tx) -> list[DatasetInfo]:
    """The latest version of every dataset, sorted by name."""
    return [_info_from_row(row) for _, row in sorted(_latest(tx.dataset_rows()).items())]


def get_dataset(tx: Tx, name: str, version: str = "") -> DatasetInfo:
    """The given version of a dataset, or its latest; NOT_FOUND if there is none."""
    row = tx.dataset_get(name, version) if version else _latest(tx.dataset_rows(name)).get(name)
    if row is None:
        shown = f"dataset '{name}'" if _NAME_RE.fullmatch(name) else "dataset"
        if version and _VERSION_RE.fullmatch(version):
            shown += f" version {version}"
        raise SandboxError(ErrorCode.NOT_FOUND, public_detail=shown)
    return _info_from_row(row)


def load_columns(datasets_dir: Path, info: DatasetInfo, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Memory-mapped, read-only arrays of the named columns of one dataset version."""
    directory = Path(datasets_dir) / info.schema.name / info.version
    result: dict[str, np.ndarray] = {}
    for name in columns:
        if info.schema.column(name) is None:
            shown = f"'{name}'" if _COLUMN_RE.fullmatch(name) else "requested"
            raise SandboxError(ErrorCode.NOT_FOUND, public_detail=f"column {shown} in dataset '{info.schema.name}'")
        path = directory / f"{name}.npy"
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise SandboxError(ErrorCode.INTERNAL, log_detail=f"cannot load {path}: {exc!r}") from exc
        if arr.shape != (info.row_count,):
            detail = f"{path} has shape {arr.shape}, expected ({info.row_count},)"
            raise SandboxError(ErrorCode.INTERNAL, log_detail=detail)
        result[name] = arr
    return result
