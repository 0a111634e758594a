"""CKKS scoring on TenSEAL: parameter profiles, input validation, batch scoring in worker processes.

Pure library: no gRPC, no SQLite, nothing from the sandbox. The server
process never imports TenSEAL; every parse and computation runs in spawned
workers (:class:`ScoringPool`), after pure-Python structure checks
(:func:`check_context_blob`, :func:`check_ciphertext_blob`). Errors are drawn
in :mod:`he_engine.errors`.
"""

from he_engine.errors import HeEngineError, HeInputError, HeUnavailableError
from he_engine.pool import ScoringPool
from he_engine.profiles import PROFILES, Profile
from he_engine.reference import score_plain
from he_engine.structure import check_ciphertext_blob, check_context_blob
from he_engine.worker import ContextInfo

__all__ = [
    "PROFILES",
    "ContextInfo",
    "HeEngineError",
    "HeInputError",
    "HeUnavailableError",
    "Profile",
    "ScoringPool",
    "check_ciphertext_blob",
    "check_context_blob",
    "score_plain",
]
