"""The auditor's (and administrator's) pages: the audit log with filters and paging, one entry with its canonical
request, and the log's state against the last signed head this console (or the user's witness) checked."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from clients import types as t
from clients.console.app import Console, as_routes
from clients.errors import InvalidArgument, NotFound
from wire import transparency
from wire.keys import read_public_key
from wire.transparency import TreeHead

__all__ = ["routes", "AuditFilters", "HeadCheck", "check_head"]

PAGE = 50
FILTER_NAMES = ("principal", "grant", "method", "status", "since", "until")


@dataclass(frozen=True)
class AuditFilters:
    principal: str = ""
    grant: str = ""
    method: str = ""
    status: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    @classmethod
    def from_query(cls, query: Any) -> AuditFilters:
        def when(name: str) -> dt.datetime | None:
            text = str(query.get(name, "")).strip()
            if not text:
                return None
            try:
                return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
            except ValueError:
                raise InvalidArgument(f"{name} is a date and time (UTC)", status="INVALID_ARGUMENT",
                                      code="INVALID_ARGUMENT") from None
        def text(name: str) -> str:
            return str(query.get(name, "")).strip()
        return cls(text("principal"), text("grant"), text("method"), text("status"), when("since"), when("until"))

    def query_args(self) -> list[tuple[str, str]]:
        pairs = [(n, str(getattr(self, n))) for n in FILTER_NAMES[:4]]
        pairs += [(n, v.strftime("%Y-%m-%dT%H:%M")) for n, v in (("since", self.since), ("until", self.until)) if v]
        return [(k, v) for k, v in pairs if v]


@dataclass(frozen=True)
class HeadCheck:
    """What the console found about the log's latest signed head."""

    entries: int
    head: TreeHead | None
    audit_public_key: bytes
    key_source: str  # where the key the head was checked against came from
    signature_ok: bool
    cosigned_by: tuple[str, ...]
    against: tuple[tuple[str, TreeHead, bool], ...]  # (which stored head, the head, the log extends it)


def _witness_files(state: Any) -> tuple[bytes | None, TreeHead | None]:
    if state is None:
        return None, None
    key_file, head_file = state / "audit_public_key", state / "head.json"
    key = read_public_key(key_file) if key_file.exists() else None
    head = TreeHead.from_json(json.loads(head_file.read_text())) if head_file.exists() else None
    return key, head


def check_head(console: Console) -> HeadCheck:
    """Fetch the latest head, check its signature and that it extends every head kept before; keep it."""
    auditor = console.sdk.auditor
    h = auditor.audit_head()
    pinned, witnessed = _witness_files(console.witness_state)
    key = pinned or h.audit_public_key
    source = "pinned by your witness" if pinned else "as the server states it (not pinned: give --witness-state)"
    against: list[tuple[str, TreeHead, bool]] = []
    ok = h.head is not None and transparency.verify_tree_head(h.head, key)
    if h.head is not None and ok:
        for label, prior in (("the last head this console checked", console.last_head),
                             ("your witness's stored head", witnessed)):
            if prior is not None:
                extends = prior.size <= h.head.size and auditor.consistency_proof(prior, h.head)
                against.append((label, prior, extends))
        if all(extends for _, _, extends in against):
            console.last_head = h.head
    return HeadCheck(h.entries, h.head, key, source, ok, h.cosigned_by, tuple(against))


def routes(console: Console) -> list[Route]:
    auditor = console.sdk.auditor

    def log(request: Request) -> Response:
        console.require("admin", "auditor")
        filters = AuditFilters.from_query(request.query_params)
        args = filters.query_args()
        head = check_head(console)
        try:
            after = max(int(request.query_params["after"]), 0)
        except (KeyError, ValueError):  # unfiltered, the latest page first; filtered, from the start
            after = 0 if args else max(head.entries - PAGE, 0)
        entries = list(itertools.islice(_filtered(console, filters, after), PAGE + 1))
        shown = entries[:PAGE]
        later = urlencode([*args, ("after", str(shown[-1].seq))]) if len(entries) > PAGE else ""
        earlier = urlencode([("after", str(max(after - PAGE, 0)))]) if after and not args else ""
        names = ({p.id: p.name for p in console.sdk.admin.principals()} if head.cosigned_by and
                 "admin" in console.roles() else {})  # an auditor may not list principals: ids only
        return console.render(request, "audit_log.html", title="Audit log", entries=shown, filters=filters,
                              names=names,
                              later_query=later, earlier_query=earlier, first_query=urlencode([*args, ("after", "0")]),
                              after=after, head=head)

    def entry(request: Request) -> Response:
        console.require("admin", "auditor")
        seq = request.path_params["seq"]
        found = next(iter(auditor.audit_entries(after_seq=max(seq - 1, 0), page_size=1)), None)
        if found is None or found.seq != seq:
            raise NotFound("no such entry", status="NOT_FOUND", code="NOT_FOUND")
        return console.render(request, "audit_entry.html", title=f"Audit entry {seq}", e=found)

    return as_routes([
        ("/audit", log, ["GET"]),
        ("/audit/entry/{seq:int}", entry, ["GET"]),
    ])


def _filtered(console: Console, f: AuditFilters, after: int) -> Iterator[t.AuditEntry]:
    """Entries after ``after`` that pass the filters (the server filters)."""
    return console.sdk.auditor.audit_entries(after_seq=after, page_size=PAGE + 1, principal=f.principal,
                                             grant_id=f.grant, method=f.method, status=f.status, since=f.since,
                                             until=f.until)
