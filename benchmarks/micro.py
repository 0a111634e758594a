"""Timing one piece alone, in this process, and the ratios and figures the benchmarks print."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Micro:
    name: str
    iterations: int
    seconds: float
    note: str = ""

    @property
    def ms(self) -> float:
        return self.seconds / self.iterations * 1000.0

    @property
    def us(self) -> float:
        return self.seconds / self.iterations * 1e6


def timeit(name: str, n: int, fn: Callable[[], object], note: str = "", *, warmup: int = 1) -> Micro:
    """``fn`` run ``warmup`` times unmeasured, then ``n`` times measured."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return Micro(name, n, time.perf_counter() - t0, note)


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")


def ms_text(seconds: float) -> str:
    return "nan" if math.isnan(seconds) else f"{seconds * 1000:,.2f}"


def rate_text(count: int, seconds: float) -> str:
    """``count`` per second, for a table ("nan" without a time)."""
    return "nan" if not seconds or math.isnan(seconds) else f"{count / seconds:,.0f}"
