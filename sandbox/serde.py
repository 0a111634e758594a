"""The only place that converts between protobuf messages and domain types (server side)."""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

import dp_engine.spec as dq
from dp_engine import AggKind
from protos.sandbox.v1 import admin_pb2, audit_pb2, common_pb2, dp_pb2, fl_pb2, he_pb2, verify_pb2
from sandbox import compute_io as io
from sandbox import domain as d
from sandbox.errors import ErrorCode, SandboxError
from sandbox.fl_plans import PlanTemplate
from sandbox.he_release import ReleaseReview
from wire.transparency import TreeHead
from sandbox.he_models import ModelSpec

if TYPE_CHECKING:
    from he_engine import Profile

ROLE_TO_PB = {
    d.Role.ADMIN: common_pb2.ROLE_ADMIN,
    d.Role.APPLICANT: common_pb2.ROLE_APPLICANT,
    d.Role.RESEARCHER: common_pb2.ROLE_RESEARCHER,
    d.Role.AUDITOR: common_pb2.ROLE_AUDITOR,
    d.Role.STEWARD: common_pb2.ROLE_STEWARD,
}
ROLE_FROM_PB = {v: k for k, v in ROLE_TO_PB.items()}
STATUS_TO_PB = {
    d.PrincipalStatus.ACTIVE: common_pb2.PRINCIPAL_ACTIVE,
    d.PrincipalStatus.PENDING: common_pb2.PRINCIPAL_PENDING,
    d.PrincipalStatus.SUSPENDED: common_pb2.PRINCIPAL_SUSPENDED,
}
KIND_TO_PB = {
    d.Kind.DP_QUERY: common_pb2.DP_QUERY,
    d.Kind.HE_SCORING: common_pb2.HE_SCORING,
    d.Kind.FL_TRAINING: common_pb2.FL_TRAINING,
    d.Kind.VERIFICATION: common_pb2.VERIFICATION,
}
KIND_FROM_PB = {v: k for k, v in KIND_TO_PB.items()}
LEVEL_TO_PB = {
    d.Level.IDENTIFIER: common_pb2.LEVEL_IDENTIFIER,
    d.Level.OPEN: common_pb2.LEVEL_OPEN,
    d.Level.INTERNAL: common_pb2.LEVEL_INTERNAL,
    d.Level.SENSITIVE: common_pb2.LEVEL_SENSITIVE,
    d.Level.CORE: common_pb2.LEVEL_CORE,
}
LEVEL_FROM_PB = {v: k for k, v in LEVEL_TO_PB.items()}
TYPE_TO_PB = {
    d.ColumnType.INTEGER: common_pb2.TYPE_INTEGER,
    d.ColumnType.FLOAT: common_pb2.TYPE_FLOAT,
    d.ColumnType.CATEGORICAL: common_pb2.TYPE_CATEGORICAL,
    d.ColumnType.STRING: common_pb2.TYPE_STRING,
}
TYPE_FROM_PB = {v: k for k, v in TYPE_TO_PB.items()}
SCENARIO_STATUS_TO_PB = {
    d.ScenarioStatus.PENDING: common_pb2.SCENARIO_PENDING,
    d.ScenarioStatus.APPROVED: common_pb2.SCENARIO_APPROVED,
    d.ScenarioStatus.REJECTED: common_pb2.SCENARIO_REJECTED,
    d.ScenarioStatus.REVOKED: common_pb2.SCENARIO_REVOKED,
}


def _enum(table: dict, value: int, what: str):  # type: ignore[no-untyped-def]
    try:
        return table[value]
    except KeyError:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"unknown {what}") from None


def roles_from_pb(values: list[int]) -> frozenset[d.Role]:
    return frozenset(_enum(ROLE_FROM_PB, v, "role") for v in values)


def kind_from_pb(value: int) -> d.Kind:
    return _enum(KIND_FROM_PB, value, "computation kind")  # type: ignore[no-any-return]


