"""Domain types: frozen dataclasses the server's logic works with (protobuf stops at serde)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Role(str, enum.Enum):
    ADMIN = "admin"
    APPLICANT = "applicant"
    RESEARCHER = "researcher"
    AUDITOR = "auditor"
    STEWARD = "steward"


class CosignPolicy(str, enum.Enum):
    """When a grant over a dataset needs the co-signature of the dataset's steward (谁持有谁负责)."""

    NEVER = "never"
    SENSITIVE = "sensitive"  # when the grant names one of the dataset's sensitive columns
    ALWAYS = "always"


class PrincipalStatus(str, enum.Enum):
    ACTIVE = "active"
    PENDING = "pending"
    SUSPENDED = "suspended"


class Kind(str, enum.Enum):
    DP_QUERY = "DP_QUERY"
    HE_SCORING = "HE_SCORING"
    FL_TRAINING = "FL_TRAINING"
    VERIFICATION = "VERIFICATION"


class Level(str, enum.Enum):
    """Classification level of a column (分类分级), from least to most restricted use."""

    IDENTIFIER = "identifier"
    OPEN = "open"
    INTERNAL = "internal"
    SENSITIVE = "sensitive"
    CORE = "core"


#: Levels whose values a computation may take as input (sensitive ones only when named explicitly);
#: identifiers serve only as HE lookup keys and core columns never.
VALUE_LEVELS = frozenset({Level.OPEN, Level.INTERNAL, Level.SENSITIVE})


class ColumnType(str, enum.Enum):
    INTEGER = "integer"
    FLOAT = "float"
    CATEGORICAL = "categorical"
    STRING = "string"


