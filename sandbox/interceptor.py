"""The request boundary: authenticate, authorise by role, audit, and translate errors.

Every ``sandbox.v1`` RPC goes through ``SigningInterceptor``. It receives the raw
request bytes (so the signature is checked over exactly what was sent), verifies
the Ed25519 signature and clock window before any handler runs, then runs the
handler inside one write transaction together with the nonce claim and the
audit entry: either all three commit, or nothing does and the caller gets
UNAVAILABLE. Refused calls are audited in a transaction of their own, and an
authenticated request's nonce is claimed with its refusal, so a refused request
cannot be replayed once it would succeed.

A client stream is authenticated before any of it is read: its signature covers
the declared total size and digest (``wire.signing.stream_body``), the server
stops at the first byte beyond that size, and a stream whose bytes do not match
its digest is refused. Nothing an unauthenticated peer sends is buffered.

Most client streams are small (an HE context) and are buffered whole, up to ``max_stream_bytes``, then handled
like a unary request. A method listed in ``streamed`` (a dataset import: gigabytes) is handled in the streamed
mode instead, under a size limit of its own: the signature and the caller's role are checked and the nonce is
claimed before any message is read; the handler reads the messages as they arrive, outside any transaction,
through ``VerifiedStream`` (which stops at the first byte beyond the signed size and ends the stream only once
the bytes match the signed digest) and returns a ``Staged``; only then does one short write transaction run
``Staged.commit`` and append the audit entry. A stream that is too long, differs from its digest, is cut off or
outlives its deadline, and any error, leaves nothing (``Staged.discard``) and is refused and audited.

Every answer carries its receipt in the trailing metadata (``x-sandbox-receipt``):
the sequence number of the audit entry that records it, whose inclusion in a
signed tree head the caller can check (``GetReceipt``).

Outsiders cannot make the server write without end: refusals of callers that are
not active principals (bad or missing signatures, unknown keys, pending or
suspended principals, registrations) are audited up to a per-peer budget a minute
and only counted beyond it; registrations are limited per peer and in number
pending.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from sandbox import principals
from sandbox.calls import _CURRENT, Call, Deferred, Staged
from sandbox.describe import describe, describe_stream, describe_streamed
from sandbox.audit import FAILED, AuditLog
from sandbox.domain import AuditRecord, Principal, PrincipalStatus, Role
from sandbox.errors import ErrorCode, SandboxError
from sandbox.identity import (
    SignedHeaders, check_request, claim_nonce, claim_nonce_if_new, parse_headers, principal_id_for, prune_nonces,
    require_active,
)
from sandbox.state import State, Tx
from wire.signing import (
    MD_PRINCIPAL, MD_STREAM_BYTES, MD_STREAM_SHA256, StreamDigest, answer_trailers, is_principal_id, sha256_hex,
    stream_body,
)

log = logging.getLogger("sandbox.rpc")

#: Roles allowed per method; ``None`` means any active principal.
MethodRoles = Mapping[str, frozenset[Role] | None]
REGISTER_METHOD = "/sandbox.v1.ApplicantService/Register"
PENDING_ALLOWED = frozenset({REGISTER_METHOD, "/sandbox.v1.ApplicantService/WhoAmI"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")




def _claimed_principal(metadata: dict) -> str:  # type: ignore[type-arg]
    """The principal id a request claims, for the audit entry; anything not shaped like an id is recorded as '?'."""
    value = str(metadata.get(MD_PRINCIPAL, ""))
    return value if is_principal_id(value) else ("?" if value else "")


class PeerBudget:
    """How many events of one kind from one network peer are allowed per minute.

    Used for calls of callers that are not active principals (refusals, and a pending key's own calls: each
    is audited while the peer is under the limit; beyond it a refusal is still made but only counted, one
    warning per peer and minute) and for self-registrations (refused beyond the limit). At most ``peers``
    peers are remembered (the least recently seen is forgotten first), so memory stays bounded whatever the
    number of addresses a caller uses.
    """

    def __init__(self, per_minute: int, what: str, *, peers: int = 10_000) -> None:
        self.per_minute = per_minute
        self._what = what
        self._peers = peers
        self._lock = threading.Lock()
        self._windows: OrderedDict[str, tuple[int, int, int]] = OrderedDict()  # peer -> (minute, admitted, not)

    def admit(self, peer: str, now: float) -> bool:
        minute = int(now // 60)
        with self._lock:
            start, admitted, dropped = self._windows.pop(peer, (minute, 0, 0))
            while len(self._windows) >= self._peers:
                self._windows.popitem(last=False)
            if start != minute:
                if dropped:
                    log.warning("peer %s: %d %s in minute %d were over the limit", peer, dropped, self._what, start)
                start, admitted, dropped = minute, 0, 0
            if admitted < self.per_minute:
                self._windows[peer] = (start, admitted + 1, dropped)
                return True
            if dropped == 0:
                log.warning("peer %s: more than %d %s this minute", peer, self.per_minute, self._what)
            self._windows[peer] = (start, admitted, dropped + 1)
            return False


class RecentNonces:
    """Nonces of refused requests whose refusal could not be written (the audit log failed), kept for the clock
    window; at most ``limit`` (the oldest go first), so memory stays bounded."""

    def __init__(self, window_ms: int, limit: int = 100_000) -> None:
        self._window = window_ms
        self._limit = limit
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()  # in the order they were added

    def add(self, principal_id: str, nonce: str, ts_ms: int) -> None:
        with self._lock:
            while self._seen and (len(self._seen) >= self._limit
                                  or next(iter(self._seen.values())) <= ts_ms - self._window):
                self._seen.popitem(last=False)
            self._seen[(principal_id, nonce)] = ts_ms

    def seen(self, principal_id: str, nonce: str) -> bool:
        with self._lock:
            return (principal_id, nonce) in self._seen


def _peer_host(context: grpc.ServicerContext) -> str:
    """'ipv4:127.0.0.1:5123' -> 'ipv4:127.0.0.1' (the port changes with every connection)."""
    try:
        peer = str(context.peer())
    except Exception:  # noqa: BLE001 - a context without a peer (tests)
        return "?"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


def _caller_waits(context: grpc.ServicerContext) -> bool:
    """The call is not cancelled and its deadline has not passed (``is_active()`` turns false a little after the
    deadline; ``time_remaining()`` says it at once)."""
    remaining = context.time_remaining()
    return bool(context.is_active()) and (remaining is None or remaining > 0)


#: How long a stream that ended short of its signed size waits for gRPC to say whether its caller cancelled.
SHORT_STREAM_GRACE_S = 1.0


def _caller_went(context: grpc.ServicerContext, wait: float = SHORT_STREAM_GRACE_S) -> bool:
    """Whether the call was cancelled or its deadline passed, waiting up to ``wait`` seconds for gRPC to say so.

    gRPC can end a cancelled call's messages before it marks the call cancelled (seen under load: the stream ended,
    the call still active, cancelled 0.2 s later). A caller that only sent less than it signed still waits for the
    answer, so its call does not end meanwhile and the whole wait is its own.
    """
    if not _caller_waits(context):
        return True
    ended = threading.Event()
    if not context.add_callback(ended.set):  # the call has already ended
        return True
    return ended.wait(wait) or not _caller_waits(context)


def _unsigned_end(short: bool, gone: Callable[[], bool]) -> SandboxError:
    """The refusal of a stream that ended without its signed size and digest: cut if it ended ``short`` of the size
    and its caller went; otherwise it is not what was signed."""
    if short and gone():
        return SandboxError(ErrorCode.STREAM_CUT, log_detail="the caller went before the stream's end")
    return SandboxError(ErrorCode.SIGNATURE_INVALID, log_detail="stream differs from its signed digest")


class VerifiedStream:
    """A client stream's messages as they arrive, held to what was signed: MESSAGE_TOO_LARGE at the first message
    that goes beyond the declared size; at the end, SIGNATURE_INVALID instead of the end unless the size and digest
    match; STREAM_CUT if the caller cancels or its deadline passes. Each message is decoded as it is read.

    A cancelled call's stream may look as if it ended (``_caller_went``): a short stream whose caller is ``gone()``
    is STREAM_CUT too."""

    def __init__(self, raws: Any, declared: int, declared_sha: str, deserialize: Callable[[bytes], Any],
                 gone: Callable[[], bool] = lambda: False) -> None:
        self._raws = iter(raws)
        self._gone = gone
        self._declared = declared
        self._declared_sha = declared_sha
        self._deserialize = deserialize
        self._digest = StreamDigest()
        self.messages = 0
        self.first: Any = None
        self.verified = False

    @property
    def total(self) -> int:
        return self._digest.total

    def __iter__(self) -> VerifiedStream:
        return self

    def __next__(self) -> Any:
        if self.verified:
            raise StopIteration
        try:
            raw = next(self._raws)
        except StopIteration:
            if self._digest.total != self._declared or self._digest.hexdigest() != self._declared_sha:
                raise _unsigned_end(self._digest.total < self._declared, self._gone) from None
            self.verified = True
            raise
        except grpc.RpcError:
            raise SandboxError(ErrorCode.STREAM_CUT, log_detail="the caller cancelled the stream") from None
        if self._digest.total + len(raw) > self._declared:
            raise SandboxError(ErrorCode.MESSAGE_TOO_LARGE, "stream is longer than its signed size")
        self._digest.update(raw)
        self.messages += 1
        try:
            message = self._deserialize(raw)
        except DecodeError as exc:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, "request is not a valid message") from exc
        if self.first is None:
            self.first = message
        return message

    def finish(self) -> None:
        """Read (and verify) whatever the handler left unread."""
        for _ in self:
            pass


def _declared_stream(metadata: dict, limit: int) -> tuple[int, str]:  # type: ignore[type-arg]
    """A client stream's declared size and digest; SIGNATURE_MISSING if malformed, MESSAGE_TOO_LARGE over ``limit``."""
    declared_sha = str(metadata.get(MD_STREAM_SHA256, ""))
    try:
        declared = int(str(metadata.get(MD_STREAM_BYTES, "")))
    except ValueError:
        raise SandboxError(ErrorCode.SIGNATURE_MISSING) from None
    if not _HEX64.match(declared_sha) or declared < 0:
        raise SandboxError(ErrorCode.SIGNATURE_MISSING)
    if declared > limit:
        raise SandboxError(ErrorCode.MESSAGE_TOO_LARGE, "stream exceeds the upload limit")
    return declared, declared_sha


