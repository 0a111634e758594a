"""The entities of HE scoring: id -> row, a real stand-in for an unknown id, and how often a grant scored each id.

Entity ids are pseudonymised with a keyed hash (BLAKE2b keyed with the server's secret, 8 bytes) wherever
they are kept or compared: the stand-in ring and the per-entity counts never hold an id in the clear.

The per-entity counts are durable and cheap: each Score appends one row holding its batch's pseudonyms
(8 bytes an entity, one write, whatever the grant's history) under a random batch key, and each server keeps,
per grant, the counts those rows add up to. Before counting, a call looks up the grant's last batch this
process wrote and the grant's number of batches (two indexed lookups): if the batch is gone, its transaction
rolled back; if the number differs, another server sharing the state scored under the grant; either way the
grant is reloaded from the table in one query, as it is after a restart or when it left the cache. Batch keys
are random 63-bit numbers, so a vanished row cannot come back as another.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import threading
from collections import OrderedDict

import numpy as np

from sandbox.columns import ArrayCache
from sandbox.domain import DatasetInfo
from sandbox.errors import ErrorCode, SandboxError
from sandbox.state import Tx

#: Grants whose counts stay in memory (each is a dict of the pseudonyms it scored).
CACHED_GRANTS = 64


def pseudonyms(secret: bytes, person: bytes, prefix: bytes, values: list[str]) -> np.ndarray:
    """Keyed 64-bit BLAKE2b of prefix + each value, as uint64 (one keyed state copied per value)."""
    base = hashlib.blake2b(key=secret, digest_size=8, person=person)
    base.update(prefix)
    digests = []
    for v in values:
        h = base.copy()
        h.update(v.encode())
        digests.append(h.digest())
    return np.frombuffer(b"".join(digests), dtype="<u8")


class EntityIndex:
    """Identifier value -> row, and the ring of stand-ins for unknown ids, built once per dataset version.

    Where an identifier has several rows (a person-year table such as rand_hie, stored by person and
    year) the entity is its last stored row: the person's latest record. An unknown id's stand-in is the
    entity after the id's keyed hash on a ring of the entities' keyed hashes (over the dataset's name, not
    its version, so the stand-in mostly survives a new version).
    """

    def __init__(self, cache: ArrayCache, secret: bytes) -> None:
        self._cache = cache
        self._secret = secret
        self._lock = threading.Lock()
        self._index: dict[tuple[str, str], tuple[dict[str, int], np.ndarray, np.ndarray]] = {}

    def _points(self, dataset: str, entity_ids: list[str]) -> np.ndarray:
        return pseudonyms(self._secret, b"he-stand-in", dataset.encode() + b"\0", entity_ids)

    def _built(self, info: DatasetInfo, id_column: str) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        key = (info.version, id_column)
        with self._lock:
            built = self._index.get(key)
        if built is None:
            values = self._cache.columns(info, [id_column])[id_column]
            index = {self._norm(v): i for i, v in enumerate(values.tolist())}
            points = self._points(info.schema.name, list(index))
            order = np.argsort(points, kind="stable")
            built = (index, points[order], np.fromiter(index.values(), dtype=np.int64, count=len(index))[order])
            with self._lock:
                self._index[key] = built
        return built

    def entities(self, info: DatasetInfo, id_column: str) -> dict[str, int]:
        """Every identifier value (as ``rows`` takes it) and its row."""
        return self._built(info, id_column)[0]

    def rows(self, info: DatasetInfo, id_column: str, entity_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The row of every id, a known entity's stand-in row for an unknown id; and which ids are known."""
        index, ring, ring_rows = self._built(info, id_column)
        rows = np.fromiter(map(index.get, entity_ids, itertools.repeat(-1)), dtype=np.int64, count=len(entity_ids))
        known = rows >= 0
        if not known.all():
            missing = [e for e, k in zip(entity_ids, known.tolist()) if not k]
            rows[~known] = ring_rows[np.searchsorted(ring, self._points(info.schema.name, missing)) % len(ring)]
        return rows, known

    @staticmethod
    def _norm(value: object) -> str:
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)


