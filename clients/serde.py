"""The SDK's only place that converts protobuf messages to and from its own types.

Enumerations map by name: a column type ``"integer"`` is ``TYPE_INTEGER``, an aggregate ``"count"`` is
``AGG_COUNT``, a filter op ``"ge"`` is ``FILTER_GE``, so a new wire value needs no line here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from protos.sandbox.v1 import admin_pb2, audit_pb2, common_pb2, dp_pb2, fl_pb2, he_pb2, verify_pb2
from clients import types as t
from clients.errors import InvalidArgument
from clients.query import Query
from wire.budget import ATTO, NANO, from_units


def _name(enum_type, value: int, prefix: str = "") -> str:  # type: ignore[no-untyped-def]
    name: str = enum_type.Name(value)
    return name[len(prefix):].lower() if prefix and name.startswith(prefix) else name


def invalid(message: str) -> InvalidArgument:
    """An error the SDK raises itself, before anything is sent."""
    return InvalidArgument(message, status="INVALID_ARGUMENT", code="CLIENT_VALIDATION")


def role_to_pb(role: str) -> common_pb2.Role.ValueType:
    try:
        return common_pb2.Role.Value("ROLE_" + role.upper())
    except ValueError:
        raise invalid(f"unknown role {role!r} (admin, applicant, researcher, auditor)") from None


def kind_to_pb(kind: str) -> common_pb2.ComputationKind.ValueType:
    try:
        return common_pb2.ComputationKind.Value(kind.upper())
    except ValueError:
        raise invalid(f"unknown kind {kind!r} (DP_QUERY, HE_SCORING, FL_TRAINING, VERIFICATION)") from None


def ms(value: dt.datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return int(value.timestamp() * 1000)


def when(value_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(value_ms / 1000, tz=dt.timezone.utc)


def budget(b: common_pb2.PrivacyBudget) -> tuple[Decimal, Decimal]:
    """(epsilon, delta) exactly, from the integer units on the wire."""
    return from_units(b.epsilon_nano, NANO), from_units(b.delta_atto, ATTO)


def principal(p: common_pb2.Principal) -> t.Principal:
    return t.Principal(p.id, p.name, p.organisation, tuple(_name(common_pb2.Role, r, "ROLE_") for r in p.roles),
                       p.public_key, _name(common_pb2.PrincipalStatus, p.status, "PRINCIPAL_"),
                       when(p.created_at_unix_ms))


def dataset(d: common_pb2.DatasetInfo) -> t.Dataset:
    s = d.schema
    cols = tuple(
        t.Column(c.name, _name(common_pb2.ColumnType, c.type, "TYPE_"), _name(common_pb2.ColumnLevel, c.level, "LEVEL_"),
                 c.nullable, c.lower if c.HasField("lower") else None, c.upper if c.HasField("upper") else None,
                 tuple(c.categories), c.description)
        for c in s.columns
    )
    st = d.stewardship if d.HasField("stewardship") else None
    held = None if st is None else t.Stewardship(
        st.owner, tuple(st.steward_ids), tuple(st.steward_keys), _name(common_pb2.CosignPolicy, st.policy, "COSIGN_"),
        when(st.updated_at_unix_ms))
    return t.Dataset(s.name, s.description, d.version, d.approx_rows, cols, s.person_key, s.max_rows_per_person,
                     s.partition_column, s.source, when(d.imported_at_unix_ms), held)


def schema_to_pb(s: t.DatasetSchema) -> common_pb2.DatasetSchema:
    """The wire schema of a schema file (``clients.schema_file``); ``ValueError`` on an unknown type or level."""
    return common_pb2.DatasetSchema(
        name=s.name, description=s.description, source=s.source, person_key=s.person_key,
        max_rows_per_person=s.max_rows_per_person, partition_column=s.partition_column,
        columns=[common_pb2.ColumnSchema(
            name=c.name, type=common_pb2.ColumnType.Value("TYPE_" + c.type.upper()),
            level=common_pb2.ColumnLevel.Value("LEVEL_" + c.level.upper()), nullable=c.nullable, lower=c.lower,
            upper=c.upper, categories=c.categories, description=c.description)
            for c in s.columns],
    )


def selections(items: Iterable[common_pb2.DatasetSelection]) -> tuple[t.DatasetSelection, ...]:
    return tuple(t.DatasetSelection(s.name, s.version, tuple(s.columns)) for s in items)


def terms(raw: bytes) -> t.GrantTerms:
    g = common_pb2.GrantTerms.FromString(raw)
    return t.GrantTerms(
        g.scenario_id, g.grantee_id, _name(common_pb2.ComputationKind, g.kind), selections(g.datasets), g.model_hash,
        *budget(g.budget),
        from_units(g.max_epsilon_per_call_nano, NANO), when(g.not_before_unix_ms), when(g.not_after_unix_ms),
        g.quota, g.approver_id, g.approver_public_key, when(g.issued_at_unix_ms),
        tuple(t.CosignRequirement(c.dataset, tuple(c.steward_ids), tuple(c.steward_keys)) for c in g.cosigners),
        training_settings(g.training) if g.HasField("training") else None,
        verification_settings(g.verification) if g.HasField("verification") else None,
    )


def scenario(s: common_pb2.Scenario) -> t.Scenario:
    a = s.application
    grant = None
    if s.HasField("grant"):
        g = s.grant
        grant = t.Grant(g.id, terms(g.terms), g.terms, g.signature, g.revoked, g.revoke_reason,
                        tuple(t.Cosignature(c.dataset, c.steward_id, c.steward_key, c.signature,
                                            when(c.signed_at_unix_ms)) for c in g.cosignatures),
                        tuple(g.awaiting_cosignature))
    usage = None
    if s.HasField("usage"):
        usage = t.Usage(from_units(s.usage.epsilon_spent_nano, NANO), from_units(s.usage.delta_spent_atto, ATTO),
                        s.usage.quota_used)
    return t.Scenario(
        s.id, s.applicant_id, a.title, a.purpose, a.legal_basis, _name(common_pb2.ComputationKind, a.kind),
        selections(a.datasets), a.model_hash, *budget(a.budget), from_units(a.max_epsilon_per_call_nano, NANO),
        when(a.valid_from_unix_ms), when(a.valid_until_unix_ms), a.quota,
        _name(common_pb2.ScenarioStatus, s.status, "SCENARIO_"), s.decision_reason, when(s.created_at_unix_ms),
        grant, usage, training_settings(a.training) if a.HasField("training") else None,
        from_units(a.training_epsilon_nano, NANO),
        verification_settings(a.verification) if a.HasField("verification") else None,
        (t.SecureAggregationTerms(a.training_secure_aggregation.holders, a.training_secure_aggregation.sampled,
                                  a.training_secure_aggregation.shares, a.training_secure_aggregation.threshold)
         if a.HasField("training_secure_aggregation") else None),
    )


def import_result(r: admin_pb2.ImportDatasetResponse) -> t.ImportResult:
    return t.ImportResult(dataset(r.dataset), r.rows_imported, r.duplicates_dropped, r.rejected_count,
                          tuple(t.Rejection(x.line, x.column, x.reason) for x in r.rejected))


def audit_entry(e: audit_pb2.AuditEntry, names: Mapping[str, str] | None = None) -> t.AuditEntry:
    return t.AuditEntry(e.seq, when(e.time_unix_ms), e.principal_id, e.method, e.scenario_id, e.grant_id, e.status,
                        e.error_code, from_units(e.epsilon_nano, NANO), from_units(e.delta_atto, ATTO),
                        e.request_sha256, e.response_sha256, e.prev_hash, e.entry_hash, e.request,
                        (names or {}).get(e.principal_id, ""))


def training_plan(r: fl_pb2.GetTrainingPlanResponse) -> t.TrainingPlan:
    p = r.template
    return t.TrainingPlan(r.plan_hash, p.dataset, p.model, tuple(p.features), p.label, p.label_threshold,
                          p.hidden_units, r.submitted_by)


def verification_settings(v: common_pb2.VerificationSettings) -> t.VerificationSettings:
    return t.VerificationSettings(v.id_column, tuple(t.CheckTemplate(x.name, x.expression) for x in v.templates),
                                  v.per_entity_limit, v.reveal_unknown, v.allow_sensitive, v.private_mode)


def verification_settings_to_pb(settings: Mapping[str, Any]) -> common_pb2.VerificationSettings:
    """An application's ``verification=`` mapping: id_column, templates ({name: expression} or pairs),
    per_entity_limit, reveal_unknown, allow_sensitive, private_mode."""
    known = {"id_column", "templates", "per_entity_limit", "reveal_unknown", "allow_sensitive", "private_mode"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise invalid(f"unknown verification setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    templates = settings.get("templates") or {}
    pairs = list(templates.items()) if isinstance(templates, Mapping) else [tuple(x) for x in templates]
    if any(len(x) != 2 for x in pairs):
        raise invalid("templates are {name: expression} or (name, expression) pairs")
    return common_pb2.VerificationSettings(
        id_column=str(settings.get("id_column", "")),
        templates=[common_pb2.CheckTemplate(name=str(n), expression=str(e)) for n, e in pairs],
        per_entity_limit=int(settings.get("per_entity_limit", 0)),
        reveal_unknown=bool(settings.get("reveal_unknown", False)),
        allow_sensitive=bool(settings.get("allow_sensitive", False)),
        private_mode=bool(settings.get("private_mode", False)))


def training_settings(s: common_pb2.TrainingSettings) -> t.TrainingSettings:
    return t.TrainingSettings(s.rounds, s.local_epochs, s.learning_rate, s.fraction_per_round, s.strategy,
                              s.proximal_mu, s.clipping_norm, s.noise_multiplier, s.delta, s.secure_aggregation)


def job_summary(j: fl_pb2.TrainingJobSummary) -> t.TrainingJobSummary:
    return t.TrainingJobSummary(j.job_id, j.grant_id, j.plan_hash, j.state, j.round, j.rounds, j.epsilon_spent,
                                when(j.started_at_unix_ms), training_settings(j.settings), owner_id=j.owner_id,
                                dataset=j.dataset, message=j.message)


def job_list(r: fl_pb2.ListTrainingJobsResponse) -> t.TrainingJobList:
    jobs = t.TrainingJobList(job_summary(j) for j in r.jobs)
    jobs.more = r.more
    return jobs


def named_model(m: fl_pb2.NamedModel) -> t.NamedModel:
    return t.NamedModel(m.model, tuple(m.inputs), {w.name: w.value for w in m.coefficients}, m.intercept, m.raw_units,
                        tuple(t.FeatureScaling(f.column, f.lower, f.upper, tuple(f.categories)) for f in m.scaling),
                        m.label, m.label_threshold, m.note)


def tree_head(h: audit_pb2.TreeHead) -> t.TreeHead:
    return t.TreeHead(h.size, h.root_hash, h.signed_at_unix_ms, h.signature)


def tree_head_to_pb(h: t.TreeHead) -> audit_pb2.TreeHead:
    return audit_pb2.TreeHead(size=h.size, root_hash=h.root_hash, signed_at_unix_ms=h.signed_at_ms, signature=h.signature)


def audit_head(h: audit_pb2.GetAuditHeadResponse) -> t.AuditHead:
    return t.AuditHead(h.entries, tree_head(h.head) if h.HasField("head") else None, h.audit_public_key,
                       tuple(c.witness_id for c in h.cosignatures))


def query_to_pb(q: Query) -> dp_pb2.DpQuery:
    """The wire's ``DpQuery``: a filter's op ``"ge"`` is ``FILTER_GE``, an aggregate ``"count"`` is ``AGG_COUNT``."""
    return dp_pb2.DpQuery(
        dataset=q.dataset,
        filters=[dp_pb2.QueryFilter(column=f.column, op=dp_pb2.FilterOp.Value("FILTER_" + f.op.upper()),
                                    values=[dp_pb2.Literal(text=v) if isinstance(v, str) else dp_pb2.Literal(number=v)
                                            for v in f.values])
                 for f in q.filters],
        group_by=list(q.grouping),
        aggregates=[dp_pb2.QueryAggregate(kind=dp_pb2.AggregateKind.Value("AGG_" + a.kind.upper()), column=a.column,
                                          q=a.q, edges=a.edges)
                    for a in q.aggregates],
    )


def query_result(r: dp_pb2.RunQueryResponse) -> t.QueryResult:
    stats = tuple(
        t.Statistic(s.aggregate, tuple(s.group), s.value, s.low if s.HasField("low") else None,
                    s.high if s.HasField("high") else None, s.mechanism, s.scale)
        for s in r.statistics
    )
    return t.QueryResult(r.query_id, stats, *budget(r.charged), *budget(r.remaining), r.replayed)


def query_estimate(r: dp_pb2.EstimateQueryResponse) -> t.QueryEstimate:
    stats = tuple(t.StatisticEstimate(s.aggregate, s.mechanism, s.scale,
                                      s.half_width if s.HasField("half_width") else None, s.note)
                  for s in r.statistics)
    return t.QueryEstimate(r.epsilon, *budget(r.cost), stats, *budget(r.remaining))


def training_event(e: fl_pb2.TrainingEvent) -> t.TrainingEvent:
    return t.TrainingEvent(e.job_id, e.round, e.rounds, e.loss if e.HasField("loss") else None,
                           e.accuracy if e.HasField("accuracy") else None, e.epsilon_spent, tuple(e.participants),
                           tuple(e.dropped), e.state, e.message)


def training_result(r: fl_pb2.GetTrainingResultResponse) -> t.TrainingResult:
    import numpy as np

    weights = tuple(np.array(w.values, dtype=float).reshape(tuple(w.shape)) for w in r.weights)
    return t.TrainingResult(r.job_id, weights, {m.name: m.value for m in r.metrics},
                            tuple(training_event(e) for e in r.history), *budget(r.charged),
                            named=named_model(r.named) if r.HasField("named") else None)


def training_job(r: fl_pb2.StartTrainingResponse) -> t.TrainingJob:
    return t.TrainingJob(r.job_id, *budget(r.reserved))


def model_spec(r: he_pb2.GetModelResponse) -> t.ModelSpec:
    m = r.spec
    return t.ModelSpec(r.model_hash, m.name, "logistic" if m.kind == he_pb2.MODEL_LOGISTIC else "linear", m.dataset,
                       tuple((f.column, f.weight) for f in m.public_features),
                       tuple((f.name, f.weight) for f in m.private_features), m.bias, m.description, r.submitted_by,
                       model_review(r.review) if r.HasField("review") else None)


def model_review(r: he_pb2.ModelReview) -> t.ModelReview:
    return t.ModelReview(tuple(t.TermShare(x.column, x.weight, x.lower, x.upper, x.contribution, x.share)
                               for x in r.terms),
                         r.contribution_range, r.noise_sd, r.bits_per_score, r.scores_per_entity, r.bits_per_entity,
                         r.step_tv_per_entity)


def he_profile(p: he_pb2.HeProfile) -> t.HeProfile:
    return t.HeProfile(p.name, p.poly_modulus_degree, tuple(p.coeff_mod_bit_sizes), p.scale_bits, p.slots,
                       p.max_entities_per_call)


def context_chunks(profile: str, blob: bytes, chunk: int) -> list[he_pb2.ContextChunk]:
    """A public context as RegisterContext's stream: ``chunk`` bytes a message, the profile on the first."""
    return [he_pb2.ContextChunk(profile=profile if i == 0 else "", data=blob[i:i + chunk])
            for i in range(0, len(blob), chunk)]


def score_request(grant_id: str, context_id: str, model_hash: str, entity_ids: Sequence[str],
                  encrypted_features: Sequence[bytes], chunks: int = 1) -> he_pb2.ScoreRequest:
    """``encrypted_features`` chunk-major: each chunk's vectors, one per private feature, chunk after chunk."""
    return he_pb2.ScoreRequest(grant_id=grant_id, context_id=context_id, model_hash=model_hash,
                               entity_ids=list(entity_ids), encrypted_features=list(encrypted_features),
                               chunks=chunks if chunks > 1 else 0)


_CHECK_RESULTS = {verify_pb2.MATCH: "MATCH", verify_pb2.NO_MATCH: "NO_MATCH",
                  verify_pb2.UNKNOWN_ENTITY: "UNKNOWN_ENTITY"}


def verify_results(resp: verify_pb2.VerifyResponse) -> tuple[tuple[str, ...], tuple[t.Certificate, ...]]:
    return (tuple(_CHECK_RESULTS.get(r, "UNSPECIFIED") for r in resp.results),
            tuple(t.Certificate(c.json, c.signature, resp.audit_public_key) for c in resp.certificates))
