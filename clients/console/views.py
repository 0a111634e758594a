"""How values look on the console's pages: the template filters. Every value from the server is untrusted text:
the templates autoescape it; these only format."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal

__all__ = ["FILTERS", "dec", "day", "moment", "method_name", "pretty_json", "local_input", "head_time", "percent"]


def dec(value: Decimal | int | float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value else "0"
    if isinstance(value, float) and math.isfinite(value):  # never in exponent form: 1e-06 reads 0.000001
        return format(Decimal(repr(value)).normalize(), "f")
    return str(value)


def day(value: dt.datetime | None) -> str:
    return "" if value is None else value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def moment(value: dt.datetime | None) -> str:
    return "" if value is None else value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def local_input(value: dt.datetime) -> str:
    """A time as an ``<input type=datetime-local>`` value, in UTC, to the minute."""
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M")


def method_name(full: str) -> str:
    return full.rsplit("/", 1)[-1]


def pretty_json(text: str) -> str:
    """A canonical JSON string indented for reading (as it came, if it is not JSON)."""
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        return text


def head_time(ms: int) -> str:
    return moment(dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc))


def percent(value: float) -> str:
    return f"{value:.0%}"


FILTERS = {"dec": dec, "day": day, "moment": moment, "method": method_name, "pretty_json": pretty_json,
           "percent": percent, "local_input": local_input, "head_time": head_time}
