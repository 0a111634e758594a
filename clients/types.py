"""Result types the SDK returns: frozen dataclasses, never protobuf messages.

Enumerations are plain strings (``"DP_QUERY"``, ``"open"``, ``"approved"``), budgets are
``Decimal`` converted exactly from the integer units on the wire.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from wire.verification import certificate_file
from wire.transparency import TreeHead  # a signed tree head (size, root, time, signature), as the wire defines it

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Principal", "Column", "DatasetSchema", "Dataset", "DatasetSelection", "GrantTerms", "Grant", "Usage", "Scenario",
    "ImportResult", "Rejection", "AuditEntry", "AuditHead", "Receipt", "VerifiedReceipt", "TreeHead", "Statistic",
    "QueryResult", "StatisticEstimate",
    "QueryEstimate", "TrainingEvent", "TrainingJob", "TrainingJobSummary", "TrainingJobList", "TrainingResult",
    "NamedModel", "FeatureScaling", "ModelSpec", "ModelReview", "TermShare",
    "HeProfile", "CheckTemplate", "VerificationSettings", "Certificate", "VerifyResult", "CertificateCheck",
]


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    organisation: str
    roles: tuple[str, ...]
    public_key: bytes
    status: str
    created_at: dt.datetime


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    level: str
    nullable: bool
    lower: float | None
    upper: float | None
    categories: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class DatasetSchema:
    """A dataset's schema and classification as an administrator declares it (``clients.schema_file``)."""

    name: str
    description: str
    columns: tuple[Column, ...]
    person_key: str = ""
    max_rows_per_person: int = 0  # 0: one row per person
    partition_column: str = ""
    source: str = ""


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    version: str
    approx_rows: int
    columns: tuple[Column, ...]
    person_key: str
    max_rows_per_person: int
    partition_column: str
    source: str
    imported_at: dt.datetime
    stewardship: Stewardship | None = None


@dataclass(frozen=True)
class Stewardship:
    """Who holds a dataset: its department, the stewards who speak for it, and when they must co-sign a grant."""

    owner: str
    steward_ids: tuple[str, ...]
    steward_keys: tuple[bytes, ...]  # in the order of steward_ids
    policy: str  # never, sensitive (when a grant names a sensitive column) or always
    updated_at: dt.datetime


@dataclass(frozen=True)
class CosignRequirement:
    """A dataset of a grant whose steward must co-sign: any one of these stewards (keys in id order)."""

    dataset: str
    steward_ids: tuple[str, ...]
    steward_keys: tuple[bytes, ...]


@dataclass(frozen=True)
class Cosignature:
    dataset: str
    steward_id: str
    public_key: bytes
    signature: bytes
    signed_at: dt.datetime


@dataclass(frozen=True)
class DatasetSelection:
    name: str
    version: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class CheckTemplate:
    name: str
    expression: str


@dataclass(frozen=True)
class VerificationSettings:
    """What a VERIFICATION scenario asks for (and its grant pins): templates over one dataset and the limits."""

    id_column: str
    templates: tuple[CheckTemplate, ...]
    per_entity_limit: int
    reveal_unknown: bool
    allow_sensitive: bool
    private_mode: bool

    def template(self, name: str) -> CheckTemplate | None:
        return next((x for x in self.templates if x.name == name), None)


@dataclass(frozen=True)
class GrantTerms:
    scenario_id: str
    grantee_id: str
    kind: str
    datasets: tuple[DatasetSelection, ...]
    model_hash: str
    epsilon: Decimal
    delta: Decimal
    max_epsilon_per_call: Decimal
    not_before: dt.datetime
    not_after: dt.datetime
    quota: int
    approver_id: str
    approver_public_key: bytes
    issued_at: dt.datetime
    cosigners: tuple[CosignRequirement, ...] = ()
    training: TrainingSettings | None = None  # FL_TRAINING: every run must use these
    verification: VerificationSettings | None = None  # VERIFICATION: every check keeps to these


