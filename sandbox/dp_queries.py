"""DP queries: policy, pricing, reservation and release around ``dp_engine``.

Order of a RunQuery (inside the boundary's transaction, before any computation):
policy check against the grant, DP-specific column rules, query validation and
planning (the cost comes from opendp's own map), idempotency lookup, then one
conditional reservation. The computation runs after that commits
(``calls.Deferred``); the release is audited before it leaves.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from decimal import Decimal

import dp_engine
from dp_engine.spec import CategoricalColumn, ColumnInfo, NumericColumn, Query
from sandbox import ledger, policy
from sandbox.calls import Call, Deferred
from sandbox.columns import ArrayCache
from sandbox.compute_io import EstimateQuery, QueryEstimate, QueryRelease, RunQuery, StoredRelease
from sandbox.domain import ColumnType, DatasetInfo, DatasetSchema, Kind, Level, Principal
from sandbox.errors import ErrorCode, SandboxError, engine_errors
from sandbox.state import Tx
from wire.budget import NANO, from_units

_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
FILTER_LEVELS = frozenset({Level.OPEN, Level.INTERNAL})
GROUP_LEVELS = frozenset({Level.OPEN})


def column_infos(schema: DatasetSchema) -> dict[str, ColumnInfo]:
    """The public metadata dp_engine needs: clamp bounds and declared categories, never data."""
    infos: dict[str, ColumnInfo] = {}
    for col in schema.columns:
        if col.level in (Level.IDENTIFIER, Level.CORE):
            continue
        if col.numeric and col.lower is not None and col.upper is not None:
            infos[col.name] = NumericColumn(col.name, col.lower, col.upper, col.type is ColumnType.INTEGER)
        elif col.type is ColumnType.CATEGORICAL:
            infos[col.name] = CategoricalColumn(col.name, col.categories)
    return infos


def check_query_shape(schema: DatasetSchema, query: Query) -> None:
    """Structural errors, whatever the grant: unknown columns, group-by on an identifier or a non-categorical column."""
    for name in referenced_columns(query):
        if schema.column(name) is None:
            raise SandboxError(ErrorCode.INVALID_QUERY, f"unknown column '{name[:64]}'")
    for name in query.group_by:
        col = schema.column(name)
        if col is not None and (col.level is Level.IDENTIFIER or col.type is not ColumnType.CATEGORICAL):
            raise SandboxError(ErrorCode.INVALID_QUERY, f"group-by column '{name}' is not a declared categorical column")


def check_dp_columns(schema: DatasetSchema, query: Query) -> None:
    """Filters on open or internal columns only; group-by on open columns only; identifiers and core never."""
    for f in query.filters:
        col = schema.column(f.column)
        if col is not None and col.level not in FILTER_LEVELS:
            raise SandboxError(ErrorCode.COLUMN_LEVEL_FORBIDDEN, f"filter on '{col.name}' ({col.level.value})")
    for name in query.group_by:
        col = schema.column(name)
        if col is not None and col.level not in GROUP_LEVELS:
            raise SandboxError(ErrorCode.COLUMN_LEVEL_FORBIDDEN, f"group-by on '{name}' ({col.level.value})")
    for agg in query.aggregates:
        col = schema.column(agg.column) if agg.column else None
        if col is not None and col.level in (Level.IDENTIFIER, Level.CORE):
            raise SandboxError(ErrorCode.COLUMN_LEVEL_FORBIDDEN, f"'{col.name}' ({col.level.value})")


def referenced_columns(query: Query) -> tuple[str, ...]:
    names = [f.column for f in query.filters] + list(query.group_by) + [a.column for a in query.aggregates if a.column]
    return tuple(dict.fromkeys(names))


def check_privacy_parameters(epsilon: float, delta: float) -> None:
    """dp_engine's budget check (finite epsilon in [1e-6, 1e6], delta in [0, 1)), and no delta below one atto."""
    with engine_errors():
        dp_engine.check_budget(epsilon, delta)
    if 0.0 < delta < 1e-18:
        raise SandboxError(ErrorCode.INVALID_QUERY, "delta must be 0, or between 1e-18 and 1 (exclusive)")


def _unit(schema: DatasetSchema) -> int:
    """The privacy unit: the most rows one person may have (the import enforces it), 1 without a person key."""
    return max(1, schema.max_rows_per_person) if schema.person_key else 1


def _engine_plan(query: Query, info: DatasetInfo, epsilon: float, delta: float) -> dp_engine.Plan:
    """The calibrated plan (cached by dp_engine per query shape, epsilon, delta and unit)."""
    with engine_errors():
        return dp_engine.plan(query, column_infos(info.schema), epsilon=epsilon, delta=delta, unit=_unit(info.schema))


def _epsilon_for_half_width(query: Query, info: DatasetInfo, half_width: float, delta: float) -> float:
    """The smallest epsilon meeting the half-width; it plans (so calibrates) the query at that epsilon."""
    with engine_errors():
        return dp_engine.epsilon_for_half_width(query, column_infos(info.schema), half_width, delta=delta,
                                                unit=_unit(info.schema), n_hint=info.public_rows)


