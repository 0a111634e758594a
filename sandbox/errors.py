"""One error base and one catalogue: each code maps to a gRPC status and a public message.

The public message is all a caller ever sees. Internal detail (``log_detail``)
goes to the server log only. ``public_detail`` is for facts the caller is
entitled to and that contain no data value: a column *name*, a count, a limit.
"""

from __future__ import annotations

import contextlib
import enum
import sys
from collections.abc import Iterator



class ErrorCode(str, enum.Enum):
    """Machine-readable error codes; they travel in the error trailer (``wire.signing.answer_trailers``)."""

    SIGNATURE_MISSING = "SIGNATURE_MISSING"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    CLOCK_SKEW = "CLOCK_SKEW"
    NONCE_REPLAYED = "NONCE_REPLAYED"
    SIGNED_BEFORE_APPROVAL = "SIGNED_BEFORE_APPROVAL"
    PEER_LIMIT = "PEER_LIMIT"
    UNKNOWN_PRINCIPAL = "UNKNOWN_PRINCIPAL"
    PRINCIPAL_INACTIVE = "PRINCIPAL_INACTIVE"
    WRONG_ROLE = "WRONG_ROLE"
    NOT_GRANTEE = "NOT_GRANTEE"
    GRANT_REVOKED = "GRANT_REVOKED"
    GRANT_EXPIRED = "GRANT_EXPIRED"
    GRANT_NOT_YET_VALID = "GRANT_NOT_YET_VALID"
    GRANT_AWAITING_COSIGNATURE = "GRANT_AWAITING_COSIGNATURE"
    OUTSIDE_GRANT = "OUTSIDE_GRANT"
    COLUMN_CORE = "COLUMN_CORE"
    COLUMN_NOT_NAMED = "COLUMN_NOT_NAMED"
    COLUMN_LEVEL_FORBIDDEN = "COLUMN_LEVEL_FORBIDDEN"
    SCENARIO_NOT_PENDING = "SCENARIO_NOT_PENDING"
    SCENARIO_NOT_APPROVED = "SCENARIO_NOT_APPROVED"
    PRINCIPAL_NOT_PENDING = "PRINCIPAL_NOT_PENDING"
    GRANT_EXISTS = "GRANT_EXISTS"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    INVALID_SCHEMA = "INVALID_SCHEMA"
    INVALID_CSV = "INVALID_CSV"
    ROWS_REJECTED = "ROWS_REJECTED"
    INVALID_TERMS = "INVALID_TERMS"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    QUOTA_EXHAUSTED = "QUOTA_EXHAUSTED"
    ENTITY_LIMIT = "ENTITY_LIMIT"
    CONSENT_REQUIRED = "CONSENT_REQUIRED"
    CERTIFICATE_INVALID = "CERTIFICATE_INVALID"
    REGISTRATION_LIMIT = "REGISTRATION_LIMIT"
    RELEASE_LOST = "RELEASE_LOST"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    STREAM_CUT = "STREAM_CUT"
    AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"
    AUDIT_DAMAGED = "AUDIT_DAMAGED"
    HEAD_NOT_READY = "HEAD_NOT_READY"
    NOT_RELEASED = "NOT_RELEASED"
    ENGINE_UNAVAILABLE = "ENGINE_UNAVAILABLE"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    IN_PROGRESS = "IN_PROGRESS"
    JOB_NOT_COMPLETE = "JOB_NOT_COMPLETE"
    JOB_ELSEWHERE = "JOB_ELSEWHERE"
    MODEL_OUTSIDE_RULE = "MODEL_OUTSIDE_RULE"
    GRANT_ALREADY_REVOKED = "GRANT_ALREADY_REVOKED"
    INVALID_QUERY = "INVALID_QUERY"
    EPSILON_OVER_CALL_CAP = "EPSILON_OVER_CALL_CAP"
    STORAGE_BUSY = "STORAGE_BUSY"
    INTERNAL = "INTERNAL"



