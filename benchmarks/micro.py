"""Timing one piece alone, in this process: the benchmarks' shared micro-timer."""

from __future__ import annotations

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
