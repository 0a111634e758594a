"""The errors he_engine raises.

    HeEngineError            base: anything this engine reports on purpose
    ├── HeInputError         the caller's input is malformed or not allowed (INVALID_ARGUMENT)
    └── HeUnavailableError   the engine could not answer: timed out or closed (UNAVAILABLE)

Messages are fixed phrases written for the applicant: they never contain input
bytes, sizes of secret data, or TenSEAL/SEAL internals. Anything else that
escapes (a ``ValueError`` for a caller's programming error, a bug) is not
meant for the applicant and the boundary should treat it as internal.
"""

from __future__ import annotations


class HeEngineError(Exception):
    """Base of every error he_engine raises on purpose; ``message`` is safe to show the applicant."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HeInputError(HeEngineError):
    """A context, ciphertext or batch was malformed or not allowed; retrying the same input will not help."""


class HeUnavailableError(HeEngineError):
    """The engine could not answer (timeout, closed pool); the same request may succeed later."""
