"""A dataset's row count for a public catalogue, released once with differential privacy.

The exact count of a small table (or the one row that tells two neighbouring
tables apart) is itself personal data, so a catalogue shows only this release:
opendp's discrete Laplace on the integer count, its scale calibrated by binary
search against the measurement's own ``map`` at the privacy unit (the most rows
one person may have), then clamped at zero and rounded to two significant
digits. Clamping and rounding are post-processing and cost nothing more.

Pure library: no gRPC, no SQLite, nothing from the sandbox.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import opendp.prelude as dp

dp.enable_features("contrib")

#: Significant digits the catalogue shows (post-processing of the noisy count).
SIGNIFICANT_DIGITS = 2

__all__ = ["SIGNIFICANT_DIGITS", "CountRelease", "count_measurement", "release_count", "round_to_significant"]


@dataclass(frozen=True)
class CountRelease:
    """The public figure, what it cost (epsilon, from the measurement's map) and the noise scale used."""

    value: int
    epsilon_spent: float
    scale: float


def _make(scale: float) -> dp.Measurement:
    return dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=scale)


def _check(epsilon: float, unit: int) -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not (
            math.isfinite(epsilon) and epsilon > 0):
        raise ValueError("epsilon must be a finite number above zero")
    if isinstance(unit, bool) or not isinstance(unit, numbers.Integral) or unit < 1:
        raise ValueError("unit must be a positive integer")


@functools.lru_cache(maxsize=64)
def _calibrated(epsilon: float, unit: int) -> tuple[dp.Measurement, float]:
    scale = dp.binary_search_param(_make, d_in=unit, d_out=epsilon, T=float)
    return _make(scale), scale


def count_measurement(*, epsilon: float, unit: int) -> dp.Measurement:
    """The discrete Laplace measurement on one integer count, (unit, epsilon)-close by its own map."""
    _check(epsilon, unit)
    return _calibrated(float(epsilon), int(unit))[0]


def round_to_significant(n: int, digits: int = SIGNIFICANT_DIGITS) -> int:
    """``n`` rounded half up to ``digits`` significant digits; 0 for zero or less."""
    if n <= 0:
        return 0
    scale = 10 ** max(len(str(n)) - digits, 0)
    return ((n + scale // 2) // scale) * scale


def release_count(true_count: int, *, epsilon: float, unit: int) -> CountRelease:
    """Release ``true_count`` once: discrete Laplace noise, clamped at 0, rounded to two significant digits.

    ``unit`` is how far one person can move the count (``max_rows_per_person`` with a person key, else 1).
    Each call spends ``epsilon`` again: call it once per dataset version and keep the result.
    """
    _check(epsilon, unit)
    if isinstance(true_count, bool) or not isinstance(true_count, numbers.Integral) or true_count < 0:
        raise ValueError("true_count must be a non-negative integer")
    measurement, scale = _calibrated(float(epsilon), int(unit))
    noisy = int(measurement(int(true_count)))
    return CountRelease(round_to_significant(max(noisy, 0)), float(measurement.map(int(unit))), scale)
