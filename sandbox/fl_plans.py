"""Federated-training plan templates: what is trained on what (model, features, label), fixed by a hash.

An FL_TRAINING application names a template's hash as its model reference; the
grant pins it. The run-time settings (rounds, epochs, learning rate, DP clipping
and noise) are chosen at StartTraining and priced then.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass

import fl_server
from sandbox import catalogue, registry
from sandbox.domain import VALUE_LEVELS, ColumnType, DatasetInfo, Grant, SecureAggregationTerms, TrainingSettings
from sandbox.errors import ErrorCode, SandboxError, engine_errors
from sandbox.state import Tx

MODELS = ("logistic", "mlp")
#: The run settings the SDK starts a job with when given none (``clients.client._settings``): what an application
#: that proposes none is reviewed with.
SDK_DEFAULTS = TrainingSettings(rounds=10, local_epochs=1, learning_rate=0.1, fraction_per_round=1.0,
                                strategy="fedavg")
MAX_FEATURES = 64


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
        return registry.canonical_json(doc)

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
        if col.level not in VALUE_LEVELS:
            raise SandboxError(ErrorCode.COLUMN_LEVEL_FORBIDDEN, f"column '{name}' ({col.level.value})")
        if not col.numeric or col.lower is None or col.upper is None:
            if col.type is not ColumnType.CATEGORICAL or name == t.label:
                raise bad(f"column '{name}' is not numeric with public bounds")
    if t.label in t.features:
        raise bad("the label cannot be a feature")


def register(tx: Tx, t: PlanTemplate, *, submitted_by: str, now_ms: int) -> str:
    """Validate and store ``t``; its id is the SHA-256 of its canonical form."""
    validate(t, catalogue.get_dataset(tx, t.dataset))
    return registry.put(tx, registry.PLANS, t.canonical(), submitted_by=submitted_by, now_ms=now_ms)


def get_with_submitter(tx: Tx, plan_hash: str) -> tuple[PlanTemplate, str] | None:
    found = registry.get(tx, registry.PLANS, plan_hash)
    return (from_canonical(found[0]), found[1]) if found is not None else None


def get(tx: Tx, plan_hash: str) -> PlanTemplate:
    found = registry.get(tx, registry.PLANS, plan_hash)
    if found is None:
        raise SandboxError(ErrorCode.NOT_FOUND, "no such training plan")
    return from_canonical(found[0])


def holders(info: DatasetInfo) -> int:
    """How many data holders the dataset has (the categories of its partition column)."""
    col = info.schema.column(info.schema.partition_column) if info.schema.partition_column else None
    return len(col.categories) if col is not None and col.categories else 0


def secure_terms(template: PlanTemplate, s: TrainingSettings, info: DatasetInfo) -> SecureAggregationTerms:
    """How secure aggregation runs for these settings: on by default with at least 3 holders a round, refused
    (INVALID_ARGUMENT) when asked for with fewer; ``shares`` 0 when off."""
    if s.secure_aggregation not in ("", "on", "off"):
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "secure_aggregation is on, off, or empty for the default")
    n = holders(info)
    sampled = min(n, _plan(template, s, info, secure=False).sample_size(n))
    on = s.secure_aggregation == "on" or (s.secure_aggregation == "" and n >= fl_server.SECURE_MIN_HOLDERS)
    if not on:
        return SecureAggregationTerms(n, sampled, 0, 0)
    sampled = min(n, max(sampled, fl_server.SECURE_MIN_HOLDERS))
    if sampled < fl_server.SECURE_MIN_HOLDERS:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT,
                           f"secure aggregation needs at least {fl_server.SECURE_MIN_HOLDERS} data holders a round; "
                           f"dataset '{info.schema.name}' has {n}: with 2, each one's update is the sum minus the "
                           "other's")
    protocol = fl_server.secure_protocol(sampled)
    return SecureAggregationTerms(n, sampled, protocol.shares, protocol.threshold)


def build_plan(template: PlanTemplate, s: TrainingSettings, info: DatasetInfo) -> fl_server.TrainingPlan:
    """The engine's plan: features scaled by their public bounds (one-hot for declared categories), with secure
    aggregation as ``secure_terms`` decides."""
    return _plan(template, s, info, secure=secure_terms(template, s, info).shares > 0)


def _plan(template: PlanTemplate, s: TrainingSettings, info: DatasetInfo, *, secure: bool) -> fl_server.TrainingPlan:
    features = []
    for name in template.features:
        col = info.schema.column(name)
        assert col is not None
        if col.type is ColumnType.CATEGORICAL:
            features.append(fl_server.Feature(name, categories=col.categories))
        else:
            assert col.lower is not None and col.upper is not None
            features.append(fl_server.Feature(name, lower=col.lower, upper=col.upper))
    with engine_errors():  # validate() refuses a NaN or infinite setting as it refuses any value outside the limits
        plan = fl_server.TrainingPlan(
            features=tuple(features), label=fl_server.Label(template.label, template.label_threshold),
            model=template.model, hidden_units=template.hidden_units or 16, rounds=s.rounds,
            local_epochs=s.local_epochs, learning_rate=s.learning_rate,
            clients_per_round=s.fraction_per_round or 1.0, strategy=s.strategy or "fedavg",
            proximal_mu=s.proximal_mu, clipping_norm=s.clipping_norm or 1.0, noise_multiplier=s.noise_multiplier,
            delta=s.delta or 1e-6, seed=secrets.randbelow(2**31),
            secure_aggregation=secure, min_holders=fl_server.SECURE_MIN_HOLDERS if secure else 2,
        )
        return plan.validate()


def price(template: PlanTemplate, settings: TrainingSettings, info: DatasetInfo) -> tuple[float, float]:
    """(epsilon, delta) one run with ``settings`` costs (epsilon inf without DP); INVALID_ARGUMENT if they are not
    valid for the plan."""
    return fl_server.plan_cost(build_plan(template, settings, info))


def settings_for(grant: Grant, asked: TrainingSettings) -> TrainingSettings:
    """The settings a run under ``grant`` uses: the pinned ones (a request may leave them out, or repeat them
    exactly), or, for a grant that pins none, the request's own."""
    pinned = grant.terms.training
    if pinned is None or asked == TrainingSettings() or asked == pinned:
        return pinned or asked
    raise SandboxError(ErrorCode.OUTSIDE_GRANT, "the grant pins the training settings; these differ from them")
