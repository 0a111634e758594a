"""The streamed import (issue 14) under attack, against a real server through the SDK.

THREATS.md, "unauthenticated memory" and "import streams": an import is read as it arrives, so every stream that
should not be imported must leave nothing (no catalogue row, no file, no staging directory) and be refused with
the right status, its error naming no value of the CSV: unsigned, unknown or non-admin streams (refused before a
single message is read), a stream longer than its signed size, one whose bytes differ from its signed digest after
many messages, one cut off by its deadline, one with a rejected row, one hit by a server error. And the heavy work
runs outside the server's write lock.
"""

from __future__ import annotations

import gzip
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clients import (
    AdminClient, AlreadyExists, ApplicantClient, DeadlineExceeded, InternalServerError, InvalidArgument, PermissionDenied,
    ResourceExhausted, Unauthenticated, generate_key,
)
from clients.schema_file import load_schema_file
from clients.serde import schema_to_pb
from clients.signing import sign_stream
from protos.sandbox.v1 import admin_pb2
from sandbox import catalogue, import_stream
from sandbox.datadir import catalogue_secret
from sandbox.interceptor import SigningInterceptor
from sandbox.serde import schema_from_pb
from sandbox.state.sqlite import SqliteState
from tests.conftest import Sandbox, enrol_client, start_sandbox

METHOD = "/sandbox.v1.AdminService/ImportDataset"
SECRET = "ZZSECRET42"
SCHEMA = """
name = "{name}"
[[columns]]
name = "person_id"
type = "string"
level = "identifier"
[[columns]]
name = "age"
type = "integer"
level = "open"
lower = 0
upper = 120
[[columns]]
name = "region"
type = "categorical"
level = "open"
categories = ["north", "south"]
[[columns]]
name = "income"
type = "float"
level = "internal"
lower = 0
upper = 1000000
"""
HEADER = b"person_id,age,region,income\n"
ROWS = [f"id{i},{i % 100},{'north' if i % 3 else 'south'},{i}.25\n".encode() for i in range(9000)]
CSV = HEADER + b"".join(ROWS) + ROWS[5]  # one exact duplicate
CHUNK = 16 * 1024


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, AdminClient, ApplicantClient]]:
    sbx = start_sandbox(tmp_path_factory.mktemp("import-stream"))
    admin = sbx.admin(timeout=30)
    bank = enrol_client(admin, sbx, ApplicantClient, "Bank", ["applicant"])
    yield sbx, admin, bank  # type: ignore[misc]
    admin.close()
    bank.close()  # type: ignore[attr-defined]
    sbx.stop()


def schema_pb(tmp: Path, name: str) -> Any:
    path = tmp / f"{name}.toml"
    path.write_text(SCHEMA.format(name=name))
    return schema_to_pb(load_schema_file(path))


class Context:
    """A servicer context for calling the interceptor directly: records the status a refusal aborts with."""

    status: Any = None

    def peer(self) -> str:
        return "ipv4:10.0.0.9:1234"

    def set_trailing_metadata(self, md: Any) -> None:
        pass

    def abort(self, status: Any, message: str) -> None:
        self.status = status
        raise RuntimeError(message)


def bodies_of(schema: Any, data: bytes, **options: Any) -> list[bytes]:
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    first = admin_pb2.ImportDatasetRequest(schema=schema, csv=chunks[0], **options).SerializeToString()
    return [first, *(admin_pb2.ImportDatasetRequest(csv=c).SerializeToString() for c in chunks[1:])]


def send(client: Any, bodies: list[bytes], metadata: list[tuple[str, str]], timeout: float = 30) -> Any:
    return client.transport._send_stream(METHOD, iter(bodies), metadata, admin_pb2.ImportDatasetResponse, timeout)


def last_import_entry(admin: AdminClient) -> Any:
    return [e for e in admin.audit_entries() if e.method == METHOD][-1]


def assert_nothing_left(sbx: Sandbox, admin: AdminClient, name: str, code: str) -> None:
    """No dataset ``name``, nothing of it on disk, and the refusal audited with ``code`` and no CSV value."""
    assert name not in {d.name for d in admin.catalogue()}
    place = sbx.data_dir / "datasets" / name
    assert not place.exists() or list(place.iterdir()) == []
    assert not [p for p in (sbx.data_dir / "datasets").rglob(".tmp-*")]
    entry = last_import_entry(admin)
    assert entry.error_code == code and SECRET not in entry.request


