"""The fleet proxy: only a SuperNode's Fleet API calls reach the SuperLink behind it, body and answer intact.

The proxy in front of a real SuperLink, with the departments' SuperNodes training through it and the Control API
closed to them, is in tests/integration/test_fl_deployment_integration.py::test_training_with_the_departments_own_supernodes.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fl_server.runtime import TlsFiles, certificate_names, free_port, loopback_tls
from fl_server.fleet_proxy import FLEET_PATHS, FleetProxy


class Upstream:
    """A tiny HTTPS server that records each request and answers 201 with the body reversed."""

    def __init__(self, tls: TlsFiles) -> None:
        self.seen: list[tuple[str, str, bytes, dict[str, str]]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                seen.append((self.command, self.path, body, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(201)
                self.send_header("Content-Type", "application/protobuf")
                self.send_header("X-Flower-Test", "yes")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[::-1])

            do_POST = do_GET = _any  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls.cert), str(tls.key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def pki(tmp_path: Path) -> tuple[TlsFiles, TlsFiles]:
    """(the proxy's public TLS files, the upstream's), from two unrelated CAs."""
    (tmp_path / "public").mkdir()
    (tmp_path / "link").mkdir()
    return loopback_tls(tmp_path / "public"), loopback_tls(tmp_path / "link")


@pytest.fixture()
def upstream(pki: tuple[TlsFiles, TlsFiles]) -> Iterator[Upstream]:
    server = Upstream(pki[1])
    yield server
    server.close()


def make_proxy(pki: tuple[TlsFiles, TlsFiles], upstream: Upstream, **kw: object) -> FleetProxy:
    public, link = pki
    return FleetProxy(("127.0.0.1", 0), public.cert, public.key, ("127.0.0.1", upstream.port), link.ca, "127.0.0.1",
                      timeout=60.0, **kw)  # type: ignore[arg-type]


def connect(proxy: FleetProxy, ca: Path) -> http.client.HTTPSConnection:
    host, port = proxy.address
    return http.client.HTTPSConnection(host, port, timeout=60, context=ssl.create_default_context(cafile=str(ca)))


def test_the_loopback_certificate_names_127_0_0_1_only(tmp_path: Path) -> None:
    files = loopback_tls(tmp_path)
    assert certificate_names(files.cert, "127.0.0.1") and not certificate_names(files.cert, "localhost")
    assert (files.key.stat().st_mode & 0o777) == 0o600


def test_the_paths_are_what_a_supernode_calls() -> None:
    """Read from Flower's own SuperNode client: every path it posts to, and nothing else."""
    import inspect
    import re

    from flwr.supernode import fleet_http_client

    source = inspect.getsource(fleet_http_client)
    assert set(re.findall(r'path="([^"]+)"', source)) == FLEET_PATHS
    assert "_unary_stream" not in source  # no streaming call: buffering each request and answer is enough


def test_fleet_calls_are_forwarded_with_body_status_and_headers(pki, upstream: Upstream) -> None:
    with make_proxy(pki, upstream) as proxy:
        conn = connect(proxy, pki[0].ca)
        try:
            body = bytes(range(256)) * 1000
            for path in ("/v1/fleet/push-object", "/v1/fleet/pull-messages"):  # two requests, one connection
                conn.request("POST", path, body=body, headers={"Content-Type": "application/protobuf",
                                                               "X-Flower-Signature": "sig"})
                reply = conn.getresponse()
                assert (reply.status, reply.read(), reply.getheader("X-Flower-Test")) == (201, body[::-1], "yes")
        finally:
            conn.close()
    assert [(m, p, b) for m, p, b, _ in upstream.seen] == [("POST", "/v1/fleet/push-object", body),
                                                          ("POST", "/v1/fleet/pull-messages", body)]
    assert upstream.seen[0][3]["x-flower-signature"] == "sig"
    assert proxy.forwarded == 2 and proxy.refused == 0


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/control/start-run"), ("POST", "/v1/control/register-node"), ("POST", "/v1/runtime/pull-messages"),
    ("GET", "/health"), ("GET", "/v1/fleet/pull-messages"), ("POST", "/v1/fleet/../control/start-run"),
    ("POST", "/v1/fleet/%2e%2e/control/start-run"), ("POST", "/v1/fleet/pull-messages?x=1"), ("POST", "/v1/fleet/"),
    ("POST", "http://127.0.0.1/v1/fleet/pull-messages"), ("POST", "/v1/fleet/pull-messages/x")])
def test_anything_else_gets_404_and_is_never_forwarded(pki, upstream: Upstream, method: str, path: str) -> None:
    with make_proxy(pki, upstream) as proxy:
        conn = connect(proxy, pki[0].ca)
        try:
            conn.request(method, path, body=b"x" if method == "POST" else None)
            reply = conn.getresponse()
            assert reply.status == 404
            reply.read()
        finally:
            conn.close()
    assert upstream.seen == [] and proxy.forwarded == 0 and proxy.refused == 1


def test_an_oversize_body_is_refused_and_not_forwarded(pki, upstream: Upstream) -> None:
    with make_proxy(pki, upstream, max_body=1000) as proxy:
        conn = connect(proxy, pki[0].ca)
        try:
            conn.request("POST", "/v1/fleet/push-object", body=b"x" * 1001)
            assert conn.getresponse().status == 413
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the proxy may close before the whole body is sent; either way nothing went through
        finally:
            conn.close()
        conn = connect(proxy, pki[0].ca)
        try:  # a chunked body (no Content-Length) is refused as well
            conn.request("POST", "/v1/fleet/push-object", body=iter([b"x"]), encode_chunked=True)
            assert conn.getresponse().status == 411
        finally:
            conn.close()
    assert upstream.seen == [] and proxy.forwarded == 0


def test_an_upstream_the_ca_does_not_vouch_for_gets_nothing(pki, upstream: Upstream) -> None:
    public, _ = pki
    proxy = FleetProxy(("127.0.0.1", 0), public.cert, public.key, ("127.0.0.1", upstream.port), public.ca,
                       "127.0.0.1", timeout=60.0)
    with proxy:
        conn = connect(proxy, public.ca)
        try:
            conn.request("POST", "/v1/fleet/push-messages", body=b"secret")
            assert conn.getresponse().status == 502
        finally:
            conn.close()
    assert upstream.seen == []


def test_plaintext_gets_no_answer_and_stop_frees_the_port(pki, upstream: Upstream) -> None:
    port = free_port("127.0.0.1")
    public, link = pki
    proxy = FleetProxy(("127.0.0.1", port), public.cert, public.key, ("127.0.0.1", upstream.port), link.ca,
                       "127.0.0.1", timeout=60.0).start()
    try:
        with pytest.raises(OSError):  # the same address cannot be taken twice
            FleetProxy(("127.0.0.1", port), public.cert, public.key, ("127.0.0.1", upstream.port), link.ca,
                       "127.0.0.1").start()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(b"POST /v1/control/start-run HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            try:
                assert b"HTTP/1.1" not in s.recv(1000)
            except ConnectionResetError:
                pass
    finally:
        proxy.stop()
    assert upstream.seen == []
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
