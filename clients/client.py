"""Clients for administrators, applicants and researchers.

    with ApplicantClient("localhost:50051", key="bank.key", ca="ca.pem") as bank:
        scenario = bank.apply(title=..., kind="DP_QUERY", datasets={"adult_census": ["*"]}, epsilon=1, ...)

Every call is signed, has a deadline (``timeout``, default 10 s) and raises a
``clients.errors`` exception on failure. Without an address a client connects to
``SANDBOX_SERVER``, or ``localhost:50051`` when it is unset, as ``sandbox-client`` does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Self

import grpc
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2

from clients import serde
from clients import types as t
from clients.errors import InvalidArgument, NotFound, PermissionDenied, SandboxClientError, Unavailable
from clients.he import EncryptedScores, HeSession, ScoreResult, choose_profile, sigmoid
from clients.query import Query
from clients.schema_file import load_schema_file
from clients.signing import grant_missing_cosignatures, load_key, verify_terms_signature
from clients.transport import DEFAULT_MAX_MESSAGE, SignedTransport
from protos.sandbox.v1 import admin_pb2, applicant_pb2, audit_pb2, common_pb2, dp_pb2, fl_pb2, he_pb2, verify_pb2
from clients import verify as vf
from wire import checks, transparency
from wire.signing import cosign_payload
from wire.budget import ATTO, NANO, to_units

__all__ = ["SandboxClient", "ApplicantClient", "ResearcherClient", "AuditorClient", "AdminClient", "default_server"]

#: The address a client connects to when given none and ``SANDBOX_SERVER`` is unset (``sandbox-client``'s too).
DEFAULT_SERVER = "localhost:50051"

_ADMIN = "/sandbox.v1.AdminService/"
_APPLICANT = "/sandbox.v1.ApplicantService/"
_AUDIT = "/sandbox.v1.AuditService/"
_DP = "/sandbox.v1.DpQueryService/"
_MODELS = "/sandbox.v1.ModelService/"
_HE = "/sandbox.v1.HeScoringService/"
_FL = "/sandbox.v1.FlTrainingService/"
_STEWARD = "/sandbox.v1.StewardService/"
_VERIFY = "/sandbox.v1.VerificationService/"
_HEALTH = "/grpc.health.v1.Health/Check"
#: The CSV bytes in one message of an import stream.
IMPORT_CHUNK_BYTES = 60 * 1024  # under the smallest max_message_bytes a server accepts (64 KiB)


def default_server(environ: Mapping[str, str] = os.environ) -> str:
    """Where a client connects when given no address: ``SANDBOX_SERVER`` if set, else ``localhost:50051``."""
    return environ.get("SANDBOX_SERVER") or DEFAULT_SERVER


class _HeCalls:
    """The HE scoring RPCs of an ``HeSession`` (``clients.he.HeCalls``), over the client's transport."""

    def __init__(self, transport: SignedTransport) -> None:
        self._t = transport

    def register_context(self, profile: str, blob: bytes, chunk: int) -> str:
        return self._t.call_stream(_HE + "RegisterContext", serde.context_chunks(profile, blob, chunk),
                                   he_pb2.RegisterContextResponse, timeout=120).context_id

    def score(self, grant_id: str, context_id: str, model_hash: str, entity_ids: Sequence[str],
              encrypted_features: Sequence[bytes], *, timeout: float, chunks: int = 1) -> EncryptedScores:
        req = serde.score_request(grant_id, context_id, model_hash, entity_ids, encrypted_features, chunks)
        # Serialised once here, so its size is known without encoding megabytes of ciphertext again (ByteSize does).
        body = req.SerializeToString(deterministic=True)
        resp = self._t.invoke_raw(_HE + "Score", body, self._t.sign(_HE + "Score", body), he_pb2.ScoreResponse,
                                  timeout=timeout)
        logits = tuple(resp.encrypted_logit_chunks) or (resp.encrypted_logits,)
        return EncryptedScores(logits[0], resp.noise_sd, len(body), resp.ByteSize(), self._t.last_receipt,
                               chunks=logits)


def _logged(resp: audit_pb2.GetReceiptResponse, audit_public_key: bytes) -> list[str]:
    """What is wrong with an entry as GetReceipt (or CheckCertificate) returns it: its hash, the audit key's
    signatures on it and on the head, and its inclusion proof."""
    e = resp.entry
    fields = {k: getattr(e, k) for k in (*transparency.RECORD_FIELDS, *transparency.OPTIONAL_FIELDS)}
    head = serde.tree_head(resp.head)
    problems = []
    if transparency.entry_hash(e.seq, e.time_unix_ms, e.prev_hash, fields) != e.entry_hash:
        problems.append("the entry's hash does not match its fields")
    if not transparency.verify_signature(audit_public_key, resp.entry_signature,
                                         transparency.entry_payload(e.seq, e.entry_hash)):
        problems.append("the entry is not signed by the audit key")
    if not transparency.verify_tree_head(head, audit_public_key):
        problems.append("the tree head is not signed by the audit key")
    proof = transparency.inclusion_proof(e.seq, head.size, resp.inclusion.rule, resp.inclusion.path)
    if not transparency.check_inclusion(e.entry_hash, e.seq, head, proof):
        problems.append("the inclusion proof does not lead to the signed head")
    return problems


def _certificate_inclusion(resp: audit_pb2.GetReceiptResponse, doc: Mapping[str, Any], audit_public_key: bytes
                           ) -> tuple[list[str], t.AuditEntry, t.TreeHead]:
    """The entry a certificate names is the Verify call of its grant and batch, signed, and in a signed head."""
    e = resp.entry
    try:
        recorded = json.loads(e.request) if e.request else {}
    except ValueError:
        recorded = {}
    problems = []
    if e.seq != doc.get("audit_seq") or e.grant_id != doc.get("grant_id") or not e.method.endswith("/Verify"):
        problems.append("the log's entry is not the check the certificate names")
    elif not isinstance(recorded, dict) or recorded.get("items_sha256") != doc.get("batch_sha256"):
        problems.append("the log's entry records another batch")
    return problems + _logged(resp, audit_public_key), serde.audit_entry(e), serde.tree_head(resp.head)


