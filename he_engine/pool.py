"""Batch scoring in worker processes, so a TenSEAL crash costs a worker and not the server.

Workers are started with the ``spawn`` method (a forked copy of a gRPC server
is not safe to use) and import TenSEAL; this process never does. Every blob
passes :mod:`he_engine.structure` here before it is sent to a worker, and only
bytes, floats and small dataclasses cross the process boundary.

A large batch comes in chunks (:meth:`ScoringPool.score_chunks`): they are split into
at most ``workers`` contiguous groups, all submitted at once, so one call uses every
worker; a group is retried, fails or succeeds like a call of its own below.

When a worker dies (SIGSEGV, SIGFPE, OOM kill) every call in flight on the
pool fails with ``BrokenProcessPool``, not only the one that killed it. The
pool is replaced at once for new calls, and each failed call is retried once
in a one-off worker of its own: an innocent call caught in another's crash
succeeds there, while the input that crashed TenSEAL crashes only its own
worker again and is reported as :class:`HeInputError`. A call that outlives
its timeout has its workers killed (a running TenSEAL call cannot be
interrupted) and raises :class:`HeUnavailableError`; calls that shared the
killed pool are retried as after a crash.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from he_engine import worker
from he_engine.errors import HeInputError, HeUnavailableError
from he_engine.profiles import PROFILES, Profile
from he_engine.structure import check_ciphertext_blob, check_context_blob
from he_engine.worker import ContextInfo

T = TypeVar("T")

#: Reported for a call that made a worker die, and then its own one-off worker too.
CRASHED = worker.REJECTED
#: Largest magnitude accepted for a weight or a plaintext value: far inside what CKKS at scale 2^40 can hold.
MAX_ABS_VALUE = 2.0**30


class ScoringPool:
    """A pool of spawned worker processes that register contexts and compute encrypted scores.

    Use as a context manager, or call :meth:`close`. Thread-safe: many server
    threads may call it at once; at most ``workers`` calls compute at a time.
    """

    def __init__(self, workers: int = 2, *, timeout: float = 60.0,
                 profiles: Iterable[Profile] = PROFILES.values()) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._workers = workers
        self._timeout = timeout
        self._profiles = tuple(profiles)
        if not self._profiles:
            raise ValueError("at least one profile must be allowed")
        self._mp = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        #: At most ``workers`` isolated retries at once, so a burst of crashes cannot fork a process per call.
        self._isolation = threading.BoundedSemaphore(workers)
        self._closed = False
        self._executor = self._new_executor()
        self._known: dict[str, Profile] = {}  # contexts registered through this pool: sha256 -> profile

    @property
    def profiles(self) -> tuple[Profile, ...]:
        """The parameter profiles this pool accepts contexts for."""
        return self._profiles

    def register_context(self, blob: bytes, *, timeout: float | None = None) -> ContextInfo:
        """Validate a public context (structure here, then parsed in a worker); return its sha256 and profile."""
        profile = check_context_blob(blob, self._profiles)
        info: ContextInfo = self._call(worker.register_context, bytes(blob), profile, timeout=timeout)
        self._known[info.sha256] = profile
        return info

    def score(self, context_blob: bytes, context_sha: str, ciphertexts: Sequence[bytes], weights: Sequence[float],
              plain: np.ndarray, *, timeout: float | None = None) -> bytes:
        """Return the serialised encryption of ``sum_k ciphertexts[k] * weights[k] + plain``, one slot per entity.

        ``context_blob`` is a context registered before and ``context_sha`` its
        sha256 (hex); ``ciphertexts`` are the applicant's encrypted features,
        one per weight, each holding n = len(plain) values; ``weights`` are the
        model's private-feature weights and ``plain`` its bias plus public part
        per entity. Raises :class:`HeInputError` for a bad context, ciphertext
        or batch size, and ``ValueError`` for bad weights or plain values.
        """
        return self.score_chunks(context_blob, context_sha, [ciphertexts], weights, [plain], timeout=timeout)[0]

    def score_chunks(self, context_blob: bytes, context_sha: str, chunks: Sequence[Sequence[bytes]],
                     weights: Sequence[float], plains: Sequence[np.ndarray], *,
                     timeout: float | None = None) -> list[bytes]:
        """:meth:`score` for a batch in several chunks (each at most one ciphertext's slots), in parallel.

        Chunk c is ``chunks[c]`` (one ciphertext per weight) with ``plains[c]``; the result is one serialised
        ciphertext per chunk, in order. Every blob is checked here before any worker sees it; the chunks are
        split into at most ``workers`` contiguous groups, each scored in one worker, all at once. A group caught
        in a worker's crash is retried in a one-off worker of its own (module docstring); if any group fails,
        the whole call fails.
        """
        profile = self._known.get(context_sha)
        if profile is None:  # not registered through this pool: check it here once
            if hashlib.sha256(context_blob).hexdigest() != context_sha:
                raise ValueError("context_sha is not the sha256 of context_blob")
            profile = check_context_blob(context_blob, self._profiles)
            self._known[context_sha] = profile
        weight_array = _finite_vector(weights, "weights")
        if not len(weight_array):
            raise ValueError("the model has no private feature")
        if not chunks or len(chunks) != len(plains):
            raise HeInputError("the number of chunks differs from the batch's")
        plain_arrays = [_finite_vector(p, "plain") for p in plains]
        for cts, plain in zip(chunks, plain_arrays, strict=True):
            if len(cts) != len(weight_array):
                raise HeInputError("the number of ciphertexts differs from the model's private features")
            for blob in cts:
                check_ciphertext_blob(blob, profile, len(plain))
        w = weight_array.tolist()
        groups = _split(len(chunks), self._workers)

        def args(group: range, blob: bytes | None) -> tuple[Any, ...]:
            return (blob, context_sha, profile, [list(chunks[c]) for c in group], w,
                    [plain_arrays[c] for c in group])

        # Most groups land on a worker that already parsed the context: do not ship its 0.5 MB again.
        outcomes = self._call_many(worker.score_chunks, [args(g, None) for g in groups], timeout=timeout,
                                   retry_args=[args(g, bytes(context_blob)) for g in groups])
        for o in outcomes:  # a refused group decides the call: no need to ship the context to the others
            if isinstance(o, BaseException) and not isinstance(o, worker.NeedContext):
                raise o
        need = [i for i, o in enumerate(outcomes) if isinstance(o, worker.NeedContext)]
        if need:
            again = self._call_many(worker.score_chunks, [args(groups[i], bytes(context_blob)) for i in need],
                                    timeout=timeout)
            for i, o in zip(need, again, strict=True):
                outcomes[i] = o
        results: list[bytes] = []
        for o in outcomes:
            if isinstance(o, BaseException):
                raise o
            results.extend(o)
        return results

    def warm(self, *, timeout: float | None = None) -> None:
        """Start the workers now rather than at the first call (each one spawned imports Python afresh)."""
        executor = self._current()
        limit = self._timeout if timeout is None else timeout
        # Submitted together, before any returns: the executor spawns a worker for each while none is idle.
        try:
            futures = [executor.submit(worker.ready) for _ in range(self._workers)]
            for future in futures:
                future.result(timeout=limit)
        except (RuntimeError, BrokenProcessPool, FutureTimeout):  # RuntimeError: replaced by another thread meanwhile
            raise HeUnavailableError("the HE engine did not start") from None

    def close(self) -> None:
        """Stop the workers; later calls raise :class:`HeUnavailableError`."""
        with self._lock:
            self._closed = True
            executor = self._executor
        executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run ``fn(*args)`` in a worker; after a crash, retry it once in a worker of its own (module docstring)."""
        outcome = self._call_many(fn, [args], timeout=timeout)[0]
        if isinstance(outcome, BaseException):
            raise outcome
        result: T = outcome
        return result

    def _call_many(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], *, timeout: float | None = None,
                   retry_args: Sequence[tuple[Any, ...]] | None = None) -> list[Any]:
        """Run ``fn(*args)`` for every ``args`` of ``calls`` at once in the pool's workers; each one's result or the
        exception it raised, in order. Calls caught in a worker's crash are retried once, each in a one-off worker
        of its own, with ``retry_args`` when given; one that crashes that worker too is ``HeInputError(CRASHED)``.
        A timeout (for all the calls together) kills the pool's workers and raises :class:`HeUnavailableError`.
        """
        limit = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        executor = self._current()
        outcomes: list[Any] = [None] * len(calls)
        futures: list[Future[Any] | None] = []
        for args in calls:
            try:
                futures.append(executor.submit(fn, *args))
            except RuntimeError:  # shut down under us (replaced by another thread): as broken
                futures.append(None)
        broken = []
        for i, future in enumerate(futures):
            if future is None:
                broken.append(i)
                continue
            try:
                outcomes[i] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except (BrokenProcessPool, CancelledError):  # cancelled: the pool was replaced under it
                broken.append(i)
            except FutureTimeout:
                for f in futures:
                    if f is not None:
                        f.cancel()
                self._replace(executor, kill=True)
                raise HeUnavailableError("the HE engine timed out") from None
            except Exception as exc:  # noqa: BLE001 -- the worker's own answer (HeInputError, NeedContext, ...)
                outcomes[i] = exc
        if broken:
            self._replace(executor)
        for i in broken:  # each retry gets the whole time limit again, as a call of its own would
            outcomes[i] = self._isolated(fn, (retry_args or calls)[i], limit)
        return outcomes

    def _isolated(self, fn: Callable[..., Any], args: tuple[Any, ...], limit: float) -> Any:
        """``fn(*args)`` in a one-off worker of its own: its result or the exception it raised."""
        with self._isolation:
            self._current()  # refuse if closed meanwhile
            alone = self._new_executor(workers=1)
            try:
                return _run(alone, fn, args, limit)
            except BrokenProcessPool:
                return HeInputError(CRASHED)
            except FutureTimeout:
                _kill(alone)
                raise HeUnavailableError("the HE engine timed out") from None
            except Exception as exc:  # noqa: BLE001 -- the worker's own answer
                return exc
            finally:
                alone.shutdown(wait=False, cancel_futures=True)

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise HeUnavailableError("the HE engine is closed")
            return self._executor

    def _replace(self, broken: ProcessPoolExecutor, *, kill: bool = False) -> None:
        """Swap in a fresh executor unless another thread already replaced ``broken``."""
        with self._lock:
            if self._executor is not broken or self._closed:
                return
            self._executor = self._new_executor()
        if kill:
            _kill(broken)
        broken.shutdown(wait=False, cancel_futures=True)

    def _new_executor(self, workers: int | None = None) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers or self._workers, mp_context=self._mp,
                                   initializer=worker.init_worker)


def _run(executor: ProcessPoolExecutor, fn: Callable[..., T], args: tuple[Any, ...], limit: float) -> T:
    """Submit and wait; a pool shut down under us (replaced by another thread) counts as broken."""
    try:
        future = executor.submit(fn, *args)
    except RuntimeError as exc:
        raise BrokenProcessPool("executor was shut down") from exc
    try:
        return future.result(timeout=limit)
    except FutureTimeout:
        future.cancel()
        raise


def _split(count: int, parts: int) -> list[range]:
    """``range(count)`` in at most ``parts`` contiguous pieces whose sizes differ by at most one."""
    parts = max(1, min(parts, count))
    size, extra = divmod(count, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


def _kill(executor: ProcessPoolExecutor) -> None:
    """Kill an executor's processes: a running TenSEAL call cannot be cancelled any other way."""
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.kill()


def _finite_vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if not np.all(np.isfinite(array)) or np.any(np.abs(array) > MAX_ABS_VALUE):
        raise ValueError(f"{name} must be finite and at most 2**30 in magnitude")
    return array
