"""What does federated training cost through the sandbox? StartTraining/WatchTraining via the SDK against fl_server run directly.

    .venv/bin/python benchmarks/bench_fl_training.py            # full run (about 3 minutes on 2 cores)
    .venv/bin/python benchmarks/bench_fl_training.py --quick    # smoke run: 3 rounds, 1 repetition, no SuperLink

Starts a real TLS sandbox server in this process on a free port, in a fresh data
directory, imports the bundled RAND HIE table (its six sites are the six data
holders), enrols a researcher, registers the plan of tests/integration/test_fl_integration.py
(logistic model, eight features, meddol above 100) and times a 6-holder x 10-round
training two ways, interleaved repetition by repetition after one warm-up each:

* sandbox: ``ResearcherClient.start_training`` then ``watch_training`` until the
  ``completed`` event, through the SDK: TLS, Ed25519 signature, policy, pricing by
  the accountant (opendp), the ledger reservation and its audit entry (one fsync'd
  transaction); then, in the job's thread, the six partitions built from the
  server's column cache, ``fl_server.InProcessBackend().run``, a revocation check
  before every round, and each round's event streamed back;
* plain Flower: the same ``TrainingPlan`` (the very one the server built for the
  latest sandbox job, captured in this process: same settings, same seed, so the
  same train/held-out split) and the same six partitions (built here beforehand by
  the server's own ``JobManager._partitions``, timed apart), then
  ``fl_server.InProcessBackend().run(...)`` called directly: Flower's ServerApp
  driving the same Message-API strategy (FedAvg, with opendp's fixed clipping under
  DP) over the in-process grid, one ClientApp node per holder, no sandbox.

Both with DP off and on (noise multiplier 1.0, clipping norm 1.0, delta 1e-6).
A second part does the same with Flower's deployment runtime (``fl_backend =
"deployment"``: a SuperLink and one SuperNode process per holder, on localhost):
``fl_server.DeploymentBackend(tls=...).run`` directly, and through a second sandbox server
configured with ``fl_backend="deployment"``. Those processes poll (a SuperNode
sleeps 3 s between empty pulls) and start a ClientApp process per message, so a
round takes seconds; by default that part runs fewer rounds, once each way, and
splits start-up from round time. A third part reports peak memory: this process's
(server and client included) and the runtime processes' (sampled from /proc while
they run, and ``RUSAGE_CHILDREN`` after they are reaped).

The sandbox and plain runs above train with secure aggregation off (``secure_aggregation="off"``; the
sandbox's default for six holders is on). A fourth part times Flower's SecAgg+ (``fl_server.secagg``) on
against off, both ways through ``backend.run`` directly, with the same plan (DP on) and partitions: in-process
interleaved repetition by repetition, and on the deployment runtime once each, and prints on/off per round.

To split the sandbox's time without editing the server, the benchmark wraps, in
its own process only, ``JobManager._partitions``, ``JobManager._revoked``,
``Job.publish``, ``fl_server.plan_cost`` and the backends' ``run`` with timers. It is a benchmark,
not a test: it asserts nothing about times (STYLE.md 14).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import flwr  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import fl_server  # noqa: E402
from fl_server.runtime import TlsFiles, descendants  # noqa: E402
from clients import AdminClient, ResearcherClient, generate_key, public_key_of  # noqa: E402
from sandbox import catalogue, fl_jobs  # noqa: E402
from sandbox.config import ServerConfig, load_config  # noqa: E402
from sandbox.datadir import init_data_dir  # noqa: E402
from sandbox.domain import DatasetInfo  # noqa: E402
from sandbox.columns import ArrayCache  # noqa: E402
from sandbox.server import RunningServer, start_server  # noqa: E402
from sandbox.state.sqlite import SqliteTx  # noqa: E402

DATA = ROOT / "data"
FEATURES = ["xage", "female", "educdec", "lfam", "coins", "linc", "disea", "physlm"]
LABEL, THRESHOLD = "meddol", 100.0
LOCAL_EPOCHS, LEARNING_RATE = 1, 0.5
#: (clipping norm, noise multiplier, delta) as passed to ResearcherClient.start_training; zeros = no DP.
DP_SETTINGS = {"off": (0.0, 0.0, 0.0), "on": (1.0, 1.0, 1e-6)}
DEFAULT_ROUNDS, QUICK_ROUNDS = 10, 3
DEFAULT_REPS, QUICK_REPS = 5, 1
DEFAULT_DEPLOY_ROUNDS, DEFAULT_DEPLOY_REPS = 3, 1
AIM = 1.1  # the aim for sandbox/plain in-process with DP on (printed, never asserted)
SANDBOX, PLAIN = "sandbox (SDK: StartTraining + WatchTraining)", "plain Flower (backend.run directly)"
MIB = 1024.0


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _s(x: float) -> str:
    if x != x:  # nan
        return "-"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def _mib_from_kib(kib: float) -> str:
    return f"{kib / MIB:,.0f}"


# ---------------------------------------------------------------------------------------------------------------------
# Timers around the server's own steps (this process only)


@dataclass
class JobTimes:
    """When one sandbox job did what (perf_counter instants in this process), recorded by the wrappers."""

    part_start: float = float("nan")
    part_end: float = float("nan")
    run_start: float = float("nan")
    run_end: float = float("nan")
    revoked_calls: int = 0
    revoked: float = 0.0  # seconds in JobManager._revoked (a read transaction), all calls
    published: list[float] = field(default_factory=list)  # instants each "running" event was published
    startup: float = float("nan")  # deployment: processes up until the ServerApp started

    @property
    def partitions(self) -> float:
        return self.part_end - self.part_start

    @property
    def run(self) -> float:
        return self.run_end - self.run_start


class Probes:
    """Wraps JobManager._partitions/_revoked, fl_server.plan_cost and the backends' run with timers."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobTimes] = {}
        self.plan_cost: list[float] = []
        self.plans: dict[str, fl_server.TrainingPlan] = {}
        self.shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        self._saved: list[tuple[object, str, object]] = []

    def _job(self) -> JobTimes | None:
        name = threading.current_thread().name
        return self.jobs.setdefault(name, JobTimes()) if name.startswith("j-") else None

    def install(self) -> None:
        probes = self

        def wrap(owner: object, name: str, make: Callable[[Any], Any]) -> None:
            original = getattr(owner, name)
            self._saved.append((owner, name, original))
            setattr(owner, name, make(original))

        def partitions(original: Any) -> Any:
            @functools.wraps(original)
            def timed(self: Any, plan: Any, info: Any, part_col: Any) -> Any:
                t0 = time.perf_counter()
                parts = original(self, plan, info, part_col)
                job = probes._job()
                if job is not None:
                    job.part_start, job.part_end = t0, time.perf_counter()
                    name = threading.current_thread().name
                    probes.plans[name] = plan
                    probes.shapes[name] = {h: p.x.shape + p.x_eval.shape for h, p in parts.items()}
                return parts
            return timed

        def revoked(original: Any) -> Any:
            @functools.wraps(original)
            def timed(self: Any, grant_id: str) -> Any:
                t0 = time.perf_counter()
                try:
                    return original(self, grant_id)
                finally:
                    job = probes._job()
                    if job is not None:
                        job.revoked_calls += 1
                        job.revoked += time.perf_counter() - t0
            return timed

        def run(original: Any) -> Any:
            @functools.wraps(original)
            def timed(self: Any, *a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return original(self, *a, **kw)
                finally:
                    job = probes._job()
                    if job is not None:
                        job.run_start, job.run_end = t0, time.perf_counter()
                        job.startup = getattr(self, "last_startup_seconds", float("nan"))
            return timed

        def publish(original: Any) -> Any:
            @functools.wraps(original)
            def timed(self: Any, event: Any, state: Any = None) -> Any:
                job = probes._job()
                if job is not None and event.state == "running":
                    job.published.append(time.perf_counter())
                return original(self, event, state)
            return timed

        def plan_cost(original: Any) -> Any:
            @functools.wraps(original)
            def timed(*a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return original(*a, **kw)
                finally:
                    probes.plan_cost.append(time.perf_counter() - t0)
            return timed

        wrap(fl_jobs.JobManager, "_partitions", partitions)
        wrap(fl_jobs.JobManager, "_revoked", revoked)
        wrap(fl_jobs.Job, "publish", publish)
        wrap(fl_server.InProcessBackend, "run", run)
        wrap(fl_server.DeploymentBackend, "run", run)
        wrap(fl_server, "plan_cost", plan_cost)  # sandbox.fl_jobs calls fl_server.plan_cost(...)

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


# ---------------------------------------------------------------------------------------------------------------------
# Runtime processes' memory (deployment backend): sampled from /proc while they live

KINDS = {"flower-superlink": "SuperLink", "flower-supernode": "SuperNode", "flower-superexec": "SuperExec",
         "flwr-serverapp": "ServerApp (flwr-serverapp)", "flwr-clientapp": "ClientApp (flwr-clientapp)",
         "flwr": "flwr run (submits the app)"}


def _proc_kind(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    for arg in argv[:2]:
        base = os.path.basename(arg.decode(errors="replace"))
        if base in KINDS:
            return KINDS[base]
    return "other: " + os.path.basename(argv[0].decode(errors="replace")) if argv and argv[0] else "?"


def _proc_memory(pid: int) -> tuple[int, int, int] | None:
    """(VmRSS, VmHWM, Pss) in KiB; Pss (proportional set size) splits shared pages among their users."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    got = {}
    for line in status.splitlines() + rollup.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:", "Pss:")):
            got[line.split(":")[0]] = int(line.split()[1])
    return (got["VmRSS"], got["VmHWM"], got["Pss"]) if len(got) == 3 else None


class ProcSampler:
    """Every ``interval`` s: Flower's runtime processes among this process's descendants, their peak RSS
    (VmHWM, per process) and their summed RSS and PSS at once. Other descendants (a fork of this process
    before its exec, helper tools) are left out."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak: dict[tuple[int, str], tuple[str, int]] = {}  # (pid, start time) -> (kind, max VmHWM KiB)
        self.peak_rss_kib = self.peak_pss_kib = self.peak_count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="proc-sampler", daemon=True)

    def __enter__(self) -> ProcSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def kinds(self) -> dict[str, list[int]]:
        """Kind -> each process's largest VmHWM seen (KiB)."""
        out: dict[str, list[int]] = {}
        for kind, hwm in self.peak.values():
            out.setdefault(kind, []).append(hwm)
        return out

    def sample(self) -> None:
        rss_sum, pss_sum, count = 0, 0, 0
        for pid, start in descendants([os.getpid()]):
            kind = _proc_kind(pid)  # read every time: a fork is "python" until it execs
            if kind not in KINDS.values():
                continue
            mem = _proc_memory(pid)
            if mem is None:
                continue
            rss_sum, pss_sum, count = rss_sum + mem[0], pss_sum + mem[2], count + 1
            key = (pid, start)
            self.peak[key] = (kind, max(mem[1], self.peak.get(key, ("", 0))[1]))
        if rss_sum > self.peak_rss_kib:
            self.peak_rss_kib, self.peak_count = rss_sum, count
        self.peak_pss_kib = max(self.peak_pss_kib, pss_sum)


# ---------------------------------------------------------------------------------------------------------------------
# One training run, either way


@dataclass
class Run:
    way: str
    backend: str  # in-process | deployment
    dp: str  # off | on
    rounds: int
    t0: float  # perf_counter instant of the call
    total: float  # call -> completion (sandbox: the "completed" event received)
    round_at: list[float]  # seconds after the call at which each round's report arrived
    accuracy: float | None = None
    startup: float = float("nan")  # deployment: process start-up until the ServerApp started
    start_rpc: float = float("nan")  # sandbox: StartTraining round trip
    result_rpc: float = float("nan")  # sandbox: GetTrainingResult round trip (not in total)
    times: JobTimes | None = None  # sandbox: the server-side instants
    plan_cost: float = float("nan")
    plan: fl_server.TrainingPlan | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    params: tuple[np.ndarray, ...] = ()  # plain runs: the final model

    @property
    def per_round(self) -> float:
        return self.total / self.rounds

    @property
    def steady(self) -> float:
        """Median gap between consecutive round reports: a round without the fixed costs before and after."""
        gaps = [b - a for a, b in zip(self.round_at, self.round_at[1:])]
        return median(gaps) if gaps else float("nan")

    @property
    def to_round1(self) -> float:
        return self.round_at[0] if self.round_at else float("nan")

    @property
    def after_last(self) -> float:
        return self.total - self.round_at[-1] if self.round_at else float("nan")

    # --- the sandbox's timeline, from the server-side instants (NaN for a plain run)

    def _t(self, name: str) -> float:
        return getattr(self.times, name) - self.t0 if self.times is not None else float("nan")

    @property
    def before_partitions(self) -> float:
        """Call -> the job thread starts building partitions: the StartTraining RPC's server side, thread start."""
        return self._t("part_start")

    @property
    def partitions(self) -> float:
        return self.times.partitions if self.times is not None else float("nan")

    @property
    def engine(self) -> float:
        return self.times.run if self.times is not None else float("nan")

    @property
    def revoked(self) -> float:
        return self.times.revoked if self.times is not None else float("nan")

    @property
    def after_run(self) -> float:
        """run() returned -> "completed" received: the final revocation check, the event, the stream."""
        return self.total - self._t("run_end")

    @property
    def delivery(self) -> float:
        """Median lag from a round event's publication in the job thread to its arrival through the SDK."""
        if self.times is None or len(self.times.published) != len(self.round_at):
            return float("nan")
        return median([self.t0 + got - pub for got, pub in zip(self.round_at, self.times.published)])


@dataclass
class Env:
    """A running sandbox server with rand_hie imported and a researcher with a registered plan."""

    label: str
    running: RunningServer
    cfg: ServerConfig
    admin: AdminClient
    lab: ResearcherClient
    plan_hash: str
    info: DatasetInfo
    grants: int = 0

    def grant(self) -> str:
        """A fresh FL_TRAINING grant per job (without DP a job takes the grant's whole remaining budget)."""
        self.grants += 1
        s = self.lab.apply(title=f"FL benchmark {self.grants}", purpose="Measure what federated training costs",
                           legal_basis="Benchmark", kind="FL_TRAINING", datasets={"rand_hie": [*FEATURES, LABEL]},
                           model_hash=self.plan_hash, epsilon=100.0, delta="1e-5", quota=2)
        g = self.admin.approve(s.id).grant
        assert g is not None
        return g.id

    def close(self) -> None:
        self.lab.close()
        self.admin.close()
        self.running.stop(grace=1)


def start_env(parent: Path, label: str, fl_backend: str) -> tuple[Env, float]:
    """What ``sandbox init`` and ``sandbox serve --port 0`` do, then the import and enrolment (set-up, not timed)."""
    result = init_data_dir(parent / label)
    cfg = load_config(result.config.data_dir, flags={"port": 0, "fl_backend": fl_backend}, environ={})
    running = start_server(cfg)
    address = f"127.0.0.1:{running.port}"
    admin = AdminClient(address, key=result.admin_key_path, ca=cfg.ca_cert)
    t0 = time.perf_counter()
    imported = admin.import_dataset(DATA / "schemas" / "rand_hie.toml", DATA / "rand_hie.csv.gz")
    seconds = time.perf_counter() - t0
    key = generate_key()
    admin.enrol(name="Bench Lab", organisation="Bench Lab Ltd", roles=["researcher"], public_key=public_key_of(key))
    lab = ResearcherClient(address, key=key, ca=cfg.ca_cert)
    plan_hash = lab.register_plan(dataset="rand_hie", features=FEATURES, label=LABEL, label_threshold=THRESHOLD)
    info = catalogue.get_dataset(SqliteTx(running.db.connection()), "rand_hie")
    assert imported.rows_imported > 0
    return Env(label, running, cfg, admin, lab, plan_hash, info), seconds


def run_sandbox(env: Env, probes: Probes, backend: str, rounds: int, dp: str) -> Run:
    grant = env.grant()  # set-up, not timed
    costs_before = len(probes.plan_cost)
    t0 = time.perf_counter()
    clip, noise, delta = DP_SETTINGS[dp]
    job = env.lab.start_training(grant, env.plan_hash, rounds=rounds, local_epochs=LOCAL_EPOCHS,
                                 learning_rate=LEARNING_RATE, clipping_norm=clip, noise_multiplier=noise, delta=delta,
                                 secure_aggregation="off")
    start_rpc = time.perf_counter() - t0
    round_at: list[float] = []
    last = None
    for event in env.lab.watch_training(job):
        if event.state == "running":
            round_at.append(time.perf_counter() - t0)
        last = event
    total = time.perf_counter() - t0
    if last is None or last.state != "completed":
        raise RuntimeError(f"sandbox job ended {last.state if last else 'without events'}: "
                           f"{last.message if last else ''}")
    t1 = time.perf_counter()
    result = env.lab.training_result(job)
    result_rpc = time.perf_counter() - t1
    times = probes.jobs.get(job)
    costs = probes.plan_cost[costs_before:]
    return Run(SANDBOX, backend, dp, rounds, t0, total, round_at, accuracy=result.metrics.get("accuracy"),
               startup=times.startup if times else float("nan"), start_rpc=start_rpc, result_rpc=result_rpc,
               times=times, plan_cost=sum(costs) if costs else float("nan"), plan=probes.plans.get(job),
               shapes=probes.shapes.get(job, {}))


def plain_partitions(env: Env, cache: ArrayCache, plan: fl_server.TrainingPlan) -> tuple[dict[str, object], float]:
    """The six partitions the server feeds for ``plan``, built here by the server's own code (timed apart)."""
    t0 = time.perf_counter()
    parts = fl_jobs.JobManager(env.running.db, cache)._partitions(plan, env.info, env.info.schema.partition_column)
    return parts, time.perf_counter() - t0


def run_plain(backend_name: str, plan: fl_server.TrainingPlan, parts: dict[str, object], dp: str,
              cfg: ServerConfig) -> Run:
    # the deployment runtime as the sandbox builds it (fl_jobs.backend_for): TLS with the data directory's files
    backend = (fl_server.InProcessBackend() if backend_name == "in-process"
               else fl_server.DeploymentBackend(tls=TlsFiles(cfg.ca_cert, cfg.server_cert, cfg.server_key)))
    round_at: list[float] = []
    t0 = time.perf_counter()
    result = backend.run(plan, parts,  # type: ignore[arg-type]
                         on_round=lambda r: round_at.append(time.perf_counter() - t0), should_stop=lambda: False)
    total = time.perf_counter() - t0
    return Run(PLAIN, backend_name, dp, plan.rounds, t0, total, round_at, accuracy=result.final.accuracy,
               startup=getattr(backend, "last_startup_seconds", float("nan")), plan=plan, params=result.params,
               shapes={h: p.x.shape + p.x_eval.shape for h, p in parts.items()})  # type: ignore[attr-defined]


def secure_vs_plain(backend_name: str, plan: fl_server.TrainingPlan, parts: dict[str, object], cfg: ServerConfig,
                    rounds: int, reps: int, console: Console) -> dict[bool, list[Run]]:
    """``plan`` with secure aggregation off and on, ``reps`` times each, interleaved (after one warm-up each
    in-process)."""
    plans = {on: dataclasses.replace(plan, rounds=rounds, secure_aggregation=on, min_holders=3 if on else 2)
             for on in (False, True)}
    runs: dict[bool, list[Run]] = {False: [], True: []}
    warmup = 1 if backend_name == "in-process" else 0
    held_out = [p for p in parts.values() if isinstance(p, fl_server.Partition)]
    x_eval = np.vstack([p.x_eval for p in held_out])
    y_eval = np.concatenate([p.y_eval for p in held_out])
    for rep in range(warmup + reps):
        for on in (False, True):
            run = run_plain(backend_name, plans[on], parts, "on" if plan.dp else "off", cfg)
            # the final model on every holder's held-out rows (under DP the run itself releases no metric)
            run.accuracy = fl_server.evaluate(plans[on], list(run.params), x_eval, y_eval).accuracy
            console.print(f"  {backend_name:<10} secure aggregation {'on ' if on else 'off'} {rounds:>2} rounds "
                          f"{'warm-up' if rep < warmup else f'rep {rep - warmup + 1}/{reps}':<9} "
                          f"{run.total:8.3f} s, steady round {run.steady:.3f} s, accuracy {run.accuracy:.3f}", highlight=False)
            if rep >= warmup:
                runs[on].append(run)
    return runs


def round_time(runs: list[Run]) -> float:
    """Median seconds a round takes: the steady gap between reports, or the whole run's share of one round."""
    steady = [r.steady for r in runs if math.isfinite(r.steady)]
    return median(steady) if steady else median([r.per_round for r in runs])


# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    backend: str
    dp: str
    rounds: int
    sandbox: list[Run] = field(default_factory=list)
    plain: list[Run] = field(default_factory=list)
    partition_build: list[float] = field(default_factory=list)  # plain side, not in its total
    mismatch: str = ""
    samplers: dict[str, ProcSampler] = field(default_factory=dict)  # deployment: first run of each way

    @property
    def key(self) -> str:
        return f"{self.backend.replace('-', '')}.dp_{self.dp}"

    def med(self, way: str, attr: str) -> float:
        runs = self.sandbox if way == SANDBOX else self.plain
        return median([getattr(r, attr) for r in runs])

    def ratio(self, attr: str) -> float:
        return ratio(self.med(SANDBOX, attr), self.med(PLAIN, attr))


def measure(env: Env, probes: Probes, cache: ArrayCache, case: Case, reps: int, warmup: int, console: Console,
            sample: bool = False) -> None:
    """``warmup`` + ``reps`` repetitions, each a sandbox job and a plain run, the order alternating.

    The plain run trains the very plan the server built for the latest sandbox job (same settings and seed,
    so the same train/held-out split), on partitions built here by the server's own code.
    """
    plan: fl_server.TrainingPlan | None = None
    for i in range(warmup + reps):
        measured = i >= warmup
        tag = f"rep {i - warmup + 1}/{reps}" if measured else "warm-up"
        got: dict[str, Run] = {}
        built = float("nan")
        for way in (("sandbox", "plain") if i % 2 == 0 or plan is None else ("plain", "sandbox")):
            sampler = ProcSampler() if sample and way not in case.samplers else None
            if sampler is not None:
                sampler.__enter__()
            try:
                if way == "sandbox":
                    got[way] = run_sandbox(env, probes, case.backend, case.rounds, case.dp)
                else:
                    assert plan is not None
                    parts, built = plain_partitions(env, cache, plan)
                    got[way] = run_plain(case.backend, plan, parts, case.dp, env.cfg)
            finally:
                if sampler is not None:
                    sampler.__exit__()
                    case.samplers[way] = sampler
            if way == "sandbox":
                plan = got[way].plan
                if plan is None:
                    raise RuntimeError("the server's plan was not captured")
        sb, pl = got["sandbox"], got["plain"]
        console.print(f"  {case.backend:<10} DP {case.dp:<3} {case.rounds:>2} rounds {tag:<9} sandbox "
                      f"{sb.total:7.3f} s   plain {pl.total:7.3f} s", highlight=False)
        if i % 2 == 0 and (pl.plan is None or sb.plan is None or pl.plan.digest != sb.plan.digest
                           or pl.shapes != sb.shapes):
            case.mismatch = case.mismatch or f"the plain run's plan or partitions differ from the server's: " \
                                             f"server {sb.shapes}, plain {pl.shapes}"
        if measured:
            case.sandbox.append(sb)
            case.plain.append(pl)
            case.partition_build.append(built)


# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK_ROUNDS} rounds, {QUICK_REPS} repetition, no deployment part")
    ap.add_argument("--rounds", type=int, default=None, help=f"rounds, in-process (default {DEFAULT_ROUNDS})")
    ap.add_argument("--reps", type=int, default=None,
                    help=f"measured repetitions per way, in-process (default {DEFAULT_REPS}), after one warm-up")
    ap.add_argument("--deploy-rounds", type=int, default=None,
                    help=f"rounds with the SuperLink backend, 0 skips it (default {DEFAULT_DEPLOY_ROUNDS}; "
                         "--quick 0; a round takes seconds there)")
    ap.add_argument("--deploy-reps", type=int, default=DEFAULT_DEPLOY_REPS,
                    help=f"repetitions per way with the SuperLink backend (default {DEFAULT_DEPLOY_REPS})")
    ap.add_argument("--dir", type=Path, default=None, help="where the temporary data directories go")
    args = ap.parse_args(argv)
    q = args.quick
    rounds = args.rounds or (QUICK_ROUNDS if q else DEFAULT_ROUNDS)
    reps = args.reps or (QUICK_REPS if q else DEFAULT_REPS)
    deploy_rounds = args.deploy_rounds if args.deploy_rounds is not None else (0 if q else DEFAULT_DEPLOY_ROUNDS)
    if rounds <= 0 or reps <= 0 or deploy_rounds < 0 or args.deploy_reps <= 0:
        ap.error("--rounds, --reps and --deploy-reps must be positive, --deploy-rounds not negative")

    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs 4 INFO lines a round; both ways alike
    console = Console(width=max(150, Console().width))
    load = os.getloadavg()
    console.print(f"[bold]FL training benchmark[/]  python {platform.python_version()}, flwr {flwr.__version__}, "
                  f"grpcio {grpc.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, {platform.machine()}, "
                  f"load average {load[0]:.1f}; rand_hie, 6 holders (sites 1..6), logistic model on "
                  f"{len(FEATURES)} features, FedAvg, {LOCAL_EPOCHS} local epoch, learning rate {LEARNING_RATE}; "
                  "DP on = clipping norm 1.0, noise multiplier 1.0, delta 1e-6", highlight=False)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_after_inproc = 0
    probes = Probes()
    probes.install()
    failed = False
    inproc: list[Case] = []
    deploy: list[Case] = []
    secure: dict[str, dict[bool, list[Run]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="sandbox-bench-fl-", dir=args.dir) as tmp:
            env, imported = start_env(Path(tmp), "inproc", "in-process")
            console.print(f"server 127.0.0.1:{env.running.port} (fl_backend=in-process); set-up, not measured: "
                          f"rand_hie imported in {imported:.1f} s, one FL_TRAINING grant per job", highlight=False)
            try:
                cache = ArrayCache(env.cfg.datasets_dir)
                for dp in DP_SETTINGS:
                    case = Case("in-process", dp, rounds)
                    inproc.append(case)
                    measure(env, probes, cache, case, reps, 1, console)
                secure_plan = next((r.plan for c in reversed(inproc) for r in c.sandbox if r.plan is not None), None)
                if secure_plan is not None:
                    secure_parts, _ = plain_partitions(env, cache, secure_plan)
                    secure["in-process"] = secure_vs_plain("in-process", secure_plan, secure_parts, env.cfg, rounds,
                                                           reps, console)
            finally:
                env.close()
            rss_after_inproc = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if deploy_rounds:
                env, imported = start_env(Path(tmp), "deploy", "deployment")
                console.print(f"second server 127.0.0.1:{env.running.port} (fl_backend=deployment); rand_hie "
                              f"imported in {imported:.1f} s", highlight=False)
                try:
                    case = Case("deployment", "on", deploy_rounds)
                    deploy.append(case)
                    measure(env, probes, ArrayCache(env.cfg.datasets_dir), case, args.deploy_reps, 0, console,
                            sample=True)
                    secure_plan = next((r.plan for r in case.sandbox if r.plan is not None), None)
                    if secure_plan is not None:
                        secure_parts, _ = plain_partitions(env, ArrayCache(env.cfg.datasets_dir), secure_plan)
                        secure["deployment"] = secure_vs_plain("deployment", secure_plan, secure_parts, env.cfg,
                                                               deploy_rounds, args.deploy_reps, console)
                finally:
                    env.close()
    except Exception as exc:  # noqa: BLE001 -- report and exit 1
        failed = True
        console.print(f"[red]benchmark failed: {type(exc).__name__}: {exc}[/]")
        import traceback
        traceback.print_exc()
    finally:
        probes.uninstall()
    rss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss

    def new_table(title: str, deployment: bool) -> Table:
        table = Table(title=title)
        cols = ["DP", "way", "reps", "total s", "s/round", "steady s/round", "to round 1 s"]
        if deployment:
            cols += ["start-up s", "after last round s"]
        for col in cols + ["final accuracy"]:
            table.add_column(col, justify="left" if col in ("DP", "way") else "right")
        return table

    def case_rows(table: Table, case: Case, deployment: bool) -> None:
        for way in (PLAIN, SANDBOX):
            runs = case.sandbox if way == SANDBOX else case.plain
            if not runs:
                continue
            row = [f"DP {case.dp}" if way == PLAIN else "", way, str(len(runs)), _s(case.med(way, "total")),
                   _s(case.med(way, "per_round")), _s(case.med(way, "steady")), _s(case.med(way, "to_round1"))]
            if deployment:
                row += [_s(case.med(way, "startup")), _s(case.med(way, "after_last"))]
            acc = [r.accuracy for r in runs if r.accuracy is not None]
            table.add_row(*row, f"{median(acc):.3f}" if acc else "-")
        if case.sandbox and case.plain:
            attrs = ["total", "per_round", "steady", "to_round1"] + (["startup", "after_last"] if deployment else [])
            cells = [f"{case.ratio(a):.2f}x" for a in attrs]
            cells[:3] = [f"[bold]{c}[/]" for c in cells[:3]]
            table.add_row("", "[bold]ratio sandbox/plain[/]", "", *cells, "", end_section=True)

    # --- Part 1: in-process
    if inproc:
        table = new_table(f"In-process backend: 6 holders x {rounds} rounds through the sandbox vs plain Flower "
                          f"(medians of {reps})", False)
        for case in inproc:
            case_rows(table, case, False)
        console.print(table)
        console.print("plain Flower = fl_server.InProcessBackend().run(plan, partitions) called in this process: "
                      "Flower's ServerApp driving the same Message-API strategy (FedAvg; opendp fixed clipping "
                      "under DP) over the in-process grid, one ClientApp node per holder, no sandbox; the plan is "
                      "the one the server built for a sandbox job (same seed), the partitions are built by the "
                      "server's own code, untimed. s/round = total / rounds; steady s/round = median gap between "
                      "consecutive round reports; accuracy is the federated evaluation of the final model.",
                      highlight=False)
        split = Table(title="Where the sandbox's time goes, in-process (medians, ms); the sandbox total is "
                            "call -> partitions -> run() -> completed received")
        for col in ("DP", "plain run()", "sandbox total", "call → partitions", "partitions", "run() in job",
                    "revocation checks", "run() → completed", "StartTraining RPC", "pricing", "event lag",
                    "GetTrainingResult", "partitions (plain)"):
            split.add_column(col, justify="left" if col == "DP" else "right")
        for case in inproc:
            def ms(attr: str, c: Case = case) -> str:
                return f"{c.med(SANDBOX, attr) * 1000:,.1f}"
            split.add_row(f"DP {case.dp}", f"{case.med(PLAIN, 'total') * 1000:,.1f}", ms("total"),
                          ms("before_partitions"), ms("partitions"), ms("engine"),
                          ms("revoked"), ms("after_run"), ms("start_rpc"),
                          ms("plan_cost"), ms("delivery"), ms("result_rpc"),
                          f"{median(case.partition_build) * 1000:,.1f}")
        console.print(split)
        calls = median([r.times.revoked_calls for c in inproc for r in c.sandbox if r.times is not None])
        console.print("call → partitions: the StartTraining RPC's server side (signature, policy, pricing, the "
                      "reservation's fsync'd transaction) until the job thread starts; partitions: the six "
                      "holders' rows from the server's column cache, prepared; run() in job: the backend's run "
                      f"inside the job thread, including the revocation checks ({calls:.0f} per job: one read "
                      "transaction before each round and one after); run() → completed: the final check, the "
                      "completed event and its delivery. StartTraining RPC (client round trip; returns while "
                      "the job starts), pricing (fl_server.plan_cost, inside it), event lag (median delay "
                      "from a round event's publication to its arrival through the SDK) and GetTrainingResult "
                      "(after the total) overlap or follow the timeline; partitions (plain) is the same "
                      "build in the benchmark's set-up, outside the plain total.", highlight=False)

    # --- Part 2: deployment
    if deploy:
        table = new_table(f"SuperLink backend (fl_server.DeploymentBackend: SuperLink + 6 SuperNode processes): "
                          f"6 holders x {deploy_rounds} rounds, DP on (medians of {args.deploy_reps})", True)
        for case in deploy:
            case_rows(table, case, True)
        console.print(table)
        c = deploy[0]
        est = {way: c.med(way, "to_round1") + (rounds - 1) * c.med(way, "steady") + c.med(way, "after_last")
               for way in (PLAIN, SANDBOX)}
        console.print("plain = fl_server.DeploymentBackend(tls=...).run(plan, partitions) called in this process; "
                      "sandbox = the same through a second server with fl_backend=\"deployment\". start-up = processes "
                      "started until Flower's ServerApp runs (SuperLink, 6 SuperNodes, flwr run); to round 1 = "
                      "start-up + roll call + round 1; after last round = result file, then stopping the processes."
                      + (f" Estimated 6 x {rounds} rounds (to round 1 + {rounds - 1} x steady + after last round): "
                         f"plain {est[PLAIN]:.0f} s, sandbox {est[SANDBOX]:.0f} s."
                         if deploy_rounds != rounds and all(math.isfinite(v) for v in est.values()) else ""),
                      highlight=False)
        checks = [r.times for r in c.sandbox if r.times is not None]
        if checks:
            console.print(f"In the sandbox the backend asks should_stop every time it polls the ServerApp's progress "
                          f"file (every 0.05 s), so the revocation check (a read transaction) ran "
                          f"{median([t.revoked_calls for t in checks]):.0f} times in a job, "
                          f"{median([t.revoked for t in checks]):.2f} s in all.", highlight=False)
    else:
        console.print(f"SuperLink backend: not measured (--deploy-rounds 0{', the --quick default' if q else ''}).",
                      highlight=False)

    # --- Part 2b: secure aggregation on vs off
    if secure:
        table = Table(title="Secure aggregation (Flower's SecAgg+) on vs off: 6 holders, DP on, backend.run directly")
        for col in ("backend", "rounds x reps", "off s/round", "on s/round", "on/off per round",
                    "off accuracy", "on accuracy"):
            table.add_column(col, justify="left" if col == "backend" else "right")
        for name, runs in secure.items():
            acc = {on: [r.accuracy for r in runs[on] if r.accuracy is not None] for on in (False, True)}
            table.add_row(name, f"{runs[True][0].rounds} x {len(runs[True])}", _s(round_time(runs[False])),
                          _s(round_time(runs[True])), f"[bold]{ratio(round_time(runs[True]), round_time(runs[False])):.2f}x[/]",
                          f"{median(acc[False]):.3f}" if acc[False] else "-",
                          f"{median(acc[True]):.3f}" if acc[True] else "-")
        console.print(table)
        console.print("s/round = median gap between consecutive round reports (a round's cost without start-up). "
                      "A SecAgg+ round is four exchanges with every holder (key setup, key sharing, masked updates, "
                      "unmasking) where a plain round is one; on the deployment runtime each exchange waits for the "
                      "SuperNodes' polling (Flower 1.42 sleeps 3 s after an empty pull) and a ClientApp process per "
                      "message. Accuracy: the final model on all six holders' held-out rows (median over the "
                      "repetitions; each DP run draws fresh noise).",
                      highlight=False)

    # --- Part 3: memory
    mem = Table(title="Peak memory (RSS)")
    for col, just in (("what", "left"), ("peak MiB", "right"), ("how", "left")):
        mem.add_column(col, justify=just)  # type: ignore[arg-type]
    mem.add_row("this process after imports", _mib_from_kib(rss_start), "getrusage(RUSAGE_SELF).ru_maxrss")
    mem.add_row("this process after the in-process part", _mib_from_kib(rss_after_inproc or rss_end),
                "server, SDK client and plain runs all live in this process")
    mem.add_row("this process at the end", _mib_from_kib(rss_end), "getrusage(RUSAGE_SELF).ru_maxrss")
    for case in deploy:
        for way, sampler in case.samplers.items():
            mem.add_row(f"deployment, {way}: runtime processes at once", _mib_from_kib(sampler.peak_rss_kib),
                        f"largest sum of VmRSS ({sampler.peak_count} processes then; shared pages counted in each), "
                        f"sampled every {sampler.interval} s")
            mem.add_row("", _mib_from_kib(sampler.peak_pss_kib), "the same as PSS (shared pages split among users)")
            kinds = sampler.kinds()
            for kind in sorted(kinds):
                mem.add_row(f"  {kind}, {len(kinds[kind])} seen", _mib_from_kib(max(kinds[kind])),
                            "largest VmHWM (peak RSS) of one such process")
    if deploy:
        mem.add_row("largest reaped child (RUSAGE_CHILDREN)", _mib_from_kib(children_after),
                    "getrusage(RUSAGE_CHILDREN).ru_maxrss; Linux charges a child the RSS it had when forked "
                    "from this process, so this reads about this process's size, not a runtime process's")
    console.print(mem)

    # --- notes, failures, ratios
    parts: list[str] = []
    for case in inproc + deploy:
        if case.mismatch:
            failed = True
            console.print(f"[red]{case.key}: {case.mismatch}[/]")
        if not case.sandbox or not case.plain:
            failed = True
            continue
        per_round = case.ratio("steady") if case.rounds > 1 else case.ratio("per_round")  # no gap in 1 round
        parts.append(f"{case.key} total={case.ratio('total'):.2f} round={per_round:.2f}")
    if inproc:
        shown = "; ".join(f"DP {c.dp}: {c.ratio('total'):.2f}" for c in inproc if c.sandbox and c.plain)
        load = os.getloadavg()
        console.print(f"Aim (the issue): sandbox/plain total at most {AIM} in-process with DP on; measured {shown}. "
                      f"Load average at the end {load[0]:.1f} on {os.cpu_count()} CPUs.", highlight=False)
    # One plain line (no markup, no wrapping) for people and scripts alike.
    print("RATIOS sandbox/plain: " + (" | ".join(parts) or "none"), flush=True)
    if secure:
        print("RATIOS secure aggregation on/off per round: " + " | ".join(
            f"{name} {ratio(round_time(runs[True]), round_time(runs[False])):.2f}" for name, runs in secure.items()),
            flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
