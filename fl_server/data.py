"""One data holder's rows, turned into model inputs by the plan's public rules, and stored one file per holder.

Columns come in the sandbox's array convention: numeric columns as float64
(NaN = missing), categorical columns as integer codes into their declared
categories (-1 = missing). Every transform uses only plan constants (schema
bounds, declared categories, the public label threshold and imputation
values), so holders prepare their rows alike without sharing any statistic.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fl_server.plan import TrainingPlan

_ARRAYS = ("x", "y", "x_eval", "y_eval")


@dataclass(frozen=True, eq=False)
class Partition:
    """A holder's prepared rows: inputs in [0, 1], labels 0/1, split into local training and held-out parts."""

    x: np.ndarray
    y: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, x_eval: np.ndarray | None = None,
           y_eval: np.ndarray | None = None) -> Partition:
        """A partition from arrays (no held-out part if none is given), as float64."""
        x = np.asarray(x, dtype=np.float64)
        x_eval = np.empty((0, x.shape[1] if x.ndim == 2 else 0)) if x_eval is None else x_eval
        y_eval = np.empty(0) if y_eval is None else y_eval
        return cls(x, np.asarray(y, dtype=np.float64), np.asarray(x_eval, dtype=np.float64),
                   np.asarray(y_eval, dtype=np.float64))

    def check(self, n_inputs: int) -> None:
        """Raise ValueError unless the arrays fit a model with ``n_inputs`` inputs (messages name no value)."""
        for x, y, part in ((self.x, self.y, "training"), (self.x_eval, self.y_eval, "held-out")):
            if x.ndim != 2 or x.shape[1] != n_inputs or y.shape != (x.shape[0],):
                raise ValueError(f"the {part} rows do not have the plan's {n_inputs} inputs and one label each")
            if not (np.isfinite(x).all() and np.isin(y, (0.0, 1.0)).all()):
                raise ValueError(f"the {part} rows have non-finite inputs or labels other than 0/1")
        if self.x.shape[0] == 0:
            raise ValueError("the holder has no training rows")


def prepare_partition(plan: TrainingPlan, columns: Mapping[str, np.ndarray], *,
                      groups: np.ndarray | None = None, holder: str = "") -> Partition:
    """Inputs and labels from a holder's columns, with a held-out share of ``plan.eval_fraction``.

    ``groups`` (for example the person key) keeps all rows of a group on the same side of the split;
    the split is a deterministic function of the plan seed, ``holder`` and the group ids.
    """
    label = np.asarray(columns[plan.label.column], dtype=np.float64)
    n = label.shape[0]
    keep = ~np.isnan(label)
    blocks = []
    for f in plan.features:
        raw = np.asarray(columns[f.column])
        if raw.shape != (n,):
            raise ValueError(f"column '{f.column[:64]}' does not have one value per row")
        if f.categories:
            codes = raw.astype(np.int64)
            missing = (codes < 0) | (codes >= len(f.categories))
            if f.impute is not None:
                codes = np.where(missing, int(f.impute), codes)
            else:
                keep &= ~missing
            block = np.zeros((n, len(f.categories)))
            ok = (codes >= 0) & (codes < len(f.categories))
            block[np.flatnonzero(ok), codes[ok]] = 1.0
        else:
            values = raw.astype(np.float64)
            missing = np.isnan(values)
            if f.impute is not None:
                values = np.where(missing, float(f.impute), values)
            else:
                keep &= ~missing
            span = f.upper - f.lower
            block = ((np.clip(np.nan_to_num(values, nan=f.lower), f.lower, f.upper) - f.lower) / span)[:, None]
        blocks.append(block)
    x = np.hstack(blocks)[keep]
    y = (label[keep] > plan.label.threshold).astype(np.float64)
    ids = np.arange(n)[keep] if groups is None else np.asarray(groups)[keep]
    held_out = _held_out(ids, plan.eval_fraction, plan.seed, holder)
    return Partition(x[~held_out], y[~held_out], x[held_out], y[held_out])


def _held_out(ids: np.ndarray, fraction: float, seed: int, holder: str) -> np.ndarray:
    if fraction <= 0.0 or ids.size == 0:
        return np.zeros(ids.shape[0], dtype=bool)
    unique, inverse = np.unique(ids, return_inverse=True)
    rng = np.random.default_rng([seed, zlib.crc32(holder.encode())])
    held = np.less(rng.random(unique.shape[0]), fraction)
    return np.asarray(held[inverse], dtype=bool)


def save_partition(path: str | os.PathLike[str], partition: Partition) -> None:
    """Write one holder's partition to an .npz file readable only by its owner."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        np.savez(fh, **{k: getattr(partition, k) for k in _ARRAYS})


def load_partition(path: str | os.PathLike[str]) -> Partition:
    with np.load(path, allow_pickle=False) as z:
        return Partition(*(np.asarray(z[k], dtype=np.float64) for k in _ARRAYS))
