"""SDK unit tests without a server: the clients talk to a fake gRPC channel (``channel=``).

The fake records what the SDK puts on the wire (method, the exact request bytes, metadata, deadline) and
answers with canned responses or a ``grpc.RpcError`` carrying the server's trailers, so these tests check
the SDK's side of the wire rules: every call signed as ``wire.signing`` says, errors mapped to the SDK's
exceptions, deadlines passed, and the one retry loop (receipts) bounded.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

import clients.client as client_module
import clients.he as he_module
from clients import (
    AdminClient, ApplicantClient, AuditorClient, DeadlineExceeded, InvalidArgument, PermissionDenied,
    ResearcherClient, ResourceExhausted, SandboxClient, SandboxClientError, Unauthenticated, Unavailable,
    generate_key, public_key_of,
)
from clients import serde
from clients.query import Aggregate, Query
from clients.schema_file import load_schema_file
from clients.signing import principal_id_for
from protos.sandbox.v1 import admin_pb2, applicant_pb2, audit_pb2, common_pb2, dp_pb2, fl_pb2, he_pb2
from wire.signing import (
    ERROR_TRAILER, MD_NONCE, MD_PRINCIPAL, MD_PUBLIC_KEY, MD_SIGNATURE, MD_STREAM_BYTES, MD_STREAM_SHA256,
    MD_TIMESTAMP, RECEIPT_TRAILER, signing_payload, stream_body, stream_digest, verify_signature,
)

Trailers = Sequence[tuple[str, str]]
SCHEMAS = Path(__file__).resolve().parents[2] / "data" / "schemas"


# --- the fake channel -------------------------------------------------------------------------------------

class FakeRpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What grpc raises for a failed call: a status, details and the server's trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str = "", trailers: Trailers = ()) -> None:
        super().__init__(details)
        self._code, self._details, self._trailers = code, details, tuple(trailers)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers

    # the rest of grpc.Call, never used by the SDK
    def initial_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


def rpc_error(code: grpc.StatusCode, details: str = "", *, error_code: str = "", receipt: int | None = None
              ) -> FakeRpcError:
    trailers = ([(ERROR_TRAILER, error_code)] if error_code else []) + (
        [(RECEIPT_TRAILER, str(receipt))] if receipt is not None else [])
    return FakeRpcError(code, details, trailers)


@dataclass
class Reply:
    """One canned answer: a response (a list of them for a server stream), then an error if given."""

    response: Message | list[Message] | None = None
    error: FakeRpcError | None = None
    trailers: Trailers = ()


@dataclass
class Sent:
    """One call as it went on the wire."""

    kind: str
    method: str
    requests: list[bytes]
    metadata: list[tuple[str, str]]
    timeout: float | None

    @property
    def body(self) -> bytes:
        assert len(self.requests) == 1
        return self.requests[0]

    @property
    def md(self) -> dict[str, str]:
        return dict(self.metadata)


class _Done:
    """The ``grpc.Call`` part of a finished call: its trailing metadata."""

    def __init__(self, trailers: Trailers) -> None:
        self._trailers = tuple(trailers)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers


class _ServerStream(_Done):
    """What a unary-stream multi-callable returns: an iterator of responses that is also the call."""

    def __init__(self, items: list[Any], error: FakeRpcError | None, trailers: Trailers) -> None:
        super().__init__(trailers)
        self._items, self._error = items, error

    def __iter__(self) -> Iterator[Any]:
        yield from self._items
        if self._error is not None:
            raise self._error


class FakeChannel:
    """Stands in for ``grpc.Channel``: records every call, answers from per-method queues of ``Reply``.

    The last reply queued for a method is repeated; a method with nothing queued is UNIMPLEMENTED.
    """

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self._replies: dict[str, list[Reply]] = {}
        self.closed = False

    def reply(self, method: str, *replies: Reply | Message | FakeRpcError) -> FakeChannel:
        queue = self._replies.setdefault(method, [])
        for r in replies:
            queue.append(r if isinstance(r, Reply) else Reply(error=r) if isinstance(r, FakeRpcError)
                         else Reply(response=r))
        return self

    def calls(self, method: str) -> list[Sent]:
        return [s for s in self.sent if s.method == method]

    def _next(self, method: str) -> Reply:
        queue = self._replies.get(method)
        if not queue:
            return Reply(error=FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, f"no reply for {method}"))
        return queue.pop(0) if len(queue) > 1 else queue[0]

    @staticmethod
    def _encode(message: Message, deserializer: Callable[[bytes], Any] | None) -> Any:
        raw = message.SerializeToString()
        return deserializer(raw) if deserializer is not None else raw

    def _record(self, kind: str, method: str, requests: list[Any], metadata: Any, timeout: float | None) -> None:
        assert all(isinstance(r, bytes) for r in requests), "the SDK sends the exact bytes it signed"
        self.sent.append(Sent(kind, method, list(requests), list(metadata or ()), timeout))

    def _unary_response(self, method: str, deserializer: Callable[[bytes], Any] | None) -> tuple[Any, _Done]:
        r = self._next(method)
        if r.error is not None:
            raise r.error
        assert isinstance(r.response, Message)
        return self._encode(r.response, deserializer), _Done(r.trailers)

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Callable[[bytes], Any] | None = None, **_: Any) -> Any:
        assert request_serializer is None
        channel = self

        class UnaryUnary:
            def with_call(self, request: bytes, metadata: Any = None, timeout: float | None = None,
                          **_: Any) -> tuple[Any, _Done]:
                channel._record("unary_unary", method, [request], metadata, timeout)
                return channel._unary_response(method, response_deserializer)

            def __call__(self, request: bytes, metadata: Any = None, timeout: float | None = None, **_: Any) -> Any:
                return self.with_call(request, metadata, timeout)[0]

        return UnaryUnary()

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Callable[[bytes], Any] | None = None, **_: Any) -> Any:
        assert request_serializer is None
        channel = self

        class StreamUnary:
            def with_call(self, requests: Iterator[bytes], metadata: Any = None, timeout: float | None = None,
                          **_: Any) -> tuple[Any, _Done]:
                channel._record("stream_unary", method, list(requests), metadata, timeout)
                return channel._unary_response(method, response_deserializer)

        return StreamUnary()

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Callable[[bytes], Any] | None = None, **_: Any) -> Any:
        assert request_serializer is None
        channel = self

        def call(request: bytes, metadata: Any = None, timeout: float | None = None, **_: Any) -> _ServerStream:
            channel._record("unary_stream", method, [request], metadata, timeout)
            r = channel._next(method)
            items = r.response if isinstance(r.response, list) else [] if r.response is None else [r.response]
            return _ServerStream([channel._encode(m, response_deserializer) for m in items], r.error, r.trailers)

        return call

    def close(self) -> None:
        self.closed = True


# --- helpers ---------------------------------------------------------------------------------------------

_APPLICANT = "/sandbox.v1.ApplicantService/"


@pytest.fixture
def key() -> Any:
    return generate_key()


@pytest.fixture
def channel() -> FakeChannel:
    return FakeChannel()


def signature_verifies(sent: Sent, public_key: bytes, body_sha256: str | None = None) -> bool:
    """Does the request's signature verify over what wire.signing says it covers?"""
    md = sent.md
    digest = body_sha256 if body_sha256 is not None else hashlib.sha256(sent.body).hexdigest()
    payload = signing_payload(sent.method, int(md[MD_TIMESTAMP]), md[MD_NONCE], digest)
    return verify_signature(public_key, base64.b64decode(md[MD_SIGNATURE]), payload)


