"""Requests and results of the compute services (DP queries, HE scoring, FL training) as plain dataclasses.

``dp_queries``, ``he_scoring`` and ``fl_jobs`` take and return these; ``sandbox.serde`` converts them from and to
the protobuf messages at the boundary (``sandbox.servicers``).
"""

from __future__ import annotations

from dataclasses import dataclass

from dp_engine.spec import Query, Statistic, StatisticEstimate
from sandbox.domain import Budget, GrantUsage, TrainingSettings

# -- DP queries ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EstimateQuery:
    grant_id: str
    dataset: str
    query: Query
    delta: float
    epsilon: float = 0.0
    half_width: float | None = None  # set: find the epsilon for this half-width (``epsilon`` is then unused)


@dataclass(frozen=True)
class QueryEstimate:
    epsilon: float  # the epsilon the estimate is for (asked, or found for the half-width)
    cost: Budget
    remaining: Budget
    statistics: tuple[StatisticEstimate, ...]


@dataclass(frozen=True)
class RunQuery:
    grant_id: str
    dataset: str
    query: Query
    epsilon: float
    delta: float
    idempotency_key: str = ""


@dataclass(frozen=True)
class QueryRelease:
    query_id: str
    statistics: tuple[Statistic, ...]
    charged: Budget
    remaining: Budget


@dataclass(frozen=True)
class StoredRelease:
    """An idempotent retry's answer: the response exactly as it was serialised and stored at its first release."""

    body: bytes


# -- HE scoring ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextChunk:
    profile: str  # on the first chunk
    data: bytes


@dataclass(frozen=True)
class ScoreBatch:
    grant_id: str
    context_id: str
    model_hash: str
    entity_ids: tuple[str, ...]
    encrypted_features: tuple[bytes, ...]  # chunk-major: chunk 0's vectors (one per private feature), then chunk 1's
    chunks: int = 1  # ciphertexts per private feature, as the request declared it


@dataclass(frozen=True)
class ScoreResult:
    encrypted_logits: tuple[bytes, ...]  # one vector per chunk, in order
    entities: int
    usage: GrantUsage
    noise_sd: float


# -- FL training -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartTraining:
    grant_id: str
    plan_hash: str
    settings: TrainingSettings


@dataclass(frozen=True)
class JobSummary:
    """One training job as its owner (or an administrator or auditor) lists it: where it stands, never what it
    trained on."""

    job_id: str
    grant_id: str
    plan_hash: str
    state: str
    round: int
    rounds: int
    epsilon_spent: float
    started_at_ms: int
    settings: TrainingSettings
    owner_id: str = ""
    dataset: str = ""
    message: str = ""


@dataclass(frozen=True)
class JobList:
    jobs: tuple[JobSummary, ...]
    more: bool  # more jobs than the limit: the oldest were left out


@dataclass(frozen=True)
class StartedJob:
    job_id: str
    reserved: Budget


@dataclass(frozen=True)
class TrainingEvent:
    job_id: str
    round: int
    rounds: int
    epsilon_spent: float
    state: str
    message: str = ""
    loss: float | None = None  # None: withheld
    accuracy: float | None = None
    participants: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tensor:
    shape: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class FeatureScaling:
    """A plan feature's public scaling: numeric values clipped to [lower, upper] and mapped to [0, 1], or one-hot
    over the declared categories."""

    column: str
    lower: float
    upper: float
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class NamedModel:
    """A trained model with its inputs named: in raw column units for a logistic model (``raw_units``), or, for an
    MLP (not linear in its columns), the names of its first layer's inputs and the scaling its weights assume."""

    model: str
    inputs: tuple[str, ...]  # the model's inputs in order: a column, or ``column=category`` for a one-hot input
    coefficients: tuple[tuple[str, float], ...]  # logistic: one per input, raw units; mlp: none
    intercept: float
    raw_units: bool
    scaling: tuple[FeatureScaling, ...]
    label: str
    label_threshold: float
    note: str  # how to apply the weights, in a sentence


@dataclass(frozen=True)
class TrainingOutcome:
    job_id: str
    metrics: tuple[tuple[str, float], ...]
    charged: Budget
    weights: tuple[Tensor, ...]  # the raw parameters, in the plan's scaled units
    history: tuple[TrainingEvent, ...]
    named: NamedModel | None = None


@dataclass(frozen=True)
class RegisterTrainedModel:
    job_id: str
    name: str
    private_features: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class RegisteredModel:
    model_hash: str
    canonical: bytes


# -- verification ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifyItem:
    entity_id: str
    claim: tuple[str, ...]
    consent_ref: str


@dataclass(frozen=True)
class VerifyBatch:
    grant_id: str
    template: str
    items: tuple[VerifyItem, ...]
    certificates: bool = False


@dataclass(frozen=True)
class Certificate:
    json: bytes
    signature: bytes


@dataclass(frozen=True)
class VerifyOutcome:
    results: tuple[str, ...]  # MATCH / NO_MATCH / UNKNOWN_ENTITY, in the order of the items
    certificates: tuple[Certificate, ...]
    quota_used: int
    quota_cap: int
    audit_public_key: bytes


@dataclass(frozen=True)
class PrivateBatch:
    grant_id: str
    template: str
    blinded: tuple[bytes, ...]
    consent_refs: tuple[str, ...]


@dataclass(frozen=True)
class PrivateOutcome:
    evaluated: tuple[bytes, ...]
    quota_used: int
    quota_cap: int
