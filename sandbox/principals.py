"""Principals: enrolment by an administrator, self-registration, approval, suspension."""

from __future__ import annotations


from sandbox.domain import Principal, PrincipalStatus, Role
from sandbox.errors import ErrorCode, SandboxError
from sandbox.identity import load_public_key, principal_id_for
from sandbox.state import Conflict, Tx

_MAX_TEXT = 200


def _row_to_principal(row: tuple) -> Principal:
    pid, name, org, roles, pk, status, created, active_since = row
    return Principal(pid, name, org, frozenset(Role(r) for r in roles.split(",") if r), bytes(pk),
                     PrincipalStatus(status), created, int(active_since))




def get(tx: Tx, principal_id: str) -> Principal | None:
    row = tx.principal_get(principal_id)
    return _row_to_principal(row) if row else None


def require(tx: Tx, principal_id: str) -> Principal:
    p = get(tx, principal_id)
    if p is None:
        raise SandboxError(ErrorCode.NOT_FOUND, "no such principal")
    return p


def list_all(tx: Tx) -> list[Principal]:
    return [_row_to_principal(r) for r in tx.principal_list()]


def administrators(tx: Tx) -> list[Principal]:
    return [p for p in list_all(tx) if Role.ADMIN in p.roles and p.status is PrincipalStatus.ACTIVE]


def _check_text(value: str, what: str) -> str:
    value = value.strip()
    if not value or len(value) > _MAX_TEXT or any(ord(ch) < 32 for ch in value):
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"{what} must be 1 to {_MAX_TEXT} printable characters")
    return value


def _insert(
    tx: Tx, *, name: str, organisation: str, roles: frozenset[Role], public_key: bytes,
    status: PrincipalStatus, by: str | None, now_ms: int,
) -> Principal:
    load_public_key(public_key)
    if not roles:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "at least one role is required")
    p = Principal(principal_id_for(public_key), _check_text(name, "name"), _check_text(organisation, "organisation"),
                  roles, public_key, status, now_ms)
    try:
        tx.principal_insert(p.id, p.name, p.organisation, ",".join(sorted(r.value for r in roles)), public_key,
                            status.value, now_ms, by)
    except Conflict as exc:
        raise SandboxError(ErrorCode.ALREADY_EXISTS, "a principal with this key is already enrolled") from exc
    return p


def enrol(
    tx: Tx, *, name: str, organisation: str, roles: frozenset[Role], public_key: bytes,
    enrolled_by: str | None, now_ms: int,
) -> Principal:
    """An administrator enrols an active principal."""
    return _insert(tx, name=name, organisation=organisation, roles=roles, public_key=public_key,
                   status=PrincipalStatus.ACTIVE, by=enrolled_by, now_ms=now_ms)


def register(
    tx: Tx, *, name: str, organisation: str, roles: frozenset[Role], public_key: bytes, now_ms: int,
    max_pending: int,
) -> Principal:
    """Self-registration: the principal exists but stays pending until an administrator approves it.

    At most ``max_pending`` principals wait at a time, so that outsiders cannot fill the table.
    """
    if Role.ADMIN in roles:
        raise SandboxError(ErrorCode.WRONG_ROLE, "administrators are enrolled, never self-registered")
    pending = tx.principal_count(PrincipalStatus.PENDING.value)
    if pending >= max_pending:  # how many wait is not an outsider's business
        raise SandboxError(ErrorCode.REGISTRATION_LIMIT, "too many registrations wait for approval; try again later")
    return _insert(tx, name=name, organisation=organisation, roles=roles, public_key=public_key,
                   status=PrincipalStatus.PENDING, by=None, now_ms=now_ms)


def set_status(
    tx: Tx, principal_id: str, status: PrincipalStatus, roles: frozenset[Role] | None = None
) -> Principal:
    p = require(tx, principal_id)
    new_roles = roles if roles else p.roles
    tx.principal_update(principal_id, status=status.value, roles=",".join(sorted(r.value for r in new_roles)))
    return require(tx, principal_id)


def approve(tx: Tx, principal_id: str, roles: frozenset[Role], *, now_ms: int) -> Principal:
    """Activate a pending principal. Requests it signed before ``now_ms`` stay refused (``active_since_ms``):
    while pending, its refusals beyond the per-peer audit budget were not written, nonces included, so without
    this one of them could be replayed once it would succeed."""
    p = require(tx, principal_id)
    if p.status is not PrincipalStatus.PENDING:
        raise SandboxError(ErrorCode.PRINCIPAL_NOT_PENDING)
    tx.principal_update(principal_id, active_since_ms=now_ms)
    return set_status(tx, principal_id, PrincipalStatus.ACTIVE, roles)