def scenario_reply(scenario_id: str = "s-1") -> applicant_pb2.GetScenarioResponse:
    return applicant_pb2.GetScenarioResponse(scenario=common_pb2.Scenario(id=scenario_id, applicant_id="p-x"))


# --- signing ---------------------------------------------------------------------------------------------

def test_a_unary_call_is_signed_over_its_exact_bytes(key: Any, channel: FakeChannel) -> None:
    channel.reply(_APPLICANT + "GetScenario", scenario_reply("s-42"))
    with SandboxClient("fake", key=key, channel=channel) as client:
        assert client.scenario("s-42").id == "s-42"
    (sent,) = channel.sent
    assert sent.method == _APPLICANT + "GetScenario"
    assert sent.body == applicant_pb2.GetScenarioRequest(scenario_id="s-42").SerializeToString(deterministic=True)
    md = sent.md
    assert md[MD_PRINCIPAL] == principal_id_for(public_key_of(key)) == client.principal_id
    assert MD_PUBLIC_KEY not in md  # only self-registration carries the key
    assert signature_verifies(sent, public_key_of(key))
    # and the check discriminates: not over other bytes, another method, or under another key
    assert not signature_verifies(sent, public_key_of(key), body_sha256=hashlib.sha256(b"other").hexdigest())
    assert not signature_verifies(Sent(sent.kind, _APPLICANT + "Apply", sent.requests, sent.metadata, None),
                                  public_key_of(key))
    assert not signature_verifies(sent, public_key_of(generate_key()))