class EntityCounts:
    """How often each grant scored (or checked) each entity id: durable rows of pseudonyms, counted in memory
    (module doc). ``person`` separates the pseudonyms of one use from another's."""

    def __init__(self, secret: bytes, person: bytes = b"he-scored") -> None:
        self._secret = secret
        self._person = person
        self._lock = threading.Lock()
        self._grants: OrderedDict[str, _Counts] = OrderedDict()  # the pseudonyms each grant scored, and how often
        self._last: dict[str, int] = {}  # the batch key this process last wrote for each grant
        self._batches: dict[str, int] = {}  # how many batches the grant had when its counts were last right

    def count(self, tx: Tx, grant_id: str, entity_ids: list[str], limit: int, *, what: str = "scored") -> None:
        """Count one more use of each id (an id twice in the batch counts twice) under the grant in the open
        transaction, or raise ENTITY_LIMIT.

        Refused: nothing is written (and the call's savepoint rolls back whatever else it did).
        """
        batch = pseudonyms(self._secret, self._person, grant_id.encode() + b"\0", entity_ids)
        here, times = np.unique(batch, return_counts=True)
        with self._lock:
            counts = self._current(tx, grant_id)
            pos, seen, after = counts.after(here, times)
            spent = int(np.count_nonzero(after > limit))
            if spent:
                raise SandboxError(ErrorCode.ENTITY_LIMIT, f"{spent} of the {len(here)} ids would be {what} more "
                                                           f"than {limit} time(s) under this grant")
            key = secrets.randbits(63)
            tx.he_batch_insert(key, grant_id, batch.tobytes())
            self._last[grant_id] = key
            self._batches[grant_id] = self._batches.get(grant_id, 0) + 1
            counts.store(here, pos, seen, after)

    def _current(self, tx: Tx, grant_id: str) -> _Counts:
        """The grant's counts as this transaction sees them (called with the lock held).

        The cache is right if the batch this process wrote last is there (nothing was rolled back) and the
        grant has as many batches as the cache has seen (no other server scored under it since).
        """
        last = self._last.get(grant_id)
        batches = tx.he_batch_count(grant_id)
        if (last is not None and not tx.he_batch_exists(last)) or batches != self._batches.get(grant_id, -1):
            self._last.pop(grant_id, None)
            self._grants.pop(grant_id, None)
        counts = self._grants.pop(grant_id, None)
        if counts is None:
            counts = _Counts.of([np.frombuffer(blob, dtype="<u8") for blob in tx.he_batches(grant_id)])
            self._batches[grant_id] = batches
        self._grants[grant_id] = counts
        while len(self._grants) > CACHED_GRANTS:
            self._grants.popitem(last=False)
        return counts


class _Counts:
    """One grant's counts: the pseudonyms it scored, sorted, and how often each (numpy, so a batch of tens of
    thousands is counted in a few vectorised steps)."""

    def __init__(self, keys: np.ndarray, values: np.ndarray) -> None:
        self.keys = keys  # uint64, sorted, unique
        self.values = values  # int64

    @classmethod
    def of(cls, batches: list[np.ndarray]) -> _Counts:
        if not batches:
            return cls(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))
        keys, values = np.unique(np.concatenate(batches).astype(np.uint64), return_counts=True)
        return cls(keys, values.astype(np.int64))

    def after(self, here: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For sorted unique pseudonyms ``here`` used ``times`` times each: where they sit, which were seen, and
        their counts after this use."""
        here = here.astype(np.uint64)
        pos = np.searchsorted(self.keys, here)
        seen = pos < len(self.keys)
        seen[seen] = self.keys[pos[seen]] == here[seen]
        after = times.astype(np.int64)
        after[seen] += self.values[pos[seen]]
        return pos, seen, after

    def store(self, here: np.ndarray, pos: np.ndarray, seen: np.ndarray, after: np.ndarray) -> None:
        """Record the counts ``after`` computed (nothing changed since)."""
        self.values[pos[seen]] = after[seen]
        new = ~seen
        if new.any():
            self.keys = np.insert(self.keys, pos[new], here[new].astype(np.uint64))
            self.values = np.insert(self.values, pos[new], after[new])
