"""``--json`` for ``sandbox-client``: one conversion of the SDK's results to JSON, shared by every command.

Decimals become strings (exact, never in exponent notation), bytes hex, datetimes ISO-8601 in UTC, arrays
nested lists, non-finite floats null. The text is ASCII (other characters escaped), so a name from another
principal cannot carry a terminal escape.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
from collections.abc import Mapping
from decimal import Decimal
from pathlib import PurePath
from typing import Annotated, Any

import typer

__all__ = ["AsJson", "jsonable", "print_json"]

#: The ``--json`` flag of a listing or result command.
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of text: decimals as strings, "
                                                     "bytes as hex, times ISO-8601 UTC.")]


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types; a type not listed here is a TypeError rather than a silent ``str``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value.is_finite() else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dt.datetime):
        utc = value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
        return utc.isoformat()
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # a numpy array or scalar
        return jsonable(value.tolist())
    raise TypeError(f"no JSON form for {type(value).__name__}")


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout, and nothing else."""
    typer.echo(json.dumps(jsonable(value), indent=2, allow_nan=False))
