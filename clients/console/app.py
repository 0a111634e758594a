"""The console as an ASGI app: the guard in front, server-rendered pages behind it, one SDK client beneath.

Pages are grouped by who reads them (``pages_admin``, ``pages_audit``, ``pages_steward``, ``pages_own``); each
module lists its routes. Every page checks the principal's roles (from ``whoami``) before it calls the server,
and the server checks them again on every call: the console shows a person only what their key may read.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from clients import types as t
from clients.console.guard import Guard, Sessions
from clients.console.sdk import RoleClients
from clients.console.views import FILTERS
from clients.client import SandboxClient
from clients.errors import SandboxClientError
from wire.transparency import TreeHead

__all__ = ["Console", "Forbidden", "build_app"]

# What each role's navigation offers, in order: (path, label, roles that see it).
NAV: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("/admin/pending", "Pending applications", frozenset({"admin"})),
    ("/admin/grants", "Grants", frozenset({"admin"})),
    ("/admin/principals", "Principals", frozenset({"admin"})),
    ("/steward", "Stewardship", frozenset({"steward"})),
    ("/scenarios", "My scenarios", frozenset({"applicant", "researcher"})),
    ("/training", "Training jobs", frozenset({"researcher", "admin", "auditor"})),
    ("/audit", "Audit log", frozenset({"admin", "auditor"})),
    ("/catalogue", "Catalogue", frozenset({"admin", "applicant", "researcher", "auditor", "steward"})),
)

_STATUS_OF = {"PERMISSION_DENIED": 403, "UNAUTHENTICATED": 403, "NOT_FOUND": 404, "INVALID_ARGUMENT": 400,
              "FAILED_PRECONDITION": 409, "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503}


class Forbidden(Exception):
    """This principal's roles do not include what the page needs."""


class Console:
    """What every page needs: the SDK clients, the templates, the principal, the witness state."""

    def __init__(self, client: SandboxClient, *, witness_state: Path | None = None) -> None:
        self.sdk = RoleClients(client)
        self.witness_state = witness_state
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("clients.console", "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(FILTERS)
        self._principal: t.Principal | None = None
        self._lock = threading.Lock()
        self.last_head: TreeHead | None = None  # the last signed head this console checked (this launch)

    def principal(self, *, refresh: bool = False) -> t.Principal:
        with self._lock:
            if self._principal is None or refresh:
                self._principal = self.sdk.base.whoami()
            return self._principal

    def roles(self) -> frozenset[str]:
        return frozenset(self.principal().roles)

    def require(self, *roles: str) -> None:
        if not self.roles() & set(roles):
            raise Forbidden(f"this page needs the role {' or '.join(roles)}")

    def render(self, request: Request, template: str, *, status: int = 200, title: str = "",
               **values: Any) -> HTMLResponse:
        session = request.state.session
        notices, session.notices = list(session.notices), []
        p = self.principal()
        roles = frozenset(p.roles)
        nav = [(path, label) for path, label, who in NAV if roles & who]
        html = self.env.get_template(template).render(
            principal=p, nav=nav, csrf=session.csrf, notices=notices, title=title, path=request.url.path,
            now=dt.datetime.now(dt.timezone.utc), **values)
        return HTMLResponse(html, status_code=status)

    def done(self, request: Request, text: str, to: str) -> RedirectResponse:
        """After a change: a notice for the next page, and a redirect to it (POST, redirect, GET)."""
        request.state.session.notices.append(("ok", text))
        return RedirectResponse(to, status_code=303)


def form_value(request: Request, name: str) -> str:
    values: list[str] = request.state.form.get(name) or [""]
    return values[-1].strip()


def form_values(request: Request, name: str) -> list[str]:
    return [v for v in request.state.form.get(name, []) if v]


def build_app(client: SandboxClient, *, port: int, launch_secret: str,
              witness_state: Path | None = None) -> Guard:
    """The console's ASGI app for one launch: the guard (``clients.console.guard``) and the pages behind it."""
    from clients.console import pages_admin, pages_audit, pages_own, pages_steward

    console = Console(client, witness_state=witness_state)
    css = resources.files("clients.console").joinpath("static/console.css").read_bytes()

    def home(request: Request) -> Response:
        p = console.principal(refresh=True)
        return console.render(request, "home.html", title="Home", key_hex=p.public_key.hex())

    def stylesheet(request: Request) -> Response:
        return Response(css, media_type="text/css")

    def catalogue(request: Request) -> Response:
        stewards = ([p for p in console.sdk.admin.principals() if "steward" in p.roles and p.status == "active"]
                    if "admin" in console.roles() else [])
        return console.render(request, "catalogue.html", title="Catalogue", datasets=console.sdk.base.catalogue(),
                              stewards=stewards, policies=("never", "sensitive", "always"))

    sessions = Sessions()

    def sign_out(request: Request) -> Response:
        sessions.close(request.state.session_id)
        response = Response("Signed out. Open the address the console printed to come back.\n",
                            media_type="text/plain")
        response.delete_cookie(request.state.cookie_name, path="/", httponly=True, samesite="strict")
        return response

    routes: list[Route] = [Route("/", home), Route("/static/console.css", stylesheet),
                           Route("/catalogue", catalogue), Route("/sign-out", sign_out, methods=["POST"])]
    for module in (pages_admin, pages_audit, pages_own, pages_steward):
        routes += module.routes(console)

    def error_page(request: Request, status: int, title: str, message: str, code: str = "") -> Response:
        try:
            return console.render(request, "error.html", status=status, title=title, message=message, code=code)
        except SandboxClientError:  # the principal itself cannot be read (suspended, or the server is away)
            return PlainTextResponse(f"{title}: {message}\n", status_code=status)

    def refused(request: Request, exc: Exception) -> Response:
        return error_page(request, 403, "Not for this role", str(exc))

    def failed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SandboxClientError)
        return error_page(request, _STATUS_OF.get(exc.status, 502), "The sandbox said no",
                          f"{exc.status}: {exc.message}", exc.code if exc.code != exc.status else "")

    handlers: dict[Any, Callable[[Request, Exception], Response]] = {Forbidden: refused, SandboxClientError: failed}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return Guard(app, port=port, launch_secret=launch_secret, sessions=sessions)


def as_routes(items: Sequence[tuple[str, Callable[[Request], Response], Sequence[str]]]) -> list[Route]:
    return [Route(path, fn, methods=list(methods)) for path, fn, methods in items]
