"""Privacy budget units: epsilon travels and is stored as integer nano-epsilon, delta as integer atto-delta.

Exact decimal conversion both ways, so that what the SDK asks for is what the server records, to the unit.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation

#: Units per epsilon (nano-epsilon) and per delta (atto-delta).
NANO = 10**9
ATTO = 10**18


def to_units(value: float | int | str | Decimal, scale: int, what: str, *, round_up: bool = False) -> int:
    """A budget figure in integer units of ``1/scale``, exactly; rounded down (a cap, a request), or up (a charge).

    ValueError if ``value`` is not a finite, non-negative number (``what`` names it in the message).
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} must be finite")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{what} is not a number") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"{what} must be finite and not negative")
    return int((d * scale).to_integral_value(rounding=ROUND_CEILING if round_up else ROUND_FLOOR))


def from_units(units: int, scale: int) -> Decimal:
    """The exact figure of an integer count of units."""
    return Decimal(units) / scale
