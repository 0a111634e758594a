"""A TLS reverse proxy that lets the departments' SuperNodes reach only the SuperLink's Fleet API.

Flower 1.42 serves its Fleet, Control and Runtime APIs on one HTTPS port, and the Control API has no
authentication. With external nodes the SuperLink therefore listens on loopback only, and this proxy listens on
the public address: it terminates TLS with the configured certificate and forwards a request to the SuperLink (over
TLS, checked against the SuperLink's CA) only if it is a ``POST`` to one of the paths a SuperNode uses
(``FLEET_PATHS``, read in ``flwr.supernode.fleet_http_client``: every Fleet call is a unary protobuf POST; a
SuperNode calls nothing else on the SuperLink, not even ``/health``). Anything else is answered 404 and never
forwarded. Bodies have size limits, sockets have timeouts, and connections are capped.
"""

from __future__ import annotations

import http.client
import logging
import socket
import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)

#: What a Flower 1.42 SuperNode calls on the SuperLink (all POST, protobuf in and out).
FLEET_PATHS = frozenset(f"/v1/fleet/{name}" for name in (
    "register-node", "activate-node", "deactivate-node", "unregister-node", "send-node-heartbeat",
    "pull-messages", "push-messages", "get-run", "get-fab", "push-object", "pull-object",
    "confirm-message-received"))

#: Headers that describe one connection, not the request (RFC 9110 7.6.1), and those the proxy sets itself.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "transfer-encoding", "upgrade", "content-length", "host"})


class _Upstream(http.client.HTTPSConnection):
    """An HTTPS connection to ``address`` whose certificate is checked against ``name`` (not the address)."""

    def __init__(self, address: tuple[str, int], name: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(address[0], address[1], timeout=timeout, context=context)
        self._name, self._tls = name, context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self._name)
        except BaseException:
            sock.close()
            raise


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, proxy: FleetProxy) -> None:
        self.proxy = proxy
        self.address_family = socket.AF_INET6 if ":" in proxy.listen[0] else socket.AF_INET
        self._slots = threading.BoundedSemaphore(proxy.max_connections)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(proxy.listen, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's, which looks the host name up (DNS)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        if not self._slots.acquire(blocking=False):
            log.warning("fleet proxy: too many connections; refusing one")
            self.shutdown_request(request)
            return
        with self._lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(request)
            raise

    def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request: socket.socket) -> None:
        with self._lock:
            self._open.discard(request)
        self._slots.release()

    def close_connections(self) -> None:
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        log.debug("fleet proxy: connection from %s failed", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        proxy = self.server.proxy
        self.request.settimeout(proxy.timeout)  # covers the TLS handshake, done here, not in the accepting thread
        self.request = proxy.server_tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.command != "POST" or self.path not in self.server.proxy.paths:
            self.server.proxy.refused += 1
            self._reply(404, b"not found\n", close=True)
            return False
        return True

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        proxy = self.server.proxy
        if "transfer-encoding" in self.headers or "content-length" not in self.headers:
            self._reply(411, b"a Content-Length is required\n", close=True)
            return
        try:
            length = int(self.headers["content-length"])
        except ValueError:
            length = -1
        if length < 0:
            self._reply(400, b"bad Content-Length\n", close=True)
            return
        if length > proxy.max_body:
            self._reply(413, b"request too large\n", close=True)
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return
        hop = {h.strip().lower() for h in self.headers.get("connection", "").split(",")} | _HOP_BY_HOP
        headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
        upstream = _Upstream(proxy.upstream, proxy.upstream_name, proxy.upstream_tls, proxy.timeout)
        try:
            upstream.request("POST", self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read(proxy.max_response + 1)
            status, reason, reply_headers = response.status, response.reason, response.getheaders()
        except (OSError, http.client.HTTPException) as exc:
            log.warning("fleet proxy: the SuperLink did not answer %s: %s", self.path, exc)
            self._reply(502, b"bad gateway\n", close=True)
            return
        finally:
            upstream.close()
        if len(data) > proxy.max_response:
            log.warning("fleet proxy: the SuperLink's answer to %s is too large", self.path)
            self._reply(502, b"bad gateway\n", close=True)
            return
        proxy.forwarded += 1
        self.send_response(status, reason)
        for key, value in reply_headers:
            if key.lower() not in _HOP_BY_HOP and key.lower() not in ("date", "server"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _reply(self, code: int, text: bytes, *, close: bool) -> None:
        self._linger = close
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(text)

    def finish(self) -> None:
        """After a refusal, let the client read the answer: closing with its unread body would reset the
        connection, which may drop the answer. So stop sending and discard what it still sends, within bounds."""
        if getattr(self, "_linger", False):
            try:
                self.wfile.flush()
                self.request.settimeout(2.0)
                self.request.shutdown(socket.SHUT_WR)
                left = 1 << 20
                while left > 0 and (chunk := self.rfile.read1(min(left, 65536))):
                    left -= len(chunk)
            except OSError:
                pass
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("fleet proxy: %s " + format, self.client_address[0], *args)


class FleetProxy:
    """Listens with TLS on ``listen`` and forwards the Fleet API only to the SuperLink at ``upstream``.

    ``cert``/``key``: what the proxy serves (the certificate the departments' nodes check). ``upstream_ca``: the CA
    the SuperLink's certificate is checked against, for the name ``upstream_name``. ``max_body``/``max_response``
    bound one request and one answer (bytes; Flower sends arrays in chunks of 5 MiB); ``timeout`` bounds each socket
    operation, on both sides; at most ``max_connections`` clients at once.
    """

    def __init__(self, listen: tuple[str, int], cert: Path, key: Path, upstream: tuple[str, int], upstream_ca: Path,
                 upstream_name: str, *, paths: frozenset[str] = FLEET_PATHS, max_body: int = 32 << 20,
                 max_response: int = 128 << 20, timeout: float = 120.0, max_connections: int = 64) -> None:
        self.listen, self.upstream, self.upstream_name, self.paths = listen, upstream, upstream_name, paths
        self.max_body, self.max_response, self.timeout, self.max_connections = (max_body, max_response, timeout,
                                                                                 max_connections)
        self.server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self.server_tls.load_cert_chain(str(cert), str(key))
        self.upstream_tls = ssl.create_default_context(cafile=str(upstream_ca))
        #: Requests forwarded and refused (404) so far.
        self.forwarded = self.refused = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the actual port when ``listen`` asked for port 0)."""
        assert self._server is not None
        return self._server.server_name, self._server.server_port

    def start(self) -> FleetProxy:
        """Bind (OSError if the address is taken) and serve in a background thread."""
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="fleet-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FleetProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