def test_each_call_has_a_fresh_nonce_and_the_transport_clock(key: Any, channel: FakeChannel) -> None:
    channel.reply(_APPLICANT + "WhoAmI", applicant_pb2.WhoAmIResponse())
    client = SandboxClient("fake", key=key, channel=channel)
    client.transport.clock = lambda: 1_700_000_000.25
    client.whoami()
    client.whoami()
    first, second = channel.sent
    assert first.md[MD_TIMESTAMP] == second.md[MD_TIMESTAMP] == "1700000000250"
    assert first.md[MD_NONCE] != second.md[MD_NONCE]
    assert len(first.md[MD_NONCE]) == 32
    assert all(signature_verifies(s, public_key_of(key)) for s in channel.sent)


def test_self_registration_carries_the_public_key(key: Any, channel: FakeChannel) -> None:
    channel.reply(_APPLICANT + "Register", applicant_pb2.RegisterResponse())
    SandboxClient("fake", key=key, channel=channel).register(name="Bank", organisation="Bank AG")
    (sent,) = channel.sent
    assert base64.b64decode(sent.md[MD_PUBLIC_KEY]) == public_key_of(key)
    assert signature_verifies(sent, public_key_of(key))


def test_health_is_the_one_unsigned_call(key: Any, channel: FakeChannel) -> None:
    channel.reply("/grpc.health.v1.Health/Check",
                  health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING))
    assert SandboxClient("fake", key=key, channel=channel).health() == "SERVING"
    assert channel.sent[0].metadata == []


def test_a_client_stream_is_signed_over_its_size_and_digest(key: Any, channel: FakeChannel,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(he_module, "CHUNK", 10_000)  # several messages in the stream
    profile = he_pb2.HeProfile(name="test-4096", poly_modulus_degree=4096, coeff_mod_bit_sizes=[40, 20, 40],
                               scale_bits=20, slots=2048)
    channel.reply("/sandbox.v1.HeScoringService/ListProfiles", he_pb2.ListProfilesResponse(profiles=[profile]))
    channel.reply("/sandbox.v1.HeScoringService/RegisterContext", he_pb2.RegisterContextResponse(context_id="c-1"))
    session = ApplicantClient("fake", key=key, channel=channel).he_session(100)
    assert session.context_id == "c-1"
    (sent,) = channel.calls("/sandbox.v1.HeScoringService/RegisterContext")
    assert sent.kind == "stream_unary" and len(sent.requests) > 1
    total, digest = sum(len(m) for m in sent.requests), stream_digest(sent.requests)
    assert sent.md[MD_STREAM_BYTES] == str(total) and sent.md[MD_STREAM_SHA256] == digest
    assert signature_verifies(sent, public_key_of(key), body_sha256=stream_body(total, digest))
    assert not signature_verifies(sent, public_key_of(key), body_sha256=stream_body(total - 1, digest))
    assert he_pb2.ContextChunk.FromString(sent.requests[0]).profile == "test-4096"
    assert sent.timeout == 120


def test_a_server_stream_is_signed_and_yields_every_event(key: Any, channel: FakeChannel) -> None:
    events = [fl_pb2.TrainingEvent(job_id="j-1", round=r, rounds=2, state="running") for r in (1, 2)]
    channel.reply("/sandbox.v1.FlTrainingService/WatchTraining", Reply(response=events))
    got = list(ResearcherClient("fake", key=key, channel=channel).watch_training("j-1", timeout=50))
    assert [e.round for e in got] == [1, 2]
    (sent,) = channel.sent
    assert sent.kind == "unary_stream"
    assert sent.body == fl_pb2.WatchTrainingRequest(job_id="j-1").SerializeToString(deterministic=True)
    assert signature_verifies(sent, public_key_of(key))
    assert sent.timeout == 50


# --- errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "expected"), [
    (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
    (grpc.StatusCode.OUT_OF_RANGE, InvalidArgument),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    (grpc.StatusCode.UNKNOWN, SandboxClientError),
])
def test_a_server_error_maps_to_the_sdk_exception_with_its_code_and_receipt(
        key: Any, channel: FakeChannel, status: grpc.StatusCode, expected: type[SandboxClientError]) -> None:
    error = rpc_error(status, "refused here", error_code="SOME_SANDBOX_CODE", receipt=73)
    channel.reply(_APPLICANT + "GetScenario", error)
    client = SandboxClient("fake", key=key, channel=channel)
    with pytest.raises(SandboxClientError) as info:
        client.scenario("s-1")
    exc = info.value
    assert type(exc) is expected and not isinstance(exc, grpc.RpcError)
    assert (exc.status, exc.code, exc.message, exc.receipt) == (status.name, "SOME_SANDBOX_CODE", "refused here", 73)
    assert exc.__cause__ is error
    receipt = client.transport.last_receipt  # the refusal's receipt, with no answer bytes to hash
    assert receipt is not None and (receipt.seq, receipt.response_sha256) == (73, "")


