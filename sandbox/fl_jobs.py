"""Federated training jobs: policy and pricing before the start, a background run, progress, and the model.

StartTraining checks the grant, builds the full plan from the pinned template
and the caller's settings, prices the whole plan with the accountant (opendp)
and reserves it in the call's transaction; the job starts only after that
commits. A plan without DP has no finite epsilon: it is charged the grant's
whole remaining budget, so a grant yields either one non-DP model or a series
of DP ones. Revoking the grant stops the job before its next round and
withholds the model; a cancelled job keeps its charge (never refunded).
Data holders are the values of the dataset's declared partition column, named
``<column>-<value>`` (e.g. ``site-1``); in the embedded default each is a node in
this process fed only its own rows; with the deployment backend, a SuperNode
process per holder that the sandbox starts, or (``fl_nodes = "external"``) the
holders' own SuperNodes, each preparing its own rows with the plan.

Every job is kept in the state (``sandbox.fl_records``): its summary, each round's report as it is published, and
the completed model with its plan, so that any server sharing the state lists a job and returns its result after a
restart. A running job is watched and cancelled through the server process that runs it; a job whose server
stopped is marked failed (its charge stands).
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

import fl_server
from fl_server.deployment import TlsFiles
from sandbox import catalogue, fl_named, fl_plans, fl_records, grants, he_models, he_release, ledger, policy
from sandbox.calls import Call, Deferred
from sandbox.columns import ArrayCache
from sandbox.compute_io import (
    JobList, RegisteredModel, RegisterTrainedModel, StartedJob, StartTraining, Tensor, TrainingEvent, TrainingOutcome,
)
from sandbox.config import ServerConfig
from sandbox.domain import DatasetInfo, Kind, Role
from sandbox.errors import ErrorCode, SandboxError, engine_errors
from sandbox.fl_records import TERMINAL
from sandbox.he_release import ReleaseRule
from sandbox.state import State, Tx

log = logging.getLogger("sandbox.fl")

#: ListTrainingJobs returns at most this many jobs (newest first), and this many when the request gives no limit.
MAX_LISTED = 1000
DEFAULT_LISTED = 100


@dataclass
class Job:
    """A job running in this server process: its plan, its events so far (for watchers) and its stop signal."""

    id: str
    owner: str
    grant_id: str
    plan: fl_server.TrainingPlan
    state: str = "starting"
    events: list[TrainingEvent] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def publish(self, event: TrainingEvent, state: str | None = None) -> None:
        with self.changed:
            if state:
                self.state = state
            self.events.append(event)
            self.changed.notify_all()


def round_message(r: fl_server.RoundReport) -> str:
    """A round's report in words: who dropped out, and why the round changed nothing if it did not."""
    parts = [f"{len(r.failed)} data holder(s) dropped out"] if r.failed else []
    if r.note:
        parts.append(r.note)
    return "; ".join(parts)


def backend_for(config: ServerConfig) -> fl_server.Backend:
    """The training backend the config chose: in-process nodes, or Flower's SuperLink/SuperNode runtime.

    The runtime serves TLS with the data directory's CA and server certificate (for localhost and 127.0.0.1),
    or the configured ``fl_tls_cert`` and ``fl_tls_key``. With ``fl_nodes = "external"`` it listens on
    ``fl_superlink_host``:``fl_superlink_port`` and admits the nodes whose keys are in ``fl_node_keys_dir``.
    """
    if config.fl_backend == "in-process":
        return fl_server.InProcessBackend()
    if config.fl_backend == "deployment":
        tls = TlsFiles(config.ca_cert, config.fl_cert, config.fl_key)
        if config.fl_nodes == "external":
            return fl_server.DeploymentBackend(tls=tls, host=config.fl_superlink_host, port=config.fl_superlink_port,
                                               node_keys_dir=config.fl_keys_dir)
        return fl_server.DeploymentBackend(tls=tls)
    raise ValueError(f"setting fl_backend: expected in-process or deployment, got {config.fl_backend!r}")


def _now_ms() -> int:
    return int(time.time() * 1000)


