"""The model registry: declarative linear or logistic models whose id is the SHA-256 of a canonical form.

The minimum-public-weight rule: a model must give non-zero weight to at least
``k`` of the sandbox's columns (k per deployment, default 3). A model with a
single public column (weight 1, no private features) would return that column
verbatim; with k >= 2 columns each score mixes several. Its limits: k columns
with one large weight and tiny others still mostly reveal one column, and an
applicant who submits k models can solve for columns by linear algebra, so
administrators review the full spec, the quota caps the entities scored, and a
grant may add output noise.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from dataclasses import dataclass

from sandbox import catalogue, storage
from sandbox.domain import VALUE_LEVELS, DatasetInfo, Level
from sandbox.errors import ErrorCode, SandboxError

KINDS = ("linear", "logistic")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
MAX_FEATURES = 64


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    dataset: str
    public_features: tuple[tuple[str, float], ...]
    private_features: tuple[tuple[str, float], ...]
    bias: float
    description: str = ""

    def canonical(self) -> bytes:
        """Sorted keys, no spaces, numbers as Python's shortest round-trip repr; feature order kept."""
        doc = {
            "bias": self.bias, "dataset": self.dataset, "description": self.description, "kind": self.kind,
            "name": self.name,
            "private_features": [{"name": n, "weight": w} for n, w in self.private_features],
            "public_features": [{"column": c, "weight": w} for c, w in self.public_features],
        }
        return storage.canonical_json(doc)

    @property
    def public_columns(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.public_features)


def spec_from_canonical(text: str) -> ModelSpec:
    doc = json.loads(text)
    return ModelSpec(doc["name"], doc["kind"], doc["dataset"],
                     tuple((f["column"], float(f["weight"])) for f in doc["public_features"]),
                     tuple((f["name"], float(f["weight"])) for f in doc["private_features"]),
                     float(doc["bias"]), doc["description"])


def validate(spec: ModelSpec, info: DatasetInfo, *, min_public_weights: int) -> None:
    """Refuse a malformed model, or one whose score would come close to revealing a single column."""
    def bad(why: str) -> SandboxError:
        return SandboxError(ErrorCode.INVALID_ARGUMENT, why)

    if not _NAME_RE.match(spec.name) or spec.kind not in KINDS or len(spec.description) > 2000:
        raise bad("model needs a name (letters, digits, _ -) and a kind (linear or logistic)")
    weights = [w for _, w in spec.public_features] + [w for _, w in spec.private_features] + [spec.bias]
    if not all(math.isfinite(w) and abs(w) < 1e12 for w in weights):
        raise bad("weights and bias must be finite")
    if not 1 <= len(spec.private_features) <= MAX_FEATURES or len(spec.public_features) > MAX_FEATURES:
        raise bad(f"a model has 1 to {MAX_FEATURES} private features and at most {MAX_FEATURES} public ones")
    names = [n for n, _ in spec.private_features]
    if len(set(names)) != len(names) or not all(_NAME_RE.match(n) for n in names):
        raise bad("private feature names must be unique identifiers")
    cols = spec.public_columns
    if len(set(cols)) != len(cols):
        raise bad("each public column may appear once")
    for name in cols:
        col = info.schema.column(name)
        if col is None:
            raise bad(f"unknown column '{name[:64]}' in '{spec.dataset}'")
        if col.level not in VALUE_LEVELS:
            raise SandboxError(ErrorCode.COLUMN_LEVEL_FORBIDDEN, f"column '{name}' ({col.level.value})")
        if not col.numeric or col.lower is None or col.upper is None:
            raise bad(f"column '{name}' is not numeric with public bounds")
    nonzero = sum(1 for _, w in spec.public_features if w != 0.0)
    if nonzero < min_public_weights:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT,
                           f"a model needs at least {min_public_weights} non-zero public weights "
                           "(fewer could reveal a single column)")


def submit(conn: sqlite3.Connection, spec: ModelSpec, *, submitted_by: str, now_ms: int,
           min_public_weights: int) -> str:
    """Validate and store ``spec``; its id is the SHA-256 of its canonical form."""
    validate(spec, catalogue.get_dataset(conn, spec.dataset), min_public_weights=min_public_weights)
    return storage.put_content(conn, "models", spec.canonical(), submitted_by=submitted_by, now_ms=now_ms)


def get(conn: sqlite3.Connection, model_hash: str) -> tuple[ModelSpec, str]:
    """The stored model and who submitted it."""
    found = storage.get_content(conn, "models", model_hash)
    if found is None:
        raise SandboxError(ErrorCode.NOT_FOUND, "no such model")
    return spec_from_canonical(found[0]), found[1]


def identifier_column(info: DatasetInfo) -> str:
    """The dataset's entity key for HE scoring: its one identifier-level column."""
    ids = [c.name for c in info.schema.columns if c.level is Level.IDENTIFIER]
    if len(ids) != 1:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "dataset has no single identifier column for scoring")
    return ids[0]