def test_an_error_without_trailers_still_maps(key: Any, channel: FakeChannel) -> None:
    channel.reply(_APPLICANT + "WhoAmI", FakeRpcError(grpc.StatusCode.UNAVAILABLE))
    with pytest.raises(Unavailable) as info:
        SandboxClient("fake", key=key, channel=channel).whoami()
    assert (info.value.status, info.value.code, info.value.receipt) == ("UNAVAILABLE", "", None)


def test_errors_on_streams_map_too(key: Any, channel: FakeChannel) -> None:
    event = fl_pb2.TrainingEvent(job_id="j-1", round=1, rounds=3, state="running")
    channel.reply("/sandbox.v1.FlTrainingService/WatchTraining", Reply(
        response=[event], error=rpc_error(grpc.StatusCode.PERMISSION_DENIED, "revoked", error_code="GRANT_REVOKED")))
    researcher = ResearcherClient("fake", key=key, channel=channel)
    watched = researcher.watch_training("j-1")
    assert next(watched).round == 1  # what arrived before the error is delivered
    with pytest.raises(PermissionDenied) as info:
        next(watched)
    assert info.value.code == "GRANT_REVOKED"

    channel.reply("/sandbox.v1.HeScoringService/RegisterContext",
                  rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too large", error_code="CONTEXT_TOO_LARGE"))
    with pytest.raises(ResourceExhausted) as stream_info:
        researcher.transport.call_stream("/sandbox.v1.HeScoringService/RegisterContext",
                                         [he_pb2.ContextChunk(profile="p", data=b"x")], he_pb2.RegisterContextResponse)
    assert stream_info.value.code == "CONTEXT_TOO_LARGE"


# --- deadlines -------------------------------------------------------------------------------------------

def test_every_call_has_a_deadline(key: Any, channel: FakeChannel) -> None:
    channel.reply(_APPLICANT + "WhoAmI", applicant_pb2.WhoAmIResponse())
    channel.reply("/sandbox.v1.DpQueryService/RunQuery", dp_pb2.RunQueryResponse(query_id="q-1"))
    channel.reply("/sandbox.v1.AdminService/ImportDataset", admin_pb2.ImportDatasetResponse())
    SandboxClient("fake", key=key, channel=channel).whoami()  # the default, 10 s
    ApplicantClient("fake", key=key, channel=channel, timeout=2.5).whoami()  # the client's
    ApplicantClient("fake", key=key, channel=channel, timeout=2.5).run_query(
        "g-1", Query("adult_census").count(), epsilon=0.1, timeout=7)  # the call's
    AdminClient("fake", key=key, channel=channel).import_dataset(common_pb2.DatasetSchema(name="d"), b"a\n1\n")
    assert [s.timeout for s in channel.sent] == [10.0, 2.5, 7, 120.0]


def test_a_deadline_exceeded_query_is_not_retried(key: Any, channel: FakeChannel) -> None:
    """The charge of a query that ran out of time stands: the SDK must not silently send it again."""
    channel.reply("/sandbox.v1.DpQueryService/RunQuery", rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "too slow"))
    with pytest.raises(DeadlineExceeded):
        ApplicantClient("fake", key=key, channel=channel).run_query(
            "g-1", Query("adult_census").count(), epsilon=0.1, idempotency_key="k-1")
    assert len(channel.sent) == 1


# --- conversions: the SDK's own types become wire messages only in clients.serde -------------------------

