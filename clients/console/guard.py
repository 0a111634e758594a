"""What stands between the browser and the console's pages: launch secret, session cookie, Host, Origin, CSRF.

A local web app is reachable by every page the user's browser opens, so each request must prove it comes from
the person who started the console, through the console's own pages:

- **Launch secret.** ``/?token=<secret>`` (printed at start, like Jupyter's token) opens a session: the answer
  sets a cookie (HttpOnly, SameSite=Strict, Path=/) and redirects to the same address without the secret, so it
  does not stay in the address bar, the history or a Referer. A wrong secret is refused.
- **Session cookie.** Every other request without a live session's cookie is refused (403), the stylesheet too.
  The cookie's name carries the port: browsers keep cookies per host, not per port, so two consoles (an
  administrator's and an applicant's) in one browser do not overwrite each other's.
- **Host.** Only ``127.0.0.1:PORT`` and ``localhost:PORT`` are answered: a DNS-rebinding page reaches the socket
  under its own name and is refused before anything else.
- **State changes.** Only POST changes anything, and a POST needs the cookie, the session's CSRF token in the
  form and an Origin (or, without one, a Referer) equal to the console's own origin. Other methods are 405.
- **Headers on every answer.** A strict Content-Security-Policy (no script at all, nothing from elsewhere, no
  framing), X-Frame-Options DENY, nosniff, same-origin referrers, no caching.

The checks run here, before any page handler (as the server's interceptor does for RPCs); a handler reads the
parsed form from ``request.state.form`` and the session from ``request.state.session``.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Guard", "Session", "Sessions", "SECURITY_HEADERS", "MAX_FORM_BYTES"]

MAX_FORM_BYTES = 64 * 1024
MAX_SESSIONS = 64

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", "default-src 'self'; script-src 'none'; object-src 'none'; style-src 'self'; "
                                "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("cache-control", "no-store"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
)


@dataclass
class Session:
    """One browser's session: its CSRF token and the notices waiting for its next page."""

    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    notices: list[tuple[str, str]] = field(default_factory=list)  # (kind: ok/error, text)


class Sessions:
    """The live sessions of this launch, by cookie value (in memory: a restart asks for the secret again)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self) -> tuple[str, Session]:
        sid, session = secrets.token_urlsafe(32), Session()
        with self._lock:
            if len(self._by_id) >= MAX_SESSIONS:  # the oldest goes: a page cannot make the console hold memory
                self._by_id.pop(next(iter(self._by_id)))
            self._by_id[sid] = session
        return sid, session

    def close(self, sid: str) -> None:
        with self._lock:
            self._by_id.pop(sid, None)

    def get(self, sid: str) -> Session | None:
        with self._lock:
            for known, session in self._by_id.items():
                if hmac.compare_digest(known, sid):
                    return session
        return None


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers by lower-case name (a repeated header: its last value)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


class Guard:
    """ASGI middleware: refuses every request that does not pass the checks of the module docstring."""

    def __init__(self, app: ASGIApp, *, port: int, launch_secret: str, sessions: Sessions) -> None:
        self._app = app
        self._hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self._secret = launch_secret
        self._sessions = sessions
        self.cookie_name = f"sandbox_console_{port}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._app(scope, receive, send)
            return  # websockets: none here
        send = _with_security_headers(send)
        headers = _headers(scope)
        host = headers.get("host", "")
        if host not in self._hosts:
            await _refuse(send, 403, "refused: this console answers only at 127.0.0.1 or localhost with its port")
            return
        method = scope["method"]
        if method not in ("GET", "HEAD", "POST"):
            await _refuse(send, 405, "method not allowed", extra=(("allow", "GET, HEAD, POST"),))
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if "token" in query:
            await self._open_session(scope, send, query)
            return
        found = self._session_of(headers)
        if found is None:
            await _refuse(send, 403, "refused: open the console through the address it printed when it started")
            return
        sid, session = found
        scope.setdefault("state", {}).update(session=session, session_id=sid, cookie_name=self.cookie_name)
        if method != "POST":
            scope["state"]["form"] = {}
            await self._app(scope, receive, send)
            return
        origin = headers.get("origin") or _origin_of(headers.get("referer", ""))
        if not origin or origin != f"http://{host}":
            await _refuse(send, 403, "refused: a change must come from the console's own pages (Origin)")
            return
        if headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            await _refuse(send, 415, "refused: expected a form")
            return
        body = await _read_body(receive, MAX_FORM_BYTES)
        if body is None:
            await _refuse(send, 413, "refused: form too large")
            return
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        token = (form.get("csrf") or [""])[-1]
        if not hmac.compare_digest(token.encode(), session.csrf.encode()):
            await _refuse(send, 403, "refused: the form's CSRF token is missing or wrong (reload the page)")
            return
        scope["state"]["form"] = form
        await self._app(scope, _replay(body), send)

    def _session_of(self, headers: dict[str, str]) -> tuple[str, Session] | None:
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no session
            return None
        morsel = cookies.get(self.cookie_name)
        session = self._sessions.get(morsel.value) if morsel is not None and morsel.value else None
        return (morsel.value, session) if morsel is not None and session is not None else None

    async def _open_session(self, scope: Scope, send: Send, query: dict[str, list[str]]) -> None:
        given = query["token"][-1]
        if scope["method"] == "POST" or not hmac.compare_digest(given.encode(), self._secret.encode()):
            await _refuse(send, 403, "refused: wrong launch secret")
            return
        sid, _ = self._sessions.open()
        rest = urlencode([(k, v) for k, values in query.items() if k != "token" for v in values])
        path = scope.get("path", "/") or "/"
        location = path if path.startswith("/") and not path.startswith("//") else "/"
        cookie = f"{self.cookie_name}={sid}; HttpOnly; SameSite=Strict; Path=/"
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", (location + ("?" + rest if rest else "")).encode("latin-1")),
                                (b"set-cookie", cookie.encode("latin-1")), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS if k.encode() not in names]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)
    return wrapped


async def _refuse(send: Send, status: int, text: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            *((k.encode(), v.encode()) for k, v in extra)]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}
    return receive
