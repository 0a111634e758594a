"""HE scoring around ``he_engine``: contexts, policy, the sandbox's plaintext part, quota, release.

Every score's sandbox part leaves with the release rule's noise (``sandbox.he_release``), and one
grant may score one entity id at most ``scores_per_entity`` times.

One call carries up to ``MAX_ENTITIES_PER_CALL`` entities in chunks of one ciphertext's slots
(``chunk_bounds``): the request declares its chunk count, and every count and every ciphertext's
size is checked against it before anything is charged or parsed; the chunks are scored in
parallel by the pool's workers, each masked to its own entities like a one-chunk batch.

Unknown entity ids are answered with a real entity's row: the entity after the id's keyed hash
on a ring of the dataset's entities (BLAKE2b keyed with the server's secret over the dataset's name and
the id, so the same unknown id gets the same stand-in under every grant and, mostly, every
version). Its decrypted score is then distributed like a member's, under the same noise, so the
score does not decide membership (measured in the adversarial tests). The response has the same
shape and cost either way and never says which ids were unknown; every submitted id counts
against the quota and the per-entity limit. A grant with a per-call epsilon cap adds opendp
Laplace noise on top (``dp_engine.noise``), charged to its budget.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import numpy as np

import he_engine
from dp_engine import noise
from sandbox import he_models, he_release, ledger, policy
from sandbox.calls import Call, Deferred
from sandbox.columns import ArrayCache
from sandbox.compute_io import ContextChunk, ScoreBatch, ScoreResult
from sandbox.domain import Budget, DatasetInfo, Kind
from sandbox.errors import ErrorCode, SandboxError, engine_errors
from sandbox.he_entities import EntityCounts, EntityIndex

MAX_ENTITY_ID = 64
MAX_CONTEXTS_PER_PRINCIPAL = 8
#: Most entities one Score call may carry, in chunks of one ciphertext's slots (16 chunks of ckks-8192): the
#: request stays far below the message limit and one call's work stays a few seconds at most.
MAX_ENTITIES_PER_CALL = 65_536


@dataclass(frozen=True)
class StoredContext:
    blob: bytes
    sha256: str
    profile: str
    owner: str
    expires_ms: int

    @property
    def context_id(self) -> str:
        """The id the applicant names this context by: derived from its sha256, so re-registering keeps it."""
        return "c-" + self.sha256[:32]


class ContextStore:
    """Registered public contexts, by id, bound to the principal that registered them, with an expiry."""

    def __init__(self, ttl_ms: int) -> None:
        self._ttl = ttl_ms
        self._lock = threading.Lock()
        self._items: dict[str, StoredContext] = {}

    def put(self, blob: bytes, profile: str, owner: str, now_ms: int) -> StoredContext:
        sha = hashlib.sha256(blob).hexdigest()
        ctx = StoredContext(blob, sha, profile, owner, now_ms + self._ttl)
        with self._lock:
            self._items = {k: v for k, v in self._items.items() if v.expires_ms > now_ms}
            mine = sorted((v.expires_ms, k) for k, v in self._items.items() if v.owner == owner)
            for _, k in mine[: max(0, len(mine) - MAX_CONTEXTS_PER_PRINCIPAL + 1)]:
                del self._items[k]
            self._items[ctx.context_id] = ctx
        return ctx

    def get(self, context_id: str, owner: str, now_ms: int) -> StoredContext:
        with self._lock:
            ctx = self._items.get(context_id)
        if ctx is None or ctx.owner != owner or ctx.expires_ms <= now_ms:
            raise SandboxError(ErrorCode.NOT_FOUND, "no such context (unknown, expired or not yours)")
        return ctx


def _profile(name: str) -> he_engine.Profile:
    profile = he_engine.PROFILES.get(name)
    if profile is None:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"unknown profile; use one of {', '.join(he_engine.PROFILES)}")
    return profile


def list_profiles() -> tuple[he_engine.Profile, ...]:
    return tuple(he_engine.PROFILES.values())


def max_entities(profile: he_engine.Profile) -> int:
    """The most entities one Score call may carry under ``profile``: whole chunks up to MAX_ENTITIES_PER_CALL."""
    return profile.slots * max(1, MAX_ENTITIES_PER_CALL // profile.slots)


def chunk_bounds(n: int, slots: int) -> list[tuple[int, int]]:
    """(start, stop) of each chunk of an n-entity batch: ``slots`` entities each, the last one the rest."""
    return [(start, min(start + slots, n)) for start in range(0, n, slots)]


def register_context(call: Call, chunks: list[ContextChunk], pool: he_engine.ScoringPool,
                     store: ContextStore) -> StoredContext:
    if not chunks:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "no context was sent")
    profile = _profile(chunks[0].profile)
    blob = b"".join(c.data for c in chunks)
    if len(blob) > profile.max_context_bytes:
        raise SandboxError(ErrorCode.MESSAGE_TOO_LARGE, f"a context for {profile.name} is at most "
                                                        f"{profile.max_context_bytes} bytes")
    with engine_errors():
        he_engine.check_context_blob(blob, [profile])
        pool.register_context(blob)
    return store.put(blob, profile.name, call.principal.id, call.now_ms)


def public_part(cache: ArrayCache, index: EntityIndex, info: DatasetInfo, spec: he_models.ModelSpec,
                entity_ids: list[str]) -> np.ndarray:
    """bias + sum of weight x clamped public column, per entity (an unknown id's is its stand-in's), no noise."""
    rows, _ = index.rows(info, he_models.identifier_column(info), entity_ids)
    cols = cache.columns(info, list(spec.public_columns))
    plain = np.full(len(entity_ids), spec.bias, dtype=np.float64)
    for name, weight in spec.public_features:
        col = info.schema.column(name)
        assert col is not None and col.lower is not None and col.upper is not None
        values = np.asarray(cols[name][rows], dtype=np.float64)  # only the batch's rows are converted
        mid = (col.lower + col.upper) / 2.0  # a missing value counts as the middle of the public bounds
        plain += weight * np.where(np.isnan(values), mid, np.clip(values, col.lower, col.upper))
    return plain


def score(call: Call, req: ScoreBatch, pool: he_engine.ScoringPool, store: ContextStore,
          cache: ArrayCache, index: EntityIndex, counts: EntityCounts, *, rule: he_release.ReleaseRule) -> Deferred:
    """Check and reserve now (in the call's transaction); the Deferred's ``compute`` returns a ``ScoreResult``."""
    call.annotate(grant_id=req.grant_id)
    ctx = store.get(req.context_id, call.principal.id, call.now_ms)
    profile = _profile(ctx.profile)
    spec, _ = he_models.get(call.tx, req.model_hash) if req.model_hash else (None, None)

    def columns(info: DatasetInfo | None) -> tuple[str, ...]:
        assert spec is not None
        return (he_models.identifier_column(info) if info else "", *spec.public_columns)

    auth = policy.authorise(call, req.grant_id, Kind.HE_SCORING, spec.dataset if spec is not None else None, columns,
                            model_hash=req.model_hash)
    assert spec is not None  # authorise refused otherwise
    info = auth.dataset
    ids = list(req.entity_ids)
    n = len(ids)
    most = max_entities(profile)
    if not 1 <= n <= most:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"send 1 to {most} entity ids per call")
    unique = set(ids)
    if len(unique) != n or "" in unique or max(map(len, ids)) > MAX_ENTITY_ID:
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, "entity ids must be unique, 1 to 64 characters")
    # Every count and size is checked here, before anything is charged and before TenSEAL sees a byte.
    bounds = chunk_bounds(n, profile.slots)
    if req.chunks != len(bounds):
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"{n} entities travel in {len(bounds)} chunk(s) of at most "
                                                       f"{profile.slots} for {profile.name}")
    features = len(spec.private_features)
    if len(req.encrypted_features) != features * len(bounds):
        raise SandboxError(ErrorCode.INVALID_ARGUMENT, f"the model takes {features} encrypted features per chunk")
    chunks = [req.encrypted_features[c * features:(c + 1) * features] for c in range(len(bounds))]
    with engine_errors():
        for cts, (start, stop) in zip(chunks, bounds, strict=True):
            for ct in cts:
                he_engine.check_ciphertext_blob(ct, profile, stop - start)
    try:  # a model stored under older rules or another dataset version's bounds is checked again, never run blind
        release = he_release.check(spec.public_features, tuple(w for _, w in spec.private_features), spec.bias,
                                   info.schema, rule)
    except SandboxError as exc:
        raise SandboxError(ErrorCode.MODEL_OUTSIDE_RULE, exc.public_detail) from exc
    noise_sd = release.noise_sd
    per_call = auth.grant.terms.max_epsilon_per_call_nano
    if per_call:  # DP mode on top: priced by opendp before anything runs, charged like any DP release
        noise_eps, laplace_scale = noise.laplace_cost(he_release.contribution_range(spec.public_features, info.schema),
                                                      per_call / ledger.NANO)
        cost = ledger.cost_units(noise_eps, 0.0)
        noise_sd = (noise_sd**2 + 2 * laplace_scale**2) ** 0.5
    else:
        cost = Budget(0, 0)
    state = policy.charge(call, auth, cost, quota=n)
    counts.count(call.tx, auth.grant.id, ids, rule.scores_per_entity)
    weights = [w for _, w in spec.private_features]

    def compute() -> ScoreResult:
        # After the reservation committed: the sandbox's part and the HE work hold no lock.
        plain = noise.release_noise(public_part(cache, index, info, spec, ids), release.noise_sd)
        if per_call:
            plain = noise.laplace_noisy(plain, he_release.contribution_range(spec.public_features, info.schema),
                                        per_call / ledger.NANO)
        with engine_errors():
            results = pool.score_chunks(ctx.blob, ctx.sha256, chunks, weights,
                                        [plain[start:stop] for start, stop in bounds])
        return ScoreResult(encrypted_logits=tuple(results), entities=n, usage=state.usage, noise_sd=noise_sd)

    return Deferred(compute)
