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
"""

from __future__ import annotations

import hashlib
import resource
import signal
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from he_engine.errors import HeInputError
from he_engine.profiles import Profile

if TYPE_CHECKING:
    import tenseal as ts  # type: ignore[import-untyped]

#: The applicant-facing message for anything TenSEAL refused; its own message stays in the worker.
REJECTED = "ciphertext rejected by the HE engine"
CONTEXT_REJECTED = "context rejected by the HE engine"
#: Parsed contexts kept per worker, by sha256 of their bytes (about 1 MB of memory each).
CONTEXT_CACHE_SIZE = 16

_contexts: OrderedDict[str, ts.Context] = OrderedDict()


@dataclass(frozen=True)
class ContextInfo:
    """A public context the engine accepted: its sha256 (hex), profile name and size in bytes."""

    sha256: str
    profile: str
    size: int


def init_worker() -> None:
    """Set up a worker process: no core dumps (they would hold key material), leave Ctrl-C to the parent."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
    ctx = _contexts.get(context_sha)
    if ctx is None:
        if context_blob is None:
            raise NeedContext(context_sha)
        if hashlib.sha256(context_blob).hexdigest() != context_sha:
            raise ValueError("context_sha is not the sha256 of context_blob")
        ctx = _parse_context(context_blob, context_sha, profile)
    else:
        _contexts.move_to_end(context_sha)
    n = len(plain)
    vectors = [_parse_vector(ctx, blob, profile, n) for blob in ciphertexts]
    try:
        total = None
        for vec, weight in zip(vectors, weights, strict=True):
            term = vec.mul([float(weight)] * n)
            total = term if total is None else total.add(term)
        assert total is not None, "pool checks there is at least one ciphertext"
        total = total.add([float(v) for v in plain])
        result: bytes = total.serialize()
    except (ValueError, RuntimeError, TypeError):
        raise HeInputError(REJECTED) from None
    return result


def _parse_context(blob: bytes, sha: str, profile: Profile) -> ts.Context:
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
    _contexts[sha] = ctx
    while len(_contexts) > CONTEXT_CACHE_SIZE:
        _contexts.popitem(last=False)
    return ctx


def _parse_vector(ctx: ts.Context, blob: bytes, profile: Profile, n: int) -> Any:
    import tenseal as ts

    try:
        vec = ts.ckks_vector_from(ctx, blob)
        chunks = vec.ciphertext()
        first_parms_id = ctx.seal_context().data.first_parms_id()
    except (ValueError, RuntimeError, TypeError):
        raise HeInputError(REJECTED) from None
    if vec.size() != n or len(chunks) != 1:
        raise HeInputError("ciphertext length differs from the batch size")
    ct = chunks[0]
    if (ct.size() != 2 or ct.poly_modulus_degree() != profile.poly_modulus_degree
            or ct.coeff_modulus_size() != len(profile.coeff_mod_bit_sizes) - 1
            or ct.parms_id() != first_parms_id or not ct.is_ntt_form() or ct.scale != profile.scale):
        raise HeInputError("ciphertext was not made with the registered context's parameters")
    return vec
