"""Grants: administrators approve a scenario by signing its terms; anyone can verify them offline.

The signature covers the exact serialised ``GrantTerms`` bytes, which are stored
verbatim; ``verify_grant`` needs nothing but those bytes, the signature and the
administrators' public keys.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

from sandbox import catalogue, ledger, principals, serde, stewards, verification
from sandbox.domain import (
    Application, Grant, GrantCosignature, GrantTerms, Principal, PrincipalStatus, Role, Scenario, ScenarioStatus,
)
from sandbox.errors import ErrorCode, SandboxError
from sandbox.identity import verify_signature
from wire.signing import cosign_payload, missing_cosignatures
from sandbox.state import Conflict, Tx



def grant_id_for(terms_bytes: bytes) -> str:
    return "g-" + hashlib.sha256(terms_bytes).hexdigest()[:32]


def _row_to_grant(tx: Tx, row: tuple) -> Grant:  # type: ignore[type-arg]
    gid, terms, sig, revoked_at, reason = row
    parsed = serde.terms_from_bytes(bytes(terms))
    cosigned = tuple(GrantCosignature(str(d), str(s), bytes(k), bytes(g), int(t))
                     for d, s, k, g, t in tx.cosign_list(gid)) if parsed.cosigners else ()
    return Grant(gid, bytes(terms), bytes(sig), parsed, revoked_at, reason, cosigned)


def get(tx: Tx, grant_id: str) -> Grant | None:
    row = tx.grant_get(grant_id)
    return _row_to_grant(tx, row) if row else None


def for_scenario(tx: Tx, scenario_id: str) -> Grant | None:
    row = tx.grant_for_scenario(scenario_id)
    return _row_to_grant(tx, row) if row else None


def held_by(tx: Tx, principal_id: str) -> list[Grant]:
    """The grants of the scenarios ``principal_id`` applied for."""
    found = []
    for row in tx.scenario_list(applicant_id=principal_id):
        grant = for_scenario(tx, row[0])
        if grant is not None:
            found.append(grant)
    return found


def verify_grant(terms_bytes: bytes, signature: bytes, admin_public_keys: Iterable[bytes],
                 cosignatures: Iterable[GrantCosignature] = ()) -> GrantTerms:
    """Offline check: the terms were signed by one of these administrators and carry every co-signature they
    require (each by a steward the signed terms name). Returns the parsed terms."""
    terms = serde.terms_from_bytes(terms_bytes)
    keys = set(admin_public_keys)
    if terms.approver_public_key not in keys or not verify_signature(terms.approver_public_key, signature, terms_bytes):
        raise SandboxError(ErrorCode.INVALID_TERMS, "grant signature does not verify")
    missing = unsigned(terms, terms_bytes, cosignatures)
    if missing:
        raise SandboxError(ErrorCode.INVALID_TERMS, f"grant lacks a valid steward co-signature for {', '.join(missing)}")
    return terms


def unsigned(terms: GrantTerms, terms_bytes: bytes, cosignatures: Iterable[GrantCosignature]) -> list[str]:
    """The datasets of ``terms`` that require a co-signature and have no valid one among ``cosignatures``."""
    return missing_cosignatures(terms_bytes, ((r.dataset, r.steward_ids, r.steward_keys) for r in terms.cosigners),
                                ((c.dataset, c.steward_id, c.steward_key, c.signature) for c in cosignatures),
                                check=_signed)


@functools.lru_cache(maxsize=4096)
def _signed(public_key: bytes, signature: bytes, terms_bytes: bytes) -> bool:
    """One Ed25519 check per (key, signature, terms) this process has seen: keyed by the bytes themselves, so an
    edited row is a new key and is checked again."""
    return verify_signature(public_key, signature, terms_bytes)


def verify_stored(tx: Tx, grant: Grant) -> None:
    """Re-check a stored grant's signature against its approver's enrolled key (defence against DB edits)."""
    approver = principals.get(tx, grant.terms.approver_id)
    if approver is None or approver.public_key != grant.terms.approver_public_key or Role.ADMIN not in approver.roles:
        raise SandboxError(ErrorCode.INTERNAL, log_detail=f"grant {grant.id}: approver unknown")
    if not _signed(approver.public_key, grant.signature, grant.terms_bytes) or grant.id != grant_id_for(
        grant.terms_bytes
    ):
        raise SandboxError(ErrorCode.INTERNAL, log_detail=f"grant {grant.id}: stored signature does not verify")
    required = {r.dataset for r in grant.terms.cosigners}
    for c in grant.cosignatures:  # a co-signature row written behind the server's back activates nothing
        if c.dataset not in required or c.dataset in unsigned(grant.terms, grant.terms_bytes, [c]):
            raise SandboxError(ErrorCode.INTERNAL,
                               log_detail=f"grant {grant.id}: stored co-signature of {c.dataset} does not verify")


def check_terms_narrow(terms: GrantTerms, scenario: Scenario, app: Application, approver: Principal,
                       applicant: Principal, now_ms: int, skew_ms: int) -> None:
    """The signed terms may only narrow what was applied for."""
    def bad(why: str) -> SandboxError:
        return SandboxError(ErrorCode.INVALID_TERMS, why)

    if terms.scenario_id != scenario.id:
        raise bad("scenario id differs")
    if terms.grantee_id != applicant.id or terms.grantee_public_key != applicant.public_key:
        raise bad("grantee differs from the applicant")
    if terms.approver_id != approver.id or terms.approver_public_key != approver.public_key:
        raise bad("approver must be the caller")
    if terms.kind is not app.kind:
        raise bad("computation kind differs")
    if terms.model_hash != app.model_hash:
        raise bad("model differs")
    if terms.training != app.training:
        raise bad("training settings differ from those proposed (a grant pins them exactly)")
    why = verification.narrows(app.verification, terms.verification, terms.quota,
                              terms.datasets[0].columns if terms.datasets else ())
    if why:
        raise bad(why)
    if len(terms.datasets) != len({d.name for d in terms.datasets}) or not terms.datasets:
        raise bad("datasets must be listed once each")
    for sel in terms.datasets:
        asked = next((a for a in app.datasets if a.name == sel.name), None)
        if asked is None or asked.version != sel.version:
            raise bad(f"dataset '{sel.name[:64]}' was not applied for at this version")
        if not sel.columns or not set(sel.columns) <= set(asked.columns) or len(set(sel.columns)) != len(sel.columns):
            raise bad(f"columns of '{sel.name}' must be a non-empty subset of those applied for")
    if terms.budget.epsilon_nano > app.budget.epsilon_nano or terms.budget.delta_atto > app.budget.delta_atto:
        raise bad("budget exceeds the application")
    cap = app.max_epsilon_per_call_nano
    if cap and not 0 < terms.max_epsilon_per_call_nano <= cap:
        raise bad("per-call epsilon cap exceeds the application")
    if terms.max_epsilon_per_call_nano > terms.budget.epsilon_nano:
        raise bad("per-call epsilon cap exceeds the budget")
    if not 0 < terms.quota <= app.quota:
        raise bad("quota must be between 1 and the quota applied for")
    if terms.not_before_ms < app.valid_from_ms or terms.not_after_ms > app.valid_until_ms:
        raise bad("validity lies outside the application")
    if terms.not_after_ms <= max(terms.not_before_ms, now_ms):
        raise bad("validity has already ended")
    if abs(terms.issued_at_ms - now_ms) > skew_ms:
        raise bad("issue time is outside the clock window")


def approve(
    tx: Tx, scenario: Scenario, terms_bytes: bytes, signature: bytes, approver: Principal,
    *, now_ms: int, skew_ms: int,
) -> Grant:
    """Store the signed grant and open its budget, in the caller's transaction."""
    if for_scenario(tx, scenario.id) is not None:
        raise SandboxError(ErrorCode.GRANT_EXISTS)
    if scenario.status is not ScenarioStatus.PENDING:
        raise SandboxError(ErrorCode.SCENARIO_NOT_PENDING)
    terms = serde.terms_from_bytes(terms_bytes)
    if not verify_signature(approver.public_key, signature, terms_bytes):
        raise SandboxError(ErrorCode.INVALID_TERMS, "signature over the terms does not verify with your key")
    applicant = principals.require(tx, scenario.applicant_id)
    if applicant.status is not PrincipalStatus.ACTIVE:
        raise SandboxError(ErrorCode.PRINCIPAL_INACTIVE, "applicant is not active")
    check_terms_narrow(terms, scenario, scenario.application, approver, applicant, now_ms, skew_ms)
    if terms.verification is not None:  # the granted templates must stand on their own against the granted columns
        sel = terms.datasets[0]
        try:
            again = verification.check_settings(catalogue.get_dataset(tx, sel.name, sel.version), sel,
                                                terms.verification, terms.quota)
        except SandboxError as exc:
            raise SandboxError(ErrorCode.INVALID_TERMS, exc.public_detail) from exc
        if again != terms.verification:
            raise SandboxError(ErrorCode.INVALID_TERMS, "verification settings must be in canonical form")
    stewards.check_terms(tx, terms)
    grant = Grant(grant_id_for(terms_bytes), terms_bytes, signature, terms)
    try:
        tx.grant_insert(grant.id, scenario.id, terms_bytes, signature, approver.id, now_ms)
    except Conflict as exc:  # the UNIQUE(scenario_id) constraint is the real enforcement
        raise SandboxError(ErrorCode.GRANT_EXISTS) from exc
    ledger.open_budget(tx, grant.id, terms.budget, terms.quota)
    tx.scenario_decide(scenario.id, "approved", decided_by=approver.id, decided_at_ms=now_ms)
    return grant