def _settings(*, rounds: int = 10, local_epochs: int = 1, learning_rate: float = 0.1, fraction_per_round: float = 1.0,
              strategy: str = "fedavg", proximal_mu: float = 0.0, clipping_norm: float = 0.0,
              noise_multiplier: float = 0.0, delta: float = 0.0,
              secure_aggregation: str = "") -> common_pb2.TrainingSettings:
    """Training settings with the SDK's defaults for what is not given (TypeError on an unknown setting)."""
    return common_pb2.TrainingSettings(
        rounds=rounds, local_epochs=local_epochs, learning_rate=learning_rate, fraction_per_round=fraction_per_round,
        strategy=strategy, proximal_mu=proximal_mu, clipping_norm=clipping_norm, noise_multiplier=noise_multiplier,
        delta=delta, secure_aggregation=secure_aggregation)


class SandboxClient:
    """What every enrolled principal can do: who am I, the catalogue, my scenarios."""

    def __init__(
        self, address: str | None = None, *, key: Ed25519PrivateKey | str | Path,
        ca: str | Path | bytes | None = None, timeout: float = 10.0, principal_id: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE, channel: grpc.Channel | None = None,
    ) -> None:
        """``address`` is the server's host:port (``default_server()`` if not given); ``ca`` is the server's CA
        certificate (PEM bytes or a path), required unless ``channel`` is given.

        ``channel``: send through this gRPC channel instead of opening a TLS one to ``address`` (e.g. one
        with interceptors, or a fake in unit tests). Requests are signed the same way; ``close`` closes it.
        """
        private_key = key if isinstance(key, Ed25519PrivateKey) else load_key(key)
        self._t = SignedTransport(default_server() if address is None else address, key=private_key, ca=ca, timeout=timeout, principal_id=principal_id,
                                  max_message_bytes=max_message_bytes, channel=channel)
        self._models: dict[str, t.ModelSpec] = {}  # scoring models read so far, by hash
        self._private_sets: dict[tuple[str, str], frozenset[bytes]] = {}  # private mode: (grant, template) -> set
        self._verification_grants: dict[str, tuple[t.VerificationSettings, str]] = {}  # grant -> settings, dataset

    @property
    def principal_id(self) -> str:
        return self._t.principal_id

    @property
    def transport(self) -> SignedTransport:
        return self._t

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._t.close()

    def health(self, service: str = "") -> str:
        """The standard gRPC health status (unsigned; it reveals no data)."""
        resp = self._t.invoke_raw(_HEALTH, health_pb2.HealthCheckRequest(service=service).SerializeToString(), (),
                                  health_pb2.HealthCheckResponse)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def whoami(self) -> t.Principal:
        resp = self._t.call(_APPLICANT + "WhoAmI", applicant_pb2.WhoAmIRequest(), applicant_pb2.WhoAmIResponse)
        return serde.principal(resp.principal)

    def register(self, *, name: str, organisation: str, roles: Sequence[str] = ("applicant",)) -> t.Principal:
        """Self-registration with this client's key; an administrator must approve it."""
        req = applicant_pb2.RegisterRequest(name=name, organisation=organisation,
                                            roles=[serde.role_to_pb(r) for r in roles])
        resp = self._t.call(_APPLICANT + "Register", req, applicant_pb2.RegisterResponse, register=True)
        return serde.principal(resp.principal)

    def catalogue(self) -> list[t.Dataset]:
        resp = self._t.call(_APPLICANT + "ListCatalogue", applicant_pb2.ListCatalogueRequest(),
                            applicant_pb2.ListCatalogueResponse)
        return [serde.dataset(d) for d in resp.datasets]

    def model(self, model_hash: str) -> t.ModelSpec:
        """A registered model's full spec: to its submitter, administrators and auditors, and the applicants
        an administrator approved to score with it (to anyone else it does not exist)."""
        return serde.model_spec(self._t.call(_MODELS + "GetModel", he_pb2.GetModelRequest(model_hash=model_hash),
                                             he_pb2.GetModelResponse))

    def scenario(self, scenario_id: str) -> t.Scenario:
        resp = self._t.call(_APPLICANT + "GetScenario", applicant_pb2.GetScenarioRequest(scenario_id=scenario_id),
                            applicant_pb2.GetScenarioResponse)
        return serde.scenario(resp.scenario)

    def scenarios(self) -> list[t.Scenario]:
        resp = self._t.call(_APPLICANT + "ListScenarios", applicant_pb2.ListScenariosRequest(),
                            applicant_pb2.ListScenariosResponse)
        return [serde.scenario(s) for s in resp.scenarios]

    def administrator_keys(self) -> list[t.Principal]:
        resp = self._t.call(_APPLICANT + "ListAdministratorKeys", applicant_pb2.ListAdministratorKeysRequest(),
                            applicant_pb2.ListAdministratorKeysResponse)
        return [serde.principal(p) for p in resp.administrators]

    def verify_grant(self, grant: t.Grant, admin_public_keys: Sequence[bytes] | None = None) -> t.GrantTerms:
        """Check a grant offline against administrators' public keys (fetched if not given): the administrator's
        signature over its terms, and every steward co-signature the signed terms require."""
        keys = list(admin_public_keys) if admin_public_keys is not None else [
            p.public_key for p in self.administrator_keys()]
        if not verify_terms_signature(grant.terms_bytes, grant.signature, keys):
            raise PermissionDenied("grant signature does not verify", status="PERMISSION_DENIED",
                                   code="GRANT_SIGNATURE_INVALID")
        terms = serde.terms(grant.terms_bytes)
        missing = grant_missing_cosignatures(dataclasses.replace(grant, terms=terms))
        if missing:
            raise PermissionDenied(f"grant lacks a valid steward co-signature for {', '.join(missing)}",
                                   status="PERMISSION_DENIED", code="GRANT_COSIGNATURE_MISSING")
        return terms

    def training_jobs(self, *, limit: int = 0) -> t.TrainingJobList:
        """Training jobs, newest first: a researcher's own, or every job (with its owner) for an administrator or
        auditor. At most ``limit`` (0: the server's default, 100; never more than 1000); ``.more`` says older ones
        were left out. Jobs are kept by the server, so they are listed after a restart too."""
        return serde.job_list(self._t.call(_FL + "ListTrainingJobs", fl_pb2.ListTrainingJobsRequest(limit=limit),
                                           fl_pb2.ListTrainingJobsResponse))

    def training_plan(self, plan_hash: str) -> t.TrainingPlan:
        """A registered training plan (to administrators, auditors, stewards, its submitter and its grantees)."""
        return serde.training_plan(self._t.call(_FL + "GetTrainingPlan", fl_pb2.GetTrainingPlanRequest(
            plan_hash=plan_hash), fl_pb2.GetTrainingPlanResponse))

    def verify_receipt(self, receipt: t.Receipt | int, *,
                       audit_public_key: bytes | None = None) -> t.VerifiedReceipt:
        """Check that an answer this principal received is in the audit log the sandbox signed.

        Fetches the receipt's entry (only one's own) with an inclusion proof against a signed tree head, and
        checks here: the entry is this principal's, it records exactly the bytes received (when the receipt
        carries their hash), its hash, the audit key's signatures on it and on the head, and the proof.
        ``audit_public_key`` is the sandbox's published key; without it the key the server states is used
        (which proves consistency with that key, not that it is the sandbox's). Raises ``PermissionDenied``
        (code RECEIPT_INVALID) if anything does not check.
        """
        seq = receipt if isinstance(receipt, int) else receipt.seq
        resp = self._receipt(seq)
        e, key = resp.entry, audit_public_key or resp.audit_public_key
        head = serde.tree_head(resp.head)
        problems = []
        if e.seq != seq or e.principal_id != self.principal_id:
            problems.append("the entry is not this principal's")
        if isinstance(receipt, t.Receipt) and receipt.response_sha256 and receipt.response_sha256 != e.response_sha256:
            problems.append("the entry records another answer than the one received")
        problems += _logged(resp, key)
        if problems:
            raise PermissionDenied("receipt does not verify: " + "; ".join(problems), status="PERMISSION_DENIED",
                                   code="RECEIPT_INVALID")
        return t.VerifiedReceipt(serde.audit_entry(e), head)

    def _receipt(self, seq: int) -> audit_pb2.GetReceiptResponse:
        return self._until_head(_AUDIT + "GetReceipt", audit_pb2.GetReceiptRequest(seq=seq))

    def _until_head(self, method: str, request: Any, *, wait_s: float = 15.0) -> audit_pb2.GetReceiptResponse:
        """A receipt-shaped answer (GetReceipt, CheckCertificate); while no signed head covers the entry yet
        (HEAD_NOT_READY: the server signs heads on request at most once a second), ask again, for up to ``wait_s``
        seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._t.call(method, request, audit_pb2.GetReceiptResponse)
            except Unavailable as exc:
                if exc.code != "HEAD_NOT_READY" or time.monotonic() >= deadline:
                    raise
            time.sleep(0.2)

    def check_certificate(
        self, certificate: str | bytes | t.Certificate, *, audit_public_key: bytes | None = None,
        entity_id: str | None = None, claim: Sequence[str] | str | None = None, consent_ref: str | None = None,
    ) -> t.CertificateCheck:
        """Online: the offline checks (``clients.verify.certificate_check``), then the audit entry the certificate
        names, proved included in a tree head the audit key signed. ``audit_public_key`` is the sandbox's
        published key; without it the key the server states is used."""
        body, signature, stated = vf.read_certificate(certificate)
        key = audit_public_key or stated
        offline = vf.certificate_check(certificate, key, entity_id=entity_id, claim=claim, consent_ref=consent_ref)
        if offline.problems:
            return offline
        resp = self._until_head(_VERIFY + "CheckCertificate", verify_pb2.CheckCertificateRequest(
            certificate=verify_pb2.Certificate(json=body, signature=signature)))
        problems, entry, head = _certificate_inclusion(resp, offline.document, key)
        return t.CertificateCheck(tuple(problems), offline.document, entry, head)

    def check_access(
        self, grant_id: str, *, kind: str, dataset: str, columns: Sequence[str], dataset_version: str = "",
        model_hash: str = "",
    ) -> t.Scenario:
        """Would this computation be allowed under the grant now? Charges nothing."""
        req = applicant_pb2.CheckAccessRequest(grant_id=grant_id, kind=serde.kind_to_pb(kind), dataset=dataset,
                                               dataset_version=dataset_version, columns=list(columns),
                                               model_hash=model_hash)
        resp = self._t.call(_APPLICANT + "CheckAccess", req, applicant_pb2.CheckAccessResponse)
        return serde.scenario(resp.scenario)


class ApplicantClient(SandboxClient):
    """An applicant (a bank, an insurer, a statistics office) applies for scenarios."""

    default_kind = "DP_QUERY"

    def apply(
        self, *, title: str, purpose: str, legal_basis: str, datasets: Mapping[str, Sequence[str]],
        kind: str | None = None, epsilon: float | str | Decimal = 0, delta: float | str | Decimal = 0,
        max_epsilon_per_call: float | str | Decimal = 0, valid_for: dt.timedelta = dt.timedelta(days=30),
        valid_from: dt.datetime | None = None, quota: int = 1000, model_hash: str = "",
        dataset_versions: Mapping[str, str] | None = None, training: Mapping[str, Any] | None = None,
        verification: Mapping[str, Any] | None = None,
    ) -> t.Scenario:
        """Apply for one scenario. ``datasets`` maps dataset name to exact columns ("*" = open and internal).

        ``training`` (FL_TRAINING): the run settings proposed for review, as ``start_training``'s keywords
        (rounds, clipping_norm, noise_multiplier, ...); the server prices one run, the grant pins them and every
        start must use them.

        ``verification`` (VERIFICATION): ``id_column``, ``templates`` ({name: expression}, e.g.
        ``{"adult": "AGE >= 18", "repaid": "PAY_0 == ?"}``), and optionally ``per_entity_limit`` (default 3),
        ``reveal_unknown``, ``allow_sensitive`` and ``private_mode``.
        """
        try:
            start = valid_from or dt.datetime.now(dt.timezone.utc)
            app = common_pb2.Application(
                title=title, purpose=purpose, legal_basis=legal_basis, kind=serde.kind_to_pb(kind or self.default_kind),
                datasets=[common_pb2.DatasetSelection(name=n, version=(dataset_versions or {}).get(n, ""),
                                                      columns=list(cols)) for n, cols in datasets.items()],
                model_hash=model_hash,
                budget=common_pb2.PrivacyBudget(epsilon_nano=to_units(epsilon, NANO, "epsilon"),
                                                delta_atto=to_units(delta, ATTO, "delta")),
                max_epsilon_per_call_nano=to_units(max_epsilon_per_call, NANO, "max_epsilon_per_call"),
                valid_from_unix_ms=serde.ms(start) if valid_from else 0,
                valid_until_unix_ms=serde.ms(start + valid_for), quota=quota,
            )
            if training is not None:
                app.training.CopyFrom(_settings(**training))
            if verification is not None:
                app.verification.CopyFrom(serde.verification_settings_to_pb(verification))
        except (TypeError, ValueError) as exc:
            raise serde.invalid(str(exc)) from None
        resp = self._t.call(_APPLICANT + "Apply", applicant_pb2.ApplyRequest(application=app),
                            applicant_pb2.ApplyResponse)
        return serde.scenario(resp.scenario)

    def estimate_query(
        self, grant_id: str, query: Query, *, epsilon: float | None = None, half_width: float | None = None,
        delta: float = 0.0,
    ) -> t.QueryEstimate:
        """Free: what a query would cost and how accurate it would be (give ``epsilon`` or ``half_width``)."""
        if (epsilon is None) == (half_width is None):
            raise serde.invalid("give exactly one of epsilon or half_width")
        req = dp_pb2.EstimateQueryRequest(grant_id=grant_id, query=serde.query_to_pb(query), delta=delta)
        if epsilon is not None:
            req.epsilon = float(epsilon)
        else:
            req.half_width = float(half_width)  # type: ignore[arg-type]
        return serde.query_estimate(self._t.call(_DP + "EstimateQuery", req, dp_pb2.EstimateQueryResponse))

    def run_query(
        self, grant_id: str, query: Query, *, epsilon: float, delta: float = 0.0, idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> t.QueryResult:
        """Spend ``epsilon`` on a noisy answer. Retrying with the same ``idempotency_key`` is charged once."""
        req = dp_pb2.RunQueryRequest(grant_id=grant_id, query=serde.query_to_pb(query), epsilon=float(epsilon),
                                     delta=float(delta), idempotency_key=idempotency_key or "")
        result = serde.query_result(self._t.call(_DP + "RunQuery", req, dp_pb2.RunQueryResponse, timeout=timeout))
        return dataclasses.replace(result, receipt=self._t.last_receipt)

    def submit_model(
        self, *, name: str, dataset: str, public_features: Sequence[tuple[str, float]] | Mapping[str, float],
        private_features: Sequence[tuple[str, float]] | Mapping[str, float], bias: float = 0.0,
        kind: str = "logistic", description: str = "",
    ) -> str:
        """Register a linear or logistic model; returns its id (SHA-256 of the canonical spec) for an application."""
        pub = list(public_features.items()) if isinstance(public_features, Mapping) else list(public_features)
        priv = list(private_features.items()) if isinstance(private_features, Mapping) else list(private_features)
        kinds = {"linear": he_pb2.MODEL_LINEAR, "logistic": he_pb2.MODEL_LOGISTIC}
        if kind not in kinds:
            raise serde.invalid("kind is linear or logistic")
        spec = he_pb2.ModelSpec(
            name=name, kind=kinds[kind], dataset=dataset, bias=float(bias), description=description,
            public_features=[he_pb2.PublicFeature(column=c, weight=float(w)) for c, w in pub],
            private_features=[he_pb2.PrivateFeature(name=n, weight=float(w)) for n, w in priv])
        return self._t.call(_MODELS + "SubmitModel", he_pb2.SubmitModelRequest(spec=spec),
                            he_pb2.SubmitModelResponse).model_hash

    def he_session(self, entities: int = 4096) -> HeSession:
        """A fresh CKKS key pair for a profile that fits ``entities`` per batch, its public context registered."""
        profiles = self._t.call(_HE + "ListProfiles", he_pb2.ListProfilesRequest(), he_pb2.ListProfilesResponse)
        return HeSession(_HeCalls(self._t), choose_profile([serde.he_profile(p) for p in profiles.profiles], entities))

    def _scoring_model(self, model_hash: str) -> t.ModelSpec:
        """``model``, asked once per hash (a model is immutable: its hash is its content)."""
        if model_hash not in self._models:
            self._models[model_hash] = self.model(model_hash)
        return self._models[model_hash]

    def model_private_features(self, model_hash: str) -> list[str]:
        """The private features a model takes, in the order of ``score``'s feature columns."""
        return [name for name, _ in self._scoring_model(model_hash).private_features]

    def score(
        self, grant_id: str, model_hash: str, entity_ids: Sequence[str], features: Any, *,
        session: HeSession | None = None, timeout: float = 120.0,
    ) -> ScoreResult:
        """Scores for ``entity_ids`` from the applicant's private ``features`` (entities x private features).

        Key generation, encryption and decryption happen here; the sandbox sees only ciphertexts.
        Returns logits and, for a logistic model, probabilities (the sigmoid is applied here).
        """
        x = np.asarray(features, dtype=float)
        spec = self._scoring_model(model_hash)
        logistic, names = spec.kind == "logistic", [name for name, _ in spec.private_features]
        if x.ndim != 2 or x.shape[1] != len(names):
            raise serde.invalid(f"the model takes {len(names)} private features ({', '.join(names)}); "
                                f"features has shape {x.shape}")
        sess = session or self.he_session(len(entity_ids))
        ids = [str(e) for e in entity_ids]
        parts = []
        for start in range(0, len(ids), sess.profile.per_call):  # one Score call per per_call entities
            stop = start + sess.profile.per_call
            parts.append(sess.score_batch(grant_id, model_hash, ids[start:stop], x[start:stop], logistic=logistic,
                                          timeout=timeout))
        logits = np.concatenate([p.logits for p in parts]) if parts else np.zeros(0)
        seconds = {"keygen": 0.0 if session else sess.keygen_seconds,
                   "upload": 0.0 if session else sess.register_seconds}
        for p in parts:
            for k, v in p.seconds.items():
                seconds[k] = seconds.get(k, 0.0) + v
        return ScoreResult(ids, logits, sigmoid(logits) if logistic else None, seconds,
                           bytes_sent=sum(p.bytes_sent for p in parts) + (0 if session else sess.context_bytes),
                           bytes_received=sum(p.bytes_received for p in parts),
                           noise_sd=max((p.noise_sd for p in parts), default=0.0),
                           receipts=tuple(r for p in parts for r in p.receipts))


    def verify(
        self, grant_id: str, template: str, items: Sequence[vf.Item | Mapping[str, Any]], *,
        certificates: bool = False, private: bool = False, timeout: float = 120.0,
    ) -> t.VerifyResult:
        """Check claims about entities through one of the grant's templates: one result per item, in order.

        ``items`` are (entity id, claim, consent reference); the claim is one value per ``?`` of the template (a
        single value may be given bare). ``certificates`` asks for one signed certificate per item. ``private``
        (equality templates of a grant that allows it) keeps the ids and claims here: the sandbox sees only
        blinded points and no certificate can be issued. Longer lists go in batches of ``MAX_BATCH``; if a later
        batch is refused, the exception's ``partial`` holds the answers of the batches before it (they were charged).
        """
        batch = vf.items_of(items)
        if not batch:
            raise serde.invalid("no items to check")
        if private:
            if certificates:
                raise serde.invalid("private mode issues no certificates: the sandbox never learns the result")
            return self._verify_private(grant_id, template, batch, timeout)
        results: list[str] = []
        certs: list[t.Certificate] = []
        receipts: list[t.Receipt] = []
        used = cap = 0
        start = time.perf_counter()
        for i in range(0, len(batch), vf.MAX_BATCH):
            req = verify_pb2.VerifyRequest(grant_id=grant_id, template=template, certificates=certificates, items=[
                verify_pb2.VerifyItem(entity_id=e, claim=c, consent_ref=r) for e, c, r in batch[i:i + vf.MAX_BATCH]])
            try:
                resp = self._t.call(_VERIFY + "Verify", req, verify_pb2.VerifyResponse, timeout=timeout)
            except SandboxClientError as exc:  # the batches already answered were charged: keep their answers
                if results:
                    exc.partial = t.VerifyResult(tuple(results), tuple(certs), used, cap, False, tuple(receipts),
                                                 {"total": vf.elapsed(start)})
                raise
            found, issued = serde.verify_results(resp)
            results.extend(found)
            certs.extend(issued)
            used, cap = resp.quota_used, resp.quota_cap
            if self._t.last_receipt is not None:
                receipts.append(self._t.last_receipt)
        return t.VerifyResult(tuple(results), tuple(certs), used, cap, False, tuple(receipts),
                              {"total": vf.elapsed(start)})

    def _verify_private(self, grant_id: str, template: str, batch: list[vf.Checked],
                        timeout: float) -> t.VerifyResult:
        settings, dataset = self._verification_grant(grant_id)
        chosen = settings.template(template)
        if chosen is None:
            raise serde.invalid(f"template {template!r} is not in the grant "
                                f"({', '.join(x.name for x in settings.templates)})")
        types = {c.name: c.type for d in self.catalogue() if d.name == dataset for c in d.columns}
        claim_types = [types.get(a.column, "string") for a in checks.parse(chosen.expression).parameters]
        seconds = {"set": 0.0, "blind": 0.0, "server": 0.0, "unblind": 0.0}
        start = time.perf_counter()
        stored = self._private_sets.get((grant_id, template))
        if stored is None:
            found = self._t.call(_VERIFY + "GetPrivateSet", verify_pb2.GetPrivateSetRequest(
                grant_id=grant_id, template=template), verify_pb2.GetPrivateSetResponse, timeout=timeout)
            stored = self._private_sets[(grant_id, template)] = vf.private_set(found.points)
        seconds["set"] = vf.elapsed(start)
        results: list[str] = []
        receipts: list[t.Receipt] = []
        used = cap = 0
        for i in range(0, len(batch), vf.MAX_BATCH):
            start = time.perf_counter()
            part = vf.PrivateItems(grant_id, chosen, types.get(settings.id_column, "string"), claim_types,
                                   batch[i:i + vf.MAX_BATCH])
            seconds["blind"] += vf.elapsed(start)
            start = time.perf_counter()
            req = verify_pb2.VerifyPrivateRequest(grant_id=grant_id, template=template, blinded=part.blinded,
                                                  consent_refs=part.consents)
            try:
                resp = self._t.call(_VERIFY + "VerifyPrivate", req, verify_pb2.VerifyPrivateResponse,
                                    timeout=timeout)
            except SandboxClientError as exc:
                if results:
                    exc.partial = t.VerifyResult(tuple(results), (), used, cap, True, tuple(receipts), seconds)
                raise
            seconds["server"] += vf.elapsed(start)
            if self._t.last_receipt is not None:
                receipts.append(self._t.last_receipt)
            start = time.perf_counter()
            results.extend(part.results(list(resp.evaluated), stored))
            seconds["unblind"] += vf.elapsed(start)
            used, cap = resp.quota_used, resp.quota_cap
        return t.VerifyResult(tuple(results), (), used, cap, True, tuple(receipts), seconds)

    def _verification_grant(self, grant_id: str) -> tuple[t.VerificationSettings, str]:
        """The settings and dataset of one of this applicant's verification grants, as its signed terms say (asked
        once per grant: signed terms never change)."""
        if grant_id in self._verification_grants:
            return self._verification_grants[grant_id]
        for s in self.scenarios():
            if s.grant is not None and s.grant.id == grant_id and s.grant.terms.verification is not None:
                found = s.grant.terms.verification, s.grant.terms.datasets[0].name
                self._verification_grants[grant_id] = found
                return found
        raise NotFound("no verification grant of yours has this id", status="NOT_FOUND", code="NOT_GRANTEE")

