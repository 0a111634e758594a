"""What runs inside a scoring worker process: every TenSEAL parse and computation.

The server process never imports TenSEAL: this module imports it lazily, in
the worker, so a crash in its native code takes down a worker only. Inputs
arrive as bytes that already passed :mod:`he_engine.structure`; here TenSEAL
and SEAL parse them (SEAL checks the compressed bodies the structure check
cannot see: parms_id, coefficient ranges) and we re-check the result against
the profile before computing.

The score is ``sum_k ct_k * [w_k]*n + plain``: each ciphertext is multiplied
by a plaintext of exactly n slots, which CKKS encodes with zeros in every
slot beyond n, so whatever the applicant put there is zeroed. No rotation is
used, so no partial sums can move between slots.

The arithmetic runs on SEAL's evaluator (``tenseal.sealapi``) rather than
through ``CKKSVector.mul``/``add``, so that per-context state is kept: the
encoded weight plaintexts (masks included) are cached per context, model
weights and n, and the weighted sum is rescaled once instead of once per
feature. The result is the same function of the inputs (one product with
the masked weight plaintext per ciphertext, then the plaintext part), at the
same level and scale as TenSEAL's own ``mul`` + ``add`` would leave it, and
is written in TenSEAL's ``CKKSVectorProto`` format, so the client reads it
with ``ckks_vector_from`` as before.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from he_engine.errors import HeInputError
from he_engine.profiles import Profile
from he_engine.wire import write_varint

#: The applicant-facing message for anything TenSEAL refused; its own message stays in the worker.
REJECTED = "ciphertext rejected by the HE engine"
CONTEXT_REJECTED = "context rejected by the HE engine"
#: Parsed contexts kept per worker, by sha256 of their bytes (about 1 MB of memory each).
CONTEXT_CACHE_SIZE = 16
#: Encoded weight plaintexts kept per context, by (weights, n) (about 0.2 MB per weight for ckks-8192).
PLAIN_CACHE_SIZE = 8
#: Seconds between checks that the worker's parent is still its parent (the end of the parent's pipe is immediate).
PARENT_CHECK_INTERVAL = 0.5


@dataclass
class _Parsed:
    """A parsed public context and what is kept with it: SEAL's evaluator, encoder and the encoded weights."""

    ctx: Any
    evaluator: Any
    encoder: Any
    first_parms_id: Any
    weights: OrderedDict[tuple[tuple[float, ...], int], list[Any | None]]


_contexts: OrderedDict[str, _Parsed] = OrderedDict()
_result_fd: int | None = None


@dataclass(frozen=True)
class ContextInfo:
    """A public context the engine accepted: its sha256 (hex), profile name and size in bytes."""

    sha256: str
    profile: str
    size: int