def principal_to_pb(p: d.Principal) -> common_pb2.Principal:
    return common_pb2.Principal(
        id=p.id, name=p.name, organisation=p.organisation,
        roles=sorted(ROLE_TO_PB[r] for r in p.roles), public_key=p.public_key,
        status=STATUS_TO_PB[p.status], created_at_unix_ms=p.created_at_ms,
    )


def column_from_pb(c: common_pb2.ColumnSchema) -> d.ColumnSchema:
    lower = c.lower if c.HasField("lower") else None
    upper = c.upper if c.HasField("upper") else None
    for bound in (lower, upper):
        if bound is not None and not math.isfinite(bound):
            raise SandboxError(ErrorCode.INVALID_SCHEMA, f"column '{c.name}': bounds must be finite")
    return d.ColumnSchema(
        name=c.name, type=_enum(TYPE_FROM_PB, c.type, "column type"), level=_enum(LEVEL_FROM_PB, c.level, "level"),
        nullable=c.nullable, lower=lower, upper=upper, categories=tuple(c.categories), description=c.description,
    )


def column_to_pb(c: d.ColumnSchema) -> common_pb2.ColumnSchema:
    pb = common_pb2.ColumnSchema(
        name=c.name, type=TYPE_TO_PB[c.type], level=LEVEL_TO_PB[c.level], nullable=c.nullable,
        categories=list(c.categories), description=c.description,
    )
    if c.lower is not None:
        pb.lower = c.lower
    if c.upper is not None:
        pb.upper = c.upper
    return pb


def schema_from_pb(s: common_pb2.DatasetSchema) -> d.DatasetSchema:
    return d.DatasetSchema(
        name=s.name, columns=tuple(column_from_pb(c) for c in s.columns), description=s.description,
        person_key=s.person_key, max_rows_per_person=s.max_rows_per_person,
        partition_column=s.partition_column, source=s.source,
    )


def schema_to_pb(s: d.DatasetSchema) -> common_pb2.DatasetSchema:
    return common_pb2.DatasetSchema(
        name=s.name, description=s.description, columns=[column_to_pb(c) for c in s.columns],
        person_key=s.person_key, max_rows_per_person=s.max_rows_per_person,
        partition_column=s.partition_column, source=s.source,
    )


COSIGN_POLICY_TO_PB = {
    d.CosignPolicy.NEVER: common_pb2.COSIGN_NEVER,
    d.CosignPolicy.SENSITIVE: common_pb2.COSIGN_SENSITIVE,
    d.CosignPolicy.ALWAYS: common_pb2.COSIGN_ALWAYS,
}
COSIGN_POLICY_FROM_PB = {v: k for k, v in COSIGN_POLICY_TO_PB.items()}


def cosign_policy_from_pb(value: int) -> d.CosignPolicy:
    return _enum(COSIGN_POLICY_FROM_PB, value, "co-signing policy")


def stewardship_to_pb(st: d.Stewardship) -> common_pb2.Stewardship:
    return common_pb2.Stewardship(owner=st.owner, steward_ids=list(st.steward_ids), steward_keys=list(st.steward_keys),
                                  policy=COSIGN_POLICY_TO_PB[st.policy], updated_at_unix_ms=st.updated_at_ms)


def dataset_info_to_pb(info: d.DatasetInfo, stewardship: d.Stewardship | None = None) -> common_pb2.DatasetInfo:
    pb = common_pb2.DatasetInfo(
        schema=schema_to_pb(info.schema), version=info.version, approx_rows=info.public_rows,
        imported_at_unix_ms=info.imported_at_ms,
    )
    if stewardship is not None:
        pb.stewardship.CopyFrom(stewardship_to_pb(stewardship))
    return pb


def import_first(messages: Iterator[admin_pb2.ImportDatasetRequest]) -> admin_pb2.ImportDatasetRequest:
    """The first message of an ImportDataset stream: the schema and options (INVALID_ARGUMENT if there is none)."""
    first = next(messages, None)
    if first is None:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "an import stream needs a first message with its schema")
    return first


