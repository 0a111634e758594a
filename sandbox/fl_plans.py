"""Federated-training plan templates: what is trained on what (model, features, label), fixed by a hash.

An FL_TRAINING application names a template's hash as its model reference; the
grant pins it. The run-time settings (rounds, epochs, learning rate, DP clipping
and noise) are chosen at StartTraining and priced then.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
from dataclasses import dataclass

from sandbox import catalogue
from sandbox.domain import ColumnType, DatasetInfo, Level
from sandbox.errors import ErrorCode, SandboxError

MODELS = ("logistic", "mlp")
MAX_FEATURES = 64
FEATURE_LEVELS = frozenset({Level.OPEN, Level.INTERNAL, Level.SENSITIVE})
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


@dataclass(frozen=True)
class PlanTemplate:
    dataset: str
    model: str
    features: tuple[str, ...]
    label: str
    label_threshold: float
    hidden_units: int = 0

    def canonical(self) -> bytes:
        doc = {"dataset": self.dataset, "model": self.model, "features": list(self.features), "label": self.label,
               "label_threshold": self.label_threshold, "hidden_units": self.hidden_units}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @property
    def plan_hash(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.features, self.label)


def from_canonical(text: str) -> PlanTemplate:
    d = json.loads(text)
    return PlanTemplate(d["dataset"], d["model"], tuple(d["features"]), d["label"], float(d["label_threshold"]),
                        int(d["hidden_units"]))


def validate(t: PlanTemplate, info: DatasetInfo) -> None:
    def bad(why: str) -> SandboxError:
        return SandboxError(ErrorCode.INVALID_ARGUMENT, why)

    if t.model not in MODELS:
        raise bad("model is logistic or mlp")
    if t.model == "mlp" and not 1 <= t.hidden_units <= 256:
        raise bad("an mlp has 1 to 256 hidden units")
    if not 1 <= len(t.features) <= MAX_FEATURES or len(set(t.features)) != len(t.features):
        raise bad(f"name 1 to {MAX_FEATURES} distinct features")
    if not math.isfinite(t.label_threshold):
        raise bad("the label threshold must be finite")
    if not info.schema.partition_column:
        raise bad(f"dataset '{info.schema.name}' declares no partition column (its data holders)")
    for name in t.columns:
        col = info.schema.column(name)
        if col is None:
            raise bad(f"unknown column '{name[:64]}'")
        if col.level not in FEATURE_LEVELS:
            raise SandboxError(ErrorCode.COLUMN_LEVEL_FORBIDDEN, f"column '{name}' ({col.level.value})")
        if not col.numeric or col.lower is None or col.upper is None:
            if col.type is not ColumnType.CATEGORICAL or name == t.label:
                raise bad(f"column '{name}' is not numeric with public bounds")
    if t.label in t.features:
        raise bad("the label cannot be a feature")


def register(conn: sqlite3.Connection, t: PlanTemplate, *, submitted_by: str, now_ms: int) -> str:
    validate(t, catalogue.get_dataset(conn, t.dataset))
    conn.execute("INSERT OR IGNORE INTO plans (plan_hash, canonical, submitted_by, created_at_ms) VALUES (?,?,?,?)",
                 (t.plan_hash, t.canonical().decode(), submitted_by, now_ms))
    return t.plan_hash


def get(conn: sqlite3.Connection, plan_hash: str) -> PlanTemplate:
    row = conn.execute("SELECT canonical FROM plans WHERE plan_hash = ?", (plan_hash,)).fetchone()
    if row is None:
        raise SandboxError(ErrorCode.NOT_FOUND, "no such training plan")
    return from_canonical(row[0])
