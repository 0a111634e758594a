"""The model registry: declarative linear or logistic models whose id is the SHA-256 of a canonical form.

What a model may be is the release rule's (``sandbox.he_release``): at least ``min_public_weights``
sandbox columns with non-zero weights, contributions within ``max_contribution_ratio`` of each
other, and magnitudes the HE profiles carry. Its scores leave with noise sized from its
contribution range; the review (``GetModel``) shows each term's share and the bits one score can
carry. An applicant who submits several models can still combine their scores, so administrators
review the full spec and the quota and per-entity limit cap how many scores are released.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from sandbox import catalogue, he_release, registry
from sandbox.domain import VALUE_LEVELS, DatasetInfo, Level
from sandbox.errors import ErrorCode, SandboxError
from sandbox.he_release import ReleaseReview, ReleaseRule
from sandbox.state import Tx

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
        return registry.canonical_json(doc)

    @property
    def public_columns(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.public_features)


def spec_from_canonical(text: str) -> ModelSpec:
    doc = json.loads(text)
    return ModelSpec(doc["name"], doc["kind"], doc["dataset"],
                     tuple((f["column"], float(f["weight"])) for f in doc["public_features"]),
                     tuple((f["name"], float(f["weight"])) for f in doc["private_features"]),
                     float(doc["bias"]), doc["description"])


def validate(spec: ModelSpec, info: DatasetInfo, *, rule: ReleaseRule) -> ReleaseReview:
    """Refuse a malformed model, or one whose scores the release rule could not bound; return its review."""
    def bad(why: str) -> SandboxError:
        return SandboxError(ErrorCode.INVALID_ARGUMENT, why)

    if not _NAME_RE.match(spec.name) or spec.kind not in KINDS or len(spec.description) > 2000:
        raise bad("model needs a name (letters, digits, _ -) and a kind (linear or logistic)")
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
    return he_release.check(spec.public_features, tuple(w for _, w in spec.private_features), spec.bias,
                            info.schema, rule)


def submit(tx: Tx, spec: ModelSpec, *, submitted_by: str, now_ms: int, rule: ReleaseRule) -> str:
    """Validate and store ``spec``; its id is the SHA-256 of its canonical form."""
    validate(spec, catalogue.get_dataset(tx, spec.dataset), rule=rule)
    return registry.put(tx, registry.MODELS, spec.canonical(), submitted_by=submitted_by, now_ms=now_ms)


def review(tx: Tx, spec: ModelSpec, rule: ReleaseRule) -> ReleaseReview:
    """What the release rule makes of a stored model, for the reviewer (against the dataset's latest schema)."""
    return he_release.review(spec.public_features, spec.bias, catalogue.get_dataset(tx, spec.dataset).schema, rule)


def get(tx: Tx, model_hash: str) -> tuple[ModelSpec, str]:
    """The stored model and who submitted it."""
    found = registry.get(tx, registry.MODELS, model_hash)
    if found is None:
        raise SandboxError(ErrorCode.NOT_FOUND, "no such model")
    return spec_from_canonical(found[0]), found[1]


def identifier_column(info: DatasetInfo) -> str:
    """The dataset's entity key for HE scoring: its one identifier-level column."""
    ids = [c.name for c in info.schema.columns if c.level is Level.IDENTIFIER]
    if len(ids) != 1:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "dataset has no single identifier column for scoring")
    return ids[0]