def import_chunks(first: admin_pb2.ImportDatasetRequest,
                  rest: Iterator[admin_pb2.ImportDatasetRequest]) -> Iterator[bytes]:
    """The CSV bytes of an ImportDataset stream, in order; a later message carrying anything but CSV bytes is
    INVALID_ARGUMENT (only the first one carries the schema and options)."""
    yield first.csv
    for message in rest:
        if message.HasField("schema") or message.max_rejected_rows or message.dry_run:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, "only the first message of an import carries its schema "
                                                           "and options")
        yield message.csv


def import_report_to_pb(r: d.ImportReport) -> admin_pb2.ImportDatasetResponse:
    return admin_pb2.ImportDatasetResponse(
        dataset=dataset_info_to_pb(r.info), rows_imported=r.rows_imported, duplicates_dropped=r.duplicates_dropped,
        rejected=[admin_pb2.RowRejection(line=line, column=col, reason=why) for line, col, why in r.rejected],
        rejected_count=r.rejected_count,
    )


def selection_from_pb(s: common_pb2.DatasetSelection) -> d.DatasetSelection:
    return d.DatasetSelection(name=s.name, version=s.version, columns=tuple(s.columns))


def selection_to_pb(s: d.DatasetSelection) -> common_pb2.DatasetSelection:
    return common_pb2.DatasetSelection(name=s.name, version=s.version, columns=list(s.columns))


def budget_from_pb(b: common_pb2.PrivacyBudget) -> d.Budget:
    return d.Budget(epsilon_nano=b.epsilon_nano, delta_atto=b.delta_atto)


def budget_to_pb(b: d.Budget) -> common_pb2.PrivacyBudget:
    return common_pb2.PrivacyBudget(epsilon_nano=b.epsilon_nano, delta_atto=b.delta_atto)


def application_from_pb(a: common_pb2.Application) -> d.Application:
    return d.Application(
        title=a.title, purpose=a.purpose, legal_basis=a.legal_basis, kind=kind_from_pb(a.kind),
        datasets=tuple(selection_from_pb(s) for s in a.datasets), model_hash=a.model_hash,
        budget=budget_from_pb(a.budget), max_epsilon_per_call_nano=a.max_epsilon_per_call_nano,
        valid_from_ms=a.valid_from_unix_ms, valid_until_ms=a.valid_until_unix_ms, quota=a.quota,
        training=training_settings_from_pb(a.training) if a.HasField("training") else None,
        training_epsilon_nano=a.training_epsilon_nano,
        verification=verification_settings_from_pb(a.verification) if a.HasField("verification") else None,
        training_secure_aggregation=(d.SecureAggregationTerms(
            a.training_secure_aggregation.holders, a.training_secure_aggregation.sampled,
            a.training_secure_aggregation.shares, a.training_secure_aggregation.threshold)
            if a.HasField("training_secure_aggregation") else None),
    )


def verification_settings_from_pb(v: common_pb2.VerificationSettings) -> d.VerificationSettings:
    return d.VerificationSettings(
        id_column=v.id_column, templates=tuple(d.CheckTemplate(t.name, t.expression) for t in v.templates),
        per_entity_limit=v.per_entity_limit, reveal_unknown=v.reveal_unknown, allow_sensitive=v.allow_sensitive,
        private_mode=v.private_mode)


def verification_settings_to_pb(v: d.VerificationSettings) -> common_pb2.VerificationSettings:
    return common_pb2.VerificationSettings(
        id_column=v.id_column, templates=[common_pb2.CheckTemplate(name=t.name, expression=t.expression)
                                          for t in v.templates],
        per_entity_limit=v.per_entity_limit, reveal_unknown=v.reveal_unknown, allow_sensitive=v.allow_sensitive,
        private_mode=v.private_mode)