def _authorise(call: Call, grant_id: str, dataset: str, query: Query, budget: bool = True) -> policy.Authorised:
    """Structure first (INVALID_QUERY), then the grant (PERMISSION_DENIED); nothing is charged either way."""
    auth = policy.authorise(call, grant_id, Kind.DP_QUERY, dataset, referenced_columns(query),
                            structure=lambda schema: check_query_shape(schema, query), budget=budget)
    check_dp_columns(auth.dataset.schema, query)
    return auth


def _check_delta_allowed(delta: float, auth: policy.Authorised) -> None:
    if delta > 0 and auth.grant.terms.budget.delta_atto == 0:
        raise SandboxError(ErrorCode.INVALID_QUERY, "this grant has no delta budget; use delta 0 (Laplace)")


def estimate(call: Call, req: EstimateQuery) -> QueryEstimate:
    """Free: cost and accuracy at an epsilon, or the epsilon for a half-width."""
    auth = _authorise(call, req.grant_id, req.dataset, req.query)
    info = auth.dataset
    delta = req.delta
    half_width = req.half_width is not None
    check_privacy_parameters(1.0 if half_width else req.epsilon, delta)  # a found epsilon is in range by construction
    _check_delta_allowed(delta, auth)
    epsilon = (_epsilon_for_half_width(req.query, info, req.half_width, delta) if req.half_width is not None
               else req.epsilon)
    plan = _engine_plan(req.query, info, epsilon, delta)
    cost = ledger.cost_units(plan.cost.epsilon, plan.cost.delta)
    return QueryEstimate(epsilon=epsilon, cost=cost, remaining=auth.budget.remaining,
                         statistics=tuple(plan.estimates(n_hint=info.public_rows)))


def _stored_release(tx: Tx, grant_id: str, key: str, request_sha: str) -> bytes | None:
    row = tx.release_get(grant_id, key)
    if row is None:
        return None
    if row[0] != request_sha:
        raise SandboxError(ErrorCode.IDEMPOTENCY_CONFLICT)
    if row[1] == "lost":
        raise SandboxError(ErrorCode.RELEASE_LOST)
    if row[1] != "done":
        raise SandboxError(ErrorCode.IN_PROGRESS)
    return bytes(row[2])


def run(call: Call, req: RunQuery, cache: ArrayCache) -> StoredRelease | Deferred:
    """Reserve now (in the call's transaction); compute and release after it commits.

    The Deferred's ``compute`` returns a ``QueryRelease``; ``on_success`` stores the serialised response the
    boundary releases, and a retry with the same key gets those bytes back (``StoredRelease``).
    """
    query = req.query
    key = req.idempotency_key
    if key and not _KEY_RE.match(key):
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "idempotency key must be 1 to 64 of [A-Za-z0-9_.-]")
    check_privacy_parameters(req.epsilon, req.delta)
    # An answer already paid for is returned before any budget or quota check: a retry after a withheld release
    # must get it even when that charge used what remained.
    auth = _authorise(call, req.grant_id, req.dataset, query, budget=False)
    info = auth.dataset
    terms = auth.grant.terms
    if key:
        stored = _stored_release(call.tx, auth.grant.id, key, call.request_sha256)
        if stored is not None:
            return StoredRelease(stored)
    auth = dataclasses.replace(auth, budget=policy.require_budget(call.tx, auth.grant))  # keyed or not, one order
    _check_delta_allowed(req.delta, auth)
    plan = _engine_plan(query, info, req.epsilon, req.delta)
    cost = ledger.cost_units(plan.cost.epsilon, plan.cost.delta)
    if terms.max_epsilon_per_call_nano and cost.epsilon_nano > terms.max_epsilon_per_call_nano:
        raise SandboxError(ErrorCode.EPSILON_OVER_CALL_CAP,
                           f"at most {from_units(terms.max_epsilon_per_call_nano, NANO)} per query")
    if key:
        call.tx.release_open(auth.grant.id, key, call.request_sha256, call.now_ms)
    state = policy.charge(call, auth, cost, quota=1)
    query_id = "q-" + secrets.token_hex(8)
    # A query that names no column (a plain count) still needs the table's length: any public-metadata column
    # carries it; its values are never read.
    needed = referenced_columns(query) or (next(iter(column_infos(info.schema))),)

    def compute() -> QueryRelease:
        stats = plan.release(cache.columns(info, needed))
        return QueryRelease(query_id=query_id, statistics=tuple(stats), charged=cost, remaining=state.remaining)

    def on_success(tx: Tx, body: bytes) -> None:
        if key:
            tx.release_close(auth.grant.id, key, "done", body)

    def on_failure(tx: Tx) -> None:
        if key:
            tx.release_close(auth.grant.id, key, "failed")

    return Deferred(compute, on_success, on_failure)


def warm(principal: Principal, req: RunQuery | EstimateQuery, tx: Tx) -> None:
    """Calibrate the query's plan before the write lock (a cold plan takes 40-250 ms); read-only, may raise.

    The handler repeats the same call with the same arguments and finds the calibration in dp_engine's cache.
    A request the handler will refuse before planning is not calibrated.
    """
    auth = _authorise(Call(principal, tx, int(time.time() * 1000)), req.grant_id, req.dataset, req.query,
                      budget=False)
    if isinstance(req, EstimateQuery) and req.half_width is not None:
        _epsilon_for_half_width(req.query, auth.dataset, req.half_width, req.delta)
    else:
        _engine_plan(req.query, auth.dataset, req.epsilon, req.delta)
