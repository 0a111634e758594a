"""Talking to a served console over plain HTTP, as a browser (or an attacker's page) would: exact headers."""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from clients.console import ConsoleHandle


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: str


def request(handle: ConsoleHandle, method: str, path: str, *, cookie: str = "", host: str | None = None,
            origin: str | None = None, referer: str | None = None,
            form: dict[str, str] | list[tuple[str, str]] | None = None,
            content_type: str = "application/x-www-form-urlencoded") -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=30)
    headers = {"Host": host if host is not None else f"127.0.0.1:{handle.port}"}
    if cookie:
        headers["Cookie"] = cookie
    if origin is not None:
        headers["Origin"] = origin
    if referer is not None:
        headers["Referer"] = referer
    body = None
    if form is not None:
        body = urlencode(form).encode()
        headers["Content-Type"] = content_type
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode("utf-8", "replace"))
    finally:
        conn.close()


def open_session(handle: ConsoleHandle) -> str:
    """Follow the launch URL once: the ``name=value`` of the session cookie it sets."""
    parts = urlsplit(handle.url)
    answer = request(handle, "GET", f"{parts.path}?{parts.query}")
    assert answer.status == 303, answer
    return answer.headers["set-cookie"].split(";")[0]


def csrf_of(page: str) -> str:
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start:page.index('"', start)]