def application_to_pb(a: d.Application) -> common_pb2.Application:
    return common_pb2.Application(
        title=a.title, purpose=a.purpose, legal_basis=a.legal_basis, kind=KIND_TO_PB[a.kind],
        datasets=[selection_to_pb(s) for s in a.datasets], model_hash=a.model_hash,
        budget=budget_to_pb(a.budget), max_epsilon_per_call_nano=a.max_epsilon_per_call_nano,
        valid_from_unix_ms=a.valid_from_ms, valid_until_unix_ms=a.valid_until_ms, quota=a.quota,
        training=training_settings_to_pb(a.training) if a.training is not None else None,
        training_epsilon_nano=a.training_epsilon_nano,
        verification=verification_settings_to_pb(a.verification) if a.verification is not None else None,
        training_secure_aggregation=(common_pb2.SecureAggregationTerms(
            holders=a.training_secure_aggregation.holders, sampled=a.training_secure_aggregation.sampled,
            shares=a.training_secure_aggregation.shares, threshold=a.training_secure_aggregation.threshold)
            if a.training_secure_aggregation is not None else None),
    )


def application_from_bytes(raw: bytes) -> d.Application:
    return application_from_pb(common_pb2.Application.FromString(raw))


def application_to_bytes(a: d.Application) -> bytes:
    return application_to_pb(a).SerializeToString(deterministic=True)


def terms_from_bytes(raw: bytes) -> d.GrantTerms:
    """Parse the signed grant terms exactly as the administrator signed them."""
    try:
        t = common_pb2.GrantTerms.FromString(raw)
    except DecodeError as exc:
        raise SandboxError(ErrorCode.INVALID_TERMS, "terms are not a GrantTerms message") from exc
    return d.GrantTerms(
        scenario_id=t.scenario_id, grantee_id=t.grantee_id, grantee_public_key=t.grantee_public_key,
        kind=kind_from_pb(t.kind), datasets=tuple(selection_from_pb(s) for s in t.datasets),
        model_hash=t.model_hash, budget=budget_from_pb(t.budget),
        max_epsilon_per_call_nano=t.max_epsilon_per_call_nano, not_before_ms=t.not_before_unix_ms,
        not_after_ms=t.not_after_unix_ms, quota=t.quota, approver_id=t.approver_id,
        approver_public_key=t.approver_public_key, issued_at_ms=t.issued_at_unix_ms,
        cosigners=tuple(d.CosignRequirement(c.dataset, tuple(c.steward_ids), tuple(c.steward_keys))
                        for c in t.cosigners),
        training=training_settings_from_pb(t.training) if t.HasField("training") else None,
        verification=verification_settings_from_pb(t.verification) if t.HasField("verification") else None,
    )


def grant_to_pb(g: d.Grant) -> common_pb2.Grant:
    return common_pb2.Grant(
        id=g.id, terms=g.terms_bytes, signature=g.signature, revoked=g.revoked,
        revoke_reason=g.revoke_reason, revoked_at_unix_ms=g.revoked_at_ms or 0,
        cosignatures=[common_pb2.GrantCosignature(dataset=c.dataset, steward_id=c.steward_id, steward_key=c.steward_key,
                                                  signature=c.signature, signed_at_unix_ms=c.signed_at_ms)
                      for c in g.cosignatures],
        awaiting_cosignature=list(g.awaiting),
    )


def usage_to_pb(u: d.GrantUsage) -> common_pb2.GrantUsage:
    return common_pb2.GrantUsage(epsilon_spent_nano=u.epsilon_spent_nano, delta_spent_atto=u.delta_spent_atto,
                                 quota_used=u.quota_used)


def scenario_to_pb(s: d.Scenario) -> common_pb2.Scenario:
    pb = common_pb2.Scenario(
        id=s.id, applicant_id=s.applicant_id, application=application_to_pb(s.application),
        status=SCENARIO_STATUS_TO_PB[s.status], decision_reason=s.decision_reason,
        created_at_unix_ms=s.created_at_ms,
    )
    if s.grant is not None:
        pb.grant.CopyFrom(grant_to_pb(s.grant))
    if s.usage is not None:
        pb.usage.CopyFrom(usage_to_pb(s.usage))
    return pb


def audit_entry_to_pb(e: d.AuditEntry) -> audit_pb2.AuditEntry:
    r = e.record
    return audit_pb2.AuditEntry(
        seq=e.seq, time_unix_ms=e.time_ms, principal_id=r.principal_id, method=r.method,
        scenario_id=r.scenario_id, grant_id=r.grant_id, status=r.status, error_code=r.error_code,
        epsilon_nano=r.epsilon_nano, delta_atto=r.delta_atto, request_sha256=r.request_sha256,
        response_sha256=r.response_sha256, prev_hash=e.prev_hash, entry_hash=e.entry_hash, request=r.request,
    )


