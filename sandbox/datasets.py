"""What a dataset is, apart from its rows: its schema and the rules for one, its version, its public row count.

A dataset's content digest is the SHA-256 of its canonical schema and stored column bytes; its version is
HMAC-SHA256 of that digest under the server's catalogue key. The same CSV under the same schema yields the same
version on one server, but nobody without the key can recompute a version from a guessed table (an unsalted
digest let a one-row table be found by trying values). The digest stays in the database and never leaves
through an RPC.

(The row count a version shows is released with differential privacy: ``catalogue.public_rows``.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import re

import numpy as np

from sandbox.domain import ColumnSchema, ColumnType, DatasetSchema, Level
from sandbox.errors import ErrorCode, SandboxError
from sandbox.import_columns import COLUMN_RE, MAX_STRING_CHARS
from sandbox.registry import canonical_json

MAX_CATEGORIES = 1000
MAX_COLUMNS = 1000
MAX_TEXT_CHARS = 2000  # descriptions and source
DATASET_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: What a dataset version's HMAC message starts with (domain separation from the key's other uses).
VERSION_LABEL = b"dataset-version\0"


def _require(ok: bool, detail: str) -> None:
    if not ok:
        raise SandboxError(ErrorCode.INVALID_SCHEMA, public_detail=detail)


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
    good_name = isinstance(schema.name, str) and bool(DATASET_NAME_RE.fullmatch(schema.name))
    _require(good_name, "dataset name must match [a-z][a-z0-9_]{0,63}")
    long_text = max(len(schema.description), len(schema.source)) > MAX_TEXT_CHARS
    _require(not long_text, f"description and source are limited to {MAX_TEXT_CHARS} characters")
    _require(0 < len(schema.columns) <= MAX_COLUMNS, f"a dataset needs 1 to {MAX_COLUMNS} columns")
    seen: set[str] = set()
    for index, col in enumerate(schema.columns, start=1):
        good_name = isinstance(col.name, str) and bool(COLUMN_RE.fullmatch(col.name))
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


def content_digest(schema_json: str, schema: DatasetSchema, arrays: dict[str, np.ndarray]) -> str:
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