@dataclass(frozen=True)
class Grant:
    id: str
    terms: GrantTerms
    terms_bytes: bytes
    signature: bytes
    revoked: bool
    revoke_reason: str
    cosignatures: tuple[Cosignature, ...] = ()
    awaiting: tuple[str, ...] = ()  # datasets whose steward has not co-signed: the grant is not active until empty


@dataclass(frozen=True)
class Usage:
    epsilon_spent: Decimal
    delta_spent: Decimal
    quota_used: int


@dataclass(frozen=True)
class Scenario:
    id: str
    applicant_id: str
    title: str
    purpose: str
    legal_basis: str
    kind: str
    datasets: tuple[DatasetSelection, ...]
    model_hash: str
    epsilon: Decimal
    delta: Decimal
    max_epsilon_per_call: Decimal
    valid_from: dt.datetime
    valid_until: dt.datetime
    quota: int
    status: str
    decision_reason: str
    created_at: dt.datetime
    grant: Grant | None
    usage: Usage | None
    training: TrainingSettings | None = None  # FL_TRAINING: the run settings proposed (the grant pins them)
    training_epsilon: Decimal = Decimal(0)  # what one run with them costs; 0 without DP or without a proposal
    verification: VerificationSettings | None = None  # VERIFICATION: the templates and limits asked for
    training_secure_aggregation: SecureAggregationTerms | None = None  # FL_TRAINING proposal: set by the server

    @property
    def epsilon_cap(self) -> Decimal:
        """The epsilon in force: the grant's once approved (it may be narrower), else what was asked for."""
        return self.grant.terms.epsilon if self.grant else self.epsilon

    @property
    def quota_cap(self) -> int:
        return self.grant.terms.quota if self.grant else self.quota


@dataclass(frozen=True)
class Rejection:
    line: int
    column: str
    reason: str


@dataclass(frozen=True)
class ImportResult:
    dataset: Dataset
    rows_imported: int
    duplicates_dropped: int
    rejected_count: int
    rejected: tuple[Rejection, ...]


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: dt.datetime
    principal_id: str
    method: str
    scenario_id: str
    grant_id: str
    status: str
    error_code: str
    epsilon: Decimal
    delta: Decimal
    request_sha256: str
    response_sha256: str
    prev_hash: str
    entry_hash: str
    request: str = ""  # canonical JSON of what was asked ("" for entries written before it was kept)
    principal_name: str = ""  # as the server knows it when listed ("" if unknown)


@dataclass(frozen=True)
class AuditHead:
    """The audit log's latest signed tree head, with the witnesses' cosignatures of it."""

    entries: int
    head: TreeHead | None  # None only for an empty log
    audit_public_key: bytes
    cosigned_by: tuple[str, ...]  # witnesses' principal ids whose cosignature of this head the server holds


@dataclass(frozen=True)
class Receipt:
    """An answer's receipt: the audit entry that records it, and the SHA-256 of the bytes received."""

    seq: int
    method: str
    response_sha256: str


@dataclass(frozen=True)
class VerifiedReceipt:
    """A receipt checked against a signed tree head: the entry is in the log the audit key signed."""

    entry: AuditEntry
    head: TreeHead


@dataclass(frozen=True)
class Statistic:
    """One released number with its 95% interval (None for quantiles: the exponential mechanism gives none)."""

    aggregate: str
    group: tuple[str, ...]
    value: float
    low: float | None
    high: float | None
    mechanism: str
    scale: float


@dataclass(frozen=True)
class QueryResult:
    query_id: str
    statistics: tuple[Statistic, ...]
    epsilon_charged: Decimal
    delta_charged: Decimal
    epsilon_remaining: Decimal
    delta_remaining: Decimal
    replayed: bool
    receipt: Receipt | None = None  # the audit entry recording this answer (``verify_receipt``)


@dataclass(frozen=True)
class StatisticEstimate:
    aggregate: str
    mechanism: str
    scale: float
    half_width: float | None
    note: str


@dataclass(frozen=True)
class QueryEstimate:
    epsilon: float
    epsilon_cost: Decimal
    delta_cost: Decimal
    statistics: tuple[StatisticEstimate, ...]
    epsilon_remaining: Decimal
    delta_remaining: Decimal