_OPS = {
    dp_pb2.FILTER_EQ: dq.Op.EQ, dp_pb2.FILTER_NE: dq.Op.NE, dp_pb2.FILTER_LT: dq.Op.LT, dp_pb2.FILTER_LE: dq.Op.LE,
    dp_pb2.FILTER_GT: dq.Op.GT, dp_pb2.FILTER_GE: dq.Op.GE, dp_pb2.FILTER_IN: dq.Op.IN,
}
#: Every dp_engine statistic, by its proto value of the same name (AggKind.X is AGG_X; a kind missing from the
#: proto fails here, at import).
_AGGS = {dp_pb2.AggregateKind.Value(f"AGG_{kind.name}"): kind for kind in AggKind}
#: Far above every limit dp_engine enforces, so that a huge message fails fast here, before any work.
_MAX_LIST = 4096


def _literal(lit: dp_pb2.Literal) -> float | str:
    which = lit.WhichOneof("value")
    if which == "number":
        return lit.number
    if which == "text":
        return lit.text
    raise SandboxError(ErrorCode.INVALID_QUERY, "a filter literal is empty")


def dp_query_from_pb(q: dp_pb2.DpQuery) -> dq.Query:
    """The structured query; every list is bounded before it is looked at."""
    if len(q.filters) > _MAX_LIST or len(q.aggregates) > _MAX_LIST or len(q.group_by) > _MAX_LIST:
        raise SandboxError(ErrorCode.INVALID_QUERY, "query is too large")
    filters = []
    for f in q.filters:
        op = _enum(_OPS, f.op, "filter operator")
        if len(f.values) > _MAX_LIST:
            raise SandboxError(ErrorCode.INVALID_QUERY, "an 'in' set is too large")
        values = tuple(_literal(v) for v in f.values)
        if op is dq.Op.IN:
            filters.append(dq.Filter(f.column, op, values))
        elif len(values) == 1:
            filters.append(dq.Filter(f.column, op, values[0]))
        else:
            raise SandboxError(ErrorCode.INVALID_QUERY, f"filter on '{f.column[:64]}' needs exactly one value")
    aggs = []
    for a in q.aggregates:
        if len(a.edges) > _MAX_LIST:
            raise SandboxError(ErrorCode.INVALID_QUERY, "too many histogram edges")
        aggs.append(dq.Aggregate(_enum(_AGGS, a.kind, "aggregate"), a.column, a.q, tuple(a.edges)))
    return dq.Query(aggregates=tuple(aggs), filters=tuple(filters), group_by=tuple(q.group_by))


def estimate_to_pb(e: dq.StatisticEstimate) -> dp_pb2.StatisticEstimate:
    pb = dp_pb2.StatisticEstimate(aggregate=e.aggregate, mechanism=e.mechanism, scale=e.scale, note=e.note)
    if e.half_width is not None:
        pb.half_width = e.half_width
    return pb


def statistic_to_pb(s: dq.Statistic) -> dp_pb2.Statistic:
    pb = dp_pb2.Statistic(aggregate=s.aggregate, group=list(s.group), value=s.value, mechanism=s.mechanism,
                          scale=s.scale)
    if s.low is not None and s.high is not None:
        pb.low, pb.high = s.low, s.high
    return pb


_MODEL_KINDS = {he_pb2.MODEL_LINEAR: "linear", he_pb2.MODEL_LOGISTIC: "logistic"}
_MODEL_KINDS_PB = {v: k for k, v in _MODEL_KINDS.items()}


def model_from_pb(m: he_pb2.ModelSpec) -> ModelSpec:
    if len(m.public_features) > _MAX_LIST or len(m.private_features) > _MAX_LIST:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "model is too large")
    return ModelSpec(m.name, _enum(_MODEL_KINDS, m.kind, "model kind"), m.dataset,
                     tuple((f.column, f.weight) for f in m.public_features),
                     tuple((f.name, f.weight) for f in m.private_features), m.bias, m.description)