class ScenarioStatus(str, enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    organisation: str
    roles: frozenset[Role]
    public_key: bytes
    status: PrincipalStatus
    created_at_ms: int
    active_since_ms: int = 0  # when an administrator approved a self-registered key (0: enrolled active)


@dataclass(frozen=True)
class ColumnSchema:
    name: str
    type: ColumnType
    level: Level
    nullable: bool = False
    lower: float | None = None
    upper: float | None = None
    categories: tuple[str, ...] = ()
    description: str = ""

    @property
    def numeric(self) -> bool:
        return self.type in (ColumnType.INTEGER, ColumnType.FLOAT)


@dataclass(frozen=True)
class DatasetSchema:
    name: str
    columns: tuple[ColumnSchema, ...]
    description: str = ""
    person_key: str = ""
    max_rows_per_person: int = 0
    partition_column: str = ""
    source: str = ""

    def column(self, name: str) -> ColumnSchema | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None


@dataclass(frozen=True)
class DatasetInfo:
    schema: DatasetSchema
    version: str
    row_count: int  # exact: stays inside the server (array shapes are checked against it)
    imported_at_ms: int
    #: The row count released once with differential privacy at import (rounded to two significant digits):
    #: the only count the catalogue shows and the row count query estimates assume.
    public_rows: int


@dataclass(frozen=True)
class Stewardship:
    """Who holds a dataset (every version): its department, the stewards who speak for it, the co-signing policy."""

    dataset: str
    owner: str
    steward_ids: tuple[str, ...]
    policy: CosignPolicy
    updated_at_ms: int = 0
    steward_keys: tuple[bytes, ...] = ()  # the stewards' enrolled keys, in the order of steward_ids


@dataclass(frozen=True)
class CosignRequirement:
    """One dataset of a grant whose steward must co-sign: any one of the listed stewards (keys in id order)."""

    dataset: str
    steward_ids: tuple[str, ...]
    steward_keys: tuple[bytes, ...]


@dataclass(frozen=True)
class GrantCosignature:
    dataset: str
    steward_id: str
    steward_key: bytes
    signature: bytes
    signed_at_ms: int


@dataclass(frozen=True)
class DatasetSelection:
    name: str
    version: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Budget:
    """An exact privacy budget: epsilon in 1e-9 units, delta in 1e-18 units."""

    epsilon_nano: int = 0
    delta_atto: int = 0


@dataclass(frozen=True)
class TrainingSettings:
    """The researcher's settings; 0 or "" means the default (as in the protocol)."""

    rounds: int = 0
    local_epochs: int = 0
    learning_rate: float = 0.0
    fraction_per_round: float = 0.0
    strategy: str = ""
    proximal_mu: float = 0.0
    clipping_norm: float = 0.0
    noise_multiplier: float = 0.0
    delta: float = 0.0
    secure_aggregation: str = ""  # "on", "off", or "": on with at least 3 data holders


@dataclass(frozen=True)
class SecureAggregationTerms:
    """How secure aggregation runs for a proposal's dataset (set by the server; ``shares`` 0: it does not)."""

    holders: int
    sampled: int
    shares: int
    threshold: int


@dataclass(frozen=True)
class CheckTemplate:
    name: str
    expression: str  # canonical once the server has parsed it (``wire.checks``)


@dataclass(frozen=True)
class VerificationSettings:
    """What a VERIFICATION grant allows: the check templates over one dataset and the limits on asking."""

    id_column: str
    templates: tuple[CheckTemplate, ...]
    per_entity_limit: int = 0  # 0: the default (``sandbox.verification.DEFAULT_PER_ENTITY``)
    reveal_unknown: bool = False
    allow_sensitive: bool = False
    private_mode: bool = False

    def template(self, name: str) -> CheckTemplate | None:
        return next((t for t in self.templates if t.name == name), None)


@dataclass(frozen=True)
class Application:
    title: str
    purpose: str
    legal_basis: str
    kind: Kind
    datasets: tuple[DatasetSelection, ...]
    model_hash: str
    budget: Budget
    max_epsilon_per_call_nano: int
    valid_from_ms: int
    valid_until_ms: int
    quota: int
    #: FL_TRAINING: the run settings proposed for review (the grant pins them), and what one run costs.
    training: TrainingSettings | None = None
    training_epsilon_nano: int = 0
    verification: VerificationSettings | None = None  # VERIFICATION: the templates and limits asked for
    training_secure_aggregation: SecureAggregationTerms | None = None  # FL_TRAINING proposal: set by the server


@dataclass(frozen=True)
class GrantTerms:
    scenario_id: str
    grantee_id: str
    grantee_public_key: bytes
    kind: Kind
    datasets: tuple[DatasetSelection, ...]
    model_hash: str
    budget: Budget
    max_epsilon_per_call_nano: int
    not_before_ms: int
    not_after_ms: int
    quota: int
    approver_id: str
    approver_public_key: bytes
    issued_at_ms: int
    cosigners: tuple[CosignRequirement, ...] = ()
    training: TrainingSettings | None = None  # FL_TRAINING: every run must use these (None: chosen at each start)
    verification: VerificationSettings | None = None  # VERIFICATION: every check keeps to these

    def dataset(self, name: str) -> DatasetSelection | None:
        for ds in self.datasets:
            if ds.name == name:
                return ds
        return None


@dataclass(frozen=True)
class Grant:
    id: str
    terms_bytes: bytes
    signature: bytes
    terms: GrantTerms
    revoked_at_ms: int | None = None
    revoke_reason: str = ""
    cosignatures: tuple[GrantCosignature, ...] = ()

    @property
    def revoked(self) -> bool:
        return self.revoked_at_ms is not None

    @property
    def awaiting(self) -> tuple[str, ...]:
        """The datasets whose steward has not co-signed yet: the grant is not active until this is empty."""
        done = {c.dataset for c in self.cosignatures}
        return tuple(r.dataset for r in self.terms.cosigners if r.dataset not in done)


@dataclass(frozen=True)
class GrantUsage:
    epsilon_spent_nano: int = 0
    delta_spent_atto: int = 0
    quota_used: int = 0


@dataclass(frozen=True)
class Scenario:
    id: str
    applicant_id: str
    application: Application
    status: ScenarioStatus
    decision_reason: str
    created_at_ms: int
    grant: Grant | None = None
    usage: GrantUsage | None = None


@dataclass(frozen=True)
class AuditRecord:
    """What the boundary knows about one RPC when it appends its audit entry."""

    principal_id: str
    method: str
    status: str
    error_code: str = ""
    scenario_id: str = ""
    grant_id: str = ""
    epsilon_nano: int = 0
    delta_atto: int = 0
    request_sha256: str = ""
    response_sha256: str = ""
    #: A canonical, non-secret description of what was asked (JSON); covered by the entry hash when not empty.
    request: str = ""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time_ms: int
    record: AuditRecord
    prev_hash: str
    entry_hash: str


@dataclass(frozen=True)
class ImportReport:
    """Outcome of a dataset import (or of a dry run)."""

    info: DatasetInfo
    rows_imported: int
    duplicates_dropped: int
    rejected: tuple[tuple[int, str, str], ...] = field(default=())  # (line, column, reason), first 100
    rejected_count: int = 0