def test_a_query_becomes_the_wire_query() -> None:
    q = (Query("adult_census").where("age", ">=", 30).where("sex", "in", ["Male", "Female"]).where("hours", "=", 40.5)
         .group_by("sex").count().mean("age").median("age").histogram("age", [0, 50, 100]))
    assert serde.query_to_pb(q) == dp_pb2.DpQuery(
        dataset="adult_census",
        filters=[dp_pb2.QueryFilter(column="age", op=dp_pb2.FILTER_GE, values=[dp_pb2.Literal(number=30)]),
                 dp_pb2.QueryFilter(column="sex", op=dp_pb2.FILTER_IN,
                                    values=[dp_pb2.Literal(text="Male"), dp_pb2.Literal(text="Female")]),
                 dp_pb2.QueryFilter(column="hours", op=dp_pb2.FILTER_EQ, values=[dp_pb2.Literal(number=40.5)])],
        group_by=["sex"],
        aggregates=[dp_pb2.QueryAggregate(kind=dp_pb2.AGG_COUNT),
                    dp_pb2.QueryAggregate(kind=dp_pb2.AGG_MEAN, column="age"),
                    dp_pb2.QueryAggregate(kind=dp_pb2.AGG_QUANTILE, column="age", q=0.5),
                    dp_pb2.QueryAggregate(kind=dp_pb2.AGG_HISTOGRAM, column="age", edges=[0, 50, 100])])


def test_every_wire_operator_and_aggregate_kind_has_its_sdk_name() -> None:
    """Mapped by name (``ge`` is FILTER_GE, ``count`` AGG_COUNT): every wire value is reachable from ``Query``."""
    ops = {op: serde.query_to_pb(Query("d").where("c", op, [1] if op == "in" else 1)).filters[0].op
           for op in ("=", "==", "!=", "<", "<=", ">", ">=", "in")}
    assert {dp_pb2.FilterOp.Name(v) for v in ops.values()} == set(dp_pb2.FilterOp.keys()) - {"FILTER_OP_UNSPECIFIED"}
    for name in set(dp_pb2.AggregateKind.keys()) - {"AGGREGATE_KIND_UNSPECIFIED"}:
        kind = name.removeprefix("AGG_").lower()
        assert callable(getattr(Query, kind, None)), f"Query has no builder method for {name}"
        pb = serde.query_to_pb(Query("d")._agg(Aggregate(kind, "c")))
        assert dp_pb2.AggregateKind.Name(pb.aggregates[0].kind) == name


def test_a_schema_file_is_sent_as_the_wire_schema(key: Any, channel: FakeChannel) -> None:
    channel.reply("/sandbox.v1.AdminService/ImportDataset", admin_pb2.ImportDatasetResponse())
    admin = AdminClient("fake", key=key, channel=channel)
    path = SCHEMAS / "adult_census.toml"
    schema = load_schema_file(path)
    assert schema.columns[0].type == "integer" and schema.columns[0].level == "open"
    admin.import_dataset(path, b"age\n1\n")
    admin.import_dataset(schema, b"age\n1\n")
    admin.import_dataset(serde.schema_to_pb(schema), b"age\n1\n")
    sent = [admin_pb2.ImportDatasetRequest.FromString(s.body).schema for s in channel.sent]
    assert sent[0] == sent[1] == sent[2] and sent[0].name == "adult_census"
    age = sent[0].columns[0]
    assert (age.type, age.level, age.lower, age.upper) == (common_pb2.TYPE_INTEGER, common_pb2.LEVEL_OPEN, 17, 90)
    assert not any(c.HasField("lower") for c in sent[0].columns if c.type == common_pb2.TYPE_CATEGORICAL)


# --- receipts and the one retry loop ---------------------------------------------------------------------

def test_the_receipt_of_an_answer_is_its_trailer_and_the_hash_of_its_bytes(key: Any, channel: FakeChannel) -> None:
    response = dp_pb2.RunQueryResponse(query_id="q-1")
    channel.reply("/sandbox.v1.DpQueryService/RunQuery", Reply(response=response, trailers=[(RECEIPT_TRAILER, "17")]))
    result = ApplicantClient("fake", key=key, channel=channel).run_query("g-1", Query("adult_census").count(),
                                                                          epsilon=0.1)
    assert result.receipt is not None
    assert result.receipt.seq == 17 and result.receipt.method == "/sandbox.v1.DpQueryService/RunQuery"
    assert result.receipt.response_sha256 == hashlib.sha256(response.SerializeToString()).hexdigest()