def model_to_pb(spec: ModelSpec) -> he_pb2.ModelSpec:
    return he_pb2.ModelSpec(
        name=spec.name, kind=_MODEL_KINDS_PB[spec.kind], dataset=spec.dataset, bias=spec.bias,
        description=spec.description,
        public_features=[he_pb2.PublicFeature(column=c, weight=w) for c, w in spec.public_features],
        private_features=[he_pb2.PrivateFeature(name=n, weight=w) for n, w in spec.private_features])


#: The largest sequence number, size or count a request may name (SQLite's integers are signed 64-bit).
MAX_SEQ = 2**63 - 1


def tree_head_to_pb(head: TreeHead) -> audit_pb2.TreeHead:
    return audit_pb2.TreeHead(size=head.size, root_hash=head.root_hash, signed_at_unix_ms=head.signed_at_ms,
                              signature=head.signature)


def tree_head_from_pb(h: audit_pb2.TreeHead) -> TreeHead:
    if h.size > MAX_SEQ or len(h.root_hash) != 64:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "not a tree head")
    return TreeHead(h.size, h.root_hash, h.signed_at_unix_ms, h.signature)


def review_to_pb(rev: ReleaseReview) -> he_pb2.ModelReview:
    return he_pb2.ModelReview(
        terms=[he_pb2.TermShare(column=t.column, weight=t.weight, lower=t.lower, upper=t.upper,
                                contribution=t.contribution, share=t.share) for t in rev.terms],
        contribution_range=rev.contribution_range, noise_sd=rev.noise_sd, bits_per_score=rev.bits_per_score,
        scores_per_entity=rev.scores_per_entity, bits_per_entity=rev.bits_per_entity,
        step_tv_per_entity=rev.step_tv_per_entity)


def plan_from_pb(t: fl_pb2.PlanTemplate) -> PlanTemplate:
    if len(t.features) > _MAX_LIST:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "plan is too large")
    return PlanTemplate(t.dataset, t.model, tuple(t.features), t.label, t.label_threshold, t.hidden_units)


def plan_to_pb(t: PlanTemplate) -> fl_pb2.PlanTemplate:
    return fl_pb2.PlanTemplate(dataset=t.dataset, model=t.model, features=list(t.features), label=t.label,
                               label_threshold=t.label_threshold, hidden_units=t.hidden_units)


# -- the compute services' requests and results (``sandbox.compute_io``) ---------------------------------------------


def estimate_query_from_pb(req: dp_pb2.EstimateQueryRequest) -> io.EstimateQuery:
    half_width = req.half_width if req.WhichOneof("target") == "half_width" else None
    return io.EstimateQuery(grant_id=req.grant_id, dataset=req.query.dataset, query=dp_query_from_pb(req.query),
                            delta=req.delta, epsilon=req.epsilon, half_width=half_width)


def query_estimate_to_pb(e: io.QueryEstimate) -> dp_pb2.EstimateQueryResponse:
    return dp_pb2.EstimateQueryResponse(
        epsilon=e.epsilon, cost=budget_to_pb(e.cost), remaining=budget_to_pb(e.remaining),
        statistics=[estimate_to_pb(s) for s in e.statistics])


def run_query_from_pb(req: dp_pb2.RunQueryRequest) -> io.RunQuery:
    return io.RunQuery(grant_id=req.grant_id, dataset=req.query.dataset, query=dp_query_from_pb(req.query),
                       epsilon=req.epsilon, delta=req.delta, idempotency_key=req.idempotency_key)


def query_release_to_pb(r: io.QueryRelease) -> dp_pb2.RunQueryResponse:
    """The response whose serialised bytes are released and, under an idempotency key, stored for a retry."""
    return dp_pb2.RunQueryResponse(query_id=r.query_id, statistics=[statistic_to_pb(s) for s in r.statistics],
                                   charged=budget_to_pb(r.charged), remaining=budget_to_pb(r.remaining))