@dataclass(frozen=True)
class _Admitted:
    """What authentication established about a request before its transaction."""

    principal: Principal
    headers: SignedHeaders


class SigningInterceptor(grpc.ServerInterceptor):
    def __init__(
        self, db: State, audit: AuditLog, method_roles: MethodRoles, *, skew_ms: int,
        clock: Callable[[], float] = time.time, max_stream_bytes: int = 64 * 1024 * 1024,
        unauthenticated_audits_per_minute: int = 60, registrations_per_minute: int = 5,
        streamed: Mapping[str, int] | None = None,
    ) -> None:
        """``streamed``: the client-stream methods handled in the streamed mode (module docstring), each with the
        most bytes its stream may declare; every other client stream is buffered, up to ``max_stream_bytes``."""
        self._streamed = dict(streamed or {})
        self._refusals = PeerBudget(unauthenticated_audits_per_minute, "refusals of callers without an active key")
        self._registrations = PeerBudget(registrations_per_minute, "registrations")
        self._max_stream_bytes = max_stream_bytes
        self._db = db
        self._audit = audit
        self._roles = method_roles
        self._skew_ms = skew_ms
        self._clock = clock
        self._recent = RecentNonces(2 * skew_ms)
        self._calls = 0

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        method: str = handler_call_details.method
        if not method.startswith("/sandbox.v1."):
            return continuation(handler_call_details)  # health and reflection: public, reveal no data
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        metadata = {k: v for k, v in (handler_call_details.invocation_metadata or ())}
        if handler.stream_unary is not None and method in self._streamed:
            def streamed_behaviour(raws: Any, context: grpc.ServicerContext) -> bytes:
                return self._handle_streamed(method, handler, metadata, raws, context)

            return grpc.stream_unary_rpc_method_handler(streamed_behaviour, request_deserializer=None,
                                                        response_serializer=None)
        if handler.stream_unary is not None:
            def stream_behaviour(raws: Any, context: grpc.ServicerContext) -> bytes:
                return self._handle_client_stream(method, handler, metadata, raws, context)

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

    def _handle_client_stream(self, method: str, handler: Any, metadata: dict, raws: Any,  # type: ignore[type-arg]
                              context: grpc.ServicerContext) -> bytes:
        """Authenticate over the declared size and digest, then read no byte beyond them (module docstring)."""
        claimed = _claimed_principal(metadata)
        declared_sha = str(metadata.get(MD_STREAM_SHA256, ""))
        admitted: _Admitted | None = None
        try:
            declared, declared_sha = _declared_stream(metadata, self._max_stream_bytes)
            now_ms = int(self._clock() * 1000)
            admitted = self._authenticate(method, metadata, stream_body(declared, declared_sha), now_ms,
                                          _peer_host(context))
            digest, chunks = StreamDigest(), []
            for raw in raws:
                if digest.total + len(raw) > declared:
                    raise SandboxError(ErrorCode.MESSAGE_TOO_LARGE, "stream is longer than its signed size")
                digest.update(raw)
                chunks.append(raw)
            if digest.total != declared or digest.hexdigest() != declared_sha:
                raise _unsigned_end(digest.total < declared, lambda: _caller_went(context))
        except Exception as exc:  # noqa: BLE001 - every failure leaves through _refuse
            self._refuse(context, method, claimed, declared_sha if _HEX64.match(declared_sha) else "", exc, None,
                         admitted)
        return self._handle(method, handler, metadata, chunks, context, admitted=admitted, request_sha=declared_sha)

    def _handle_streamed(self, method: str, handler: Any, metadata: dict, raws: Any,  # type: ignore[type-arg]
                         context: grpc.ServicerContext) -> bytes:
        """The streamed mode (module docstring): read as it arrives, registered once verified, in one transaction."""
        claimed = _claimed_principal(metadata)
        shown_sha = str(metadata.get(MD_STREAM_SHA256, ""))
        shown_sha = shown_sha if _HEX64.match(shown_sha) else ""
        admitted: _Admitted | None = None
        call: Call | None = None
        stream: VerifiedStream | None = None
        staged: Staged | None = None
        committed = False
        try:
            declared, declared_sha = _declared_stream(metadata, self._streamed[method])
            now_ms = int(self._clock() * 1000)
            admitted = self._authenticate(method, metadata, stream_body(declared, declared_sha), now_ms,
                                          _peer_host(context))
            principal, headers = admitted.principal, admitted.headers
            self._check_role(method, principal)
            with self._db.write() as tx:  # claimed now, so that a replay is refused before any of it is read
                claim_nonce(tx, principal.id, headers.nonce, headers.timestamp_ms)
            stream = VerifiedStream(raws, declared, declared_sha, handler.request_deserializer,
                                    gone=lambda: _caller_went(context))
            staged = handler.stream_unary(stream, context)
            if not isinstance(staged, Staged):
                raise TypeError(f"{method}: a streamed handler must return a Staged")
            stream.finish()
            if not _caller_waits(context):
                raise SandboxError(ErrorCode.STREAM_CUT, log_detail="the deadline passed before registration")
            described = describe_streamed(stream.first, stream.messages, stream.total)
            with self._db.write() as tx:
                call = Call(principal, tx, now_ms, request_sha256=declared_sha, request=described)
                token = _CURRENT.set(call)
                try:
                    response = staged.commit(call)
                finally:
                    _CURRENT.reset(token)
                body: bytes = handler.response_serializer(response)
                entry = self._audit.append(tx, self._record(call, method, "OK", declared_sha, sha256_hex(body)))
                self._maybe_prune(tx, now_ms)
            committed = True
            staged.committed()
            self._audit.after_commit()
            context.set_trailing_metadata(answer_trailers(receipt=entry.seq))
            log.info("%s principal=%s status=OK", method, principal.id)
            return body
        except Exception as exc:  # noqa: BLE001 - every failure leaves through _refuse
            if staged is not None and not committed:
                staged.discard()
            described = "" if stream is None else describe_streamed(stream.first, stream.messages, stream.total)
            self._refuse(context, method, claimed, shown_sha, exc, call, admitted, described)
        raise AssertionError("unreachable")  # pragma: no cover

    def _handle(
        self, method: str, handler: Any, metadata: dict, raw: bytes | list[bytes],  # type: ignore[type-arg]
        context: grpc.ServicerContext, *, admitted: _Admitted | None = None, request_sha: str = "",
    ) -> bytes:
        """``raw`` is the request's bytes, or the list of a client stream's messages (already authenticated)."""
        now_ms = int(self._clock() * 1000)
        request_sha = request_sha or sha256_hex(raw)  # type: ignore[arg-type]
        claimed = _claimed_principal(metadata)
        call: Call | None = None
        described = ""
        try:
            if admitted is None:
                admitted = self._authenticate(method, metadata, request_sha, now_ms, _peer_host(context))
            principal, headers = admitted.principal, admitted.headers
            request = self._admit(method, handler, principal, raw)
            described = describe_stream(method, raw) if isinstance(raw, list) else describe(method, request)
            if not isinstance(raw, list):
                self._warm(handler.unary_unary, principal, request)
            with self._db.write() as tx:
                claim_nonce(tx, principal.id, headers.nonce, headers.timestamp_ms)
                call = Call(principal, tx, now_ms, request_sha256=request_sha, request=described)
                token = _CURRENT.set(call)
                try:
                    behaviour = handler.stream_unary if isinstance(raw, list) else handler.unary_unary
                    response = behaviour(request, context)
                finally:
                    _CURRENT.reset(token)
                if isinstance(response, Deferred):
                    # Reserve: the charge and its audit entry commit together, before any computation.
                    entry = self._audit.append(tx, self._record(call, method, "RESERVED", request_sha, "",
                                                                  charged=True))
                    call.reserved_seq = entry.seq
                else:
                    body: bytes = handler.response_serializer(response)
                    entry = self._audit.append(tx, self._record(call, method, "OK", request_sha, sha256_hex(body)))
                self._maybe_prune(tx, now_ms)
            self._audit.after_commit()
            if isinstance(response, Deferred):
                body, entry = self._compute_and_release(call, method, request_sha, response, handler, context)
            context.set_trailing_metadata(answer_trailers(receipt=entry.seq))
            log.info("%s principal=%s status=OK", method, principal.id)
            return body
        except Exception as exc:  # noqa: BLE001 - every failure leaves through _refuse
            self._refuse(context, method, claimed, request_sha, exc, call, admitted, described)
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
            with self._db.read() as tx:
                warm(principal, request, tx)
        except Exception:  # noqa: BLE001 - the handler raises the real error in its transaction
            log.debug("warm-up failed; the handler will report it", exc_info=True)

    def _check_role(self, method: str, principal: Principal) -> None:
        allowed = self._roles.get(method, frozenset())
        if allowed is not None and not (principal.roles & allowed):
            raise SandboxError(ErrorCode.WRONG_ROLE)

    def _admit(self, method: str, handler: Any, principal: Principal, raw: bytes | list[bytes]) -> Any:
        """After authentication, before any handler runs: the caller's role, then the message itself."""
        self._check_role(method, principal)
        try:
            if isinstance(raw, list):
                return iter([handler.request_deserializer(chunk) for chunk in raw])
            return handler.request_deserializer(raw)
        except DecodeError as exc:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, "request is not a valid message") from exc

    def _handle_server_stream(
        self, method: str, handler: Any, metadata: dict, raw: bytes, context: grpc.ServicerContext,  # type: ignore[type-arg]
    ) -> Any:
        """Authenticate and audit the opening of a server stream in one transaction, then stream outside it.

        The handler must do its checks eagerly and return an iterator; what it yields are progress reports,
        never data rows.
        """
        now_ms = int(self._clock() * 1000)
        request_sha = sha256_hex(raw)
        claimed = _claimed_principal(metadata)
        call: Call | None = None
        admitted: _Admitted | None = None
        described = ""
        try:
            admitted = self._authenticate(method, metadata, request_sha, now_ms, _peer_host(context))
            principal, headers = admitted.principal, admitted.headers
            request = self._admit(method, handler, principal, raw)
            described = describe(method, request)
            with self._db.write() as tx:
                claim_nonce(tx, principal.id, headers.nonce, headers.timestamp_ms)
                call = Call(principal, tx, now_ms, request_sha256=request_sha, request=described)
                token = _CURRENT.set(call)
                try:
                    events = handler.unary_stream(request, context)
                finally:
                    _CURRENT.reset(token)
                entry = self._audit.append(tx, self._record(call, method, "OK", request_sha, "stream"))
            self._audit.after_commit()
            context.set_trailing_metadata(answer_trailers(receipt=entry.seq))
            for event in events:
                if not context.is_active():
                    return
                yield handler.response_serializer(event)
        except Exception as exc:  # noqa: BLE001 - every failure leaves through _refuse
            self._refuse(context, method, claimed, request_sha, exc, call, admitted, described)

    def _compute_and_release(
        self, call: Call, method: str, request_sha: str, deferred: Deferred, handler: Any,
        context: grpc.ServicerContext,
    ) -> tuple[bytes, Any]:
        """Compute outside any transaction, then audit the release (or its withholding) before answering."""
        try:
            response = deferred.compute()
        except Exception as exc:
            failed = exc if isinstance(exc, SandboxError) else SandboxError(ErrorCode.INTERNAL, log_detail=repr(exc))
            with self._db.write() as tx:
                if deferred.on_failure is not None:
                    deferred.on_failure(tx)
                # The reservation's closing entry: the computation failed, nothing was released.
                self._audit.append(tx, self._record(call, method, FAILED, request_sha, "",
                                                      error_code=failed.code.value))
            self._audit.after_commit()
            failed.audited = True
            if failed is exc:
                raise
            raise failed from exc
        body: bytes = handler.response_serializer(response)
        released = _caller_waits(context)
        with self._db.write() as tx:
            if deferred.on_success is not None:
                deferred.on_success(tx, body)
            if released:
                entry = self._audit.append(tx, self._record(call, method, "OK", request_sha, sha256_hex(body)))
            else:
                # The caller's deadline passed: the answer is kept for an idempotent retry but not released now.
                entry = self._audit.append(tx, self._record(call, method, "DEADLINE_EXCEEDED", request_sha,
                                                            sha256_hex(body),
                                                            error_code=ErrorCode.NOT_RELEASED.value))
        self._audit.after_commit()
        if not released:
            withheld = SandboxError(ErrorCode.NOT_RELEASED)
            withheld.audited = True  # the entry above already records the withheld release
            raise withheld
        return body, entry

    @staticmethod
    def _record(call: Call, method: str, status: str, request_sha: str, response_sha: str, *,
                charged: bool = False, error_code: str = "") -> AuditRecord:
        eps, delta = (call.charge_epsilon_nano, call.charge_delta_atto) if charged else (0, 0)
        return AuditRecord(call.principal.id, method, status, error_code, call.scenario_id, call.grant_id, eps,
                           delta, request_sha, response_sha, call.request)

    def _authenticate(self, method: str, metadata: dict, request_sha: str, now_ms: int,  # type: ignore[type-arg]
                      peer: str) -> _Admitted:
        headers = parse_headers(metadata)
        if method == REGISTER_METHOD and headers.public_key:
            if headers.principal_id != principal_id_for(headers.public_key):
                raise SandboxError(ErrorCode.SIGNATURE_INVALID)
            check_request(headers, method=method, body_sha256=request_sha, public_key=headers.public_key,
                          now_ms=now_ms, skew_ms=self._skew_ms)
            with self._db.read() as tx:
                existing = principals.get(tx, headers.principal_id)
            if existing is not None:
                raise SandboxError(ErrorCode.ALREADY_EXISTS, "a principal with this key is already enrolled")
            if not self._registrations.admit(peer, now_ms / 1000):
                raise SandboxError(ErrorCode.REGISTRATION_LIMIT, "too many registrations from this address; "
                                                                 "try again in a minute")
            return _Admitted(Principal(headers.principal_id, "", "", frozenset(), headers.public_key,
                                       PrincipalStatus.PENDING, now_ms), headers)
        with self._db.read() as tx:
            principal = principals.get(tx, headers.principal_id)
        if principal is None:
            raise SandboxError(ErrorCode.UNKNOWN_PRINCIPAL)
        check_request(headers, method=method, body_sha256=request_sha, public_key=principal.public_key,
                      now_ms=now_ms, skew_ms=self._skew_ms)
        if headers.timestamp_ms < principal.active_since_ms:
            raise SandboxError(ErrorCode.SIGNED_BEFORE_APPROVAL)
        if self._recent.seen(principal.id, headers.nonce):
            raise SandboxError(ErrorCode.NONCE_REPLAYED)
        if method not in PENDING_ALLOWED:
            require_active(principal)
        elif principal.status is not PrincipalStatus.ACTIVE and not self._refusals.admit(peer, now_ms / 1000):
            raise SandboxError(ErrorCode.PEER_LIMIT)  # a pending key's own calls share its peer's audit budget
        return _Admitted(principal, headers)

    def _refuse(
        self, context: grpc.ServicerContext, method: str, claimed: str, request_sha: str, exc: Exception,
        call: Call | None, admitted: _Admitted | None = None, described: str = "",
    ) -> None:
        """Audit the refusal (and claim an authenticated request's nonce), then abort with the public message.

        Anything unexpected is INTERNAL, with no detail.
        """
        if not isinstance(exc, SandboxError):
            log.error("%s principal=%s failed", method, claimed, exc_info=exc)
            exc = SandboxError(ErrorCode.INTERNAL)
        if exc.log_detail:
            log.warning("%s principal=%s refused %s (%s)", method, claimed, exc.code.value, exc.log_detail)
        else:
            log.info("%s principal=%s refused %s", method, claimed, exc.code.value)
        receipt: int | None = None
        # Callers that are not active principals (outsiders, pending or suspended keys, registrations) are
        # audited up to a per-peer budget; an active principal's refusal always is.
        outsider = method == REGISTER_METHOD or call is None and (
            admitted is None or admitted.principal.status is not PrincipalStatus.ACTIVE)
        nonce = None if admitted is None else (admitted.principal.id, admitted.headers.nonce,
                                                admitted.headers.timestamp_ms)
        try:
            if not exc.audited and (not outsider or self._refusals.admit(_peer_host(context), self._clock())):
                entry = self._audit.append_alone(
                    AuditRecord(claimed, method, exc.status, exc.code.value, call.scenario_id if call else "",
                                call.grant_id if call else "", 0, 0, request_sha, "",
                                call.request if call else described),
                    also=(lambda tx: claim_nonce_if_new(tx, *nonce)) if nonce else None)
                receipt = entry.seq
            # Over budget (the caller is not active): not written; a request signed now is refused once the key
            # is approved (``active_since_ms``), so its nonce need not be kept.
        except SandboxError as audit_exc:
            if nonce is not None:
                self._recent.add(*nonce)  # the refusal (and its nonce claim) could not be written
            log.error("%s: audit unavailable (%s)", method, audit_exc.log_detail)
            exc = SandboxError(ErrorCode.AUDIT_UNAVAILABLE)
            receipt = None
        context.set_trailing_metadata(answer_trailers(exc.code.value, receipt))
        context.abort(grpc.StatusCode[exc.status], exc.public_message)

    def _maybe_prune(self, tx: Tx, now_ms: int) -> None:
        self._calls += 1
        if self._calls % 1000 == 0:
            prune_nonces(tx, now_ms, self._skew_ms)
