"""Thin gRPC servicers: translate the request, call one domain function, translate the result.

Authentication, role checks, the transaction and the audit entry are the
boundary's job (``sandbox.interceptor``); each handler finds the caller and the
open transaction in ``current_call()``.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc

from protos.sandbox.v1 import (
    admin_pb2, admin_pb2_grpc, applicant_pb2, applicant_pb2_grpc, audit_pb2, audit_pb2_grpc, dp_pb2_grpc, fl_pb2,
    fl_pb2_grpc, he_pb2, he_pb2_grpc, verify_pb2, verify_pb2_grpc,
)
from sandbox import (
    audit, catalogue, dp_queries, import_stream, fl_jobs, fl_plans, grants, he_models, he_scoring, policy, principals, scenarios,
    serde, stewards, verification,
)
from sandbox.audit import AuditLog
from sandbox.calls import Call, Deferred, Staged, current_call
from sandbox.columns import ArrayCache
from sandbox.compute_io import StoredRelease
from sandbox.config import ServerConfig
from sandbox.domain import PrincipalStatus, Role
from sandbox.errors import ErrorCode, SandboxError
from sandbox.state import State

def _respond(result: Any, to_pb: Callable[[Any], Any]) -> Any:
    """A compute module's result as its response message; a Deferred's computation converts its own result, so that
    the boundary serialises (and, for an idempotent release, stores) the response message."""
    if isinstance(result, Deferred):
        compute = result.compute
        return dataclasses.replace(result, compute=lambda: to_pb(compute()))
    return to_pb(result)


ADMIN = frozenset({Role.ADMIN})
AUDITORS = frozenset({Role.ADMIN, Role.AUDITOR})

#: Who may call what; ``None`` = any active principal. A test checks every RPC is listed.
METHOD_ROLES: dict[str, frozenset[Role] | None] = {
    **{f"/sandbox.v1.AdminService/{m}": ADMIN for m in (
        "EnrolPrincipal", "ListPrincipals", "ApprovePrincipal", "SuspendPrincipal", "ImportDataset",
        "ListPendingScenarios", "ApproveScenario", "RejectScenario", "RevokeGrant", "SetStewardship")},
    **{f"/sandbox.v1.StewardService/{m}": frozenset({Role.STEWARD}) for m in ("ListStewardScenarios", "CosignGrant")},
    **{f"/sandbox.v1.ApplicantService/{m}": None for m in (
        "Register", "WhoAmI", "ListCatalogue", "Apply", "GetScenario", "ListScenarios", "CheckAccess",
        "ListAdministratorKeys")},
    **{f"/sandbox.v1.AuditService/{m}": AUDITORS for m in (
        "ListAuditEntries", "GetAuditHead", "GetConsistencyProof", "AddCosignature")},
    "/sandbox.v1.AuditService/GetReceipt": None,
    **{f"/sandbox.v1.DpQueryService/{m}": frozenset({Role.APPLICANT}) for m in ("EstimateQuery", "RunQuery")},
    "/sandbox.v1.ModelService/SubmitModel": frozenset({Role.APPLICANT, Role.RESEARCHER}),
    "/sandbox.v1.ModelService/GetModel": None,
    "/sandbox.v1.HeScoringService/ListProfiles": None,
    **{f"/sandbox.v1.HeScoringService/{m}": frozenset({Role.APPLICANT}) for m in ("RegisterContext", "Score")},
    **{f"/sandbox.v1.FlTrainingService/{m}": frozenset({Role.RESEARCHER}) for m in (
        "RegisterPlan", "StartTraining", "WatchTraining", "GetTrainingResult", "CancelTraining",
        "RegisterTrainedModel")},
    # a researcher's own jobs; every job to administrators and auditors (fl_jobs.JobManager.jobs_for)
    "/sandbox.v1.FlTrainingService/ListTrainingJobs": frozenset({Role.RESEARCHER, Role.ADMIN, Role.AUDITOR}),
    "/sandbox.v1.FlTrainingService/GetTrainingPlan": None,  # reviewers and grantees (scenarios.training_plan_for)
    **{f"/sandbox.v1.VerificationService/{m}": frozenset({Role.APPLICANT}) for m in (
        "Verify", "GetPrivateSet", "VerifyPrivate")},
    "/sandbox.v1.VerificationService/CheckCertificate": None,  # anyone holding a certificate the sandbox signed
}

IMPORT_METHOD = "/sandbox.v1.AdminService/ImportDataset"


def streamed_methods(config: ServerConfig) -> dict[str, int]:
    """The client streams the boundary hands to their handler as they arrive (its streamed mode), with the most
    bytes each may declare; other client streams are buffered up to ``max_message_bytes``."""
    return {IMPORT_METHOD: config.max_import_bytes}


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, config: ServerConfig, catalogue_key: bytes) -> None:
        self._config = config
        self._catalogue_key = catalogue_key

    def EnrolPrincipal(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        p = principals.enrol(call.tx, name=request.name, organisation=request.organisation,
                             roles=serde.roles_from_pb(list(request.roles)), public_key=request.public_key,
                             enrolled_by=call.principal.id, now_ms=call.now_ms)
        return admin_pb2.EnrolPrincipalResponse(principal=serde.principal_to_pb(p))

    def ListPrincipals(self, request, context):  # type: ignore[no-untyped-def]
        ps = principals.list_all(current_call().tx)
        return admin_pb2.ListPrincipalsResponse(principals=[serde.principal_to_pb(p) for p in ps])

    def ApprovePrincipal(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        p = principals.approve(call.tx, request.principal_id, serde.roles_from_pb(list(request.roles)),
                               now_ms=call.now_ms)
        return admin_pb2.ApprovePrincipalResponse(principal=serde.principal_to_pb(p))

    def SuspendPrincipal(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        if request.principal_id == call.principal.id:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, "an administrator cannot suspend itself")
        p = principals.set_status(call.tx, request.principal_id, PrincipalStatus.SUSPENDED)
        return admin_pb2.SuspendPrincipalResponse(principal=serde.principal_to_pb(p))

    def ImportDataset(self, request_iterator, context):  # type: ignore[no-untyped-def]
        """Streamed mode: parse and stage the CSV as it arrives, outside the write lock; register it once the
        boundary has verified the whole stream (``Staged``)."""
        first = serde.import_first(request_iterator)
        staged = import_stream.stage_import(
            self._config.datasets_dir, serde.schema_from_pb(first.schema), serde.import_chunks(first, request_iterator),
            version_key=self._catalogue_key, max_csv_bytes=self._config.max_import_bytes,
            max_rejected=first.max_rejected_rows, dry_run=first.dry_run,
        )

        def commit(call: Call) -> Any:
            release = functools.partial(catalogue.public_rows, epsilon=self._config.catalogue_count_epsilon)
            return serde.import_report_to_pb(staged.register(call.tx, imported_by=call.principal.id,
                                                             now_ms=call.now_ms, release_rows=release))

        return Staged(commit=commit, discard=staged.discard, committed=staged.committed)

    def ListPendingScenarios(self, request, context):  # type: ignore[no-untyped-def]
        found = scenarios.list_pending(current_call().tx)
        return admin_pb2.ListPendingScenariosResponse(scenarios=[serde.scenario_to_pb(s) for s in found])

    def ApproveScenario(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        call.annotate(scenario_id=request.scenario_id)
        scenario = scenarios.get(call.tx, request.scenario_id, call.principal)
        grant = grants.approve(call.tx, scenario, request.terms, request.signature, call.principal,
                               now_ms=call.now_ms, skew_ms=self._config.clock_skew_seconds * 1000)
        call.annotate(grant_id=grant.id)
        return admin_pb2.ApproveScenarioResponse(
            scenario=serde.scenario_to_pb(scenarios.get(call.tx, scenario.id, call.principal)))

    def RejectScenario(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        call.annotate(scenario_id=request.scenario_id)
        s = scenarios.reject(call.tx, request.scenario_id, request.reason, call.principal, now_ms=call.now_ms)
        return admin_pb2.RejectScenarioResponse(scenario=serde.scenario_to_pb(s))

    def RevokeGrant(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        call.annotate(grant_id=request.grant_id)
        g = grants.revoke(call.tx, request.grant_id, request.reason, now_ms=call.now_ms)
        call.annotate(scenario_id=g.terms.scenario_id)
        s = scenarios.get(call.tx, g.terms.scenario_id, call.principal)
        return admin_pb2.RevokeGrantResponse(scenario=serde.scenario_to_pb(s))

    def SetStewardship(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        st = stewards.put(call.tx, request.dataset, owner=request.owner, steward_ids=list(request.steward_ids),
                          policy=serde.cosign_policy_from_pb(request.policy), by=call.principal, now_ms=call.now_ms)
        return admin_pb2.SetStewardshipResponse(stewardship=serde.stewardship_to_pb(st))


class StewardServicer(admin_pb2_grpc.StewardServiceServicer):
    def ListStewardScenarios(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        found = scenarios.list_for_steward(call.tx, call.principal)
        return admin_pb2.ListStewardScenariosResponse(scenarios=[serde.scenario_to_pb(s) for s in found])

    def CosignGrant(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        call.annotate(grant_id=request.grant_id)
        g = grants.cosign(call.tx, request.grant_id, call.principal, request.signature, now_ms=call.now_ms)
        call.annotate(scenario_id=g.terms.scenario_id)
        s = scenarios.get(call.tx, g.terms.scenario_id, call.principal)
        return admin_pb2.CosignGrantResponse(scenario=serde.scenario_to_pb(s))


class ApplicantServicer(applicant_pb2_grpc.ApplicantServiceServicer):
    def __init__(self, config: ServerConfig) -> None:
        self._config = config

    def Register(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        p = principals.register(call.tx, name=request.name, organisation=request.organisation,
                                roles=serde.roles_from_pb(list(request.roles)),
                                public_key=call.principal.public_key, now_ms=call.now_ms,
                                max_pending=self._config.max_pending_principals)
        return applicant_pb2.RegisterResponse(principal=serde.principal_to_pb(p))

    def WhoAmI(self, request, context):  # type: ignore[no-untyped-def]
        return applicant_pb2.WhoAmIResponse(principal=serde.principal_to_pb(current_call().principal))

    def ListCatalogue(self, request, context):  # type: ignore[no-untyped-def]
        tx = current_call().tx
        held = stewards.all_of(tx)
        infos = catalogue.list_catalogue(tx)
        return applicant_pb2.ListCatalogueResponse(datasets=[serde.dataset_info_to_pb(i, held.get(i.schema.name))
                                                             for i in infos])

    def Apply(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        s = scenarios.apply(call.tx, call.principal, serde.application_from_pb(request.application),
                            now_ms=call.now_ms)
        call.annotate(scenario_id=s.id)
        return applicant_pb2.ApplyResponse(scenario=serde.scenario_to_pb(s))

    def GetScenario(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        call.annotate(scenario_id=request.scenario_id)
        s = scenarios.get(call.tx, request.scenario_id, call.principal)
        return applicant_pb2.GetScenarioResponse(scenario=serde.scenario_to_pb(s))

    def ListScenarios(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        found = scenarios.list_for(call.tx, call.principal)
        return applicant_pb2.ListScenariosResponse(scenarios=[serde.scenario_to_pb(s) for s in found])

    def CheckAccess(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        call.annotate(grant_id=request.grant_id)  # before anything is refused, as every authorisation does
        auth = policy.authorise(call, request.grant_id, serde.kind_from_pb(request.kind), request.dataset,
                                tuple(request.columns), version=request.dataset_version,
                                model_hash=request.model_hash)
        s = scenarios.get(call.tx, auth.grant.terms.scenario_id, call.principal)
        return applicant_pb2.CheckAccessResponse(scenario=serde.scenario_to_pb(s))

    def ListAdministratorKeys(self, request, context):  # type: ignore[no-untyped-def]
        admins = principals.administrators(current_call().tx)
        return applicant_pb2.ListAdministratorKeysResponse(administrators=[serde.principal_to_pb(p) for p in admins])


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, log: AuditLog) -> None:
        self._log = log

    def ListAuditEntries(self, request, context):  # type: ignore[no-untyped-def]
        limit = request.limit or 1000
        if limit > 1000:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, "limit is at most 1000")
        if request.after_seq > serde.MAX_SEQ:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"after_seq is at most {serde.MAX_SEQ}")
        tx = current_call().tx
        everyone = principals.list_all(tx)
        filters: dict[str, object] = {
            "grant_id": request.grant_id, "status": request.status.strip().upper(),
            "since_ms": max(0, request.since_unix_ms), "until_ms": max(0, request.until_unix_ms)}
        if request.principal.strip():
            wanted = request.principal.strip().lower()
            filters["principal_ids"] = [p.id for p in everyone if p.id == wanted or wanted in p.name.lower()]
        if request.method.strip():
            name = request.method.strip()
            filters["methods"] = [m for m in METHOD_ROLES if m == name or m.rsplit("/", 1)[-1] == name]
        entries = audit.search_entries(tx, request.after_seq, limit + 1, **filters)[:limit + 1]
        names = {p.id: p.name for p in everyone}
        shown = entries[:limit]
        return audit_pb2.ListAuditEntriesResponse(
            entries=[serde.audit_entry_to_pb(e) for e in shown], more=len(entries) > limit,
            principal_names={e.record.principal_id: names[e.record.principal_id] for e in shown
                             if e.record.principal_id in names})

    def GetAuditHead(self, request, context):  # type: ignore[no-untyped-def]
        tx = current_call().tx
        head = self._log.head_on_request(tx)
        resp = audit_pb2.GetAuditHeadResponse(audit_public_key=self._log.public_key,
                                              entries=head.size if head else 0)
        if head is not None:
            resp.head.CopyFrom(serde.tree_head_to_pb(head))
            resp.cosignatures.extend(audit_pb2.Cosignature(witness_id=c.witness_id, witness_key=c.witness_key,
                                                           signature=c.signature)
                                     for c in audit.cosignatures(tx, head.size))
        return resp

    def GetConsistencyProof(self, request, context):  # type: ignore[no-untyped-def]
        head = audit.latest_head(current_call().tx)
        if not 1 <= request.first_size <= request.second_size <= (head.size if head else 0):
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, "sizes must satisfy 1 <= first <= second <= the latest "
                                                           "signed head's size")
        rule, subset, path = self._log.consistency(request.first_size, request.second_size)
        return audit_pb2.GetConsistencyProofResponse(proof=audit_pb2.MerkleProof(rule=rule, subset=subset, path=path))

    def AddCosignature(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        audit.add_cosignature(call.tx, serde.tree_head_from_pb(request.head), call.principal.id,
                              call.principal.public_key, request.signature, call.now_ms)
        return audit_pb2.AddCosignatureResponse()

    def GetReceipt(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        entry = audit.get_entry(call.tx, request.seq) if 1 <= request.seq <= serde.MAX_SEQ else None
        auditor = bool(call.principal.roles & AUDITORS)  # auditors may prove any entry's inclusion
        if entry is None or not auditor and entry.record.principal_id != call.principal.id:
            raise SandboxError(ErrorCode.NOT_FOUND, "no entry of yours with this number")  # another's looks like none
        return receipt_response(call.tx, self._log, entry)


def receipt_response(tx: Any, log: AuditLog, entry: Any) -> audit_pb2.GetReceiptResponse:
    """An audit entry with its signature and its inclusion proof against a signed head that covers it."""
    head = log.head_on_request(tx, covering=entry.seq)
    assert head is not None and head.size >= entry.seq
    rule, path = log.inclusion(entry.seq, head.size)
    signature = audit.entry_signature(tx, entry.seq)
    return audit_pb2.GetReceiptResponse(
        entry=serde.audit_entry_to_pb(entry), entry_signature=bytes(signature or b""),
        head=serde.tree_head_to_pb(head), inclusion=audit_pb2.MerkleProof(rule=rule, path=path),
        audit_public_key=log.public_key)


class DpQueryServicer(dp_pb2_grpc.DpQueryServiceServicer):
    def __init__(self, config: ServerConfig) -> None:
        self.cache = ArrayCache(config.datasets_dir)

    # Calibration happens before the write lock is taken (see SigningInterceptor._warm).
    @staticmethod
    def warm_EstimateQuery(principal, request, conn):  # type: ignore[no-untyped-def]
        dp_queries.warm(principal, serde.estimate_query_from_pb(request), conn)

    @staticmethod
    def warm_RunQuery(principal, request, conn):  # type: ignore[no-untyped-def]
        dp_queries.warm(principal, serde.run_query_from_pb(request), conn)

    def EstimateQuery(self, request, context):  # type: ignore[no-untyped-def]
        req = serde.estimate_query_from_pb(request)
        return serde.query_estimate_to_pb(dp_queries.estimate(current_call(), req))

    def RunQuery(self, request, context):  # type: ignore[no-untyped-def]
        req = serde.run_query_from_pb(request)
        result = dp_queries.run(current_call(), req, self.cache)
        if isinstance(result, StoredRelease):
            return serde.stored_release_to_pb(result)
        return _respond(result, serde.query_release_to_pb)


class ModelServicer(he_pb2_grpc.ModelServiceServicer):
    def __init__(self, config: ServerConfig) -> None:
        self._config = config

    def SubmitModel(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        spec = serde.model_from_pb(request.spec)
        model_hash = he_models.submit(call.tx, spec, submitted_by=call.principal.id, now_ms=call.now_ms,
                                   rule=self._config.release_rule)
        return he_pb2.SubmitModelResponse(model_hash=model_hash, canonical=spec.canonical())

    def GetModel(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        spec, submitted_by = he_models.get(call.tx, request.model_hash)
        if not (submitted_by == call.principal.id or call.principal.roles & {Role.ADMIN, Role.AUDITOR}
                or Role.STEWARD in call.principal.roles and spec.dataset in stewards.datasets_of(call.tx, call.principal)
                or scenarios.granted_model(call.tx, call.principal, request.model_hash)):
            # a model is its submitter's, the reviewers', and the applicants an administrator let score with it
            raise SandboxError(ErrorCode.NOT_FOUND, "no such model")
        return he_pb2.GetModelResponse(spec=serde.model_to_pb(spec), model_hash=request.model_hash,
                                       submitted_by=submitted_by,
                                       review=serde.review_to_pb(he_models.review(call.tx, spec, self._config.release_rule)))


class HeScoringServicer(he_pb2_grpc.HeScoringServiceServicer):
    def __init__(self, config: ServerConfig, cache: ArrayCache, index: he_scoring.EntityIndex, secret: bytes) -> None:
        self._config = config
        self._store = he_scoring.ContextStore(config.he_context_ttl_seconds * 1000)
        self._cache = cache
        self._index = index
        self._counts = he_scoring.EntityCounts(secret)
        self._pool: he_scoring.he_engine.ScoringPool | None = None
        self._lock = threading.Lock()

    def pool(self) -> he_scoring.he_engine.ScoringPool:
        """Worker processes (spawned, never forked) start on first use, so servers without HE work pay nothing."""
        with self._lock:
            if self._pool is None:
                self._pool = he_scoring.he_engine.ScoringPool(workers=self._config.he_workers)
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def ListProfiles(self, request, context):  # type: ignore[no-untyped-def]
        return serde.profiles_to_pb((p, he_scoring.max_entities(p)) for p in he_scoring.list_profiles())

    def RegisterContext(self, request_iterator, context):  # type: ignore[no-untyped-def]
        ctx = he_scoring.register_context(current_call(), serde.context_chunks_from_pb(request_iterator), self.pool(),
                                          self._store)
        return serde.context_to_pb(ctx.context_id, ctx.expires_ms)

    def Score(self, request, context):  # type: ignore[no-untyped-def]
        result = he_scoring.score(current_call(), serde.score_batch_from_pb(request), self.pool(), self._store,
                                  self._cache, self._index, self._counts, rule=self._config.release_rule)
        return _respond(result, serde.score_result_to_pb)


class FlTrainingServicer(fl_pb2_grpc.FlTrainingServiceServicer):
    def __init__(self, jobs: fl_jobs.JobManager, config: ServerConfig) -> None:
        self._jobs = jobs
        self._config = config

    def RegisterPlan(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        plan_hash = fl_plans.register(call.tx, serde.plan_from_pb(request.template), submitted_by=call.principal.id,
                                      now_ms=call.now_ms)
        return fl_pb2.RegisterPlanResponse(plan_hash=plan_hash)

    def StartTraining(self, request, context):  # type: ignore[no-untyped-def]
        return _respond(self._jobs.start(current_call(), serde.start_training_from_pb(request)),
                        serde.started_job_to_pb)

    def WatchTraining(self, request, context):  # type: ignore[no-untyped-def]
        events = self._jobs.watch(current_call(), request.job_id)  # checked now, inside the transaction
        return map(serde.training_event_to_pb, events)

    def GetTrainingResult(self, request, context):  # type: ignore[no-untyped-def]
        return serde.training_outcome_to_pb(self._jobs.result(current_call(), request.job_id))

    def CancelTraining(self, request, context):  # type: ignore[no-untyped-def]
        return fl_pb2.CancelTrainingResponse(state=self._jobs.cancel(current_call(), request.job_id))

    def RegisterTrainedModel(self, request, context):  # type: ignore[no-untyped-def]
        model = self._jobs.register_model(current_call(), serde.register_trained_model_from_pb(request),
                                          rule=self._config.release_rule)
        return serde.registered_model_to_pb(model)

    def GetTrainingPlan(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        template, submitted_by = scenarios.training_plan_for(call.tx, request.plan_hash, call.principal)
        return fl_pb2.GetTrainingPlanResponse(template=serde.plan_to_pb(template), plan_hash=request.plan_hash,
                                              submitted_by=submitted_by, canonical=template.canonical())

    def ListTrainingJobs(self, request, context):  # type: ignore[no-untyped-def]
        return serde.job_list_to_pb(self._jobs.jobs_for(current_call(), request.limit))


class VerificationServicer(verify_pb2_grpc.VerificationServiceServicer):
    def __init__(self, cache: ArrayCache, index: he_scoring.EntityIndex, secret: bytes, log: AuditLog) -> None:
        self._cache = cache
        self._index = index
        self._secret = secret
        self._log = log
        self._counts = he_scoring.EntityCounts(secret, person=b"verify-checked")
        self._sets = verification.PrivateSets(cache, index, secret)
        self._lock = threading.Lock()
        self._prepared: OrderedDict[int, tuple[Any, Any, verification.Prepared | None]] = OrderedDict()

    # A batch's items are read (ids, claims, consent references: most of a Verify's work) before the write lock is
    # taken (SigningInterceptor._warm); the handler takes that reading for the very same request object.
    def warm_Verify(self, principal, request, tx):  # type: ignore[no-untyped-def]
        batch = serde.verify_batch_from_pb(request)
        prepared = verification.prepare(tx, principal, batch)
        with self._lock:
            self._prepared[id(request)] = (request, batch, prepared)
            while len(self._prepared) > 64:  # a warmed request whose handler never ran (its transaction failed)
                self._prepared.popitem(last=False)

    def Verify(self, request, context):  # type: ignore[no-untyped-def]
        with self._lock:
            warmed = self._prepared.pop(id(request), None)
        if warmed is not None and warmed[0] is request:
            batch, prepared = warmed[1], warmed[2]
        else:
            batch, prepared = serde.verify_batch_from_pb(request), None
        result = verification.verify(current_call(), batch, self._cache, self._index, self._counts, self._log,
                                     prepared)
        return _respond(result, serde.verify_outcome_to_pb)

    # Building a private set takes seconds: it happens before the write lock is taken (SigningInterceptor._warm).
    def warm_GetPrivateSet(self, principal, request, tx):  # type: ignore[no-untyped-def]
        verification.warm_private_set(tx, principal, request.grant_id, request.template, self._sets)

    def GetPrivateSet(self, request, context):  # type: ignore[no-untyped-def]
        points = verification.private_set(current_call(), request.grant_id, request.template, self._sets)
        return verify_pb2.GetPrivateSetResponse(points=points, size=len(points) // 32)

    def VerifyPrivate(self, request, context):  # type: ignore[no-untyped-def]
        result = verification.verify_private(current_call(), serde.private_batch_from_pb(request), self._secret)
        return _respond(result, serde.private_outcome_to_pb)

    def CheckCertificate(self, request, context):  # type: ignore[no-untyped-def]
        call = current_call()
        seq = verification.certificate_entry(call.tx, request.certificate.json, request.certificate.signature,
                                             self._log.public_key)
        entry = audit.get_entry(call.tx, seq)
        return receipt_response(call.tx, self._log, entry)


def add_servicers(
    server: grpc.Server, config: ServerConfig, log: AuditLog, db: State, catalogue_key: bytes,
) -> list[Callable[[], None]]:
    """Register every service; returns what must be closed at shutdown."""
    dp = DpQueryServicer(config)
    jobs = fl_jobs.JobManager(db, dp.cache, fl_jobs.backend_for(config))
    fl_pb2_grpc.add_FlTrainingServiceServicer_to_server(FlTrainingServicer(jobs, config), server)
    # One index of entity ids for HE scoring and verification; the server's secret keys their pseudonyms too.
    index = he_scoring.EntityIndex(dp.cache, catalogue_key)
    he = HeScoringServicer(config, dp.cache, index, catalogue_key)
    verify_pb2_grpc.add_VerificationServiceServicer_to_server(
        VerificationServicer(dp.cache, index, catalogue_key, log), server)
    dp_pb2_grpc.add_DpQueryServiceServicer_to_server(dp, server)
    he_pb2_grpc.add_HeScoringServiceServicer_to_server(he, server)
    he_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(config), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(config, catalogue_key), server)
    applicant_pb2_grpc.add_ApplicantServiceServicer_to_server(ApplicantServicer(config), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(log), server)
    admin_pb2_grpc.add_StewardServiceServicer_to_server(StewardServicer(), server)
    return [he.close, jobs.close]