def stored_release_to_pb(r: io.StoredRelease) -> dp_pb2.RunQueryResponse:
    """A stored release (``query_release_to_pb``'s bytes) as the answer to a retry, marked as replayed."""
    replay = dp_pb2.RunQueryResponse.FromString(r.body)
    replay.replayed = True
    return replay


def profiles_to_pb(profiles: Iterable[tuple[Profile, int]]) -> he_pb2.ListProfilesResponse:
    """Each profile with the most entities one Score call may carry with it."""
    return he_pb2.ListProfilesResponse(profiles=[
        he_pb2.HeProfile(name=p.name, poly_modulus_degree=p.poly_modulus_degree,
                         coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes), scale_bits=p.scale_bits, slots=p.slots,
                         max_entities_per_call=most)
        for p, most in profiles])


def context_chunks_from_pb(chunks: Iterable[he_pb2.ContextChunk]) -> list[io.ContextChunk]:
    return [io.ContextChunk(profile=c.profile, data=c.data) for c in chunks]


def context_to_pb(context_id: str, expires_ms: int) -> he_pb2.RegisterContextResponse:
    return he_pb2.RegisterContextResponse(context_id=context_id, expires_at_unix_ms=expires_ms)


def score_batch_from_pb(req: he_pb2.ScoreRequest) -> io.ScoreBatch:
    return io.ScoreBatch(grant_id=req.grant_id, context_id=req.context_id, model_hash=req.model_hash,
                         entity_ids=tuple(req.entity_ids), encrypted_features=tuple(req.encrypted_features),
                         chunks=req.chunks or 1)


def score_result_to_pb(r: io.ScoreResult) -> he_pb2.ScoreResponse:
    one = len(r.encrypted_logits) == 1  # a one-chunk answer keeps the field every client reads
    return he_pb2.ScoreResponse(encrypted_logits=r.encrypted_logits[0] if one else b"", entities=r.entities,
                                usage=usage_to_pb(r.usage), noise_sd=r.noise_sd,
                                encrypted_logit_chunks=() if one else r.encrypted_logits)


def training_settings_from_pb(s: common_pb2.TrainingSettings) -> io.TrainingSettings:
    return io.TrainingSettings(
        rounds=s.rounds, local_epochs=s.local_epochs, learning_rate=s.learning_rate,
        fraction_per_round=s.fraction_per_round, strategy=s.strategy, proximal_mu=s.proximal_mu,
        clipping_norm=s.clipping_norm, noise_multiplier=s.noise_multiplier, delta=s.delta,
        secure_aggregation=s.secure_aggregation)


def start_training_from_pb(req: fl_pb2.StartTrainingRequest) -> io.StartTraining:
    return io.StartTraining(grant_id=req.grant_id, plan_hash=req.plan_hash,
                            settings=training_settings_from_pb(req.settings))


def started_job_to_pb(j: io.StartedJob) -> fl_pb2.StartTrainingResponse:
    return fl_pb2.StartTrainingResponse(job_id=j.job_id, reserved=budget_to_pb(j.reserved))


def training_settings_to_pb(s: io.TrainingSettings) -> common_pb2.TrainingSettings:
    return common_pb2.TrainingSettings(
        rounds=s.rounds, local_epochs=s.local_epochs, learning_rate=s.learning_rate,
        fraction_per_round=s.fraction_per_round, strategy=s.strategy, proximal_mu=s.proximal_mu,
        clipping_norm=s.clipping_norm, noise_multiplier=s.noise_multiplier, delta=s.delta,
        secure_aggregation=s.secure_aggregation)


def job_summary_to_pb(j: io.JobSummary) -> fl_pb2.TrainingJobSummary:
    return fl_pb2.TrainingJobSummary(
        job_id=j.job_id, grant_id=j.grant_id, plan_hash=j.plan_hash, state=j.state, round=j.round, rounds=j.rounds,
        epsilon_spent=j.epsilon_spent, started_at_unix_ms=j.started_at_ms, settings=training_settings_to_pb(j.settings),
        owner_id=j.owner_id, dataset=j.dataset, message=j.message)


