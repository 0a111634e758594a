"""The Python SDK of the data sandbox: signed, deadline-bound clients with typed results and errors."""

from clients import cli_env  # noqa: F401  (first: the command silences gRPC's C-core log before grpc loads)
from clients.client import (
    AdminClient, ApplicantClient, AuditorClient, ResearcherClient, SandboxClient, StewardClient,
)
from clients.errors import (
    Aborted, AlreadyExists, Cancelled, DeadlineExceeded, FailedPrecondition, InternalServerError, InvalidArgument, NotFound,
    PermissionDenied, ResourceExhausted, SandboxClientError, Unauthenticated, Unavailable,
)
from clients.query import Query
from clients.signing import generate_key, load_key, principal_id_for, public_key_of, save_key

__all__ = [
    "Query", "AdminClient", "ApplicantClient", "AuditorClient", "ResearcherClient", "SandboxClient", "StewardClient",
    "SandboxClientError", "Unauthenticated", "PermissionDenied", "NotFound", "AlreadyExists", "InvalidArgument",
    "FailedPrecondition", "ResourceExhausted", "Unavailable", "DeadlineExceeded", "Aborted", "Cancelled",
    "InternalServerError",
    "generate_key", "load_key", "save_key", "public_key_of", "principal_id_for",
]