def init_worker() -> None:
    """Set up a worker process: no core dumps (they would hold key material), leave Ctrl-C to the parent, and
    exit when the parent is gone."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel, parent.pid), name="exit-with-parent",
                         daemon=True).start()


def _exit_with_parent(sentinel: int, parent_pid: int) -> None:
    """End this worker as soon as the process that started it has ended, however it ended (SIGKILL included).

    An idle worker waits on its call queue, which never reaches end-of-file (each worker holds both of its ends),
    so it would outlive a killed server. The spawn method hands the worker the read end of a pipe whose write end
    only the parent holds (the parent's sentinel): it reaches end-of-file when the parent exits. A copy of the
    parent forked without exec would hold that end too, hence the check of the parent pid every interval.
    (PR_SET_PDEATHSIG would fire when the parent's thread that spawned the worker ends, not the process.)
    """
    while not multiprocessing.connection.wait([sentinel], timeout=PARENT_CHECK_INTERVAL):
        if os.getppid() != parent_pid:
            break
    os._exit(1)  # no clean-up: the server that would receive anything from this worker is gone


def ready() -> int:
    """Nothing but this worker's pid: a call that makes the pool start a worker (``ScoringPool.warm``)."""
    return os.getpid()


def register_context(blob: bytes, profile: Profile) -> ContextInfo:
    """Parse a public context in this worker, check it against ``profile`` and cache it."""
    sha = hashlib.sha256(blob).hexdigest()
    _parse_context(blob, sha, profile)
    return ContextInfo(sha256=sha, profile=profile.name, size=len(blob))


class NeedContext(Exception):
    """This worker has not parsed the context yet: the pool resends the call with the context's bytes."""


def score(context_blob: bytes | None, context_sha: str, profile: Profile, ciphertexts: Sequence[bytes],
          weights: Sequence[float], plain: np.ndarray) -> bytes:
    """Return the serialised CKKS vector ``sum_k ciphertexts[k] * weights[k] + plain`` (n = len(plain) slots).

    ``context_blob`` may be None when the worker probably has the context cached (it saves shipping ~0.5 MB
    per call); a worker without it raises :class:`NeedContext`.
    """
    return score_chunks(context_blob, context_sha, profile, [ciphertexts], weights, [plain])[0]


def score_chunks(context_blob: bytes | None, context_sha: str, profile: Profile,
                 chunks: Sequence[Sequence[bytes]], weights: Sequence[float], plains: Sequence[np.ndarray]) -> list[bytes]:
    """:func:`score` for several chunks of one batch in turn: chunk c's ciphertexts (one per weight) with
    ``plains[c]``; one serialised result per chunk, in order. The context is looked up (or parsed) once."""
    if len(chunks) != len(plains) or not chunks:
        raise HeInputError("the number of chunks differs from the batch's")
    parsed = _contexts.get(context_sha)
    if parsed is None:
        if context_blob is None:
            raise NeedContext(context_sha)
        if hashlib.sha256(context_blob).hexdigest() != context_sha:
            raise ValueError("context_sha is not the sha256 of context_blob")
        parsed = _parse_context(context_blob, context_sha, profile)
    else:
        _contexts.move_to_end(context_sha)
    return [_score_one(parsed, profile, cts, weights, plain) for cts, plain in zip(chunks, plains, strict=True)]


def _score_one(parsed: _Parsed, profile: Profile, ciphertexts: Sequence[bytes], weights: Sequence[float],
               plain: np.ndarray) -> bytes:
    n = len(plain)
    cts = [_parse_vector(parsed, blob, profile, n) for blob in ciphertexts]
    if not cts or len(cts) != len(weights):
        raise HeInputError("the number of ciphertexts differs from the model's private features")
    import tenseal.sealapi as sealapi  # type: ignore[import-untyped]

    offsets = np.asarray(plain, dtype=np.float64).tolist()
    try:
        masks = _weight_plaintexts(parsed, profile, weights, n)
        # A zero weight encodes as the zero plaintext: its term is zero in every slot (SEAL refuses the product,
        # which would be a transparent ciphertext), so it is left out.
        terms = [(ct, mask) for ct, mask in zip(cts, masks, strict=True) if mask is not None]
        if not terms:  # every weight is zero: the score is the plaintext part, freshly encrypted (nothing else)
            return _vector_proto(n, _save(_fresh_ciphertext(parsed.ctx, offsets, profile.slots)), profile.scale)
        ev = parsed.evaluator
        total = sealapi.Ciphertext()
        ev.multiply_plain(terms[0][0], terms[0][1], total)
        for ct, mask in terms[1:]:
            ev.multiply_plain_inplace(ct, mask)
            ev.add_inplace(total, ct)
        ev.rescale_to_next_inplace(total)  # once for the whole sum (TenSEAL's auto_rescale does it per product)
        offset = sealapi.Plaintext()
        parsed.encoder.encode(offsets, total.parms_id(), total.scale, offset)
        ev.add_plain_inplace(total, offset)
        body = _save(total)
    except (ValueError, RuntimeError, TypeError):
        raise HeInputError(REJECTED) from None
    return _vector_proto(n, body, profile.scale)


def _fresh_ciphertext(ctx: Any, values: list[float], slots: int) -> Any:
    """A fresh SEAL encryption of ``values`` under the context's public key, zero in every slot beyond them.

    TenSEAL's ``ckks_vector`` copies a short vector into every slot beyond it, so it gets all ``slots`` values.
    """
    import tenseal as ts

    return ts.ckks_vector(ctx, values + [0.0] * (slots - len(values))).ciphertext()[0]


def _weight_plaintexts(parsed: _Parsed, profile: Profile, weights: Sequence[float], n: int) -> list[Any | None]:
    """``[w_k]*n`` encoded at the ciphertexts' level and the profile's scale (zero beyond n: the mask), cached.

    None stands for a weight whose encoding is the zero plaintext.
    """
    import tenseal.sealapi as sealapi

    key = (tuple(float(w) for w in weights), n)
    cached = parsed.weights.get(key)
    if cached is not None:
        parsed.weights.move_to_end(key)
        return cached
    masks: list[Any | None] = []
    for w in key[0]:
        pt = sealapi.Plaintext()
        parsed.encoder.encode([w] * n, parsed.first_parms_id, profile.scale, pt)
        masks.append(None if pt.is_zero() else pt)
    parsed.weights[key] = masks
    while len(parsed.weights) > PLAIN_CACHE_SIZE:
        parsed.weights.popitem(last=False)
    return masks


def _save(ct: Any) -> bytes:
    """SEAL's serialisation of ``ct`` (as TenSEAL's own ``serialize`` writes it).

    sealapi only saves to a path and TenSEAL cannot wrap a SEAL ciphertext in a
    CKKSVector, so SEAL writes to an anonymous in-memory file (memfd) reached
    through /proc: it has no name on any filesystem and the kernel frees it when
    the worker exits, even when the pool kills it.
    """
    global _result_fd
    if _result_fd is None:
        _result_fd = os.memfd_create("he-result", os.MFD_CLOEXEC)
    ct.save(f"/proc/self/fd/{_result_fd}")  # SEAL opens it with O_TRUNC: nothing of an earlier result remains
    return os.pread(_result_fd, os.fstat(_result_fd).st_size, 0)


def _vector_proto(n: int, seal_ciphertext: bytes, scale: float) -> bytes:
    """A TenSEAL ``CKKSVectorProto``: 1 sizes (packed [n]), 2 ciphertexts (one chunk), 3 scale (double)."""
    sizes = write_varint(n)
    return (b"\x0a" + write_varint(len(sizes)) + sizes + b"\x12" + write_varint(len(seal_ciphertext))
            + seal_ciphertext + b"\x19" + struct.pack("<d", scale))


def _parse_context(blob: bytes, sha: str, profile: Profile) -> _Parsed:
    import tenseal as ts
    # Registers SEAL's Modulus type with pybind11, which parms().coeff_modulus() returns.
    import tenseal.sealapi  # type: ignore[import-untyped]  # noqa: F401

    try:
        ctx = ts.context_from(blob, n_threads=1)
    except (ValueError, RuntimeError, TypeError):
        raise HeInputError(CONTEXT_REJECTED) from None
    seal = ctx.seal_context().data
    if not seal.parameters_set():
        raise HeInputError("context parameters are not valid")
    parms = seal.key_context_data().parms()
    if (parms.scheme().name != "CKKS" or parms.poly_modulus_degree() != profile.poly_modulus_degree
            or tuple(m.bit_count() for m in parms.coeff_modulus()) != profile.coeff_mod_bit_sizes):
        raise HeInputError("context parameters match no allowed profile")
    if not ctx.is_public() or ctx.is_private() or ctx.has_secret_key():
        raise HeInputError("context carries a secret key: register a public context")
    if not ctx.has_public_key():
        raise HeInputError("context must use public-key encryption")
    if ctx.has_galois_keys() or ctx.has_relin_keys():
        raise HeInputError("context must carry no Galois or relinearisation keys")
    if ctx.global_scale != profile.scale:
        raise HeInputError("context scale differs from the profile's")
    # The applicant's flags decide nothing here: one product, then rescale to the scale of `plain`.
    ctx.auto_relin, ctx.auto_rescale, ctx.auto_mod_switch = True, True, True
    parsed = _Parsed(ctx, tenseal.sealapi.Evaluator(seal), tenseal.sealapi.CKKSEncoder(seal), seal.first_parms_id(),
                     OrderedDict())
    _contexts[sha] = parsed
    while len(_contexts) > CONTEXT_CACHE_SIZE:
        _contexts.popitem(last=False)
    return parsed


def _parse_vector(parsed: _Parsed, blob: bytes, profile: Profile, n: int) -> Any:
    """Parse one ciphertext with TenSEAL, check what SEAL parsed, and return its SEAL ciphertext."""
    import tenseal as ts

    try:
        vec = ts.ckks_vector_from(parsed.ctx, blob)
        chunks = vec.ciphertext()
    except (ValueError, RuntimeError, TypeError):
        raise HeInputError(REJECTED) from None
    if vec.size() != n or len(chunks) != 1:
        raise HeInputError("ciphertext length differs from the batch size")
    ct = chunks[0]
    if (ct.size() != 2 or ct.poly_modulus_degree() != profile.poly_modulus_degree
            or ct.coeff_modulus_size() != len(profile.coeff_mod_bit_sizes) - 1
            or ct.parms_id() != parsed.first_parms_id or not ct.is_ntt_form() or ct.scale != profile.scale):
        raise HeInputError("ciphertext was not made with the registered context's parameters")
    return ct
