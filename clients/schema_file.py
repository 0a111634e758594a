"""Read a dataset schema from a TOML file into the SDK's ``clients.types.DatasetSchema``.

The file is the administrator's classification of a dataset (分类分级): every
column's type, level, public clamp bounds or declared categories. See
``data/README.md`` for the format. Only the shape of the file is checked here;
the server validates the schema itself on import (``clients.serde.schema_to_pb``
gives the wire's ``sandbox.v1.DatasetSchema``).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from clients.types import Column, DatasetSchema

__all__ = ["load_schema_file", "schema_from_mapping"]

#: Column types and levels as the file writes them: the wire's ``TYPE_<TYPE>`` and ``LEVEL_<LEVEL>`` in lower case.
_TYPES = ("integer", "float", "categorical", "string")
_LEVELS = ("identifier", "open", "internal", "sensitive", "core")
_DATASET_KEYS = {"name", "description", "source", "person_key", "max_rows_per_person", "partition_column", "columns"}
_COLUMN_KEYS = {"name", "type", "level", "nullable", "lower", "upper", "categories", "description"}


def _text(table: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    if key not in table:
        if required:
            raise ValueError(f"{where}: '{key}' is required")
        return ""
    value = table[key]
    if not isinstance(value, str):
        raise ValueError(f"{where}: '{key}' must be a string")
    return value


def _unknown_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _column(table: Any, index: int) -> Column:
    where = f"columns[{index}]"
    if not isinstance(table, dict):
        raise ValueError(f"{where}: must be a table")
    name = _text(table, "name", where, required=True)
    where = f"column '{name}'"
    _unknown_keys(table, _COLUMN_KEYS, where)
    kind = _text(table, "type", where, required=True)
    level = _text(table, "level", where, required=True)
    if kind not in _TYPES:
        raise ValueError(f"{where}: type must be one of {', '.join(_TYPES)}")
    if level not in _LEVELS:
        raise ValueError(f"{where}: level must be one of {', '.join(_LEVELS)}")
    description = _text(table, "description", where)
    nullable = table.get("nullable", False)
    if not isinstance(nullable, bool):
        raise ValueError(f"{where}: 'nullable' must be true or false")
    bounds: dict[str, float | None] = {"lower": None, "upper": None}
    for bound in bounds:
        if bound in table:
            value = table[bound]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{where}: '{bound}' must be a finite number")
            bounds[bound] = float(value)
    categories = table.get("categories", [])
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise ValueError(f"{where}: 'categories' must be a list of strings")
    return Column(name, kind, level, nullable, bounds["lower"], bounds["upper"], tuple(categories), description)


def schema_from_mapping(doc: dict[str, Any]) -> DatasetSchema:
    """Build the schema from an already parsed TOML document; ``ValueError`` if malformed."""
    _unknown_keys(doc, _DATASET_KEYS, "schema")
    max_rows = doc.get("max_rows_per_person", 0)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or not 0 <= max_rows < 2**32:
        raise ValueError("schema: 'max_rows_per_person' must be a non-negative integer")
    columns = doc.get("columns")
    if not isinstance(columns, list) or not columns:
        raise ValueError("schema: at least one [[columns]] table is required")
    name = _text(doc, "name", "schema", required=True)
    description = _text(doc, "description", "schema")
    source = _text(doc, "source", "schema")
    person_key = _text(doc, "person_key", "schema")
    partition_column = _text(doc, "partition_column", "schema")
    return DatasetSchema(
        name=name,
        description=description,
        columns=tuple(_column(c, i) for i, c in enumerate(columns)),
        person_key=person_key,
        max_rows_per_person=max_rows,
        partition_column=partition_column,
        source=source,
    )


def load_schema_file(path: str | Path) -> DatasetSchema:
    """Parse a TOML schema file; ``ValueError`` naming the file on a malformed one."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
        return schema_from_mapping(doc)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
