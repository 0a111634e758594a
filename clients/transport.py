"""The signing transport: one TLS channel, every request signed over its exact bytes.

Requests are serialised once here and sent as raw bytes, so the bytes the
server hashes are the bytes that were signed. ``sign`` and ``invoke_raw`` are
the seam tests use to craft unsigned, forged, replayed or skewed requests.

The channel is a seam as well: by default the transport opens its own TLS channel to ``address``;
given ``channel`` (any object with ``grpc.Channel``'s ``unary_unary``/``unary_stream``/``stream_unary``
and ``close``: a channel with interceptors, an in-process fake in unit tests) it sends through that one
instead, signing exactly as before. Either way the transport owns the channel and closes it on ``close``.

Responses arrive as raw bytes too: the receipt of the last answer (the audit
entry that records it, from the ``x-sandbox-receipt`` trailer, with the SHA-256
of the exact bytes received) is kept per thread in ``last_receipt``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from clients.errors import from_rpc_error, receipt_of
from clients.signing import principal_id_for, public_key_of, sign_request, sign_stream, sign_stream_digest
from clients.types import Receipt
from wire.signing import StreamDigest

R = TypeVar("R", bound=Message)
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024


def _read_ca(ca: str | Path | bytes) -> bytes:
    return ca if isinstance(ca, bytes) else Path(ca).read_bytes()


class SignedTransport:
    def __init__(
        self, address: str, *, key: Ed25519PrivateKey, ca: str | Path | bytes | None = None, timeout: float,
        principal_id: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE,
        server_name: str | None = None, channel: grpc.Channel | None = None,
    ) -> None:
        """``ca`` (the server's CA certificate) is required unless ``channel`` is given; with ``channel``,
        ``address``, ``ca``, ``max_message_bytes`` and ``server_name`` are not used (the channel has its own)."""
        if channel is None:
            if ca is None:
                raise ValueError("give the server's CA certificate (ca=...) or a channel (channel=...)")
            channel = self._secure_channel(address, ca, max_message_bytes, server_name)
        self.channel = channel
        self.key = key
        self.public_key = public_key_of(key)
        self.principal_id = principal_id or principal_id_for(self.public_key)
        self.timeout = timeout
        self.clock: Callable[[], float] = time.time
        self._stubs: dict[tuple[Any, ...], Any] = {}
        self._local = threading.local()

    @staticmethod
    def _secure_channel(address: str, ca: str | Path | bytes, max_message_bytes: int,
                        server_name: str | None) -> grpc.Channel:
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        creds = grpc.ssl_channel_credentials(root_certificates=_read_ca(ca))
        return grpc.secure_channel(address, creds, options=options)

    @property
    def last_receipt(self) -> Receipt | None:
        """The receipt of the last answer this thread received (None if it carried none)."""
        return getattr(self._local, "receipt", None)

    def _keep_receipt(self, method: str, call: Any, body: bytes | None) -> None:
        seq = receipt_of(call.trailing_metadata() if call is not None else None)
        self._local.receipt = None if seq is None else Receipt(
            seq, method, hashlib.sha256(body).hexdigest() if body is not None else "")

    def _stub(self, kind: str, method: str, response_type: type[Message] | None) -> Any:
        """One multi-callable per (kind, method): requests go out as the raw bytes that were signed."""
        key = (kind, method, response_type)
        stub = self._stubs.get(key)
        if stub is None:
            stub = getattr(self.channel, kind)(method, request_serializer=None, response_deserializer=(
                response_type.FromString if response_type is not None else None))
            self._stubs[key] = stub
        return stub

    def sign(self, method: str, body: bytes, **overrides: Any) -> list[tuple[str, str]]:
        overrides.setdefault("timestamp_ms", int(self.clock() * 1000))
        return sign_request(self.key, self.principal_id, method, body, **overrides)

    def invoke_raw(
        self, method: str, body: bytes, metadata: Sequence[tuple[str, str]], response_type: type[R],
        *, timeout: float | None = None,
    ) -> R:
        stub = self._stub("unary_unary", method, None)
        try:
            raw, call = stub.with_call(body, metadata=list(metadata),
                                       timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            self._keep_receipt(method, exc, None)
            raise from_rpc_error(exc) from exc
        self._keep_receipt(method, call, raw)
        return response_type.FromString(raw)

    def call(self, method: str, request: Message, response_type: type[R], *, timeout: float | None = None,
             register: bool = False) -> R:
        body = request.SerializeToString(deterministic=True)
        metadata = self.sign(method, body, include_public_key=register)
        return self.invoke_raw(method, body, metadata, response_type, timeout=timeout)

    def call_stream(self, method: str, requests: Sequence[Message], response_type: type[R], *,
                    timeout: float | None = None) -> R:
        """A client-streaming call, signed over its total size and digest before any of it is sent."""
        bodies = [r.SerializeToString(deterministic=True) for r in requests]
        metadata = sign_stream(self.key, self.principal_id, method, bodies, timestamp_ms=int(self.clock() * 1000))
        return self._send_stream(method, iter(bodies), metadata, response_type, timeout)

    def call_stream_of(self, method: str, bodies: Callable[[], Iterator[bytes]], response_type: type[R], *,
                       timeout: float | None = None) -> R:
        """A client stream too large to hold (a dataset import): ``bodies()`` yields its serialised messages and is
        called twice, once to sign the total size and digest, once to send; it must give the same bytes both
        times, or the server refuses the stream (SIGNATURE_INVALID) and keeps nothing."""
        digest = StreamDigest()
        for body in bodies():
            digest.update(body)
        metadata = sign_stream_digest(self.key, self.principal_id, method, digest.total, digest.hexdigest(),
                                      timestamp_ms=int(self.clock() * 1000))
        return self._send_stream(method, bodies(), metadata, response_type, timeout)

    def _send_stream(self, method: str, bodies: Iterator[bytes], metadata: Sequence[tuple[str, str]],
                     response_type: type[R], timeout: float | None) -> R:
        stub = self._stub("stream_unary", method, None)
        try:
            raw, call = stub.with_call(bodies, metadata=list(metadata),
                                       timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            self._keep_receipt(method, exc, None)
            raise from_rpc_error(exc) from exc
        self._keep_receipt(method, call, raw)
        return response_type.FromString(raw)

    def call_server_stream(self, method: str, request: Message, response_type: type[R], *,
                           timeout: float | None = None) -> Iterator[R]:
        """A server-streaming call: yields responses; errors are raised as SDK exceptions."""
        body = request.SerializeToString(deterministic=True)
        metadata = self.sign(method, body)
        stub = self._stub("unary_stream", method, response_type)
        responses = stub(body, metadata=metadata, timeout=self.timeout if timeout is None else timeout)
        try:
            yield from responses
        except grpc.RpcError as exc:
            self._keep_receipt(method, exc, None)
            raise from_rpc_error(exc) from exc
        self._keep_receipt(method, responses, None)

    def close(self) -> None:
        self.channel.close()
