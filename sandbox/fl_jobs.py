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
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

import fl_server
from fl_server.deployment import TlsFiles
from sandbox import catalogue, fl_plans, grants, he_models, he_release, ledger, policy
from sandbox.calls import Call, Deferred
from sandbox.columns import ArrayCache
from sandbox.compute_io import (
    JobSummary, RegisteredModel, RegisterTrainedModel, StartedJob, StartTraining, Tensor, TrainingEvent, TrainingOutcome,
    TrainingSettings,
)
from sandbox.config import ServerConfig
from sandbox.domain import Budget, ColumnType, DatasetInfo, Kind
from sandbox.errors import ErrorCode, SandboxError, engine_errors
from sandbox.he_release import ReleaseRule
from sandbox.state import State

TERMINAL = ("completed", "failed", "cancelled", "revoked")

log = logging.getLogger("sandbox.fl")


@dataclass
class Job:
    id: str
    owner: str
    grant_id: str
    plan: fl_server.TrainingPlan
    charged: Budget
    dataset: str = ""
    plan_hash: str = ""
    settings: TrainingSettings = field(default_factory=TrainingSettings)
    started_at_ms: int = 0
    state: str = "starting"
    message: str = ""
    events: list[TrainingEvent] = field(default_factory=list)
    result: fl_server.TrainingResult | None = None
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