@dataclass(frozen=True)
class TrainingEvent:
    job_id: str
    round: int
    rounds: int
    loss: float | None  # None when withheld (under DP the per-round metrics are not covered by epsilon)
    accuracy: float | None
    epsilon_spent: float
    participants: tuple[str, ...]
    dropped: tuple[str, ...]  # data holders that failed this round
    state: str  # running, completed, failed, cancelled, revoked
    message: str


@dataclass(frozen=True)
class TermShare:
    """One sandbox column's part in a model's score: how far it alone can move the score, and its share."""

    column: str
    weight: float
    lower: float
    upper: float
    contribution: float  # |weight| x (upper - lower)
    share: float  # contribution / the model's contribution range


@dataclass(frozen=True)
class ModelReview:
    """What the sandbox's release rule makes of a model: the noise on every score and what one score carries."""

    terms: tuple[TermShare, ...]
    contribution_range: float
    noise_sd: float  # sd of the Gaussian noise added to every score's sandbox part
    bits_per_score: float  # at most this many bits about the sandbox's columns per score
    scores_per_entity: int  # how often one grant may score one entity
    bits_per_entity: float  # after that many scores of one entity
    step_tv_per_entity: float  # most total variation one step of one integer column causes over them


@dataclass(frozen=True)
class HeProfile:
    """One of the sandbox's CKKS parameter profiles: its key size, modulus chain, scale and slots per ciphertext."""

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    slots: int
    #: entities one Score call may carry, in chunks of ``slots`` (a sandbox that does not say takes one chunk)
    max_entities_per_call: int = 0

    @property
    def per_call(self) -> int:
        """Entities one Score call carries at most."""
        return max(self.slots, self.max_entities_per_call)


@dataclass(frozen=True)
class ModelSpec:
    """A registered scoring model as a reviewer (or a grantee of it) reads it."""

    model_hash: str
    name: str
    kind: str  # linear or logistic
    dataset: str
    public_features: tuple[tuple[str, float], ...]  # (sandbox column, weight)
    private_features: tuple[tuple[str, float], ...]  # (feature the scoring party supplies, weight)
    bias: float
    description: str
    submitted_by: str
    review: ModelReview | None = None


class TrainingJob(str):
    """A training job's id (use it wherever a job id goes) with what its start reserved from the budget."""

    epsilon_reserved: Decimal
    delta_reserved: Decimal

    def __new__(cls, job_id: str, epsilon_reserved: Decimal, delta_reserved: Decimal) -> TrainingJob:
        job = super().__new__(cls, job_id)
        job.epsilon_reserved = epsilon_reserved
        job.delta_reserved = delta_reserved
        return job


@dataclass(frozen=True)
class TrainingPlan:
    """A registered federated-training plan as its reviewers read it: what is trained on what."""

    plan_hash: str
    dataset: str
    model: str  # logistic or mlp
    features: tuple[str, ...]
    label: str
    label_threshold: float  # label = 1 where the label column is above this
    hidden_units: int
    submitted_by: str


@dataclass(frozen=True)
class TrainingSettings:
    rounds: int
    local_epochs: int
    learning_rate: float
    fraction_per_round: float
    strategy: str
    proximal_mu: float
    clipping_norm: float  # 0: no DP
    noise_multiplier: float
    delta: float
    secure_aggregation: str = ""  # "on", "off", or "": on when the dataset has at least 3 data holders


@dataclass(frozen=True)
class SecureAggregationTerms:
    """How secure aggregation runs for an FL proposal's dataset, as the server worked it out (``shares`` 0: off).

    Each round's ``sampled`` holders share their key seeds with all the others (``shares``); ``threshold`` of
    them recover a holder that drops out after sharing its keys, so ``sampled - threshold`` may drop.
    """

    holders: int
    sampled: int
    shares: int
    threshold: int

    @property
    def on(self) -> bool:
        return self.shares > 0