class JobManager:
    """Training jobs: each runs in a thread of the server process that started it; every job is kept in the state.

    This process refreshes the heartbeat of its running jobs every ``heartbeat_s``; an open job whose heartbeat
    is older than ``stale_s`` (its server stopped or crashed) is marked failed when a server starts or reads it.
    Stopping this manager (``close``, at server shutdown) marks its own running jobs failed at once.
    """

    def __init__(self, db: State, cache: ArrayCache, backend: fl_server.Backend | None = None, *,
                 heartbeat_s: float = 10.0, stale_s: float = 60.0) -> None:
        if not 0 < heartbeat_s < stale_s:
            raise ValueError("the heartbeat must be shorter than the staleness window")
        self._db = db
        self._cache = cache
        self._backend = backend or fl_server.InProcessBackend()
        self.server_id = "srv-" + secrets.token_hex(8)
        self._heartbeat_s = heartbeat_s
        self._stale_ms = int(stale_s * 1000)
        self._live: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._beating: threading.Thread | None = None
        with db.write() as tx:
            self._settle(tx, _now_ms())

    # -- RPC entry points (called inside the boundary's transaction) --------------------------------------------

    def start(self, call: Call, req: StartTraining) -> Deferred:
        """Check, price and reserve now, with the job's record; the Deferred's ``compute`` starts the job and
        returns a ``StartedJob``."""
        call.annotate(grant_id=req.grant_id)
        template = fl_plans.get(call.tx, req.plan_hash)
        auth = policy.authorise(call, req.grant_id, Kind.FL_TRAINING, template.dataset, template.columns,
                                model_hash=req.plan_hash)
        info = auth.dataset
        part_col = info.schema.partition_column
        settings = fl_plans.settings_for(auth.grant, req.settings)
        plan = fl_plans.build_plan(template, settings, info)
        epsilon, delta = fl_server.plan_cost(plan)
        remaining = auth.budget.remaining
        if math.isinf(epsilon):  # no DP: no finite guarantee, so it takes everything that is left
            cost = remaining
            if cost.epsilon_nano == 0:
                raise SandboxError(ErrorCode.BUDGET_EXHAUSTED, "remaining epsilon 0")
        else:
            if delta > 0 and auth.grant.terms.budget.delta_atto == 0:
                raise SandboxError(ErrorCode.INVALID_ARGUMENT, "this grant has no delta budget for DP training")
            cost = ledger.cost_units(epsilon, delta)
        policy.charge(call, auth, cost, quota=1)
        job = Job("j-" + secrets.token_hex(10), call.principal.id, auth.grant.id, plan)
        fl_records.insert(call.tx, job_id=job.id, owner_id=job.owner, grant_id=job.grant_id, plan_hash=req.plan_hash,
                          dataset=template.dataset, settings=settings, plan=plan, charged=cost,
                          started_at_ms=call.now_ms, server_id=self.server_id)

        def launch() -> StartedJob:
            with self._lock:
                self._live[job.id] = job
            self._keep_beating()
            threading.Thread(target=self._run, args=(job, info, part_col), name=job.id, daemon=True).start()
            return StartedJob(job_id=job.id, reserved=cost)

        return Deferred(launch)

    def jobs_for(self, call: Call, limit: int = 0) -> JobList:
        """The caller's jobs, or every job for an administrator or auditor; newest first, at most ``limit``
        (0: ``DEFAULT_LISTED``; never more than ``MAX_LISTED``)."""
        self._settle(call.tx, call.now_ms)
        everyone = bool(call.principal.roles & {Role.ADMIN, Role.AUDITOR})
        found, more = fl_records.listed(call.tx, min(limit or DEFAULT_LISTED, MAX_LISTED),
                                        None if everyone else call.principal.id)
        return JobList(tuple(j.summary for j in found), more)

    def _own(self, call: Call, job_id: str) -> fl_records.StoredJob:
        """The caller's job as stored (an open job whose server stopped is marked failed first)."""
        job = fl_records.get(call.tx, job_id)
        if job is None or job.summary.owner_id != call.principal.id:
            raise SandboxError(ErrorCode.NOT_FOUND, "no such training job")
        call.annotate(grant_id=job.summary.grant_id)
        if job.open and self._settle(call.tx, call.now_ms, [job_id]):
            job = fl_records.get(call.tx, job_id) or job
        return job

    def _live_job(self, job: fl_records.StoredJob) -> Job | None:
        """The running job in this process, None if it has ended; an error if it runs in another server."""
        with self._lock:
            live = self._live.get(job.id)
        if live is None and job.open:
            raise SandboxError(ErrorCode.JOB_ELSEWHERE, "watch or cancel it through the server that started it")
        return live

    def watch(self, call: Call, job_id: str) -> Iterator[TrainingEvent]:
        live = self._live_job(self._own(call, job_id))
        if live is None:
            return iter(fl_records.events(call.tx, job_id))
        job = live

        def events() -> Iterator[TrainingEvent]:
            sent = 0
            while True:
                with job.changed:
                    while sent == len(job.events) and job.state not in TERMINAL:
                        job.changed.wait(timeout=1.0)
                    batch = job.events[sent:]
                    done = job.state in TERMINAL and sent + len(batch) == len(job.events)
                yield from batch
                sent += len(batch)
                if done:
                    return

        return events()

    def _completed(self, call: Call, job_id: str) -> tuple[fl_records.StoredJob, fl_server.TrainingPlan,
                                                           fl_records.FinalModel]:
        """The caller's finished job, its plan and its model; a revoked grant withholds the model."""
        job = self._own(call, job_id)
        grant = grants.get(call.tx, job.summary.grant_id)
        if grant is None or grant.revoked:
            raise SandboxError(ErrorCode.GRANT_REVOKED, "the model is withheld")
        plan, model = fl_records.plan_and_model(call.tx, job_id)
        if job.summary.state != "completed" or model is None:
            raise SandboxError(ErrorCode.JOB_NOT_COMPLETE, f"job is {job.summary.state}")
        return job, plan, model

    def result(self, call: Call, job_id: str) -> TrainingOutcome:
        job, plan, model = self._completed(call, job_id)
        return TrainingOutcome(
            job_id=job.id, metrics=model.metrics, charged=job.charged,
            weights=tuple(Tensor(shape=tuple(p.shape), values=tuple(p.ravel().tolist())) for p in model.params),
            history=tuple(fl_records.events(call.tx, job_id)), named=fl_named.named_model(plan, model.params))

    def register_model(self, call: Call, req: RegisterTrainedModel, *, rule: ReleaseRule) -> RegisteredModel:
        """A finished job's logistic model as a registry model for HE scoring, in raw column units.

        The researcher already holds these weights; what the server adds is a conversion that matches
        training's scaling exactly and a description stating where the model came from, which the
        administrator reads when an HE scenario names it. Sandbox columns whose term the balance rule would refuse
        as too small are dropped (``he_release.fold_small_terms``); the registry's own rules then apply (the release
        rule's: enough sandbox columns, balanced contributions, magnitudes; levels, bounds).
        """
        job, plan, model = self._completed(call, req.job_id)
        with engine_errors():
            pairs, bias = fl_server.as_linear(plan, list(model.params))
        private = list(req.private_features)
        columns = [c for c, _ in pairs]
        unknown = [p for p in private if p not in columns]
        if unknown or len(set(private)) != len(private) or not private:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, "private features must be distinct features of the "
                               f"trained plan, at least one ({', '.join(columns)})")
        weight = dict(pairs)
        bounds = {f.column: (f.lower, f.upper) for f in plan.features}
        public = tuple((c, w) for c, w in pairs if c not in private)
        dataset = job.summary.dataset
        schema = catalogue.get_dataset(call.tx, dataset).schema
        public, bias, dropped = he_release.fold_small_terms(public, bias, schema, rule)
        provenance = (f"Trained by federated job {job.id} under grant {job.summary.grant_id} "
                      f"(plan {job.summary.plan_hash[:16]}, {model.rounds_trained} rounds, epsilon "
                      f"{'none' if model.epsilon is None else f'{model.epsilon:.3g}'}). "
                      "Private features in raw units, clipped by the applicant to: "
                      + "; ".join(f"{p} [{bounds[p][0]:g}, {bounds[p][1]:g}]" for p in private) + ".")
        if dropped:
            provenance += (" Sandbox columns dropped because each moved a score less than a tenth as far as the "
                           "largest term, which the release rule refuses (their mid-range value folded into the bias): "
                           + ", ".join(f"{c} (contribution {x:.3g})" for c, x in dropped) + ".")
        spec = he_models.ModelSpec(
            name=req.name, kind="logistic", dataset=dataset, public_features=public,
            private_features=tuple((p, weight[p]) for p in private), bias=bias,
            description=(provenance + (" " + req.description if req.description else "")))
        model_hash = he_models.submit(call.tx, spec, submitted_by=call.principal.id, now_ms=call.now_ms, rule=rule)
        return RegisteredModel(model_hash=model_hash, canonical=spec.canonical())

    def cancel(self, call: Call, job_id: str) -> str:
        """The job's state after the request: "cancelling" until it stops."""
        stored = self._own(call, job_id)
        job = self._live_job(stored)
        if job is None:
            return stored.summary.state
        job.cancel.set()
        return "cancelling" if job.state not in TERMINAL else job.state

    # -- which jobs are alive ------------------------------------------------------------------------------------

    def _settle(self, tx: Tx, now_ms: int, job_ids: Sequence[str] | None = None) -> list[str]:
        """Mark failed the open jobs (of ``job_ids``, or all) whose server stopped: silent past the staleness
        window and not running here. Returns those marked."""
        stale = set(tx.training_job_stale(now_ms - self._stale_ms))
        with self._lock:
            stale -= set(self._live)
        if job_ids is not None:
            stale &= set(job_ids)
        marked = fl_records.abandon(tx, sorted(stale), now_ms=now_ms)
        if marked:
            log.warning("marked %d training job(s) failed: their server stopped while they ran", len(marked))
        return marked

    def _keep_beating(self) -> None:
        """Start the heartbeat of this process's running jobs, once."""
        with self._lock:
            if self._beating is None and not self._closed.is_set():
                self._beating = threading.Thread(target=self._beat, name="fl-heartbeat", daemon=True)
                self._beating.start()

    def _beat(self) -> None:
        while not self._closed.wait(self._heartbeat_s):
            with self._lock:
                if not self._live:
                    continue
            try:
                with self._db.write() as tx:
                    tx.training_job_beat(self.server_id, _now_ms())
            except Exception:  # noqa: BLE001 - a missed beat is retried; staleness allows several
                log.warning("training jobs' heartbeat not written", exc_info=True)

    def close(self) -> None:
        """At server shutdown: stop this process's jobs and record them failed (their charge stands)."""
        self._closed.set()
        with self._lock:
            live = list(self._live.values())
            self._live.clear()
        for job in live:
            job.cancel.set()
        if not live:
            return
        now = _now_ms()
        try:
            with self._db.write() as tx:
                for job in live:
                    self._end_in(tx, job, "failed", fl_records.STOPPED, now)
        except Exception:  # noqa: BLE001 - the next server to read them marks them failed once they are stale
            log.exception("could not record the stopped training jobs")

    # -- the background run ----------------------------------------------------------------------------------------

    def _partitions(self, plan: fl_server.TrainingPlan, info: DatasetInfo,
                    part_col: str) -> dict[str, fl_server.Partition]:
        names = [f.column for f in plan.features] + [plan.label.column, part_col]
        key = info.schema.person_key
        cols = self._cache.columns(info, list(dict.fromkeys(names + ([key] if key else []))))
        holders = info.schema.column(part_col).categories  # type: ignore[union-attr]
        parts: dict[str, fl_server.Partition] = {}
        for code, holder in enumerate(holders):
            rows = np.flatnonzero(np.asarray(cols[part_col]) == code)
            mine = {n: np.asarray(cols[n])[rows] for n in names}
            name = f"{part_col}-{holder}"  # the split depends on the holder's name, as a node preparing its rows uses
            parts[name] = fl_server.prepare_partition(
                plan, mine, groups=np.asarray(cols[key])[rows] if key else None, holder=name)
        return parts

    def _revoked(self, grant_id: str) -> bool:
        with self._db.read() as tx:
            grant = grants.get(tx, grant_id)
        return grant is None or grant.revoked or grant.terms.not_after_ms <= int(time.time() * 1000)

    def _record(self, job: Job, event: TrainingEvent, model: fl_records.FinalModel | None = None) -> None:
        """Store the event (and a completed job's model), then show it to this process's watchers; a job that
        already ended in the state (its server was stopped) stops instead."""
        if self._closed.is_set():
            job.cancel.set()
            return
        with self._db.write() as tx:
            kept = fl_records.publish(tx, event, now_ms=_now_ms(), model=model)
        if kept:
            job.publish(event, state=event.state)
        else:
            job.cancel.set()

    def _run(self, job: Job, info: DatasetInfo, part_col: str) -> None:
        plan = job.plan

        def on_round(r: fl_server.RoundReport) -> None:
            self._record(job, TrainingEvent(
                job_id=job.id, round=r.round, rounds=r.rounds, loss=r.loss, accuracy=r.accuracy,
                epsilon_spent=r.epsilon or 0.0, participants=tuple(r.participants), dropped=tuple(r.failed),
                state="running", message=round_message(r)))

        revoked = threading.Event()

        def should_stop() -> bool:
            if self._revoked(job.grant_id):
                revoked.set()
            return job.cancel.is_set() or revoked.is_set()

        try:
            try:
                backend = self._backend
                parts: Mapping[str, fl_server.Partition | None]
                if backend.external:  # each holder's own node prepares its rows: nothing is prepared here
                    holders = info.schema.column(part_col).categories  # type: ignore[union-attr]
                    parts = dict.fromkeys(f"{part_col}-{h}" for h in holders)
                else:
                    parts = self._partitions(plan, info, part_col)
                result = backend.run(plan, parts, on_round=on_round, should_stop=should_stop,
                                     person_key=info.schema.person_key or "")
                if self._revoked(job.grant_id):
                    self._end(job, "revoked", "the grant was revoked; the model is withheld")
                else:
                    final = result.final
                    metrics = tuple((k, float(v)) for k, v in (
                        ("loss", final.loss), ("accuracy", final.accuracy), ("epsilon", result.epsilon))
                        if v is not None)
                    self._end(job, "completed", "training finished", fl_records.FinalModel(
                        tuple(np.asarray(p, dtype=np.float64) for p in result.params), metrics, result.epsilon,
                        len(result.history)))
            except fl_server.TrainingCancelled:
                if revoked.is_set():
                    self._end(job, "revoked", "the grant was revoked; training stopped and the model is withheld")
                else:
                    self._end(job, "cancelled", "cancelled by the researcher; the charge stands")
            except fl_server.TrainingError as exc:
                self._end(job, "failed", f"training produced no model: {exc}")
            except Exception:  # noqa: BLE001 - a job must end with a state, never hang its watchers
                log.exception("job %s failed", job.id)
                self._end(job, "failed", "training failed")
        except Exception:  # noqa: BLE001 - the end could not be stored: once stale, the job is marked failed
            log.exception("job %s: its end was not recorded", job.id)
            job.publish(fl_records.end_event(job.id, None, job.plan.rounds, "failed", "training failed"), "failed")
        finally:
            with self._lock:
                self._live.pop(job.id, None)

    def _end(self, job: Job, state: str, message: str, model: fl_records.FinalModel | None = None) -> None:
        self._record(job, fl_records.end_event(job.id, job.events[-1] if job.events else None, job.plan.rounds,
                                               state, message), model)

    @staticmethod
    def _end_in(tx: Tx, job: Job, state: str, message: str, now_ms: int) -> None:
        """End ``job`` in transaction ``tx`` (at shutdown) and tell its watchers."""
        event = fl_records.end_event(job.id, job.events[-1] if job.events else None, job.plan.rounds, state, message)
        if fl_records.publish(tx, event, now_ms=now_ms):
            job.publish(event, state=state)