def test_a_streamed_import_is_the_whole_file_import(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Through the SDK in many messages, from a file on disk, plain and gzipped: the same dataset as the whole-file
    import of the same bytes (rows, duplicates, version), and the audit entry says what was asked, not the rows."""
    sbx, admin, _ = env
    schema_path = tmp_path / "streamed.toml"
    schema_path.write_text(SCHEMA.format(name="streamed"))
    csv_path = tmp_path / "streamed.csv"
    csv_path.write_bytes(CSV)
    report = admin.import_dataset(schema_path, csv_path)
    entry = last_import_entry(admin)
    assert entry.status == "OK" and '"messages":' in entry.request and '"name":"streamed"' in entry.request
    assert "id17," not in entry.request
    db = SqliteState.create(tmp_path / "whole.db")
    key = catalogue_secret(sbx.data_dir / "keys" / "catalogue.key")
    whole = catalogue.import_csv(db, tmp_path / "whole", schema_from_pb(schema_pb(tmp_path, "streamed")), CSV,
                                 imported_by="a", version_key=key, count_epsilon=0.1, now_ms=1)
    assert (report.rows_imported, report.duplicates_dropped) == (9000, 1)
    assert (whole.rows_imported, whole.duplicates_dropped, whole.info.version) == (9000, 1, report.dataset.version)
    gz = tmp_path / "streamed.csv.gz"
    gz.write_bytes(gzip.compress(CSV))
    with pytest.raises(AlreadyExists):  # the same content, gzipped: the same version
        admin.import_dataset(schema_path, gz)


def test_unsigned_unknown_and_non_admin_streams_are_refused_before_a_message_is_read(env) -> None:  # type: ignore[no-untyped-def]
    sbx, admin, bank = env
    interceptor: SigningInterceptor = sbx.running.interceptor  # type: ignore[assignment]
    bodies = bodies_of(admin_pb2.ImportDatasetRequest().schema, CSV)
    pulled: list[int] = []
    handled: list[int] = []

    def feed() -> Iterator[bytes]:
        for i, body in enumerate(bodies):
            pulled.append(i)
            yield body

    handler = type("H", (), {"stream_unary": staticmethod(lambda req, ctx: handled.append(1)),
                             "request_deserializer": staticmethod(admin_pb2.ImportDatasetRequest.FromString)})()
    stranger = generate_key()
    for md, status in (({}, "UNAUTHENTICATED"),
                       (dict(sign_stream(stranger, "p-" + "0" * 24, METHOD, bodies)), "UNAUTHENTICATED"),
                       (dict(sign_stream(bank.transport.key, bank.principal_id, METHOD, bodies)),  # type: ignore[attr-defined]
                        "PERMISSION_DENIED")):
        ctx = Context()
        with pytest.raises(RuntimeError):
            interceptor._handle_streamed(METHOD, handler, md, feed(), ctx)  # type: ignore[arg-type]
        assert ctx.status.name == status and pulled == [] and handled == []
    with pytest.raises(PermissionDenied) as denied:  # and through gRPC
        bank.transport.call_stream_of(METHOD, lambda: iter(bodies), admin_pb2.ImportDatasetResponse)  # type: ignore[attr-defined]
    assert denied.value.code == "WRONG_ROLE"


def test_a_stream_longer_than_signed_or_unlike_its_digest_leaves_nothing(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sbx, admin, _ = env
    bodies = bodies_of(schema_pb(tmp_path, "attacked"), CSV)
    assert len(bodies) > 10
    t = admin.transport
    with pytest.raises(ResourceExhausted) as longer:  # signed over all but the last message, sent whole
        send(admin, bodies, sign_stream(t.key, t.principal_id, METHOD, bodies[:-1]))
    assert longer.value.code == "MESSAGE_TOO_LARGE"
    assert_nothing_left(sbx, admin, "attacked", "MESSAGE_TOO_LARGE")
    # The same size, one row changed near the end: read and staged up to there, refused at the end.
    late = len(bodies) - 2
    tampered = list(bodies)
    tampered[late] = tampered[late].replace(b"id8", SECRET[:3].encode(), 1)
    assert len(tampered[late]) == len(bodies[late]) and tampered[late] != bodies[late]
    with pytest.raises(Unauthenticated) as differs:
        send(admin, tampered, sign_stream(t.key, t.principal_id, METHOD, bodies))
    assert differs.value.code == "SIGNATURE_INVALID" and SECRET[:3] not in differs.value.message
    assert_nothing_left(sbx, admin, "attacked", "SIGNATURE_INVALID")
    with pytest.raises(Unauthenticated) as shorter:  # cut short by the sender: fewer bytes than signed
        send(admin, bodies[:-1], sign_stream(t.key, t.principal_id, METHOD, bodies))
    assert shorter.value.code == "SIGNATURE_INVALID"
    assert_nothing_left(sbx, admin, "attacked", "SIGNATURE_INVALID")
    with pytest.raises(InvalidArgument):  # options again in a later message
        send(admin, [*bodies[:3], bodies[0]], sign_stream(t.key, t.principal_id, METHOD, [*bodies[:3], bodies[0]]))
    assert_nothing_left(sbx, admin, "attacked", "INVALID_ARGUMENT")


def test_a_rejected_row_a_server_error_and_a_cut_stream_leave_nothing(env, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sbx, admin, _ = env
    schema = schema_pb(tmp_path, "attacked")
    bad = HEADER + b"".join(ROWS[:8000]) + f"idX,{SECRET},north,1.0\n".encode() + b"".join(ROWS[8000:])
    t = admin.transport
    with pytest.raises(InvalidArgument) as rejected:
        t.call_stream_of(METHOD, lambda: iter(bodies_of(schema, bad)), admin_pb2.ImportDatasetResponse)
    assert rejected.value.code == "ROWS_REJECTED" and "line 8002, column 'age'" in rejected.value.message
    assert SECRET not in rejected.value.message
    assert_nothing_left(sbx, admin, "attacked", "ROWS_REJECTED")

    def disk_full(self: Any) -> Any:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(import_stream._Builder, "finish", disk_full)
        with pytest.raises(InternalServerError) as failed:
            t.call_stream_of(METHOD, lambda: iter(bodies_of(schema, CSV)), admin_pb2.ImportDatasetResponse)
    assert failed.value.message == "internal error"
    assert_nothing_left(sbx, admin, "attacked", "INTERNAL")

    bodies = bodies_of(schema, CSV)
    release = threading.Event()
    sent: list[int] = []

    def paused() -> Iterator[bytes]:
        sent.append(1)
        for i, body in enumerate(bodies):
            if len(sent) == 2 and i == 4:
                release.wait(20)  # the second pass (the one sent) stops here until the deadline has passed
            yield body

    with pytest.raises(DeadlineExceeded):
        t.call_stream_of(METHOD, paused, admin_pb2.ImportDatasetResponse, timeout=1.0)
    release.set()
    deadline = time.monotonic() + 20
    while last_import_entry(admin).error_code != "STREAM_CUT" and time.monotonic() < deadline:
        time.sleep(0.1)  # the server notices the cancelled stream in its own thread
    assert_nothing_left(sbx, admin, "attacked", "STREAM_CUT")
    assert admin.whoami().roles == ("admin",)


def test_the_parsing_runs_outside_the_write_lock(env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """While an import's handler is busy with its batches, other signed calls (each a write transaction) go on."""
    sbx, admin, _ = env
    started, release = threading.Event(), threading.Event()
    flush = import_stream._Builder.flush

    def slow_flush(self: Any) -> None:
        started.set()
        release.wait(20)
        flush(self)

    monkeypatch.setattr(import_stream._Builder, "flush", slow_flush)
    schema_path = tmp_path / "unlocked.toml"
    schema_path.write_text(SCHEMA.format(name="unlocked"))
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(admin.import_dataset(schema_path, CSV)))
    worker.start()
    try:
        assert started.wait(20)
        with sbx.admin(timeout=5) as other:  # answered while the import is inside its handler
            assert other.whoami().roles == ("admin",)
            assert "unlocked" not in {d.name for d in other.catalogue()}
    finally:
        release.set()
        worker.join(30)
    assert result and result[0].rows_imported == 9000


