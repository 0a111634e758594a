"""The request boundary: authenticate, authorise by role, audit, and translate errors.

Every ``sandbox.v1`` RPC goes through ``SigningInterceptor``. It receives the raw
request bytes (so the signature is checked over exactly what was sent), verifies
the Ed25519 signature and clock window before any handler runs, then runs the
handler inside one write transaction together with the nonce claim and the
audit entry: either all three commit, or nothing does and the caller gets
UNAVAILABLE. Refused calls are audited in a transaction of their own.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from sandbox import principals
from sandbox.audit import AuditLog
from sandbox.domain import AuditRecord, Principal, Role
from sandbox.errors import ERROR_TRAILER, ErrorCode, SandboxError
from sandbox.identity import (
    check_request, claim_nonce, parse_headers, principal_id_for, prune_nonces, require_active,
)
from sandbox.storage import Database

log = logging.getLogger("sandbox.rpc")

#: Roles allowed per method; ``None`` means any active principal.
MethodRoles = Mapping[str, frozenset[Role] | None]
REGISTER_METHOD = "/sandbox.v1.ApplicantService/Register"
PENDING_ALLOWED = frozenset({REGISTER_METHOD, "/sandbox.v1.ApplicantService/WhoAmI"})


@dataclass
class Call:
    """The authenticated caller and the open transaction, for the duration of one handler."""

    principal: Principal
    conn: sqlite3.Connection
    now_ms: int
    scenario_id: str = ""
    grant_id: str = ""
    request_sha256: str = ""
    charge_epsilon_nano: int = 0
    charge_delta_atto: int = 0

    def annotate(self, *, scenario_id: str = "", grant_id: str = "") -> None:
        self.scenario_id = scenario_id or self.scenario_id
        self.grant_id = grant_id or self.grant_id

    def record_charge(self, epsilon_nano: int, delta_atto: int) -> None:
        """What the handler reserved in this transaction; the boundary writes it into the audit entry."""
        self.charge_epsilon_nano += epsilon_nano
        self.charge_delta_atto += delta_atto


@dataclass(frozen=True)
class Deferred:
    """A handler result whose computation runs after its reservation has committed.

    The boundary commits the reservation and its audit entry first, then calls
    ``compute`` outside any transaction, then, in a second transaction, calls
    ``on_success`` (e.g. to store an idempotent answer) and audits the release.
    A charge is never refunded once computation has started.
    """

    compute: Callable[[], Any]
    on_success: Callable[[sqlite3.Connection, bytes], None] | None = None
    on_failure: Callable[[sqlite3.Connection], None] | None = None


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def stream_digest(messages: list[bytes]) -> str:
    """What a client stream's signature covers: SHA-256 over each message's 8-byte length and bytes, in order."""
    h = hashlib.sha256()
    for m in messages:
        h.update(len(m).to_bytes(8, "big"))
        h.update(m)
    return h.hexdigest()


_CURRENT: contextvars.ContextVar[Call] = contextvars.ContextVar("sandbox_call")


def current_call() -> Call:
    return _CURRENT.get()


_PRINCIPAL_RE = re.compile(r"^p-[0-9a-f]{24}$")


def _claimed_principal(metadata: dict) -> str:
    """The principal id a request claims, for the audit entry; anything not shaped like an id is recorded as '?'."""
    value = str(metadata.get("x-sandbox-principal", ""))
    return value if _PRINCIPAL_RE.match(value) else ("?" if value else "")


class RefusalBudget:
    """How many unauthenticated refusals from one network peer are audited per minute.

    Every refusal is audited while a peer stays under the limit. Beyond it (someone hammering the server with
    unsigned or badly signed calls), a refusal is still refused but not written to the audit log, so an
    outsider cannot make the server write and fsync without end; one warning per peer and minute counts
    what was not audited.
    """

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int, int]] = {}  # peer -> (minute, audited, not audited)

    def admit(self, peer: str, now: float) -> bool:
        minute = int(now // 60)
        with self._lock:
            if len(self._windows) > 10_000:  # forget old peers
                self._windows = {p: w for p, w in self._windows.items() if w[0] == minute}
            start, audited, dropped = self._windows.get(peer, (minute, 0, 0))
            if start != minute:
                if dropped:
                    log.warning("peer %s: %d unauthenticated refusals in minute %d were not audited one by one",
                                peer, dropped, start)
                start, audited, dropped = minute, 0, 0
            if audited < self.per_minute:
                self._windows[peer] = (start, audited + 1, dropped)
                return True
            if dropped == 0:
                log.warning("peer %s: more than %d unauthenticated refusals this minute; no longer auditing each",
                            peer, self.per_minute)
            self._windows[peer] = (start, audited, dropped + 1)
            return False


def _peer_host(context: grpc.ServicerContext) -> str:
    """'ipv4:127.0.0.1:5123' -> 'ipv4:127.0.0.1' (the port changes with every connection)."""
    try:
        peer = str(context.peer())
    except Exception:  # noqa: BLE001 - a context without a peer (tests)
        return "?"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class SigningInterceptor(grpc.ServerInterceptor):
    def __init__(
        self, db: Database, audit: AuditLog, method_roles: MethodRoles, *, skew_ms: int,
        clock: Callable[[], float] = time.time, max_stream_bytes: int = 64 * 1024 * 1024,
        unauthenticated_audits_per_minute: int = 60,
    ) -> None:
        self._refusals = RefusalBudget(unauthenticated_audits_per_minute)
        self._max_stream_bytes = max_stream_bytes
        self._db = db
        self._audit = audit
        self._roles = method_roles
        self._skew_ms = skew_ms
        self._clock = clock
        self._calls = 0

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        method: str = handler_call_details.method
        if not method.startswith("/sandbox.v1."):
            return continuation(handler_call_details)  # health and reflection: public, reveal no data
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        metadata = {k: v for k, v in (handler_call_details.invocation_metadata or ())}
        if handler.stream_unary is not None:
            def stream_behaviour(raws: Any, context: grpc.ServicerContext) -> bytes:
                chunks, total = [], 0
                for raw in raws:
                    total += len(raw)
                    if total > self._max_stream_bytes:
                        self._refuse(context, method, _claimed_principal(metadata), "",
                                     SandboxError(ErrorCode.MESSAGE_TOO_LARGE, "stream exceeds the upload limit"), None)
                    chunks.append(raw)
                return self._handle(method, handler, metadata, chunks, context)

            return grpc.stream_unary_rpc_method_handler(stream_behaviour, request_deserializer=None,
                                                        response_serializer=None)
        if handler.unary_stream is not None:
            def stream_out(raw: bytes, context: grpc.ServicerContext) -> Any:
                yield from self._handle_server_stream(method, handler, metadata, raw, context)

            return grpc.unary_stream_rpc_method_handler(stream_out, request_deserializer=None,
                                                        response_serializer=None)
        if handler.unary_unary is None:
            raise RuntimeError(f"{method}: bidirectional streaming is not supported by the boundary")

        def behaviour(raw: bytes, context: grpc.ServicerContext) -> bytes:
            return self._handle(method, handler, metadata, raw, context)

        return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=None, response_serializer=None)

    def _handle(
        self, method: str, handler: Any, metadata: dict, raw: bytes | list[bytes], context: grpc.ServicerContext
    ) -> bytes:
        """``raw`` is the request's bytes, or the list of a client stream's messages."""
        now_ms = int(self._clock() * 1000)
        request_sha = stream_digest(raw) if isinstance(raw, list) else _sha(raw)
        claimed = _claimed_principal(metadata)
        call: Call | None = None
        try:
            principal, headers, request = self._admit(method, handler, metadata, raw, request_sha, now_ms)
            if not isinstance(raw, list):
                self._warm(handler.unary_unary, principal, request)
            with self._db.write() as conn:
                claim_nonce(conn, principal.id, headers.nonce, headers.timestamp_ms)
                call = Call(principal, conn, now_ms, request_sha256=request_sha)
                token = _CURRENT.set(call)
                try:
                    behaviour = handler.stream_unary if isinstance(raw, list) else handler.unary_unary
                    response = behaviour(request, context)
                finally:
                    _CURRENT.reset(token)
                if isinstance(response, Deferred):
                    # Reserve: the charge and its audit entry commit together, before any computation.
                    self._audit.append(conn, self._record(call, method, "RESERVED", request_sha, "",
                                                          charged=True))
                else:
                    body: bytes = handler.response_serializer(response)
                    self._audit.append(conn, self._record(call, method, "OK", request_sha, _sha(body)))
                self._maybe_prune(conn, now_ms)
            if isinstance(response, Deferred):
                body = self._compute_and_release(call, method, request_sha, response, handler, context)
            log.info("%s principal=%s status=OK", method, principal.id)
            return body
        except Exception as exc:  # noqa: BLE001 - every failure leaves through _refuse
            self._refuse(context, method, claimed, request_sha, exc, call)
        raise AssertionError("unreachable")  # pragma: no cover

    def _warm(self, behaviour: Any, principal: Principal, request: Any) -> None:
        """Run a servicer's ``warm_<Method>`` (pure CPU, read-only) before the write lock is taken.

        It only fills caches, e.g. a DP query's calibrated plan, so that the handler, which repeats every check
        inside the transaction, finds it ready; any error here is left for the handler to report.
        """
        warm = getattr(getattr(behaviour, "__self__", None), f"warm_{getattr(behaviour, '__name__', '')}", None)
        if warm is None:
            return
        try:
            warm(principal, request, self._db.connection())
        except Exception:  # noqa: BLE001 - the handler raises the real error in its transaction
            log.debug("warm-up failed; the handler will report it", exc_info=True)

    def _admit(
        self, method: str, handler: Any, metadata: dict, raw: bytes | list[bytes], request_sha: str, now_ms: int
    ) -> tuple[Principal, Any, Any]:
        """Before any handler runs: the signature and clock, the caller's role, then the message itself."""
        principal, headers = self._authenticate(method, metadata, request_sha, now_ms)
        allowed = self._roles.get(method, frozenset())
        if allowed is not None and not (principal.roles & allowed):
            raise SandboxError(ErrorCode.WRONG_ROLE)
        try:
            if isinstance(raw, list):
                return principal, headers, iter([handler.request_deserializer(chunk) for chunk in raw])
            return principal, headers, handler.request_deserializer(raw)
        except DecodeError as exc:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, "request is not a valid message") from exc

    def _handle_server_stream(
        self, method: str, handler: Any, metadata: dict, raw: bytes, context: grpc.ServicerContext
    ) -> Any:
        """Authenticate and audit the opening of a server stream in one transaction, then stream outside it.

        The handler must do its checks eagerly and return an iterator; what it yields are progress reports,
        never data rows.
        """
        now_ms = int(self._clock() * 1000)
        request_sha = _sha(raw)
        claimed = _claimed_principal(metadata)
        call: Call | None = None
        try:
            principal, headers, request = self._admit(method, handler, metadata, raw, request_sha, now_ms)
            with self._db.write() as conn:
                claim_nonce(conn, principal.id, headers.nonce, headers.timestamp_ms)
                call = Call(principal, conn, now_ms, request_sha256=request_sha)
                token = _CURRENT.set(call)
                try:
                    events = handler.unary_stream(request, context)
                finally:
                    _CURRENT.reset(token)
                self._audit.append(conn, self._record(call, method, "OK", request_sha, "stream"))
            for event in events:
                if not context.is_active():
                    return
                yield handler.response_serializer(event)
        except Exception as exc:  # noqa: BLE001 - every failure leaves through _refuse
            self._refuse(context, method, claimed, request_sha, exc, call)

    def _compute_and_release(
        self, call: Call, method: str, request_sha: str, deferred: Deferred, handler: Any,
        context: grpc.ServicerContext,
    ) -> bytes:
        """Compute outside any transaction, then audit the release (or its withholding) before answering."""
        try:
            response = deferred.compute()
        except Exception as exc:
            with self._db.write() as conn:
                if deferred.on_failure is not None:
                    deferred.on_failure(conn)
            if isinstance(exc, SandboxError):
                raise
            raise SandboxError(ErrorCode.INTERNAL, log_detail=repr(exc)) from exc
        body: bytes = handler.response_serializer(response)
        # is_active() turns false a little after the deadline; time_remaining() says it at once.
        remaining = context.time_remaining()
        released = context.is_active() and (remaining is None or remaining > 0)
        with self._db.write() as conn:
            if deferred.on_success is not None:
                deferred.on_success(conn, body)
            if released:
                self._audit.append(conn, self._record(call, method, "OK", request_sha, _sha(body)))
            else:
                # The caller's deadline passed: the answer is kept for an idempotent retry but not released now.
                self._audit.append(conn, self._record(call, method, "DEADLINE_EXCEEDED", request_sha, _sha(body),
                                                      error_code=ErrorCode.NOT_RELEASED.value))
        if not released:
            withheld = SandboxError(ErrorCode.NOT_RELEASED)
            withheld.audited = True  # the entry above already records the withheld release
            raise withheld
        return body

    @staticmethod
    def _record(call: Call, method: str, status: str, request_sha: str, response_sha: str, *,
                charged: bool = False, error_code: str = "") -> AuditRecord:
        eps, delta = (call.charge_epsilon_nano, call.charge_delta_atto) if charged else (0, 0)
        return AuditRecord(call.principal.id, method, status, error_code, call.scenario_id, call.grant_id, eps,
                           delta, request_sha, response_sha)

    def _authenticate(self, method: str, metadata: dict, request_sha: str, now_ms: int) -> tuple[Principal, Any]:
        headers = parse_headers(metadata)
        if method == REGISTER_METHOD and headers.public_key:
            if headers.principal_id != principal_id_for(headers.public_key):
                raise SandboxError(ErrorCode.SIGNATURE_INVALID)
            check_request(headers, method=method, body_sha256=request_sha, public_key=headers.public_key,
                          now_ms=now_ms, skew_ms=self._skew_ms)
            existing = principals.get(self._db.connection(), headers.principal_id)
            if existing is not None:
                raise SandboxError(ErrorCode.ALREADY_EXISTS, "a principal with this key is already enrolled")
            return Principal(headers.principal_id, "", "", frozenset(), headers.public_key,
                             principals.PrincipalStatus.PENDING, now_ms), headers
        principal = principals.get(self._db.connection(), headers.principal_id)
        if principal is None:
            raise SandboxError(ErrorCode.UNKNOWN_PRINCIPAL)
        check_request(headers, method=method, body_sha256=request_sha, public_key=principal.public_key,
                      now_ms=now_ms, skew_ms=self._skew_ms)
        if method not in PENDING_ALLOWED:
            require_active(principal)
        return principal, headers

    def _refuse(
        self, context: grpc.ServicerContext, method: str, claimed: str, request_sha: str, exc: Exception,
        call: Call | None,
    ) -> None:
        """Audit the refusal, then abort with the public message; anything unexpected is INTERNAL, no detail."""
        if not isinstance(exc, SandboxError):
            log.error("%s principal=%s failed", method, claimed, exc_info=exc)
            exc = SandboxError(ErrorCode.INTERNAL)
        if exc.log_detail:
            log.warning("%s principal=%s refused %s (%s)", method, claimed, exc.code.value, exc.log_detail)
        else:
            log.info("%s principal=%s refused %s", method, claimed, exc.code.value)
        try:
            unauthenticated = call is None and exc.status == grpc.StatusCode.UNAUTHENTICATED
            if not exc.audited and (not unauthenticated or self._refusals.admit(_peer_host(context), self._clock())):
                self._audit.append_alone(AuditRecord(
                    claimed, method, exc.status.name, exc.code.value,
                    call.scenario_id if call else "", call.grant_id if call else "", 0, 0, request_sha, ""))
        except SandboxError as audit_exc:
            log.error("%s: audit unavailable (%s)", method, audit_exc.log_detail)
            exc = SandboxError(ErrorCode.AUDIT_UNAVAILABLE)
        context.set_trailing_metadata(((ERROR_TRAILER, exc.code.value),))
        context.abort(exc.status, exc.public_message)

    def _maybe_prune(self, conn: sqlite3.Connection, now_ms: int) -> None:
        self._calls += 1
        if self._calls % 1000 == 0:
            prune_nonces(conn, now_ms, self._skew_ms)