#: code -> (gRPC status name, public message). A test checks every code is here. The names are those of
#: ``grpc.StatusCode``; the boundary (the interceptor) turns them into statuses, so this module needs no gRPC.
CATALOGUE: dict[ErrorCode, tuple[str, str]] = {
    ErrorCode.SIGNATURE_MISSING: ("UNAUTHENTICATED", "request is not signed"),
    ErrorCode.SIGNATURE_INVALID: ("UNAUTHENTICATED", "request signature is not valid"),
    ErrorCode.CLOCK_SKEW: ("UNAUTHENTICATED", "request timestamp is outside the allowed clock window"),
    ErrorCode.NONCE_REPLAYED: ("UNAUTHENTICATED", "request nonce was already used"),
    ErrorCode.SIGNED_BEFORE_APPROVAL: ("UNAUTHENTICATED", "request was signed before this key was approved; "
                                       "sign it again"),
    ErrorCode.PEER_LIMIT: ("RESOURCE_EXHAUSTED", "too many calls from this address by keys that are not active; "
                           "try again in a minute"),
    ErrorCode.UNKNOWN_PRINCIPAL: ("UNAUTHENTICATED", "unknown principal"),
    ErrorCode.PRINCIPAL_INACTIVE: ("PERMISSION_DENIED", "principal is not active"),
    ErrorCode.WRONG_ROLE: ("PERMISSION_DENIED", "caller's role may not call this method"),
    ErrorCode.NOT_GRANTEE: ("PERMISSION_DENIED", "the caller holds no grant with this id"),
    ErrorCode.GRANT_REVOKED: ("PERMISSION_DENIED", "grant has been revoked"),
    ErrorCode.GRANT_EXPIRED: ("PERMISSION_DENIED", "grant has expired"),
    ErrorCode.GRANT_NOT_YET_VALID: ("PERMISSION_DENIED", "grant is not valid yet"),
    ErrorCode.GRANT_AWAITING_COSIGNATURE: ("FAILED_PRECONDITION", "grant awaits its data steward's co-signature"),
    ErrorCode.OUTSIDE_GRANT: ("PERMISSION_DENIED", "request lies outside the grant"),
    ErrorCode.COLUMN_CORE: ("PERMISSION_DENIED", "core columns may not be used in any scenario"),
    ErrorCode.COLUMN_NOT_NAMED: ("PERMISSION_DENIED", "column must be named explicitly"),
    ErrorCode.COLUMN_LEVEL_FORBIDDEN: ("PERMISSION_DENIED", "column level not allowed for this computation"),
    ErrorCode.SCENARIO_NOT_PENDING: ("FAILED_PRECONDITION", "scenario is not pending review"),
    ErrorCode.SCENARIO_NOT_APPROVED: ("FAILED_PRECONDITION", "scenario is not approved"),
    ErrorCode.PRINCIPAL_NOT_PENDING: ("FAILED_PRECONDITION", "principal is not pending approval"),
    ErrorCode.GRANT_EXISTS: ("ALREADY_EXISTS", "scenario already has a grant"),
    ErrorCode.ALREADY_EXISTS: ("ALREADY_EXISTS", "already exists"),
    ErrorCode.NOT_FOUND: ("NOT_FOUND", "not found"),
    ErrorCode.INVALID_ARGUMENT: ("INVALID_ARGUMENT", "invalid argument"),
    ErrorCode.INVALID_SCHEMA: ("INVALID_ARGUMENT", "invalid dataset schema"),
    ErrorCode.INVALID_CSV: ("INVALID_ARGUMENT", "CSV does not match the schema"),
    ErrorCode.ROWS_REJECTED: ("INVALID_ARGUMENT", "rows were rejected; nothing was imported"),
    ErrorCode.INVALID_TERMS: ("INVALID_ARGUMENT", "grant terms do not match the application"),
    ErrorCode.BUDGET_EXHAUSTED: ("RESOURCE_EXHAUSTED", "privacy budget exhausted"),
    ErrorCode.QUOTA_EXHAUSTED: ("RESOURCE_EXHAUSTED", "quota exhausted"),
    ErrorCode.ENTITY_LIMIT: ("RESOURCE_EXHAUSTED", "an entity in this batch was already scored or checked as often "
                             "as the grant allows; nothing was charged"),
    ErrorCode.CONSENT_REQUIRED: ("INVALID_ARGUMENT", "every check of a person needs the person's consent reference "
                                 "(their authorisation number); nothing was charged"),
    ErrorCode.CERTIFICATE_INVALID: ("INVALID_ARGUMENT", "this is not a certificate the sandbox signed"),
    ErrorCode.MESSAGE_TOO_LARGE: ("RESOURCE_EXHAUSTED", "message too large"),
    ErrorCode.STREAM_CUT: ("CANCELLED", "the stream was cancelled or its deadline passed before it was complete; "
                           "nothing was kept"),
    ErrorCode.REGISTRATION_LIMIT: ("RESOURCE_EXHAUSTED", "registration limit reached"),
    ErrorCode.RELEASE_LOST: ("FAILED_PRECONDITION", "the answer for this idempotency key was lost in a server "
                             "crash before it was released; the charge stands (see the audit log); use a new key"),
    ErrorCode.AUDIT_UNAVAILABLE: ("UNAVAILABLE", "audit log unavailable; nothing was released"),
    ErrorCode.AUDIT_DAMAGED: ("UNAVAILABLE", "the audit log fails its own checks (an entry the audit key did not "
                              "sign); no tree head is signed until an administrator looks into it"),
    ErrorCode.HEAD_NOT_READY: ("UNAVAILABLE", "no signed tree head covers this entry yet; ask again in a second"),
    ErrorCode.NOT_RELEASED: ("DEADLINE_EXCEEDED", "deadline passed before release; the charge stands and a "
                             "retry with the same idempotency key returns the answer"),
    ErrorCode.ENGINE_UNAVAILABLE: ("UNAVAILABLE", "computation engine busy or restarting; try again"),
    ErrorCode.IDEMPOTENCY_CONFLICT: ("INVALID_ARGUMENT", "idempotency key was already used for another request"),
    ErrorCode.IN_PROGRESS: ("ABORTED", "a request with this idempotency key is still running or failed; "
                            "retry later or use a new key"),
    ErrorCode.JOB_NOT_COMPLETE: ("FAILED_PRECONDITION", "training job has not completed"),
    ErrorCode.JOB_ELSEWHERE: ("FAILED_PRECONDITION", "the training job is running in another sandbox server"),
    ErrorCode.MODEL_OUTSIDE_RULE: ("FAILED_PRECONDITION", "the model no longer meets the release rule of this "
                                   "sandbox (stricter settings or another dataset version); submit a new one"),
    ErrorCode.GRANT_ALREADY_REVOKED: ("FAILED_PRECONDITION", "grant is already revoked"),
    ErrorCode.INVALID_QUERY: ("INVALID_ARGUMENT", "invalid query"),
    ErrorCode.EPSILON_OVER_CALL_CAP: ("PERMISSION_DENIED", "epsilon exceeds the grant's per-query cap"),
    ErrorCode.STORAGE_BUSY: ("UNAVAILABLE", "storage busy; try again"),
    ErrorCode.INTERNAL: ("INTERNAL", "internal error"),
}



