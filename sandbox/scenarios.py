"""Scenarios: one application per scenario, reviewed once (approved with a grant, or rejected)."""

from __future__ import annotations

import math
import re
import secrets

from sandbox import catalogue, fl_plans, grants, he_models, ledger, policy, serde, stewards, verification
from sandbox.domain import (
    Application, DatasetSelection, Kind, Principal, Role, Scenario, ScenarioStatus, TrainingSettings,
)
from sandbox.errors import ErrorCode, SandboxError
from sandbox.state import Tx

MAX_DATASETS = 8
MAX_TEXT = 4000
MAX_VALIDITY_MS = 366 * 24 * 3600 * 1000
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
#: Which role may apply for which kind.
KIND_ROLE = {Kind.DP_QUERY: Role.APPLICANT, Kind.HE_SCORING: Role.APPLICANT, Kind.FL_TRAINING: Role.RESEARCHER,
             Kind.VERIFICATION: Role.APPLICANT}


def _text(value: str, what: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_TEXT:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"{what} must be 1 to {MAX_TEXT} characters")
    return value


def _load(tx: Tx, row: tuple) -> Scenario:
    sid, applicant, app, status, reason, created = row
    grant = grants.for_scenario(tx, sid)
    usage = ledger.budget_state(tx, grant.id).usage if grant else None
    return Scenario(sid, applicant, serde.application_from_bytes(bytes(app)), ScenarioStatus(status), reason,
                    created, grant, usage)


def apply(tx: Tx, applicant: Principal, app: Application, *, now_ms: int) -> Scenario:
    """Validate and resolve an application (versions pinned, columns exact), store it pending."""
    if KIND_ROLE[app.kind] not in applicant.roles:
        raise SandboxError(ErrorCode.WRONG_ROLE, f"{app.kind.value} needs the {KIND_ROLE[app.kind].value} role")
    title, purpose, basis = _text(app.title, "title"), _text(app.purpose, "purpose"), _text(app.legal_basis, "legal basis")
    if not app.datasets or len(app.datasets) > MAX_DATASETS:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"name 1 to {MAX_DATASETS} datasets")
    if len({d.name for d in app.datasets}) != len(app.datasets):
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "each dataset may be named once")
    resolved = []
    for sel in app.datasets:
        info = catalogue.get_dataset(tx, sel.name, sel.version)
        cols = policy.resolve_columns(app.kind, info.schema, sel.columns)
        resolved.append(DatasetSelection(info.schema.name, info.version, cols))
    needs_model = app.kind in (Kind.HE_SCORING, Kind.FL_TRAINING)
    if (needs_model and not _HASH_RE.match(app.model_hash)) or (app.model_hash and not _HASH_RE.match(app.model_hash)):
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "model_hash must be a SHA-256 hex digest" +
                           (f"; {app.kind.value} requires one" if needs_model else ""))
    if app.kind is Kind.HE_SCORING:
        check_scoring_model(tx, app.model_hash, resolved)
    training_epsilon_nano = 0
    secure = None
    if app.kind is Kind.FL_TRAINING:
        check_training_plan(tx, app.model_hash, resolved)
        if app.training is not None:
            training_epsilon_nano = price_training(tx, app.model_hash, app.training)
        template = fl_plans.get(tx, app.model_hash)  # with the proposal's settings, or the defaults a run takes
        secure = fl_plans.secure_terms(template, app.training or fl_plans.SDK_DEFAULTS,
                                       catalogue.get_dataset(tx, template.dataset))
    elif app.training is not None:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "training settings belong to an FL_TRAINING application")
    checks = None
    if app.kind is Kind.VERIFICATION:
        if len(resolved) != 1:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, "a VERIFICATION scenario names exactly one dataset")
        if app.budget.epsilon_nano or app.budget.delta_atto or app.max_epsilon_per_call_nano:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, "a VERIFICATION scenario spends no privacy budget: its "
                                                           "answers are exact and its limits are the quota, the "
                                                           "templates and the per-entity limit")
        checks = verification.check_settings(catalogue.get_dataset(tx, resolved[0].name, resolved[0].version),
                                             resolved[0], app.verification, app.quota)
    elif app.verification is not None:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "verification settings belong to a VERIFICATION application")
    if app.budget.epsilon_nano > ledger.MAX_EPSILON_NANO or app.budget.delta_atto >= ledger.ATTO:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "budget out of range (epsilon at most 1e6, delta below 1)")
    if app.kind in (Kind.DP_QUERY, Kind.FL_TRAINING) and app.budget.epsilon_nano == 0:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"{app.kind.value} needs a positive epsilon budget")
    if app.max_epsilon_per_call_nano > app.budget.epsilon_nano:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "per-call epsilon cap exceeds the budget")
    if app.quota <= 0 or app.quota > 10**12:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "quota must be between 1 and 10^12")
    valid_from = app.valid_from_ms or now_ms
    if app.valid_until_ms <= max(valid_from, now_ms) or app.valid_until_ms - valid_from > MAX_VALIDITY_MS:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "validity must end in the future and last at most 366 days")
    stored = Application(title, purpose, basis, app.kind, tuple(resolved), app.model_hash, app.budget,
                         app.max_epsilon_per_call_nano, valid_from, app.valid_until_ms, app.quota, app.training,
                         training_epsilon_nano, checks, secure)
    sid = "s-" + secrets.token_hex(12)
    tx.scenario_insert(sid, applicant.id, serde.application_to_bytes(stored), now_ms)
    return Scenario(sid, applicant.id, stored, ScenarioStatus.PENDING, "", now_ms)


