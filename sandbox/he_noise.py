"""Optional output noise for HE scoring, from opendp, charged to the grant's epsilon budget.

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

import numpy as np
import opendp.prelude as dp

from sandbox.domain import DatasetSchema
from sandbox.models import ModelSpec

dp.enable_features("contrib")


def sensitivity(spec: ModelSpec, schema: DatasetSchema) -> float:
    total = 0.0
    for name, weight in spec.public_features:
        col = schema.column(name)
        assert col is not None and col.lower is not None and col.upper is not None
        total += abs(weight) * (col.upper - col.lower)
    return total


@functools.lru_cache(maxsize=256)
def _calibrated(delta_in: float, epsilon: float) -> tuple[dp.Measurement, float]:
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float)
    scale = dp.binary_search_param(lambda s: dp.m.make_laplace(*space, scale=s), d_in=delta_in, d_out=epsilon)
    return dp.m.make_laplace(*space, scale=scale), scale


def cost(spec: ModelSpec, schema: DatasetSchema, epsilon: float) -> float:
    """What one noisy release costs, from opendp's map (at most ``epsilon``), before anything runs."""
    delta_in = sensitivity(spec, schema)
    meas, _ = _calibrated(delta_in, epsilon)
    return float(meas.map(delta_in))


def noisy(plain: np.ndarray, spec: ModelSpec, schema: DatasetSchema, epsilon: float) -> np.ndarray:
    """The public part with Laplace noise from the same calibrated measurement ``cost`` priced."""
    meas, _ = _calibrated(sensitivity(spec, schema), epsilon)
    return np.asarray(meas(np.ascontiguousarray(plain, dtype=np.float64)))