class FakeTime:
    """``time`` for clients.client: sleeping advances the monotonic clock, nothing really waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        assert len(self.slept) < 1000, "retrying without end"


_RECEIPT = "/sandbox.v1.AuditService/GetReceipt"


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime()
    monkeypatch.setattr(client_module, "time", clock)
    return clock


def test_receipt_retries_while_the_head_is_not_ready_and_stops_at_the_answer(
        key: Any, channel: FakeChannel, fake_time: FakeTime) -> None:
    not_ready = rpc_error(grpc.StatusCode.UNAVAILABLE, "no head yet", error_code="HEAD_NOT_READY")
    channel.reply(_RECEIPT, not_ready, not_ready, audit_pb2.GetReceiptResponse())
    with pytest.raises(PermissionDenied) as info:  # the (empty) answer arrived and does not verify
        AuditorClient("fake", key=key, channel=channel).verify_receipt(5)
    assert info.value.code == "RECEIPT_INVALID"
    assert len(channel.sent) == 3 and len(fake_time.slept) == 2
    assert all(audit_pb2.GetReceiptRequest.FromString(s.body).seq == 5 for s in channel.sent)
    assert all(signature_verifies(s, public_key_of(key)) for s in channel.sent)
    assert len({s.md[MD_NONCE] for s in channel.sent}) == 3  # a retry is a new signed request, not a replay


def test_receipt_retries_stop_at_the_deadline(key: Any, channel: FakeChannel, fake_time: FakeTime) -> None:
    channel.reply(_RECEIPT, rpc_error(grpc.StatusCode.UNAVAILABLE, "no head yet", error_code="HEAD_NOT_READY"))
    with pytest.raises(Unavailable) as info:
        AuditorClient("fake", key=key, channel=channel).verify_receipt(5)
    assert info.value.code == "HEAD_NOT_READY"
    assert sum(fake_time.slept) <= 15.0 + 0.2 + 1e-9  # wait_s, and at most one pause past it
    assert len(channel.sent) == len(fake_time.slept) + 1 <= 15.0 / 0.2 + 2


@pytest.mark.parametrize("error", [
    rpc_error(grpc.StatusCode.UNAVAILABLE, "audit log down", error_code="AUDIT_UNAVAILABLE"),
    rpc_error(grpc.StatusCode.UNAVAILABLE, "server down"),
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, "not yours", error_code="NOT_OWNER"),
])
def test_receipt_does_not_retry_other_errors(key: Any, channel: FakeChannel, fake_time: FakeTime,
                                             error: FakeRpcError) -> None:
    channel.reply(_RECEIPT, error)
    with pytest.raises(SandboxClientError):
        AuditorClient("fake", key=key, channel=channel).verify_receipt(5)
    assert len(channel.sent) == 1 and fake_time.slept == []


# --- the constructor -------------------------------------------------------------------------------------

def test_the_client_closes_the_channel_it_was_given(key: Any, channel: FakeChannel) -> None:
    with SandboxClient("fake", key=key, channel=channel) as client:
        assert client.transport.channel is channel
        assert not channel.closed
    assert channel.closed


def test_without_a_channel_the_client_opens_its_own_tls_channel(key: Any) -> None:
    with pytest.raises(ValueError, match="ca="):
        SandboxClient("127.0.0.1:9", key=key)
    client = SandboxClient("127.0.0.1:9", key=key, ca=b"unused until it connects")  # nothing is dialled yet
    assert isinstance(client.transport.channel, grpc.Channel)
    client.close()


def test_without_an_address_the_client_dials_sandbox_server_or_localhost(
        key: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dialled: list[str] = []
    real = grpc.secure_channel

    def secure_channel(target: str, *args: Any, **kwargs: Any) -> grpc.Channel:
        dialled.append(target)
        return real(target, *args, **kwargs)

    monkeypatch.setattr(grpc, "secure_channel", secure_channel)
    monkeypatch.delenv("SANDBOX_SERVER", raising=False)
    SandboxClient(key=key, ca=b"unused until it connects").close()
    monkeypatch.setenv("SANDBOX_SERVER", "sandbox.city.example:7000")
    SandboxClient(key=key, ca=b"unused until it connects").close()
    SandboxClient("127.0.0.1:9", key=key, ca=b"unused until it connects").close()  # a given address wins
    assert dialled == ["localhost:50051", "sandbox.city.example:7000", "127.0.0.1:9"]
    assert client_module.default_server({}) == client_module.DEFAULT_SERVER == "localhost:50051"
