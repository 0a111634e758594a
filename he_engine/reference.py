"""The plaintext computation the encrypted score must match, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def score_plain(x_private: np.ndarray, weights: Sequence[float] | np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Logits ``plain + sum_k weights[k] * x_private[k]``; ``x_private`` has one row per private feature."""
    x = np.asarray(x_private, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    p = np.asarray(plain, dtype=np.float64)
    if x.ndim != 2 or w.shape != (x.shape[0],) or p.shape != (x.shape[1],):
        raise ValueError("x_private must be (features, entities), weights (features,), plain (entities,)")
    result: np.ndarray = p + w @ x
    return result