def revoke(tx: Tx, grant_id: str, reason: str, *, now_ms: int) -> Grant:
    grant = get(tx, grant_id)
    if grant is None:
        raise SandboxError(ErrorCode.NOT_FOUND, "no such grant")
    if grant.revoked:
        raise SandboxError(ErrorCode.GRANT_ALREADY_REVOKED)
    reason = (reason or "revoked by an administrator").strip()[:500]
    tx.grant_revoke(grant_id, now_ms, reason)
    tx.scenario_decide(grant.terms.scenario_id, "revoked", reason=reason)
    return get(tx, grant_id)  # type: ignore[return-value]


def cosign(tx: Tx, grant_id: str, steward: Principal, signature: bytes, *, now_ms: int) -> Grant:
    """Record ``steward``'s co-signature of a grant for every dataset of it that awaits this steward."""
    grant = get(tx, grant_id)
    mine = [r for r in grant.terms.cosigners if steward.id in r.steward_ids] if grant is not None else []
    if grant is None or not mine:
        raise SandboxError(ErrorCode.NOT_FOUND, "no grant awaiting your co-signature has this id")
    if grant.revoked:
        raise SandboxError(ErrorCode.GRANT_REVOKED)
    todo = [r for r in mine if r.dataset in grant.awaiting]
    if not todo:
        raise SandboxError(ErrorCode.ALREADY_EXISTS, "these datasets are already co-signed")
    for r in todo:
        if r.steward_keys[r.steward_ids.index(steward.id)] != steward.public_key:
            raise SandboxError(ErrorCode.INVALID_TERMS, "the terms name another key for you: ask for a new approval")
    if not verify_signature(steward.public_key, signature, cosign_payload(grant.terms_bytes)):
        raise SandboxError(ErrorCode.INVALID_TERMS, "co-signature does not verify with your key over these terms")
    for r in todo:
        try:
            tx.cosign_insert(grant.id, r.dataset, steward.id, steward.public_key, signature, now_ms)
        except Conflict as exc:  # a concurrent co-signature of the same dataset won
            raise SandboxError(ErrorCode.ALREADY_EXISTS, "this dataset is already co-signed") from exc
    found = get(tx, grant.id)
    assert found is not None
    return found
