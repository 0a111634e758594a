"""Data stewards: the department that holds a dataset has a say in who uses it (谁持有谁负责).

An administrator names, for each dataset (every version), its owning department, the stewards who speak for
it (active principals with the ``steward`` role) and a co-signing policy: ``never``, ``sensitive`` (when a grant
names one of the dataset's sensitive columns) or ``always``. When an administrator approves a scenario, the
signed terms must list, for every dataset whose policy asks for it, the stewards any one of whom must co-sign
(``GrantTerms.cosigners``, keys included, so the administrator's signature covers who may co-sign). The grant
is stored at once but is not active until each such dataset has one steward's signature over the same terms
(``wire.signing.cosign_payload``); anyone holding the administrators' keys can check all of it offline.
"""

from __future__ import annotations

from sandbox import catalogue, principals
from sandbox.domain import (
    CosignPolicy, CosignRequirement, GrantTerms, Level, Principal, PrincipalStatus, Role, Stewardship,
)
from sandbox.errors import ErrorCode, SandboxError
from sandbox.state import Tx

MAX_STEWARDS = 16
MAX_OWNER = 200


def _from_row(tx: Tx, row: tuple) -> Stewardship:  # type: ignore[type-arg]
    dataset, owner, ids, policy, updated = row
    steward_ids = tuple(i for i in str(ids).split(",") if i)
    keys = []
    for sid in steward_ids:
        p = principals.get(tx, sid)
        keys.append(p.public_key if p is not None else b"")
    return Stewardship(str(dataset), str(owner), steward_ids, CosignPolicy(policy), int(updated), tuple(keys))


def get(tx: Tx, dataset: str) -> Stewardship | None:
    row = tx.stewardship_get(dataset)
    return _from_row(tx, row) if row else None


def all_of(tx: Tx) -> dict[str, Stewardship]:
    return {str(r[0]): _from_row(tx, r) for r in tx.stewardship_list()}


def put(tx: Tx, dataset: str, *, owner: str, steward_ids: list[str], policy: CosignPolicy, by: Principal,
        now_ms: int) -> Stewardship:
    """Name a dataset's department, stewards and co-signing policy (replacing what was set before).

    Grants already signed keep the co-signers their terms name; the new setting applies to approvals from now on.
    """
    catalogue.get_dataset(tx, dataset)  # NOT_FOUND for an unknown dataset
    owner = owner.strip()
    if not owner or len(owner) > MAX_OWNER:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"owner must be 1 to {MAX_OWNER} characters")
    ids = sorted(set(steward_ids))
    if len(ids) > MAX_STEWARDS:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"name at most {MAX_STEWARDS} stewards")
    for sid in ids:
        p = principals.get(tx, sid)
        if p is None or Role.STEWARD not in p.roles or p.status is not PrincipalStatus.ACTIVE:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT,
                               f"'{sid[:40]}' is not an active principal with the steward role")
    if policy is not CosignPolicy.NEVER and not ids:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"policy '{policy.value}' needs at least one steward")
    tx.stewardship_put(dataset, owner, ",".join(ids), policy.value, now_ms, by.id)
    found = get(tx, dataset)
    assert found is not None
    return found


def requirements(tx: Tx, terms: GrantTerms) -> tuple[CosignRequirement, ...]:
    """The co-signers these terms must name: one requirement per dataset whose policy asks, in dataset order."""
    needed = []
    for sel in sorted(terms.datasets, key=lambda s: s.name):
        st = get(tx, sel.name)
        if st is None or st.policy is CosignPolicy.NEVER:
            continue
        if st.policy is CosignPolicy.SENSITIVE:
            schema = catalogue.get_dataset(tx, sel.name, sel.version).schema
            levels = {c: schema.column(c).level for c in sel.columns if schema.column(c) is not None}  # type: ignore[union-attr]
            if Level.SENSITIVE not in levels.values():
                continue
        needed.append(CosignRequirement(sel.name, st.steward_ids, st.steward_keys))
    return tuple(needed)


def check_terms(tx: Tx, terms: GrantTerms) -> None:
    """Signed terms name exactly the co-signers the datasets' policies ask for (else INVALID_TERMS)."""
    expected = requirements(tx, terms)
    if terms.cosigners != expected:
        wanted = ", ".join(f"{r.dataset} ({len(r.steward_ids)} steward(s))" for r in expected) or "none"
        raise SandboxError(ErrorCode.INVALID_TERMS,
                           f"the terms must name the co-signers the datasets' policies ask for: {wanted}")


def datasets_of(tx: Tx, steward: Principal) -> set[str]:
    return {name for name, st in all_of(tx).items() if steward.id in st.steward_ids}