def check_scoring_model(tx: Tx, model_hash: str, resolved: list[DatasetSelection]) -> None:
    """An HE scenario names a registered model, its dataset, the entity key and every column the model reads."""
    spec, _ = he_models.get(tx, model_hash)
    sel = next((s for s in resolved if s.name == spec.dataset), None)
    if sel is None or len(resolved) != 1:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"an HE scenario names exactly the model's dataset '{spec.dataset}'")
    info = catalogue.get_dataset(tx, sel.name, sel.version)
    needed = {he_models.identifier_column(info), *spec.public_columns}
    missing = sorted(needed - set(sel.columns))
    if missing:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "the scenario must name the entity key and the columns the "
                                                       f"model reads; missing: {', '.join(missing)}")


def check_training_plan(tx: Tx, plan_hash: str, resolved: list[DatasetSelection]) -> None:
    """An FL scenario names a registered plan template, its dataset and every column it trains on."""
    template = fl_plans.get(tx, plan_hash)
    sel = next((s for s in resolved if s.name == template.dataset), None)
    if sel is None or len(resolved) != 1:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"an FL scenario names exactly the plan's dataset "
                                                       f"'{template.dataset}'")
    missing = sorted(set(template.columns) - set(sel.columns))
    if missing:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"the scenario must name the columns the plan uses: "
                                                       f"{', '.join(missing)}")


def price_training(tx: Tx, plan_hash: str, settings: TrainingSettings) -> int:
    """What one run with the proposed ``settings`` costs, in nano-epsilon (0 without DP: such a run is charged the
    grant's whole remaining budget); INVALID_ARGUMENT if the settings are not valid for the plan."""
    template = fl_plans.get(tx, plan_hash)
    epsilon, _ = fl_plans.price(template, settings, catalogue.get_dataset(tx, template.dataset))
    if math.isinf(epsilon):
        return 0
    cost = ledger.cost_units(epsilon, 0.0).epsilon_nano
    if cost > ledger.MAX_EPSILON_NANO:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "one run with these settings costs more than any budget")
    return cost


def _sees_all(viewer: Principal) -> bool:
    return bool(viewer.roles & {Role.ADMIN, Role.AUDITOR})


def get(tx: Tx, scenario_id: str, viewer: Principal) -> Scenario:
    """A scenario, to its applicant, administrators, auditors and the stewards of one of its datasets; to anyone
    else it does not exist."""
    row = tx.scenario_get(scenario_id)
    if row is None or (row[1] != viewer.id and not _sees_all(viewer) and not _stewards_it(tx, viewer, row)):
        raise SandboxError(ErrorCode.NOT_FOUND, "no such scenario")
    return _load(tx, row)


def _stewards_it(tx: Tx, viewer: Principal, row: tuple) -> bool:  # type: ignore[type-arg]
    if Role.STEWARD not in viewer.roles:
        return False
    mine = stewards.datasets_of(tx, viewer)
    return any(d.name in mine for d in serde.application_from_bytes(bytes(row[2])).datasets)


def list_for_steward(tx: Tx, steward: Principal) -> list[Scenario]:
    """Every scenario that touches one of the datasets ``steward`` speaks for, pending ones first."""
    mine = stewards.datasets_of(tx, steward)
    found = [r for r in tx.scenario_list()
             if any(d.name in mine for d in serde.application_from_bytes(bytes(r[2])).datasets)]
    return sorted((_load(tx, r) for r in found), key=lambda s: (s.status is not ScenarioStatus.PENDING,
                                                                 -s.created_at_ms))


def list_for(tx: Tx, viewer: Principal) -> list[Scenario]:
    if _sees_all(viewer):
        rows = tx.scenario_list()
    else:
        rows = tx.scenario_list(applicant_id=viewer.id)
    return [_load(tx, r) for r in rows]


def granted_model(tx: Tx, viewer: Principal, model_hash: str) -> bool:
    """True if ``viewer`` has (or had) an approved scenario that pins ``model_hash``."""
    return any(s.application.model_hash == model_hash and s.grant is not None for s in list_for(tx, viewer))


def training_plan_for(tx: Tx, plan_hash: str, viewer: Principal) -> tuple[fl_plans.PlanTemplate, str]:
    """A registered plan and its submitter, to its submitter, administrators, auditors, stewards of its dataset and
    the researchers granted it; to anyone else it does not exist (NOT_FOUND)."""
    found = fl_plans.get_with_submitter(tx, plan_hash)
    allowed = found is not None and (
        found[1] == viewer.id or bool(viewer.roles & {Role.ADMIN, Role.AUDITOR})
        or Role.STEWARD in viewer.roles and found[0].dataset in stewards.datasets_of(tx, viewer)
        or any(g.terms.model_hash == plan_hash for g in grants.held_by(tx, viewer.id)))
    if found is None or not allowed:
        raise SandboxError(ErrorCode.NOT_FOUND, "no such training plan")
    return found


def list_pending(tx: Tx) -> list[Scenario]:
    rows = tx.scenario_list(status="pending")
    return [_load(tx, r) for r in rows]


def reject(tx: Tx, scenario_id: str, reason: str, admin: Principal, *, now_ms: int) -> Scenario:
    scenario = get(tx, scenario_id, admin)
    if scenario.status is not ScenarioStatus.PENDING:
        raise SandboxError(ErrorCode.SCENARIO_NOT_PENDING)
    tx.scenario_decide(scenario_id, "rejected", reason=_text(reason, "reason")[:500], decided_by=admin.id,
                       decided_at_ms=now_ms)
    return get(tx, scenario_id, admin)