class SandboxError(Exception):
    """Base of every error the server turns into a gRPC status."""

    def __init__(self, code: ErrorCode, public_detail: str = "", *, log_detail: str = "") -> None:
        self.code = code
        self.public_detail = public_detail
        self.log_detail = log_detail
        self.audited = False  # set when the boundary has already written this refusal's audit entry
        super().__init__(self.public_message)

    @property
    def status(self) -> str:
        """The name of the gRPC status this error is answered with (e.g. ``"PERMISSION_DENIED"``)."""
        return CATALOGUE[self.code][0]

    @property
    def public_message(self) -> str:
        base = CATALOGUE[self.code][1]
        return f"{base}: {self.public_detail}" if self.public_detail else base


#: The engines' own errors the sandbox answers (anything else an engine raises is INTERNAL): (package, exception
#: class it exports, code, whether the engine's message is public). The engines word these messages to name no data
#: value; an unavailable engine's reason goes to the log only.
ENGINE_ERRORS: tuple[tuple[str, str, ErrorCode, bool], ...] = (
    ("dp_engine", "QueryError", ErrorCode.INVALID_QUERY, True),
    ("he_engine", "HeInputError", ErrorCode.INVALID_ARGUMENT, True),
    ("he_engine", "HeUnavailableError", ErrorCode.ENGINE_UNAVAILABLE, False),
    ("fl_server", "PlanError", ErrorCode.INVALID_ARGUMENT, True),
)


def from_engine(exc: BaseException) -> SandboxError | None:
    """The SandboxError an engine's error is answered with, or None if ``exc`` is not one of ``ENGINE_ERRORS``.

    Only engines already imported are looked at (an exception cannot be of a class that was never loaded), so this
    module loads no engine.
    """
    for package, name, code, public in ENGINE_ERRORS:
        cls = getattr(sys.modules.get(package), name, None)
        if cls is not None and isinstance(exc, cls):
            return SandboxError(code, str(exc)) if public else SandboxError(code, log_detail=str(exc))
    return None


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """Run an engine call: its errors leave as the SandboxError ``from_engine`` gives, anything else unchanged."""
    try:
        yield
    except Exception as exc:
        translated = from_engine(exc)
        if translated is None:
            raise
        raise translated from exc