class ResearcherClient(ApplicantClient):
    """A researcher applies for federated-training scenarios and runs them; it receives only the model."""

    default_kind = "FL_TRAINING"

    def register_plan(self, *, dataset: str, features: Sequence[str], label: str, label_threshold: float,
                      model: str = "logistic", hidden_units: int = 0) -> str:
        """Register what is trained on what; the returned hash is the model reference of an FL application."""
        t = fl_pb2.PlanTemplate(dataset=dataset, model=model, features=list(features), label=label,
                                label_threshold=float(label_threshold), hidden_units=hidden_units)
        return self._t.call(_FL + "RegisterPlan", fl_pb2.RegisterPlanRequest(template=t),
                            fl_pb2.RegisterPlanResponse).plan_hash

    def start_training(
        self, grant_id: str, plan_hash: str, *, rounds: int | None = None, local_epochs: int | None = None,
        learning_rate: float | None = None, fraction_per_round: float | None = None, strategy: str | None = None,
        proximal_mu: float | None = None, clipping_norm: float | None = None, noise_multiplier: float | None = None,
        delta: float | None = None, secure_aggregation: str | None = None,
    ) -> t.TrainingJob:
        """Reserve the plan's privacy cost and start; returns the job id (with what was reserved).

        A grant that pins the training settings (the application proposed them) runs with those: give none, or
        exactly those. Otherwise each setting left out takes its default (10 rounds, 1 local epoch, learning rate
        0.1, every holder each round, fedavg, no DP). noise_multiplier 0 means no DP: such a job has no finite
        epsilon and is charged the grant's whole remaining budget. ``secure_aggregation`` "on" or "off" (default:
        on when the dataset has at least 3 data holders): the sandbox then sees only the sum of the holders'
        masked updates (Flower's SecAgg+), at the same price.
        """
        given: dict[str, Any] = {k: v for k, v in dict(rounds=rounds, local_epochs=local_epochs, learning_rate=learning_rate,
                                                       fraction_per_round=fraction_per_round, strategy=strategy,
                                                       proximal_mu=proximal_mu, clipping_norm=clipping_norm,
                                                       noise_multiplier=noise_multiplier, delta=delta,
                                                       secure_aggregation=secure_aggregation).items()
                                 if v is not None}
        req = fl_pb2.StartTrainingRequest(grant_id=grant_id, plan_hash=plan_hash)
        if given:
            req.settings.CopyFrom(_settings(**given))
        resp = self._t.call(_FL + "StartTraining", req, fl_pb2.StartTrainingResponse)
        return serde.training_job(resp)

    def watch_training(self, job_id: str, *, timeout: float = 3600.0) -> Iterator[t.TrainingEvent]:
        """Per-round progress until the job ends (the last event has state completed/failed/cancelled/revoked)."""
        for e in self._t.call_server_stream(_FL + "WatchTraining", fl_pb2.WatchTrainingRequest(job_id=job_id),
                                            fl_pb2.TrainingEvent, timeout=timeout):
            yield serde.training_event(e)

    def training_result(self, job_id: str) -> t.TrainingResult:
        """The aggregate model and federated metrics of a completed job (never a holder's update)."""
        result = serde.training_result(self._t.call(_FL + "GetTrainingResult",
                                                    fl_pb2.GetTrainingResultRequest(job_id=job_id),
                                                    fl_pb2.GetTrainingResultResponse))
        return dataclasses.replace(result, receipt=self._t.last_receipt)

    def cancel_training(self, job_id: str) -> str:
        return self._t.call(_FL + "CancelTraining", fl_pb2.CancelTrainingRequest(job_id=job_id),
                            fl_pb2.CancelTrainingResponse).state

    def register_trained_model(self, job_id: str, *, name: str, private_features: Sequence[str],
                               description: str = "") -> str:
        """Put a completed job's logistic model in the model registry for HE scoring; returns its model hash.

        The weights are converted to raw column units; ``private_features`` are plan features that the
        scoring applicant will supply encrypted (in raw units, clipped to the column's public bounds), the
        rest stay sandbox columns. An HE_SCORING application then names the returned hash.
        """
        req = fl_pb2.RegisterTrainedModelRequest(job_id=job_id, name=name, private_features=list(private_features),
                                                 description=description)
        return self._t.call(_FL + "RegisterTrainedModel", req, fl_pb2.RegisterTrainedModelResponse).model_hash


