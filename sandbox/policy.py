"""Policy: which columns an application may name, and whether a call lies inside its grant.

Every compute service (and CheckAccess) calls ``authorise`` before any computation: it loads the grant and the
granted dataset version and runs ``check_call``, the single place where "one scenario, one authorisation" is
enforced at run time. ``charge`` then reserves the call's cost in its transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sandbox import catalogue, grants, ledger
from sandbox.calls import Call
from sandbox.domain import (
    VALUE_LEVELS, Budget, ColumnSchema, DatasetInfo, DatasetSchema, Grant, Kind, Level, Principal,
)
from sandbox.errors import ErrorCode, SandboxError
from sandbox.state import Tx

#: Levels each computation kind may touch at all (core never; identifier only as an HE lookup key).
ALLOWED_LEVELS: dict[Kind, frozenset[Level]] = {
    Kind.DP_QUERY: VALUE_LEVELS,
    Kind.HE_SCORING: VALUE_LEVELS | {Level.IDENTIFIER},
    # FL releases only an aggregate model; sensitive columns (a health outcome, say) must be named explicitly,
    # and the administrator decides through the budget whether client-level DP is required.
    Kind.FL_TRAINING: VALUE_LEVELS,
    # Exact answers about one entity: the identifier is the lookup key; templates read value columns.
    Kind.VERIFICATION: VALUE_LEVELS | {Level.IDENTIFIER},
}
#: What "*" in an application expands to: never sensitive, identifier or core columns.
WILDCARD_LEVELS = frozenset({Level.OPEN, Level.INTERNAL})


def check_column_use(kind: Kind, col: ColumnSchema) -> None:
    if col.level is Level.CORE:
        raise SandboxError(ErrorCode.COLUMN_CORE, f"column '{col.name}'")
    if col.level not in ALLOWED_LEVELS[kind]:
        raise SandboxError(ErrorCode.COLUMN_LEVEL_FORBIDDEN, f"column '{col.name}' ({col.level.value}) for {kind.value}")


def resolve_columns(kind: Kind, schema: DatasetSchema, requested: Sequence[str]) -> tuple[str, ...]:
    """Expand "*" and check each named column; return exact names in schema order."""
    if not requested:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"no columns requested from '{schema.name}'")
    wanted: set[str] = set()
    for name in requested:
        if name == "*":
            wanted.update(c.name for c in schema.columns if c.level in WILDCARD_LEVELS)
            continue
        col = schema.column(name)
        if col is None:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"unknown column '{name[:64]}' in '{schema.name}'")
        check_column_use(kind, col)
        wanted.add(name)
    return tuple(c.name for c in schema.columns if c.name in wanted)


@dataclass(frozen=True)
class CallContext:
    """What a compute call asks to touch."""

    kind: Kind
    dataset: str
    dataset_version: str
    columns: tuple[str, ...]
    model_hash: str = ""


@dataclass(frozen=True)
class Authorised:
    """A call inside its grant: the grant, its budget state when checked, and the granted dataset version
    (``authorise`` always sets it; ``check_call`` alone leaves it to the caller)."""

    grant: Grant
    budget: ledger.BudgetState
    info: DatasetInfo | None = None

    @property
    def dataset(self) -> DatasetInfo:
        assert self.info is not None  # authorise refused otherwise
        return self.info


def grant_if_grantee(tx: Tx, caller: Principal, grant_id: str) -> Grant | None:
    """The grant if ``caller`` holds it, else None (a grant of someone else's looks like a missing one)."""
    grant = grants.get(tx, grant_id)
    if grant is None or grant.terms.grantee_id != caller.id:
        return None
    return grant


def check_call(
    tx: Tx, caller: Principal, grant: Grant | None, call: CallContext, *, now_ms: int,
    schema: DatasetSchema | None = None, budget: bool = True,
) -> Authorised:
    """Refuse unless ``caller`` may make ``call`` under ``grant`` (as ``grant_if_grantee`` loaded it, read once
    per call) right now. Charges nothing. ``budget=False`` leaves the budget and quota to ``require_budget``
    (an idempotent retry returns its stored answer first, whatever remains)."""
    # A grant that does not exist and one that is someone else's look the same: no existence oracle.
    if grant is None or grant.terms.grantee_id != caller.id or grant.terms.grantee_public_key != caller.public_key:
        raise SandboxError(ErrorCode.NOT_GRANTEE)
    grants.verify_stored(tx, grant)
    terms = grant.terms
    if grant.revoked:
        raise SandboxError(ErrorCode.GRANT_REVOKED)
    if grant.awaiting:
        raise SandboxError(ErrorCode.GRANT_AWAITING_COSIGNATURE,
                           f"the steward of {', '.join(grant.awaiting)} has not co-signed this grant yet")
    if now_ms < terms.not_before_ms:
        raise SandboxError(ErrorCode.GRANT_NOT_YET_VALID)
    if now_ms >= terms.not_after_ms:
        raise SandboxError(ErrorCode.GRANT_EXPIRED)
    if call.kind is not terms.kind:
        raise SandboxError(ErrorCode.OUTSIDE_GRANT, f"grant is for {terms.kind.value}")
    selection = terms.dataset(call.dataset)
    if selection is None:
        raise SandboxError(ErrorCode.OUTSIDE_GRANT, "dataset not in grant")
    if call.dataset_version and call.dataset_version != selection.version:
        raise SandboxError(ErrorCode.OUTSIDE_GRANT, "dataset version not in grant")
    granted = set(selection.columns)
    for name in call.columns:
        if name in granted:
            continue
        col = schema.column(name) if schema is not None else None
        if col is not None and col.level is Level.CORE:
            raise SandboxError(ErrorCode.COLUMN_CORE, f"column '{name}'")
        if col is not None and col.level in (Level.SENSITIVE, Level.IDENTIFIER):
            raise SandboxError(ErrorCode.COLUMN_NOT_NAMED, f"column '{name}' is not named in the grant")
        raise SandboxError(ErrorCode.OUTSIDE_GRANT, f"column '{name[:64]}' not in grant")
    if terms.model_hash and call.model_hash != terms.model_hash:
        raise SandboxError(ErrorCode.OUTSIDE_GRANT, "model is not the granted one")
    return Authorised(grant, require_budget(tx, grant) if budget else ledger.budget_state(tx, grant.id))


def authorise(
    call: Call, grant_id: str, kind: Kind, dataset: str | None,
    columns: Sequence[str] | Callable[[DatasetInfo | None], Sequence[str]], *, version: str | None = None,
    model_hash: str = "", structure: Callable[[DatasetSchema], None] | None = None, budget: bool = True,
) -> Authorised:
    """The one authorisation of a compute call: ``call.principal`` may touch ``columns`` of ``dataset`` under grant
    ``grant_id`` right now; charges nothing. Annotates the call with the grant id first and, once authorised, with
    the grant's scenario.

    The grant is read once (``grant_if_grantee``); the dataset is the version the grant names (``version``: the one
    the request names, checked against the grant; None: the grant's). ``dataset`` None means the request names no
    dataset that could be found (e.g. an unknown model): NOT_GRANTEE without the grant, else OUTSIDE_GRANT.
    ``columns`` may depend on the dataset (None when the grant does not name it). ``structure`` runs on the
    dataset's schema before the grant is checked, so that a malformed request is INVALID_ARGUMENT whatever the
    grant. ``budget`` as in ``check_call``.
    """
    call.annotate(grant_id=grant_id)
    grant = grant_if_grantee(call.tx, call.principal, grant_id)
    if dataset is None:
        raise SandboxError(ErrorCode.NOT_GRANTEE if grant is None else ErrorCode.OUTSIDE_GRANT)
    selection = grant.terms.dataset(dataset) if grant is not None else None
    info = catalogue.get_dataset(call.tx, selection.name, selection.version) if selection is not None else None
    if info is not None and structure is not None:
        structure(info.schema)
    wanted = tuple(columns(info) if callable(columns) else columns)
    checked_version = (selection.version if selection else "") if version is None else version
    ctx = CallContext(kind, dataset, checked_version, wanted, model_hash)
    auth = check_call(call.tx, call.principal, grant, ctx, now_ms=call.now_ms,
                      schema=info.schema if info else None, budget=budget)
    call.annotate(scenario_id=auth.grant.terms.scenario_id)
    assert info is not None  # check_call refused otherwise
    return Authorised(auth.grant, auth.budget, info)


def charge(call: Call, auth: Authorised, cost: Budget, *, quota: int = 1) -> ledger.BudgetState:
    """Reserve ``cost`` and ``quota`` on the authorised grant in the call's transaction (or raise
    QUOTA_EXHAUSTED / BUDGET_EXHAUSTED), and record it for the boundary's audit entry. Never refunded."""
    state = ledger.reserve_in(call.tx, auth.grant.id, cost, quota=quota)
    call.record_charge(cost.epsilon_nano, cost.delta_atto)
    return state


def require_budget(tx: Tx, grant: Grant) -> ledger.BudgetState:
    """The grant's budget state, or QUOTA_EXHAUSTED / BUDGET_EXHAUSTED if nothing is left."""
    terms = grant.terms
    state = ledger.budget_state(tx, grant.id)
    if state.quota_remaining <= 0:
        raise SandboxError(ErrorCode.QUOTA_EXHAUSTED, f"0 of {state.quota_cap} remain")
    if terms.kind not in (Kind.HE_SCORING, Kind.VERIFICATION) and state.remaining.epsilon_nano <= 0:
        raise SandboxError(ErrorCode.BUDGET_EXHAUSTED, "remaining epsilon 0")
    return state