@dataclass(frozen=True)
class TrainingJobSummary:
    """A training job as listed: where it stands (a researcher lists its own; administrators and auditors all)."""

    job_id: str
    grant_id: str
    plan_hash: str
    state: str  # starting, running, completed, failed, cancelled, revoked
    round: int
    rounds: int
    epsilon_spent: float
    started_at: dt.datetime
    settings: TrainingSettings
    owner_id: str = ""  # the researcher who started it
    dataset: str = ""
    message: str = ""  # how it ended, or a note on its last round


class TrainingJobList(list[TrainingJobSummary]):
    """Jobs, newest first; ``more`` says older ones were left out (ask with a higher ``limit``)."""

    more: bool = False


@dataclass(frozen=True)
class FeatureScaling:
    """A feature's public scaling in training: a numeric column clipped to [lower, upper] and mapped to
    (value - lower) / (upper - lower); a categorical one one-hot over ``categories``."""

    column: str
    lower: float
    upper: float
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class NamedModel:
    """A trained model with its inputs named.

    Logistic (``raw_units``): ``logit = intercept + sum(coefficient * input)``, a numeric input being the raw column
    value clipped to its feature's [lower, upper], a ``column=category`` input 1 where the column has that category.
    MLP: not linear in its columns; ``inputs`` names the rows of its first layer, whose weights (the result's
    ``weights``) are in the plan's scaled units (``scaling``).
    """

    model: str  # logistic or mlp
    inputs: tuple[str, ...]
    coefficients: dict[str, float]  # logistic: one per input, raw units; mlp: empty
    intercept: float
    raw_units: bool
    scaling: tuple[FeatureScaling, ...]
    label: str  # label = 1 where this column is above label_threshold
    label_threshold: float
    note: str  # how to apply the weights

    def logit(self, row: dict[str, Any]) -> float:
        """A logistic model's logit for one row of raw column values (a categorical value as its category name)."""
        if not self.raw_units:
            raise ValueError("an mlp is not linear in its columns: apply its weights to scaled inputs")
        total = self.intercept
        for f in self.scaling:
            if f.categories:
                total += self.coefficients.get(f"{f.column}={row[f.column]}", 0.0)
            else:
                total += self.coefficients[f.column] * min(max(float(row[f.column]), f.lower), f.upper)
        return total


@dataclass(frozen=True)
class TrainingResult:
    job_id: str
    weights: tuple[np.ndarray, ...]  # the aggregate model's parameters, in the plan's scaled units
    metrics: dict[str, float]
    history: tuple[TrainingEvent, ...]
    epsilon_charged: Decimal
    delta_charged: Decimal
    receipt: Receipt | None = None
    named: NamedModel | None = None  # the same model with its inputs named (raw units for a logistic model)


@dataclass(frozen=True)
class Certificate:
    """A verification result the sandbox signed, to hand to a third party (``to_file``; ``sandbox-client
    verify-certificate`` checks it)."""

    json: bytes  # canonical JSON: grant, template, salted digests of the id, claim and consent, result, time, entry
    signature: bytes
    audit_public_key: bytes  # the key the server stated; a third party checks against the sandbox's published one

    @property
    def document(self) -> dict[str, Any]:
        return dict(json.loads(self.json))

    @property
    def result(self) -> str:
        return str(self.document["result"])

    @property
    def audit_seq(self) -> int:
        return int(self.document["audit_seq"])

    def to_file(self) -> str:
        return certificate_file(self.json, self.signature, self.audit_public_key)


@dataclass(frozen=True)
class VerifyResult:
    """One result per item, in order: MATCH, NO_MATCH or (where the grant allows) UNKNOWN_ENTITY."""

    results: tuple[str, ...]
    certificates: tuple[Certificate, ...]
    quota_used: int
    quota_cap: int
    private: bool = False
    receipts: tuple[Receipt, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def matches(self) -> int:
        return sum(1 for r in self.results if r == "MATCH")


@dataclass(frozen=True)
class CertificateCheck:
    """What checking a certificate found: ``problems`` is empty when it holds."""

    problems: tuple[str, ...]
    document: dict[str, Any]
    entry: AuditEntry | None = None  # online: the audit entry it names, proved included in a signed head
    head: TreeHead | None = None

    @property
    def valid(self) -> bool:
        return not self.problems
