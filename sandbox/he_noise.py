"""Output noise for HE scoring, from opendp: the release rule's Gaussian noise, and the optional DP mode.

``release_noise`` adds the release rule's Gaussian noise (``sandbox.he_release``) to every score; it is
not charged to any budget (what it bounds is stated in bits per score). The DP mode below is the
grant's own choice and is charged.

The DP mode:

A grant turns it on with a per-call epsilon cap (``max_epsilon_per_call``) on an
HE_SCORING scenario. Each entity's public part depends on that person's row
only, so changing one person's row moves one entry of the public-part vector by
at most Δ = Σ_j |w_j| · (upper_j − lower_j) (columns are clamped to their public
bounds). The Laplace mechanism on that vector under the L1 distance, priced by
opendp's own map at d_in = Δ, costs the per-call epsilon; repeated calls compose
and are each charged.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import opendp.prelude as dp

from sandbox import he_release
from sandbox.domain import DatasetSchema
from sandbox.he_models import ModelSpec

dp.enable_features("contrib")


def sensitivity(spec: ModelSpec, schema: DatasetSchema) -> float:
    """How far one entity's row can move the sandbox part of a score: the release rule's R."""
    return sum(t.contribution for t in he_release.terms_of(spec.public_features, schema))


@functools.lru_cache(maxsize=256)
def _calibrated(delta_in: float, epsilon: float) -> tuple[dp.Measurement, float]:
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float)
    scale = dp.binary_search_param(lambda s: dp.m.make_laplace(*space, scale=s), d_in=delta_in, d_out=epsilon)
    return dp.m.make_laplace(*space, scale=scale), scale


def cost(spec: ModelSpec, schema: DatasetSchema, epsilon: float) -> tuple[float, float]:
    """What one noisy release costs, from opendp's map (at most ``epsilon``), and its Laplace scale."""
    delta_in = sensitivity(spec, schema)
    meas, scale = _calibrated(delta_in, epsilon)
    return float(meas.map(delta_in)), float(scale)


def noisy(plain: np.ndarray, spec: ModelSpec, schema: DatasetSchema, epsilon: float) -> np.ndarray:
    """The public part with Laplace noise from the same calibrated measurement ``cost`` priced."""
    meas, _ = _calibrated(sensitivity(spec, schema), epsilon)
    return np.asarray(meas(np.ascontiguousarray(plain, dtype=np.float64)))


#: The release rule's noise is opendp's exact discrete Gaussian at this scale, read in units of sigma / _UNITS:
#: a Gaussian of sd sigma on a grid far finer than CKKS's precision (its continuous sampler is 3x slower).
_UNITS = 2.0**40


@functools.lru_cache(maxsize=1)
def _unit_gaussian() -> dp.Measurement:
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64")
    return dp.m.make_gaussian(*space, scale=_UNITS)


def _draw(n: int) -> np.ndarray:
    """n fresh standard-normal samples: opendp's discrete Gaussian at scale 2**40, divided by 2**40."""
    return np.asarray(_unit_gaussian()(np.zeros(n, dtype=np.int64)), dtype=np.float64) / _UNITS


class NoiseReservoir:
    """Standard-normal samples drawn ahead by a background thread, each handed out once.

    opendp's exact sampler takes about 15 microseconds a draw (60 ms for 4,096 scores); drawing ahead,
    outside any request and without the GIL (opendp is called through ctypes), keeps that off the Score
    path for bursts. A request that finds too few samples draws the rest itself. Samples are independent
    of any data and of each other, and none is ever used twice.
    """

    def __init__(self, capacity: int = 32_768, chunk: int = 4_096) -> None:
        self._capacity, self._chunk = capacity, chunk
        self._stock: list[np.ndarray] = []
        self._count = 0
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None

    def take(self, n: int) -> np.ndarray:
        with self._lock:
            self._start()
            parts, need = [], n
            while need and self._stock:
                head = self._stock[0]
                if len(head) <= need:
                    parts.append(self._stock.pop(0))
                else:
                    parts.append(head[:need])
                    self._stock[0] = head[need:]
                need -= len(parts[-1])
            self._count -= n - need
            self._lock.notify()
        if need:
            parts.append(_draw(need))
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._fill, name="he-noise-reservoir", daemon=True)
            self._thread.start()

    def _fill(self) -> None:
        while True:
            with self._lock:
                while self._count > self._capacity - self._chunk:
                    self._lock.wait()
            fresh = _draw(self._chunk)
            with self._lock:
                self._stock.append(fresh)
                self._count += len(fresh)


_RESERVOIR = NoiseReservoir()


def release_noise(plain: np.ndarray, sigma: float) -> np.ndarray:
    """``plain`` with independent Gaussian noise of standard deviation ``sigma`` on every entry (opendp's sampler)."""
    return np.asarray(plain, dtype=np.float64) + _RESERVOIR.take(len(plain)) * float(sigma)