class StewardClient(SandboxClient):
    """A data steward of the department that holds a dataset: reviews the scenarios touching its datasets and
    co-signs the grants whose dataset policy asks for it (谁持有谁负责)."""

    def steward_scenarios(self) -> list[t.Scenario]:
        """Every scenario touching a dataset this steward speaks for, pending ones first."""
        resp = self._t.call(_STEWARD + "ListStewardScenarios", admin_pb2.ListStewardScenariosRequest(),
                            admin_pb2.ListStewardScenariosResponse)
        return [serde.scenario(s) for s in resp.scenarios]

    def cosign(self, grant_id: str, admin_public_keys: Sequence[bytes] | None = None) -> t.Scenario:
        """Co-sign a grant with this steward's own key, after checking here that an administrator signed exactly
        these terms and that they name this steward (the key never leaves)."""
        scenario = next((s for s in self.steward_scenarios() if s.grant is not None and s.grant.id == grant_id), None)
        if scenario is None or scenario.grant is None:
            raise NotFound("no grant touching your datasets has this id", status="NOT_FOUND", code="NOT_FOUND")
        grant = scenario.grant
        keys = list(admin_public_keys) if admin_public_keys is not None else [
            p.public_key for p in self.administrator_keys()]
        if not verify_terms_signature(grant.terms_bytes, grant.signature, keys):
            raise PermissionDenied("grant signature does not verify", status="PERMISSION_DENIED",
                                   code="GRANT_SIGNATURE_INVALID")
        if not any(self.principal_id in r.steward_ids for r in grant.terms.cosigners):
            raise PermissionDenied("the grant's terms do not name you as a co-signer", status="PERMISSION_DENIED",
                                   code="NOT_A_COSIGNER")
        req = admin_pb2.CosignGrantRequest(grant_id=grant_id, signature=self._t.key.sign(
            cosign_payload(grant.terms_bytes)))
        return serde.scenario(self._t.call(_STEWARD + "CosignGrant", req, admin_pb2.CosignGrantResponse).scenario)