class JobManager:
    """Training jobs of this server process, each run in a thread of its own."""

    def __init__(self, db: State, cache: ArrayCache, backend: fl_server.Backend | None = None) -> None:
        self._db = db
        self._cache = cache
        self._backend = backend or fl_server.InProcessBackend()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    # -- RPC entry points (called inside the boundary's transaction) --------------------------------------------

    def start(self, call: Call, req: StartTraining) -> Deferred:
        """Check, price and reserve now; the Deferred's ``compute`` starts the job and returns a ``StartedJob``."""
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
        job = Job("j-" + secrets.token_hex(10), call.principal.id, auth.grant.id, plan, cost,
                  dataset=template.dataset, plan_hash=req.plan_hash, settings=settings, started_at_ms=call.now_ms)

        def launch() -> StartedJob:
            with self._lock:
                self._jobs[job.id] = job
            threading.Thread(target=self._run, args=(job, info, part_col), name=job.id, daemon=True).start()
            return StartedJob(job_id=job.id, reserved=cost)

        return Deferred(launch)

    def jobs_of(self, call: Call) -> list[JobSummary]:
        """The caller's jobs on this server, newest first (jobs live in the server that started them)."""
        with self._lock:
            mine = [j for j in self._jobs.values() if j.owner == call.principal.id]
        found = []
        for job in sorted(mine, key=lambda j: (-j.started_at_ms, j.id)):
            with job.changed:
                last = job.events[-1] if job.events else None
                state = job.state
            found.append(JobSummary(job.id, job.grant_id, job.plan_hash, state, last.round if last else 0,
                                    last.rounds if last else job.plan.rounds, last.epsilon_spent if last else 0.0,
                                    job.started_at_ms, job.settings))
        return found

    def job_of(self, call: Call, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.owner != call.principal.id:
            raise SandboxError(ErrorCode.NOT_FOUND, "no such training job")
        call.annotate(grant_id=job.grant_id)
        return job

    def watch(self, call: Call, job_id: str) -> Iterator[TrainingEvent]:
        job = self.job_of(call, job_id)

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

    def _completed(self, call: Call, job_id: str) -> tuple[Job, fl_server.TrainingResult]:
        """The caller's finished job and its model; a revoked grant withholds the model."""
        job = self.job_of(call, job_id)
        grant = grants.get(call.tx, job.grant_id)
        if grant is None or grant.revoked:
            raise SandboxError(ErrorCode.GRANT_REVOKED, "the model is withheld")
        if job.state != "completed" or job.result is None:
            raise SandboxError(ErrorCode.JOB_NOT_COMPLETE, f"job is {job.state}")
        return job, job.result

    def result(self, call: Call, job_id: str) -> TrainingOutcome:
        job, res = self._completed(call, job_id)
        final = res.final
        metrics = tuple((k, float(v)) for k, v in (
            ("loss", final.loss), ("accuracy", final.accuracy), ("epsilon", res.epsilon)) if v is not None)
        return TrainingOutcome(
            job_id=job.id, metrics=metrics, charged=job.charged,
            weights=tuple(Tensor(shape=tuple(p.shape), values=tuple(np.asarray(p, dtype=float).ravel().tolist()))
                          for p in res.params),
            history=tuple(job.events))

    def register_model(self, call: Call, req: RegisterTrainedModel, *, rule: ReleaseRule) -> RegisteredModel:
        """A finished job's logistic model as a registry model for HE scoring, in raw column units.

        The researcher already holds these weights; what the server adds is a conversion that matches
        training's scaling exactly and a description stating where the model came from, which the
        administrator reads when an HE scenario names it. Sandbox columns whose term the balance rule would refuse
        as too small are dropped (``he_release.fold_small_terms``); the registry's own rules then apply (the release
        rule's: enough sandbox columns, balanced contributions, magnitudes; levels, bounds).
        """
        job, res = self._completed(call, req.job_id)
        with engine_errors():
            pairs, bias = fl_server.as_linear(job.plan, res.params)
        private = list(req.private_features)
        columns = [c for c, _ in pairs]
        unknown = [p for p in private if p not in columns]
        if unknown or len(set(private)) != len(private) or not private:
            raise SandboxError(ErrorCode.INVALID_ARGUMENT, "private features must be distinct features of the "
                               f"trained plan, at least one ({', '.join(columns)})")
        weight = dict(pairs)
        bounds = {f.column: (f.lower, f.upper) for f in job.plan.features}
        public = tuple((c, w) for c, w in pairs if c not in private)
        schema = catalogue.get_dataset(call.tx, job.dataset).schema
        public, bias, dropped = he_release.fold_small_terms(public, bias, schema, rule)
        provenance = (f"Trained by federated job {job.id} under grant {job.grant_id} (plan {job.plan_hash[:16]}, "
                      f"{len(res.history)} rounds, epsilon {'none' if res.epsilon is None else f'{res.epsilon:.3g}'}). "
                      "Private features in raw units, clipped by the applicant to: "
                      + "; ".join(f"{p} [{bounds[p][0]:g}, {bounds[p][1]:g}]" for p in private) + ".")
        if dropped:
            provenance += (" Sandbox columns dropped because each moved a score less than a tenth as far as the "
                           "largest term, which the release rule refuses (their mid-range value folded into the bias): "
                           + ", ".join(f"{c} (contribution {x:.3g})" for c, x in dropped) + ".")
        spec = he_models.ModelSpec(
            name=req.name, kind="logistic", dataset=job.dataset, public_features=public,
            private_features=tuple((p, weight[p]) for p in private), bias=bias,
            description=(provenance + (" " + req.description if req.description else "")))
        model_hash = he_models.submit(call.tx, spec, submitted_by=call.principal.id, now_ms=call.now_ms, rule=rule)
        return RegisteredModel(model_hash=model_hash, canonical=spec.canonical())

    def cancel(self, call: Call, job_id: str) -> str:
        """The job's state after the request: "cancelling" until it stops."""
        job = self.job_of(call, job_id)
        job.cancel.set()
        return "cancelling" if job.state not in TERMINAL else job.state

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

    def _run(self, job: Job, info: DatasetInfo, part_col: str) -> None:
        plan = job.plan

        def on_round(r: fl_server.RoundReport) -> None:
            job.publish(TrainingEvent(
                job_id=job.id, round=r.round, rounds=r.rounds, loss=r.loss, accuracy=r.accuracy,
                epsilon_spent=r.epsilon or 0.0, participants=tuple(r.participants), dropped=tuple(r.failed),
                state="running", message=round_message(r)),
                state="running")

        revoked = threading.Event()

        def should_stop() -> bool:
            if self._revoked(job.grant_id):
                revoked.set()
            return job.cancel.is_set() or revoked.is_set()

        try:
            backend = self._backend
            parts: Mapping[str, fl_server.Partition | None]
            if backend.external:  # each holder's own node prepares its rows: nothing is prepared here
                holders = info.schema.column(part_col).categories  # type: ignore[union-attr]
                parts = dict.fromkeys(f"{part_col}-{h}" for h in holders)
            else:
                parts = self._partitions(plan, info, part_col)
            job.result = backend.run(plan, parts, on_round=on_round, should_stop=should_stop,
                                     person_key=info.schema.person_key or "")
            if self._revoked(job.grant_id):
                job.result = None
                self._end(job, "revoked", "the grant was revoked; the model is withheld")
            else:
                self._end(job, "completed", "training finished")
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

    @staticmethod
    def _end(job: Job, state: str, message: str) -> None:
        last = job.events[-1] if job.events else None
        loss = accuracy = None
        if last is not None and last.loss is not None:  # the last evaluation, if one was released
            loss, accuracy = last.loss, (last.accuracy if last.accuracy is not None else 0.0)
        job.publish(TrainingEvent(job_id=job.id, round=last.round if last else 0, rounds=job.plan.rounds,
                                  epsilon_spent=last.epsilon_spent if last else 0.0, state=state, message=message,
                                  loss=loss, accuracy=accuracy), state=state)
