"""Build and run the TLS gRPC server with health checking and (optionally) reflection."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.sandbox.v1 import admin_pb2, applicant_pb2, audit_pb2, dp_pb2, fl_pb2, he_pb2
from sandbox import catalogue, import_stream, recovery
from sandbox.audit import AuditLog
from sandbox.config import ServerConfig
from sandbox.errors import SandboxError
from sandbox.datadir import catalogue_secret
from sandbox.identity import read_private_key
from sandbox.interceptor import SigningInterceptor
from sandbox.servicers import METHOD_ROLES, add_servicers, streamed_methods
from sandbox.state import State, open_state

log = logging.getLogger("sandbox.server")

SERVICE_NAMES = tuple(
    f.services_by_name[name].full_name
    for f, name in ((admin_pb2.DESCRIPTOR, "AdminService"), (admin_pb2.DESCRIPTOR, "StewardService"),
                    (applicant_pb2.DESCRIPTOR, "ApplicantService"),
                    (audit_pb2.DESCRIPTOR, "AuditService"), (dp_pb2.DESCRIPTOR, "DpQueryService"),
                    (he_pb2.DESCRIPTOR, "ModelService"), (he_pb2.DESCRIPTOR, "HeScoringService"),
                    (fl_pb2.DESCRIPTOR, "FlTrainingService"))
)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    db: State
    audit: AuditLog
    health: health.HealthServicer
    closers: list[Callable[[], None]] = field(default_factory=list)
    #: The boundary every call passes through (its ``_clock`` is the server's notion of now).
    interceptor: SigningInterceptor | None = None

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, let running ones finish, sign the audit head, close the database."""
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()
        for close in self.closers:
            close()
        self.audit.close()
        try:
            self.audit.checkpoint()
        except SandboxError as exc:  # a damaged log is not signed; stopping goes on (and the log says why)
            log.error("no tree head signed at shutdown: %s", exc.log_detail or exc.public_message)
        finally:
            self.db.close()


def _checked_audit_key(config: ServerConfig) -> Path:
    """The audit key's path, refused if others can read it; a key inside the data directory gets a warning."""
    path = config.audit_key
    info = path.stat()  # FileNotFoundError names the path
    if info.st_mode & 0o077 or info.st_uid != os.geteuid():
        raise PermissionError(f"{path}: the audit key must be readable by the server's user only (chmod 600)")
    if config.data_dir in path.resolve().parents:
        log.warning("the audit key %s is inside the data directory: whoever holds the directory can re-sign a "
                    "rewritten audit log; move it (README, 'The audit key') and set audit_key_file", path)
    return path


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30, arenas: int = 1) -> bool:
    """Tell glibc's allocator to keep large freed blocks for reuse, in one arena, instead of handing them back.

    A DP query on a million rows allocates and frees blocks of megabytes (numpy's masks and copies, opendp's copy
    of each input). By default glibc serves those with fresh mmaps, or trims them off the heap when freed, and
    each of the server's worker threads allocates from an arena of its own, so the next query, on whichever
    thread, pays a page fault for every 4 KiB it touches again. With large blocks kept on the heap and every
    thread in one arena, a 1M-row count + mean through the server took 8.0 ms instead of 10.7 (p50 of 300, here;
    thresholds alone 11.1, two arenas 8.7: benchmarks/README.md). The cost: resident memory stays near its peak
    instead of falling back between queries, and threads share one allocator lock (Python's small objects do not
    use it). Only glibc has ``mallopt``; elsewhere this does nothing. Whether it applied.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(_M_MMAP_THRESHOLD, mmap_threshold), mallopt(_M_TRIM_THRESHOLD, trim_threshold),
                mallopt(_M_ARENA_MAX, arenas)])


def start_server(config: ServerConfig) -> RunningServer:
    if config.keep_freed_memory:
        keep_freed_memory()
    catalogue_key = catalogue_secret(config.catalogue_key)  # read once; created here for older data directories
    db = open_state(config.state_location, busy_timeout_ms=config.busy_timeout_ms, release_rows=functools.partial(
        catalogue.public_rows_of_stored, epsilon=config.catalogue_count_epsilon))
    log.info("state: %s", db.describe())
    audit_key = read_private_key(_checked_audit_key(config))
    audit = AuditLog(db, audit_key, checkpoint_every=config.audit_checkpoint_every)
    recovery.close_open_records(audit)
    import_stream.sweep_staging(config.datasets_dir)  # staging left by a crashed import; live ones are locked
    interceptor = SigningInterceptor(db, audit, METHOD_ROLES, skew_ms=config.clock_skew_seconds * 1000,
                                     max_stream_bytes=config.max_message_bytes,
                                     unauthenticated_audits_per_minute=config.unauthenticated_audits_per_minute,
                                     registrations_per_minute=config.registrations_per_minute,
                                     streamed=streamed_methods(config))
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.workers), interceptors=[interceptor],
                         options=options)
    closers = add_servicers(server, config, audit, db, catalogue_key)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if config.reflection:
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    creds = grpc.ssl_server_credentials(
        [(config.server_key.read_bytes(), config.server_cert.read_bytes())], require_client_auth=False
    )
    port = server.add_secure_port(f"{config.host}:{config.port}", creds)
    if port == 0:
        db.close()
        raise OSError(f"cannot bind {config.host}:{config.port}")
    server.start()
    return RunningServer(server, port, db, audit, health_servicer, closers, interceptor)


def serve_forever(config: ServerConfig, *, on_ready=None) -> None:  # type: ignore[no-untyped-def]
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = start_server(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if on_ready is not None:
        on_ready(running)
    stop.wait()
    log.info("shutting down")
    running.stop()