class AuditorClient(SandboxClient):
    """A regulator or auditor: reads the audit log, witnesses its signed tree heads."""

    def audit_entries(
        self, *, after_seq: int = 0, page_size: int = 1000, principal: str = "", grant_id: str = "",
        method: str = "", status: str = "", since: dt.datetime | None = None, until: dt.datetime | None = None,
    ) -> Iterator[t.AuditEntry]:
        """Every audit entry after ``after_seq`` matching the filters, fetched page by page (filtered by the server).

        ``principal``: a principal id or part of a name; ``method``: the full method or its last part
        (``RunQuery``); ``status``: e.g. ``OK``; ``since`` (inclusive) and ``until`` (exclusive): times.
        """
        req = audit_pb2.ListAuditEntriesRequest(
            limit=page_size, principal=principal, grant_id=grant_id, method=method, status=status,
            since_unix_ms=serde.ms(since) if since else 0, until_unix_ms=serde.ms(until) if until else 0)
        while True:
            req.after_seq = after_seq
            resp = self._t.call(_AUDIT + "ListAuditEntries", req, audit_pb2.ListAuditEntriesResponse)
            for e in resp.entries:
                yield serde.audit_entry(e, resp.principal_names)
                after_seq = e.seq
            if not resp.more:
                return

    def audit_head(self) -> t.AuditHead:
        return serde.audit_head(self._t.call(_AUDIT + "GetAuditHead", audit_pb2.GetAuditHeadRequest(),
                                             audit_pb2.GetAuditHeadResponse))

    def consistency_proof(self, prior: t.TreeHead, later: t.TreeHead) -> bool:
        """Ask for a proof that ``later`` extends ``prior`` and check it here; True if it does."""
        if later.size <= prior.size or prior.size == 0:
            return transparency.check_consistency(prior, later, None)
        resp = self._t.call(_AUDIT + "GetConsistencyProof", audit_pb2.GetConsistencyProofRequest(
            first_size=prior.size, second_size=later.size), audit_pb2.GetConsistencyProofResponse)
        p = resp.proof
        return transparency.check_consistency(
            prior, later, transparency.consistency_proof(prior.size, later.size, p.rule, p.subset, p.path))

    def cosign(self, head: t.TreeHead) -> None:
        """Countersign a head this client checked, with its own key; the server keeps the cosignature."""
        sig = self._t.key.sign(transparency.cosignature_payload(self.principal_id, head.size, head.root_hash,
                                                                head.signed_at_ms))
        self._t.call(_AUDIT + "AddCosignature", audit_pb2.AddCosignatureRequest(
            head=serde.tree_head_to_pb(head), signature=sig), audit_pb2.AddCosignatureResponse)


