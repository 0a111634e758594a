"""Typed exceptions of the SDK. The SDK never lets a ``grpc.RpcError`` escape.

    SandboxClientError            base; .status (gRPC status name), .code (sandbox code), .message
    ├── Unauthenticated           bad or missing signature, stale clock, replayed nonce, unknown key
    ├── PermissionDenied          wrong role, outside or without a grant, revoked or expired grant
    ├── NotFound
    ├── AlreadyExists             e.g. a second grant for one scenario
    ├── InvalidArgument           malformed input; nothing was charged or written
    ├── FailedPrecondition        not yet (e.g. scenario still pending)
    ├── ResourceExhausted         budget or quota spent, message too large
    ├── Unavailable               server down, or the audit log could not be written
    ├── DeadlineExceeded          for a query: the answer was not released, the charge stands; retry with the same key
    ├── Aborted                   a request with the same idempotency key is still running
    ├── Cancelled
    └── InternalServerError       the server failed; it says no more
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "SandboxClientError", "Unauthenticated", "PermissionDenied", "NotFound", "AlreadyExists", "InvalidArgument",
    "FailedPrecondition", "ResourceExhausted", "Unavailable", "DeadlineExceeded", "Aborted", "Cancelled",
    "InternalServerError", "from_rpc_error", "receipt_of",
]

from wire.signing import ERROR_TRAILER, RECEIPT_TRAILER  # noqa: F401 - the trailer names, for callers
from wire.signing import error_code_of, receipt_of


class SandboxClientError(Exception):
    def __init__(self, message: str, *, status: str = "UNKNOWN", code: str = "", receipt: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        #: The audit entry that records this refusal (check it with ``verify_receipt``), if the server wrote one.
        self.receipt = receipt
        #: ``ApplicantClient.verify`` over several batches: the answers of the batches before the refused one (they
        #: were charged), as a ``VerifyResult``; None otherwise.
        self.partial: Any = None

    def __str__(self) -> str:
        return f"{self.status}: {self.message}" + (f" [{self.code}]" if self.code else "")


class Unauthenticated(SandboxClientError): ...
class PermissionDenied(SandboxClientError): ...
class NotFound(SandboxClientError): ...
class AlreadyExists(SandboxClientError): ...
class InvalidArgument(SandboxClientError): ...
class FailedPrecondition(SandboxClientError): ...
class ResourceExhausted(SandboxClientError): ...
class Unavailable(SandboxClientError): ...
class DeadlineExceeded(SandboxClientError): ...
class Aborted(SandboxClientError): ...
class Cancelled(SandboxClientError): ...
class InternalServerError(SandboxClientError): ...


STATUS_TO_ERROR: dict[grpc.StatusCode, type[SandboxClientError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: InternalServerError,
    grpc.StatusCode.DATA_LOSS: InternalServerError,
    grpc.StatusCode.UNIMPLEMENTED: InternalServerError,
}


def from_rpc_error(exc: grpc.RpcError) -> SandboxClientError:
    """The most specific SDK exception for a gRPC error."""
    status = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message = exc.details() if hasattr(exc, "details") else ""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    cls = STATUS_TO_ERROR.get(status, SandboxClientError)
    return cls(message or status.name.lower(), status=status.name, code=error_code_of(trailing),
               receipt=receipt_of(trailing))