def job_list_to_pb(jobs: io.JobList) -> fl_pb2.ListTrainingJobsResponse:
    return fl_pb2.ListTrainingJobsResponse(jobs=[job_summary_to_pb(j) for j in jobs.jobs], more=jobs.more)


def named_model_to_pb(m: io.NamedModel) -> fl_pb2.NamedModel:
    return fl_pb2.NamedModel(
        model=m.model, inputs=list(m.inputs), coefficients=[fl_pb2.NamedWeight(name=k, value=v) for k, v in m.coefficients],
        intercept=m.intercept, raw_units=m.raw_units, label=m.label, label_threshold=m.label_threshold, note=m.note,
        scaling=[fl_pb2.FeatureScaling(column=f.column, lower=f.lower, upper=f.upper, categories=list(f.categories))
                 for f in m.scaling])


def training_event_to_pb(e: io.TrainingEvent) -> fl_pb2.TrainingEvent:
    """Loss and accuracy are set only when released (None leaves them absent)."""
    return fl_pb2.TrainingEvent(
        job_id=e.job_id, round=e.round, rounds=e.rounds, loss=e.loss, accuracy=e.accuracy,
        epsilon_spent=e.epsilon_spent, participants=list(e.participants), dropped=list(e.dropped), state=e.state,
        message=e.message)


def training_outcome_to_pb(o: io.TrainingOutcome) -> fl_pb2.GetTrainingResultResponse:
    return fl_pb2.GetTrainingResultResponse(
        job_id=o.job_id, metrics=[fl_pb2.Metric(name=k, value=v) for k, v in o.metrics],
        charged=budget_to_pb(o.charged),
        weights=[fl_pb2.Tensor(shape=list(t.shape), values=list(t.values)) for t in o.weights],
        history=[training_event_to_pb(e) for e in o.history],
        named=named_model_to_pb(o.named) if o.named is not None else None)


def register_trained_model_from_pb(req: fl_pb2.RegisterTrainedModelRequest) -> io.RegisterTrainedModel:
    return io.RegisterTrainedModel(job_id=req.job_id, name=req.name, private_features=tuple(req.private_features),
                                   description=req.description)


def registered_model_to_pb(m: io.RegisteredModel) -> fl_pb2.RegisterTrainedModelResponse:
    return fl_pb2.RegisterTrainedModelResponse(model_hash=m.model_hash, canonical=m.canonical)


# -- verification ---------------------------------------------------------------------------------------------------

_RESULT_TO_PB = {"MATCH": verify_pb2.MATCH, "NO_MATCH": verify_pb2.NO_MATCH,
                 "UNKNOWN_ENTITY": verify_pb2.UNKNOWN_ENTITY}


def verify_batch_from_pb(req: verify_pb2.VerifyRequest) -> io.VerifyBatch:
    return io.VerifyBatch(
        grant_id=req.grant_id, template=req.template, certificates=req.certificates,
        items=tuple(io.VerifyItem(i.entity_id, tuple(i.claim), i.consent_ref) for i in req.items))


def verify_outcome_to_pb(o: io.VerifyOutcome) -> verify_pb2.VerifyResponse:
    return verify_pb2.VerifyResponse(
        results=[_RESULT_TO_PB[r] for r in o.results],
        certificates=[verify_pb2.Certificate(json=c.json, signature=c.signature) for c in o.certificates],
        quota_used=o.quota_used, quota_cap=o.quota_cap, audit_public_key=o.audit_public_key,
        nonce=secrets.token_bytes(16))


def private_batch_from_pb(req: verify_pb2.VerifyPrivateRequest) -> io.PrivateBatch:
    return io.PrivateBatch(grant_id=req.grant_id, template=req.template, blinded=tuple(req.blinded),
                                     consent_refs=tuple(req.consent_refs))


def private_outcome_to_pb(o: io.PrivateOutcome) -> verify_pb2.VerifyPrivateResponse:
    return verify_pb2.VerifyPrivateResponse(evaluated=list(o.evaluated), quota_used=o.quota_used,
                                            quota_cap=o.quota_cap, nonce=secrets.token_bytes(16))