class AdminClient(AuditorClient):
    """The city data bureau: enrols principals, imports data, reviews and signs scenarios, reads the audit log."""

    def enrol(self, *, name: str, organisation: str, roles: Sequence[str], public_key: bytes) -> t.Principal:
        req = admin_pb2.EnrolPrincipalRequest(name=name, organisation=organisation,
                                              roles=[serde.role_to_pb(r) for r in roles], public_key=public_key)
        return serde.principal(self._t.call(_ADMIN + "EnrolPrincipal", req, admin_pb2.EnrolPrincipalResponse).principal)

    def principals(self) -> list[t.Principal]:
        resp = self._t.call(_ADMIN + "ListPrincipals", admin_pb2.ListPrincipalsRequest(),
                            admin_pb2.ListPrincipalsResponse)
        return [serde.principal(p) for p in resp.principals]

    def approve_principal(self, principal_id: str, roles: Sequence[str] = ()) -> t.Principal:
        req = admin_pb2.ApprovePrincipalRequest(principal_id=principal_id, roles=[serde.role_to_pb(r) for r in roles])
        return serde.principal(self._t.call(_ADMIN + "ApprovePrincipal", req,
                                            admin_pb2.ApprovePrincipalResponse).principal)

    def suspend_principal(self, principal_id: str, reason: str = "") -> t.Principal:
        req = admin_pb2.SuspendPrincipalRequest(principal_id=principal_id, reason=reason)
        return serde.principal(self._t.call(_ADMIN + "SuspendPrincipal", req,
                                            admin_pb2.SuspendPrincipalResponse).principal)

    def import_dataset(
        self, schema: str | Path | t.DatasetSchema | common_pb2.DatasetSchema, csv: str | Path | bytes, *,
        max_rejected: int = 0, dry_run: bool = False, timeout: float | None = None,
    ) -> t.ImportResult:
        """Import a CSV (plain or gzip) under a schema file (or a schema it was loaded into); all or nothing.

        A file is streamed from disk in ``IMPORT_CHUNK_BYTES`` pieces and never read whole (it is read twice: once
        for the signed digest, once to send). The default deadline is 120 s plus 1 s per 256 KiB.
        """
        if isinstance(schema, common_pb2.DatasetSchema):
            schema_pb = schema
        else:
            schema_pb = serde.schema_to_pb(schema if isinstance(schema, t.DatasetSchema) else load_schema_file(schema))
        if isinstance(csv, bytes):
            data, size = csv, len(csv)

            def pieces() -> Iterator[bytes]:
                for start in range(0, len(data), IMPORT_CHUNK_BYTES):
                    yield data[start:start + IMPORT_CHUNK_BYTES]
        else:
            path = Path(csv)
            size = path.stat().st_size

            def pieces() -> Iterator[bytes]:
                with open(path, "rb") as f:
                    while piece := f.read(IMPORT_CHUNK_BYTES):
                        yield piece

        def bodies() -> Iterator[bytes]:
            """The first message carries the schema, the options and the first piece; each later one a piece."""
            first = admin_pb2.ImportDatasetRequest(schema=schema_pb, max_rejected_rows=max_rejected, dry_run=dry_run)
            for i, piece in enumerate(pieces()):
                message = first if i == 0 else admin_pb2.ImportDatasetRequest()
                message.csv = piece
                yield message.SerializeToString(deterministic=True)
            if not size:
                yield first.SerializeToString(deterministic=True)

        deadline = 120.0 + size // (256 * 1024) if timeout is None else timeout
        return serde.import_result(self._t.call_stream_of(_ADMIN + "ImportDataset", bodies,
                                                          admin_pb2.ImportDatasetResponse, timeout=deadline))

    def pending(self) -> list[t.Scenario]:
        resp = self._t.call(_ADMIN + "ListPendingScenarios", admin_pb2.ListPendingScenariosRequest(),
                            admin_pb2.ListPendingScenariosResponse)
        return [serde.scenario(s) for s in resp.scenarios]

    def grant_terms(
        self, scenario_id: str, *, columns: Mapping[str, Sequence[str]] | None = None,
        epsilon: float | str | Decimal | None = None, delta: float | str | Decimal | None = None,
        max_epsilon_per_call: float | str | Decimal | None = None, quota: int | None = None,
        valid_until: dt.datetime | None = None, templates: Sequence[str] | None = None,
        per_entity_limit: int | None = None, reveal_unknown: bool | None = None, allow_sensitive: bool | None = None,
        private_mode: bool | None = None,
    ) -> bytes:
        """The serialised terms for approving a scenario as applied for, optionally narrowed (a verification
        scenario's ``templates`` to a subset of their names, its ``per_entity_limit`` lower)."""
        resp = self._t.call(_APPLICANT + "GetScenario", applicant_pb2.GetScenarioRequest(scenario_id=scenario_id),
                            applicant_pb2.GetScenarioResponse)
        s, app = resp.scenario, resp.scenario.application
        grantee_key = self._grantee_key(s.applicant_id)
        try:
            datasets = []
            for sel in app.datasets:
                cols = list(columns[sel.name]) if columns and sel.name in columns else list(sel.columns)
                datasets.append(common_pb2.DatasetSelection(name=sel.name, version=sel.version, columns=cols))
            budget = common_pb2.PrivacyBudget(
                epsilon_nano=app.budget.epsilon_nano if epsilon is None else to_units(epsilon, NANO, "epsilon"),
                delta_atto=app.budget.delta_atto if delta is None else to_units(delta, ATTO, "delta"))
            per_call = (app.max_epsilon_per_call_nano if max_epsilon_per_call is None
                        else to_units(max_epsilon_per_call, NANO, "max_epsilon_per_call"))
            terms = common_pb2.GrantTerms(
                scenario_id=s.id, grantee_id=s.applicant_id, grantee_public_key=grantee_key, kind=app.kind,
                datasets=datasets, model_hash=app.model_hash, budget=budget, max_epsilon_per_call_nano=per_call,
                not_before_unix_ms=app.valid_from_unix_ms,
                not_after_unix_ms=app.valid_until_unix_ms if valid_until is None else serde.ms(valid_until),
                quota=app.quota if quota is None else quota, approver_id=self.principal_id,
                approver_public_key=self._t.public_key,
                issued_at_unix_ms=int(self._t.clock() * 1000),
                cosigners=self._cosigners(datasets),
            )
            if app.HasField("training"):
                terms.training.CopyFrom(app.training)  # pinned exactly as proposed and priced
            if app.HasField("verification"):
                terms.verification.CopyFrom(app.verification)  # pinned as reviewed; narrowing only
                if templates is not None:
                    unknown = sorted(set(templates) - {x.name for x in app.verification.templates})
                    if unknown:
                        raise ValueError(f"no template named {', '.join(unknown)} was applied for")
                    del terms.verification.templates[:]
                    terms.verification.templates.extend(x for x in app.verification.templates if x.name in templates)
                if per_entity_limit is not None:
                    terms.verification.per_entity_limit = per_entity_limit
                for flag, value in (("reveal_unknown", reveal_unknown), ("allow_sensitive", allow_sensitive),
                                    ("private_mode", private_mode)):
                    if value is not None:  # False switches a setting off; True where not applied for is refused
                        setattr(terms.verification, flag, value)
        except ValueError as exc:
            raise serde.invalid(str(exc)) from None
        return terms.SerializeToString(deterministic=True)

    def _cosigners(self, datasets: Sequence[common_pb2.DatasetSelection]) -> list[common_pb2.CosignRequirement]:
        """The co-signers the datasets' stewardship asks of these selections (the server checks the same)."""
        catalogue = {d.name: d for d in self.catalogue()}
        needed = []
        for sel in sorted(datasets, key=lambda s: s.name):
            info = catalogue.get(sel.name)
            st = info.stewardship if info is not None else None
            if st is None or st.policy == "never":
                continue
            levels = {c.name: c.level for c in info.columns} if info is not None else {}
            if st.policy == "sensitive" and not any(levels.get(c) == "sensitive" for c in sel.columns):
                continue
            needed.append(common_pb2.CosignRequirement(dataset=sel.name, steward_ids=list(st.steward_ids),
                                                       steward_keys=list(st.steward_keys)))
        return needed

    def _grantee_key(self, principal_id: str) -> bytes:
        for p in self.principals():
            if p.id == principal_id:
                return p.public_key
        raise InvalidArgument("applicant is not enrolled", status="INVALID_ARGUMENT", code="NOT_FOUND")

    def approve(
        self, scenario_id: str, *, columns: Mapping[str, Sequence[str]] | None = None,
        epsilon: float | str | Decimal | None = None, delta: float | str | Decimal | None = None,
        max_epsilon_per_call: float | str | Decimal | None = None, quota: int | None = None,
        valid_until: dt.datetime | None = None, templates: Sequence[str] | None = None,
        per_entity_limit: int | None = None, reveal_unknown: bool | None = None, allow_sensitive: bool | None = None,
        private_mode: bool | None = None,
    ) -> t.Scenario:
        """Approve by signing the grant terms with this administrator's own key (the key never leaves).

        Every keyword narrows what was applied for; the server refuses terms that widen it.
        """
        terms = self.grant_terms(scenario_id, columns=columns, epsilon=epsilon, delta=delta,
                                 max_epsilon_per_call=max_epsilon_per_call, quota=quota, valid_until=valid_until,
                                 templates=templates, per_entity_limit=per_entity_limit,
                                 reveal_unknown=reveal_unknown, allow_sensitive=allow_sensitive,
                                 private_mode=private_mode)
        return self.approve_terms(scenario_id, terms, self._t.key.sign(terms))

    def approve_terms(self, scenario_id: str, terms: bytes, signature: bytes) -> t.Scenario:
        req = admin_pb2.ApproveScenarioRequest(scenario_id=scenario_id, terms=terms, signature=signature)
        return serde.scenario(self._t.call(_ADMIN + "ApproveScenario", req, admin_pb2.ApproveScenarioResponse).scenario)

    def reject(self, scenario_id: str, reason: str) -> t.Scenario:
        req = admin_pb2.RejectScenarioRequest(scenario_id=scenario_id, reason=reason)
        return serde.scenario(self._t.call(_ADMIN + "RejectScenario", req, admin_pb2.RejectScenarioResponse).scenario)

    def set_stewardship(self, dataset: str, *, owner: str, stewards: Sequence[str], policy: str) -> t.Stewardship:
        """Name a dataset's owning department, its stewards (principals with the steward role) and when they must
        co-sign a grant: ``never``, ``sensitive`` (when a grant names a sensitive column) or ``always``."""
        try:
            pb_policy = common_pb2.CosignPolicy.Value("COSIGN_" + policy.upper())
        except ValueError:
            raise serde.invalid(f"policy {policy!r} is not one of never, sensitive, always") from None
        req = admin_pb2.SetStewardshipRequest(dataset=dataset, owner=owner, steward_ids=list(stewards), policy=pb_policy)
        resp = self._t.call(_ADMIN + "SetStewardship", req, admin_pb2.SetStewardshipResponse)
        info = common_pb2.DatasetInfo(stewardship=resp.stewardship)
        held = serde.dataset(info).stewardship
        assert held is not None
        return held

    def revoke(self, grant_id: str, reason: str) -> t.Scenario:
        req = admin_pb2.RevokeGrantRequest(grant_id=grant_id, reason=reason)
        return serde.scenario(self._t.call(_ADMIN + "RevokeGrant", req, admin_pb2.RevokeGrantResponse).scenario)

