"""Client side of HE scoring: the applicant's CKKS keys never leave this process.

``score`` generates a key pair for one of the sandbox's parameter profiles,
registers only the public context (no secret key, no Galois keys), encrypts one
ciphertext per private feature with one slot per entity, and decrypts the
logits the sandbox returns. Decrypted scores are never sent back (CKKS is not
secure against that), and no RPC accepts them.

The two RPCs a session makes go through ``HeCalls`` (``clients.client`` makes
them, ``clients.serde`` builds and reads their messages): this module holds
keys, ciphertexts and plain values only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import tenseal as ts

from clients import serde
from clients.types import HeProfile, Receipt

__all__ = ["ScoreResult", "HeSession", "HeCalls", "EncryptedScores"]

CHUNK = 1 << 20  # bytes of the public context per RegisterContext message


@dataclass
class ScoreResult:
    entity_ids: list[str]
    logits: np.ndarray
    probabilities: np.ndarray | None  # sigmoid of the logits for a logistic model; None for a linear one
    seconds: dict[str, float] = field(default_factory=dict)  # keygen, encrypt, upload, server, decrypt
    bytes_sent: int = 0
    bytes_received: int = 0
    #: sd of the noise the sandbox added to every logit (the release rule's, plus any DP noise of the grant)
    noise_sd: float = 0.0
    #: one per batch (Score call): the audit entries recording the answers (``verify_receipt``)
    receipts: tuple[Receipt, ...] = ()


@dataclass(frozen=True)
class EncryptedScores:
    """The sandbox's answer to one Score call: the encrypted logits, and what the call sent and received."""

    encrypted_logits: bytes  # the first chunk's (the whole batch's when it was one chunk)
    noise_sd: float
    bytes_sent: int
    bytes_received: int
    receipt: Receipt | None
    #: the logits of every chunk, in order (one ciphertext per ``slots`` entities)
    chunks: tuple[bytes, ...] = ()


class HeCalls(Protocol):
    """The HE scoring RPCs a session makes."""

    def register_context(self, profile: str, blob: bytes, chunk: int) -> str:
        """Upload a public context (``chunk`` bytes per message); its context id."""
        ...

    def score(self, grant_id: str, context_id: str, model_hash: str, entity_ids: Sequence[str],
              encrypted_features: Sequence[bytes], *, timeout: float, chunks: int = 1) -> EncryptedScores:
        """One Score call; ``encrypted_features`` chunk-major, ``chunks`` ciphertexts per feature."""
        ...


class HeSession:
    """One CKKS key pair and its registered public context, reusable across batches."""

    def __init__(self, calls: HeCalls, profile: HeProfile) -> None:
        self.profile = profile
        t0 = time.perf_counter()
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=profile.poly_modulus_degree,
                         coeff_mod_bit_sizes=list(profile.coeff_mod_bit_sizes))
        ctx.global_scale = 2.0 ** profile.scale_bits
        self._secret = ctx
        public = ctx.copy()
        public.make_context_public()
        blob = public.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                                save_relin_keys=False)
        self.keygen_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.context_id = calls.register_context(profile.name, blob, CHUNK)
        self.register_seconds = time.perf_counter() - t1
        self.context_bytes = len(blob)
        self._calls = calls

    def score_batch(self, grant_id: str, model_hash: str, entity_ids: Sequence[str], features: np.ndarray,
                    *, logistic: bool, timeout: float = 120.0) -> ScoreResult:
        n = len(entity_ids)
        if features.ndim != 2 or features.shape[0] != n:
            raise serde.invalid("features must be an array of shape (entities, private features)")
        if n > self.profile.per_call:
            raise serde.invalid(f"at most {self.profile.per_call} entities per call for {self.profile.name}")
        if not np.all(np.isfinite(features)):
            raise serde.invalid("features must be finite")
        t0 = time.perf_counter()
        cts = self.encrypt(features)
        encrypt = time.perf_counter() - t0
        t1 = time.perf_counter()
        resp = self.score_encrypted(grant_id, model_hash, entity_ids, cts, timeout=timeout)
        server = time.perf_counter() - t1
        t2 = time.perf_counter()
        logits = self.decrypt(resp.chunks or (resp.encrypted_logits,), n)
        probs = sigmoid(logits) if logistic else None
        decrypt = time.perf_counter() - t2
        return ScoreResult(list(entity_ids), logits, probs,
                           {"encrypt": encrypt, "server": server, "decrypt": decrypt},
                           bytes_sent=resp.bytes_sent, bytes_received=resp.bytes_received, noise_sd=resp.noise_sd,
                           receipts=(resp.receipt,) if resp.receipt else ())

    def score_encrypted(self, grant_id: str, model_hash: str, entity_ids: Sequence[str], encrypted: Sequence[bytes],
                        *, timeout: float = 120.0) -> EncryptedScores:
        """One Score call on features already encrypted with :meth:`encrypt` (e.g. ahead, in another thread);
        :meth:`decrypt` reads its answer."""
        chunks = -(-len(entity_ids) // self.profile.slots)
        return self._calls.score(grant_id, self.context_id, model_hash, entity_ids, encrypted, timeout=timeout,
                                 chunks=chunks)

    def encrypt(self, features: np.ndarray) -> list[bytes]:
        """Rows of ``features`` (entities x private features) as Score sends them: ``slots`` entities a chunk,
        one CKKS vector per feature, chunk-major."""
        slots = self.profile.slots
        return [ts.ckks_vector(self._secret, features[start:start + slots, k].astype(float).tolist()).serialize()
                for start in range(0, features.shape[0], slots) for k in range(features.shape[1])]

    def decrypt(self, chunks: Sequence[bytes], n: int) -> np.ndarray:
        """The n logits of a Score answer's chunks, in order (only each chunk's own entities are read)."""
        slots = self.profile.slots
        if len(chunks) != -(-n // slots):
            raise serde.invalid("the sandbox answered with a different number of chunks")
        return np.concatenate([np.array(ts.ckks_vector_from(self._secret, blob).decrypt()[:min(slots, n - c * slots)])
                               for c, blob in enumerate(chunks)])


def choose_profile(profiles: Sequence[HeProfile], entities: int) -> HeProfile:
    """The smallest profile whose slots hold the batch (or the largest, for batching)."""
    ordered = sorted(profiles, key=lambda p: p.slots)
    if not ordered:
        raise serde.invalid("the sandbox offers no HE profile")
    for p in ordered:
        if p.slots >= entities:
            return p
    return ordered[-1]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), without overflow for logits of any size."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    out: np.ndarray = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out
