"""Serving the console: uvicorn on 127.0.0.1 in a thread of this process, next to the key.

``serve`` binds the socket first (port 0: a free one), so the port is known before the app is built: the guard
answers only to ``127.0.0.1:PORT`` and ``localhost:PORT``. Uvicorn's access log is off: the first request's
address carries the launch secret, and nothing the console writes to a log may hold a secret.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from clients.client import SandboxClient
from clients.console.app import build_app

__all__ = ["ConsoleHandle", "serve", "LOOPBACK"]

LOOPBACK = "127.0.0.1"


@dataclass
class ConsoleHandle:
    """A running console: ``url`` opens a session (it carries the launch secret: give it only to the user)."""

    url: str
    origin: str
    port: int
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


def serve(client: SandboxClient, host: str = LOOPBACK, port: int = 0, *, witness_state: Path | None = None,
          start_timeout: float = 30.0) -> ConsoleHandle:
    """Start the console for ``client``'s principal on ``host`` (only 127.0.0.1) and ``port`` (0: a free one)."""
    if host != LOOPBACK:
        raise ValueError("the console serves on 127.0.0.1 only")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(64)
    bound = int(sock.getsockname()[1])
    launch_secret = secrets.token_urlsafe(32)
    app = build_app(client, port=bound, launch_secret=launch_secret, witness_state=witness_state)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False,
                            ws="none", proxy_headers=False, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="sandbox-console", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the console did not start")
        time.sleep(0.02)
    origin = f"http://{host}:{bound}"
    return ConsoleHandle(f"{origin}/?token={launch_secret}", origin, bound, server, thread)