def test_a_replayed_import_stream_is_refused_before_a_message_is_read(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The nonce is claimed before the stream is read: the same signed stream sent again imports nothing more, and
    the server refuses it without pulling one message (a replayer cannot make it parse gigabytes)."""
    sbx, admin, _ = env
    bodies = bodies_of(schema_pb(tmp_path, "replayed"), CSV)
    t = admin.transport
    metadata = sign_stream(t.key, t.principal_id, METHOD, bodies)
    assert send(admin, bodies, metadata).rows_imported == 9000
    with pytest.raises(Unauthenticated) as replayed:
        send(admin, bodies, metadata)
    assert replayed.value.code == "NONCE_REPLAYED"
    assert [d.name for d in admin.catalogue()].count("replayed") == 1
    assert last_import_entry(admin).error_code == "NONCE_REPLAYED"
    pulled: list[int] = []

    def feed() -> Iterator[bytes]:
        for i, body in enumerate(bodies):
            pulled.append(i)
            yield body

    handler = type("H", (), {"stream_unary": staticmethod(lambda req, ctx: pytest.fail("the handler ran")),
                             "request_deserializer": staticmethod(admin_pb2.ImportDatasetRequest.FromString)})()
    ctx = Context()
    with pytest.raises(RuntimeError):
        sbx.running.interceptor._handle_streamed(METHOD, handler, dict(metadata), feed(), ctx)  # type: ignore[attr-defined]
    assert ctx.status.name == "UNAUTHENTICATED" and pulled == []


STAGER = """
import sys
from pathlib import Path
from sandbox import import_stream
from sandbox.datasets import schema_from_json

schema = schema_from_json(sys.argv[2])

def chunks():
    yield sys.argv[3].encode()
    print("staging", flush=True)
    sys.stdin.read()  # holds its staging directory until killed, as a server dies mid-import

import_stream.stage_import(Path(sys.argv[1]), schema, chunks(), version_key=b"k" * 32, max_csv_bytes=1 << 20)
"""


def test_a_crashed_imports_staging_is_swept_and_a_live_ones_is_not(tmp_path: Path) -> None:
    """A process staging an import holds its staging directory: a sweep (another server's start, another import of
    the same name) leaves it. Killed mid-import, like a server that crashes, it leaves debris; the next sweep
    removes it, and a server starting on the directory removes any it finds."""
    import signal
    import subprocess
    import sys

    from sandbox.datasets import schema_to_json

    root = Path(__file__).resolve().parents[2]
    datasets = tmp_path / "datasets"
    schema = schema_from_pb(schema_pb(tmp_path, "crashy"))
    first_rows = (HEADER + b"".join(ROWS[:50])).decode()
    stager = subprocess.Popen([sys.executable, "-c", STAGER, str(datasets), schema_to_json(schema), first_rows],
                              cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert stager.stdout is not None and stager.stdout.readline().strip() == "staging"
        (live,) = (datasets / "crashy").glob(".tmp-*")
        assert import_stream.sweep_staging(datasets) == 0
        assert import_stream.sweep_staging(datasets, "crashy") == 0
        assert live.is_dir()
        # An import of the same name in this process meanwhile: it sweeps, keeps the live one, and cleans up after
        # itself.
        csv = HEADER + b"".join(ROWS[:20])
        import_stream.stage_import(datasets, schema, [csv], version_key=b"k" * 32, max_csv_bytes=1 << 20,
                                   dry_run=True).discard()
        assert list((datasets / "crashy").glob(".tmp-*")) == [live]
    finally:
        stager.send_signal(signal.SIGKILL)
        stager.wait()
    assert live.is_dir()  # the crash's debris
    assert import_stream.sweep_staging(datasets) == 1
    assert not live.exists()

    # A server starting on a data directory with debris removes it.
    sbx = start_sandbox(tmp_path / "server")
    sbx.stop()
    debris = sbx.data_dir / "datasets" / "census_crashed" / ".tmp-0123456789abcdef"
    debris.mkdir(parents=True)
    (debris / "age.raw").write_bytes(b"\0" * 64)
    os.chmod(debris, 0o500)
    sbx.restart()
    try:
        assert not debris.exists()
    finally:
        sbx.stop()


def test_a_staging_directory_swept_before_its_lock_is_taken_is_replaced(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep can lock and remove a staging directory in the moment between its creation and its lock; the
    import then makes another and stages there, and nothing is left behind."""
    real_flock = import_stream.fcntl.flock
    swept: list[Path] = []

    def flock(fd: int, op: int) -> None:
        if not swept and op == import_stream.fcntl.LOCK_EX:  # the import's first lock: a sweep gets in first
            (found,) = (tmp_path / "datasets" / "racy").glob(".tmp-*")
            swept.append(found)
            assert import_stream.sweep_staging(tmp_path / "datasets", "racy") == 1
        real_flock(fd, op)

    monkeypatch.setattr(import_stream.fcntl, "flock", flock)
    schema = schema_from_pb(schema_pb(tmp_path, "racy"))
    staged = import_stream.stage_import(tmp_path / "datasets", schema, [HEADER + b"".join(ROWS[:30])],
                                        version_key=b"k" * 32, max_csv_bytes=1 << 20, dry_run=True)
    assert swept and not swept[0].exists()
    assert staged.directory != swept[0] and (staged.directory / "age.npy").is_file()
    assert staged.info.row_count == 30
    staged.discard()
    assert not list((tmp_path / "datasets").rglob(".tmp-*"))


def test_a_stream_that_ends_short_is_cut_if_its_caller_is_gone_and_refused_as_unsigned_if_not(tmp_path: Path) -> None:
    """gRPC may hand the server the end of a cancelled call's messages before it marks the call cancelled: a stream
    that ends short of its signed size is then STREAM_CUT (the caller went), and SIGNATURE_INVALID while the caller
    still waits (it sent less than it signed). The whole stream is read and verified either way."""
    from sandbox.errors import SandboxError
    from sandbox.interceptor import VerifiedStream
    from wire.signing import stream_digest

    bodies = bodies_of(schema_pb(tmp_path, "short"), CSV)
    assert len(bodies) > 4
    total, digest = sum(map(len, bodies)), stream_digest(bodies)
    decode = admin_pb2.ImportDatasetRequest.FromString

    def caller(gone: bool) -> Callable[[], bool]:
        return lambda: gone

    for gone, code in ((False, "SIGNATURE_INVALID"), (True, "STREAM_CUT")):
        stream = VerifiedStream(bodies[:4], total, digest, decode, gone=caller(gone))
        with pytest.raises(SandboxError) as refused:
            list(stream)
        assert refused.value.code.value == code and stream.messages == 4 and not stream.verified
    for gone in (False, True):
        whole = VerifiedStream(bodies, total, digest, decode, gone=caller(gone))
        assert len(list(whole)) == len(bodies) and whole.verified


class Call:
    """A servicer context's view of a call's end: active or not, time left, and callbacks run when it ends."""

    def __init__(self, *, active: bool = True, remaining: float | None = 10.0, ended: bool = False,
                 ends_when_asked: bool = False) -> None:
        self.active, self.remaining, self.ended, self.ends_when_asked = active, remaining, ended, ends_when_asked
        self.callbacks: list[Callable[[], None]] = []

    def is_active(self) -> bool:
        return self.active

    def time_remaining(self) -> float | None:
        return self.remaining

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self.ended:
            return False
        self.callbacks.append(callback)
        if self.ends_when_asked:  # gRPC marks the call cancelled just after the stream's end was seen
            callback()
        return True


def test_a_caller_went_if_its_call_ends_even_after_its_stream_did() -> None:
    """What decides between STREAM_CUT and SIGNATURE_INVALID for a short stream: gone at once (inactive, no time
    left, already ended), gone once gRPC ends the call within the grace, and still there if the call goes on."""
    from sandbox.interceptor import SHORT_STREAM_GRACE_S, _caller_went

    assert SHORT_STREAM_GRACE_S > 0
    assert _caller_went(Call(active=False), wait=0.0)  # type: ignore[arg-type]
    assert _caller_went(Call(remaining=0.0), wait=0.0)  # type: ignore[arg-type]
    assert _caller_went(Call(ended=True), wait=0.0)  # type: ignore[arg-type]
    assert _caller_went(Call(ends_when_asked=True), wait=0.0)  # type: ignore[arg-type]
    waiting = Call()
    assert not _caller_went(waiting, wait=0.0)  # type: ignore[arg-type]
    assert len(waiting.callbacks) == 1  # it listened for the call's end
    assert _caller_went(Call(remaining=None, ends_when_asked=True), wait=0.0)  # type: ignore[arg-type]
