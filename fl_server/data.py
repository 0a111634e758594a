"""One data holder's rows, turned into model inputs by the plan's public rules, and stored one file per holder.

Columns come in the sandbox's array convention: numeric columns as float64
(NaN = missing), categorical columns as integer codes into their declared
categories (-1 = missing). Every transform uses only plan constants (schema
bounds, declared categories, the public label threshold and imputation
values), so holders prepare their rows alike without sharing any statistic.
"""

from __future__ import annotations

import csv
import gzip
import math
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


def read_csv_columns(plan: TrainingPlan, path: str | os.PathLike[str], *,
                     person_key: str = "") -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """A holder's own raw rows (a CSV with a header naming the dataset's columns, UTF-8, optionally gzipped)
    as the columns ``prepare_partition`` takes, and the person key's values (None without ``person_key``).

    Read as the sandbox imports them: a categorical value is its index in the plan's declared categories,
    an empty field is missing (NaN, or -1 for a category), a number is parsed as written. Only the plan's
    columns and the person key are read; other columns are ignored. Errors name the line and column, never
    a value: a value that is not a number, or not one of the declared categories, is refused (ValueError).
    """
    features = {f.column: f for f in plan.features}
    wanted = list(dict.fromkeys([*features, plan.label.column, *([person_key] if person_key else [])]))
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:  # type: ignore[operator]
        reader = csv.reader(fh, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError("the CSV file is empty: no header") from None
        index = {name: i for i, name in enumerate(header)}
        missing = [c for c in wanted if c not in index]
        if missing:
            raise ValueError("the CSV header lacks the plan's column(s): " + ", ".join(c[:64] for c in missing))
        raw: dict[str, list[str]] = {c: [] for c in wanted}
        lines: list[int] = []
        try:
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise ValueError(f"line {reader.line_num}: expected {len(header)} fields, found {len(row)}")
                lines.append(reader.line_num)
                for c in wanted:
                    raw[c].append(row[index[c]].strip())
        except csv.Error:
            raise ValueError(f"malformed CSV near line {reader.line_num}") from None
    columns: dict[str, np.ndarray] = {}
    for c in wanted:
        if c == person_key and c not in features and c != plan.label.column:
            continue
        f = features.get(c)
        if f is not None and f.categories:
            codes = {v: i for i, v in enumerate(f.categories)}
            bad = [i for i, v in enumerate(raw[c]) if v and v not in codes]
            if bad:
                raise ValueError(f"line {lines[bad[0]]}, column '{c[:64]}': not one of the plan's categories")
            columns[c] = np.array([codes.get(v, -1) for v in raw[c]], dtype=np.int64)
        else:
            columns[c] = _numbers(c, raw[c], lines)
    groups = _keys(raw[person_key]) if person_key else None
    return columns, groups


def _is_gzip(path: str | os.PathLike[str]) -> bool:  # noqa: N802
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _numbers(column: str, values: list[str], lines: list[int]) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if not v:
            out[i] = np.nan
            continue
        try:
            number = float(v) if v.isascii() and "_" not in v else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"line {lines[i]}, column '{column[:64]}': not a finite number")
        out[i] = number
    return out


def _keys(values: list[str]) -> np.ndarray:
    """Person keys typed as the sandbox stores them (integers, else numbers, else text), so they sort alike."""
    if "" in values:
        raise ValueError("the person key is empty on some row")
    for kind in (int, float):
        try:
            return np.array([kind(v) for v in values])
        except ValueError:
            pass
    return np.array(values)


def partition_from_csv(plan: TrainingPlan, path: str | os.PathLike[str], *, holder: str,
                       person_key: str = "") -> Partition:
    """``prepare_partition`` of a holder's own CSV rows, exactly as the sandbox prepares the same rows."""
    columns, groups = read_csv_columns(plan, path, person_key=person_key)
    return prepare_partition(plan, columns, groups=groups, holder=holder)
