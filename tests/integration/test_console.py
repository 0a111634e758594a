"""The web console's protections, over plain HTTP against a console served in-process next to a real sandbox.

Each test plays a request a browser would not send for the user (no launch secret, another Host, another
Origin, no CSRF token) and checks it is refused before any page runs; and that what a page shows is escaped,
holds no secret, and follows the principal's roles.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives import serialization

from clients import (
    AdminClient, ApplicantClient, AuditorClient, PermissionDenied, ResearcherClient, SandboxClient, generate_key,
    public_key_of,
)
from clients.console import ConsoleHandle, serve
from clients.signing import load_key
from clients.witness import witness
from wire.transparency import TreeHead
from tests.conftest import DATA, ROOT, SCHEMAS, Sandbox, apply_dp, start_sandbox
from tests.support.console import Answer, csrf_of, open_session, request

HOSTILE = "<script>alert('x')</script>"


@dataclass
class Consoles:
    sbx: Sandbox
    admin: AdminClient
    bank: ApplicantClient
    admin_console: ConsoleHandle
    bank_console: ConsoleHandle
    scenario_id: str


@pytest.fixture(scope="module")
def consoles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consoles]:
    sbx = start_sandbox(tmp_path_factory.mktemp("console"))
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    key = generate_key()
    admin.enrol(name=f"Bank {HOSTILE}", organisation=f"Org {HOSTILE}", roles=["applicant"],
                public_key=public_key_of(key))
    bank = ApplicantClient(sbx.address, key=key, ca=sbx.ca)
    s = apply_dp(bank, title=f"Income {HOSTILE}", purpose=f"Purpose {HOSTILE}")
    admin_console, bank_console = serve(admin, port=0), serve(bank, port=0)
    yield Consoles(sbx, admin, bank, admin_console, bank_console, s.id)  # type: ignore[attr-defined]
    admin_console.stop()
    bank_console.stop()
    admin.close()
    bank.close()
    sbx.stop()


def _pages(c: Consoles) -> list[str]:
    return ["/", "/catalogue", "/admin/pending", f"/admin/review/{c.scenario_id}", "/admin/principals",
            "/admin/grants", "/audit", "/audit/entry/1"]


def test_a_request_without_the_launch_secret_is_refused(consoles: Consoles) -> None:
    for path in _pages(consoles) + ["/static/console.css"]:
        answer = request(consoles.admin_console, "GET", path)
        assert answer.status == 403, (path, answer.status)
        assert "Bank" not in answer.body and "adult_census" not in answer.body
    wrong = request(consoles.admin_console, "GET", "/?token=not-the-secret")
    assert wrong.status == 403 and "set-cookie" not in wrong.headers
    # a session of another console (another port) is no session here
    other = open_session(consoles.bank_console)
    assert request(consoles.admin_console, "GET", "/", cookie=other).status == 403


def test_the_launch_secret_sets_a_strict_cookie_and_leaves_the_address(consoles: Consoles) -> None:
    h = consoles.admin_console
    secret = urlsplit(h.url).query.removeprefix("token=")
    answer = request(h, "GET", f"/audit?token={secret}&status=OK")
    assert answer.status == 303
    assert answer.headers["location"] == "/audit?status=OK"
    flags = [f.strip() for f in answer.headers["set-cookie"].split(";")]
    assert flags[0].startswith(f"sandbox_console_{h.port}=") and {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(flags)
    page = request(h, "GET", "/audit?status=OK", cookie=flags[0])
    assert page.status == 200 and "Audit log" in page.body


def test_a_wrong_host_header_is_refused_even_with_a_session(consoles: Consoles) -> None:
    h = consoles.admin_console
    cookie = open_session(h)
    for host in (f"rebind.example:{h.port}", "127.0.0.1", f"127.0.0.1:{h.port + 1}", f"localhost.:{h.port}", ""):
        answer = request(h, "GET", "/", cookie=cookie, host=host)
        assert answer.status == 403, host
        assert consoles.admin.principal_id not in answer.body
    assert request(h, "GET", "/", cookie=cookie, host=f"localhost:{h.port}").status == 200
    secret = urlsplit(h.url).query
    assert request(h, "GET", f"/?{secret}", host=f"rebind.example:{h.port}").status == 403


def test_every_answer_carries_the_strict_headers(consoles: Consoles) -> None:
    h = consoles.admin_console
    cookie = open_session(h)
    for answer in (request(h, "GET", "/", cookie=cookie), request(h, "GET", "/"),
                   request(h, "GET", "/", cookie=cookie, host="evil.example")):
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"
    page = request(h, "GET", "/", cookie=cookie).body
    assert "<script" not in page and "http://" not in page and "https://" not in page  # no script, no outside asset
    assert request(h, "PUT", "/", cookie=cookie).status == 405


def _reject_form(c: Consoles, cookie: str) -> tuple[str, dict[str, str]]:
    page = request(c.admin_console, "GET", f"/admin/review/{c.scenario_id}", cookie=cookie)
    assert page.status == 200
    return f"/admin/review/{c.scenario_id}/reject", {"csrf": csrf_of(page.body), "reason": "not today"}


def test_a_change_without_the_csrf_token_or_from_another_origin_is_refused(consoles: Consoles) -> None:
    h = consoles.admin_console
    cookie = open_session(h)
    action, form = _reject_form(consoles, cookie)
    own = f"http://127.0.0.1:{h.port}"
    refused = [
        request(h, "POST", action, cookie=cookie, origin=own, form={"reason": "no token"}),
        request(h, "POST", action, cookie=cookie, origin=own, form={**form, "csrf": "guessed"}),
        request(h, "POST", action, cookie=cookie, origin="http://evil.example", form=form),
        request(h, "POST", action, cookie=cookie, origin=f"http://127.0.0.1:{h.port + 1}", form=form),  # same site
        request(h, "POST", action, cookie=cookie, origin="null", form=form),
        request(h, "POST", action, cookie=cookie, form=form),  # neither Origin nor Referer
        request(h, "POST", action, cookie=cookie, referer="http://evil.example/page", form=form),
        request(h, "POST", action, origin=own, form=form),  # no cookie
        request(h, "POST", action, cookie=open_session(h), origin=own, form=form),  # another session's token
    ]
    assert [a.status for a in refused] == [403] * len(refused)
    assert request(h, "POST", action, cookie=cookie, origin=own, form=form,
                   content_type="text/plain").status == 415
    assert consoles.admin.scenario(consoles.scenario_id).status == "pending"  # nothing changed
    # a GET never changes anything: the action is POST only
    assert request(h, "GET", action, cookie=cookie).status == 405


def test_a_change_with_cookie_token_and_own_origin_goes_through(consoles: Consoles) -> None:
    c = consoles
    s = apply_dp(c.bank, title="To be rejected")
    h, cookie = c.admin_console, open_session(c.admin_console)
    page = request(h, "GET", f"/admin/review/{s.id}", cookie=cookie)  # type: ignore[attr-defined]
    form = {"csrf": csrf_of(page.body), "reason": "the purpose is not stated"}
    answer = request(h, "POST", f"/admin/review/{s.id}/reject", cookie=cookie,  # type: ignore[attr-defined]
                     referer=f"http://localhost:{h.port}/admin/review/x", host=f"localhost:{h.port}", form=form)
    assert answer.status == 303 and answer.headers["location"] == "/admin/pending"
    assert c.bank.scenario(s.id).status == "rejected"  # type: ignore[attr-defined]
    assert "the purpose is not stated" in request(h, "GET", "/admin/pending", cookie=cookie).body  # the notice


def _secrets_of(key_path: Path) -> list[str]:
    key = load_key(key_path)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    pem = key_path.read_text()
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    return [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode(), body, body[:40]]


def test_no_page_carries_the_key_or_the_launch_secret(consoles: Consoles) -> None:
    h = consoles.admin_console
    cookie = open_session(h)
    secret = urlsplit(h.url).query.removeprefix("token=")
    forbidden = [*_secrets_of(consoles.sbx.admin_key_path), secret]
    answers = [request(h, "GET", path, cookie=cookie) for path in _pages(consoles)]
    assert [a.status for a in answers] == [200] * len(answers)
    answers += [request(h, "GET", "/admin/review/s-nope", cookie=cookie), request(h, "GET", "/")]
    for answer in answers:
        text = answer.body + repr(answer.headers)
        assert [s for s in forbidden if s in text] == []


def test_nothing_the_console_prints_or_logs_holds_the_launch_secret(consoles: Consoles,
                                                                    capfd: pytest.CaptureFixture[str],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    h = consoles.admin_console
    secret = urlsplit(h.url).query.removeprefix("token=")
    cookie = open_session(h)
    for path in (f"/?token={secret}", f"/audit?token={secret}x", "/admin/review/s-nope", "/audit?since=garbage"):
        request(h, "GET", path, cookie=cookie)
    out, err = capfd.readouterr()
    assert secret not in out + err + caplog.text
    assert cookie.split("=", 1)[1] not in out + err + caplog.text


def test_values_from_the_server_are_escaped(consoles: Consoles) -> None:
    h = consoles.admin_console
    cookie = open_session(h)
    for path in ("/admin/pending", f"/admin/review/{consoles.scenario_id}", "/admin/principals"):
        page = request(h, "GET", path, cookie=cookie).body
        assert "&lt;script&gt;" in page, path
        assert "<script" not in page, path
    mine = request(consoles.bank_console, "GET", f"/scenarios/{consoles.scenario_id}",
                   cookie=open_session(consoles.bank_console)).body
    assert "Income &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in mine and "<script" not in mine


def test_roles_see_only_their_pages(consoles: Consoles) -> None:
    bank = consoles.bank_console
    cookie = open_session(bank)
    for path in ["/admin/pending", f"/admin/review/{consoles.scenario_id}", "/admin/principals", "/admin/grants",
                 "/audit", "/audit/entry/1", "/steward", "/training"]:
        answer = request(bank, "GET", path, cookie=cookie)
        assert answer.status == 403, path
        assert "Not for this role" in answer.body
    page = request(bank, "GET", "/", cookie=cookie).body
    assert 'href="/scenarios"' in page and 'href="/admin/' not in page and 'href="/audit"' not in page
    action = f"/admin/review/{consoles.scenario_id}/reject"
    form = {"csrf": csrf_of(page), "reason": "x"}  # a valid change request of the applicant's own session
    refused = request(bank, "POST", action, cookie=cookie, origin=f"http://127.0.0.1:{bank.port}", form=form)
    assert refused.status == 403 and "Not for this role" in refused.body
    assert consoles.admin.scenario(consoles.scenario_id).status == "pending"
    admin = request(consoles.admin_console, "GET", "/scenarios", cookie=open_session(consoles.admin_console))
    assert admin.status == 403  # an administrator without the applicant role has no "my scenarios"


def test_signing_out_ends_the_session(consoles: Consoles) -> None:
    h = consoles.bank_console
    cookie = open_session(h)
    page = request(h, "GET", "/", cookie=cookie)
    out = request(h, "POST", "/sign-out", cookie=cookie, origin=f"http://127.0.0.1:{h.port}",
                  form={"csrf": csrf_of(page.body)})
    assert out.status == 200 and "Max-Age=0" in out.headers["set-cookie"]
    assert request(h, "GET", "/", cookie=cookie).status == 403


def test_an_applicant_reads_its_scenarios_and_what_its_grant_leaves(consoles: Consoles) -> None:
    c = consoles
    s = apply_dp(c.bank, title="Granted statistics", epsilon=2, quota=10)
    g = c.admin.approve(s.id, epsilon="1.5", quota=8).grant  # type: ignore[attr-defined]
    assert g is not None
    cookie = open_session(c.bank_console)
    listing = request(c.bank_console, "GET", "/scenarios", cookie=cookie).body
    assert re.search(r"Granted statistics</a></td><td>DP_QUERY</td><td>approved</td>", listing)
    assert "1.5 of 1.5" in listing and "8 of 8" in listing
    page = request(c.bank_console, "GET", f"/scenarios/{s.id}", cookie=cookie).body  # type: ignore[attr-defined]
    assert "verified against the administrators&#39; keys" in page
    assert g.id in page


def _post(h: ConsoleHandle, cookie: str, page_path: str, action: str, form: dict[str, str] | list[tuple[str, str]]
          ) -> Answer:
    """A form submitted as the console's own page would: the page's CSRF token, the console's origin."""
    token = csrf_of(request(h, "GET", page_path, cookie=cookie).body)
    pairs = list(form.items()) if isinstance(form, dict) else list(form)
    return request(h, "POST", action, cookie=cookie, origin=h.origin, form=[("csrf", token), *pairs])


def test_an_administrator_enrols_and_suspends_through_the_forms(consoles: Consoles) -> None:
    h, cookie = consoles.admin_console, open_session(consoles.admin_console)
    key = public_key_of(generate_key())
    enrolled = _post(h, cookie, "/admin/principals", "/admin/principals/enrol",
                     [("name", "Harbour Insurance"), ("organisation", "Harbour Insurance plc"),
                      ("public_key", key.hex()), ("roles", "applicant"), ("roles", "researcher")])
    assert enrolled.status == 303
    p = next(p for p in consoles.admin.principals() if p.public_key == key)
    assert (p.name, sorted(p.roles), p.status) == ("Harbour Insurance", ["applicant", "researcher"], "active")
    bad = _post(h, cookie, "/admin/principals", "/admin/principals/enrol",
                {"name": "x", "organisation": "y", "public_key": "abcd", "roles": "applicant"})
    assert bad.status == 400 and "32 bytes" in bad.body
    suspended = _post(h, cookie, "/admin/principals", f"/admin/principals/{p.id}/suspend", {"reason": "left"})
    assert suspended.status == 303
    assert next(q for q in consoles.admin.principals() if q.id == p.id).status == "suspended"
    newcomer_key = generate_key()
    with SandboxClient(consoles.sbx.address, key=newcomer_key, ca=consoles.sbx.ca) as newcomer:
        pending = newcomer.register(name="Port Authority", organisation="Port", roles=["applicant"])
    assert pending.status == "pending" and "Port Authority" in request(h, "GET", "/admin/principals", cookie=cookie).body
    approved = _post(h, cookie, "/admin/principals", f"/admin/principals/{pending.id}/approve", {})
    assert approved.status == 303
    assert next(q for q in consoles.admin.principals() if q.id == pending.id).status == "active"


def test_an_administrator_names_a_datasets_department_and_stewards(consoles: Consoles) -> None:
    h, cookie = consoles.admin_console, open_session(consoles.admin_console)
    keeper = consoles.admin.enrol(name="Census office", organisation="City statistics", roles=["steward"],
                                  public_key=public_key_of(generate_key()))
    page = request(h, "GET", "/catalogue", cookie=cookie).body
    assert f'name="stewards" value="{keeper.id}"' in page
    answer = _post(h, cookie, "/catalogue", "/admin/stewardship/adult_census",
                   [("owner", "City statistics office"), ("policy", "never"), ("stewards", keeper.id)])
    assert answer.status == 303
    held = next(d for d in consoles.admin.catalogue() if d.name == "adult_census").stewardship
    assert held is not None and (held.owner, held.steward_ids, held.policy) == (
        "City statistics office", (keeper.id,), "never")
    assert "Held by <strong>City statistics office</strong>" in request(h, "GET", "/catalogue", cookie=cookie).body
    bank = request(consoles.bank_console, "GET", "/catalogue", cookie=open_session(consoles.bank_console)).body
    assert "/admin/stewardship/" not in bank  # the form is an administrator's


def test_approval_narrows_columns_budget_quota_and_validity(consoles: Consoles) -> None:
    c = consoles
    s = apply_dp(c.bank, title="To narrow", epsilon=2, quota=50)
    h, cookie = c.admin_console, open_session(c.admin_console)
    review = f"/admin/review/{s.id}"  # type: ignore[attr-defined]
    until = s.valid_until.replace(second=0, microsecond=0) - dt.timedelta(days=10)  # type: ignore[attr-defined]
    wider = _post(h, cookie, review, f"{review}/approve",
                  [("epsilon", "3"), ("quota", "50"), ("columns.adult_census", "age")])
    assert wider.status == 400 and c.bank.scenario(s.id).status == "pending"  # type: ignore[attr-defined]
    none = _post(h, cookie, review, f"{review}/approve", [("epsilon", "1")])
    assert none.status == 400 and "at least one column" in none.body
    answer = _post(h, cookie, review, f"{review}/approve",
                   [("epsilon", "0.75"), ("delta", "0"), ("max_epsilon_per_call", "0"), ("quota", "20"),
                    ("valid_until", until.strftime("%Y-%m-%dT%H:%M")),
                    ("columns.adult_census", "age"), ("columns.adult_census", "sex")])
    assert answer.status == 303 and answer.headers["location"].startswith("/admin/grants/g-")
    g = c.bank.scenario(s.id).grant  # type: ignore[attr-defined]
    assert g is not None
    assert (g.terms.epsilon, g.terms.quota, g.terms.not_after) == (Decimal("0.75"), 20, until)
    assert [(d.name, d.columns) for d in g.terms.datasets] == [("adult_census", ("age", "sex"))]
    assert c.bank.verify_grant(g).approver_id == c.admin.principal_id
    page = request(h, "GET", answer.headers["location"], cookie=cookie)
    assert "approved To narrow" in page.body and "epsilon 0.75" in page.body


def test_the_command_prints_the_address_serves_it_and_stops_on_ctrl_c(consoles: Consoles) -> None:
    """``sandbox-client console`` as a person runs it: a real process, its printed address, Ctrl-C."""
    sbx = consoles.sbx
    proc = subprocess.Popen(
        [sys.executable, "-m", "clients.cli", "console", "--no-browser", "--port", "0",  # global options after it
         "--key", str(sbx.admin_key_path), "--ca", str(sbx.ca), "--server", sbx.address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # blocks until the command prints (or exits)
            lines.append(line)
            if line.startswith("console: "):
                break
        url = lines[-1].removeprefix("console: ").strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[A-Za-z0-9_-]{43}", url), lines
        parts = urlsplit(url)
        conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=30)
        conn.request("GET", f"/?{parts.query}", headers={"Host": parts.netloc})
        opened = conn.getresponse()
        assert opened.status == 303
        cookie = opened.getheader("set-cookie", "").split(";")[0]
        opened.read()
        conn.request("GET", "/", headers={"Host": parts.netloc, "Cookie": cookie})
        page = conn.getresponse()
        assert page.status == 200 and "Administrator" in page.read().decode()
        conn.close()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert parts.query.removeprefix("token=") not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _entry_rows(page: str) -> list[list[str]]:
    """The audit page's entries as rows of cell texts (seq, time, principal, method, grant, status, ...)."""
    return _table_rows(page, "entries")


def _table_rows(page: str, table_id: str) -> list[list[str]]:
    body = page[page.index(f'<table id="{table_id}">'):]
    body = body[:body.index("</table>")]
    rows = re.findall(r"<tr[^>]*>\s*(<td.*?)</tr>", body, re.S)
    return [[re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
            for r in rows if "No entry matches" not in r]


def test_the_audit_log_filters_pages_and_shows_an_entry(consoles: Consoles) -> None:
    c = consoles
    with AuditorClient(c.sbx.address, key=c.bank.transport.key, ca=c.sbx.ca) as nosy:
        with pytest.raises(PermissionDenied):
            nosy.audit_head()  # an applicant may not read the log: a refused, audited call
    for _ in range(60):  # more than a page of entries
        c.bank.whoami()
    h, cookie = c.admin_console, open_session(c.admin_console)
    refused = _entry_rows(request(h, "GET", "/audit?status=PERMISSION_DENIED", cookie=cookie).body)
    assert refused and {r[5] for r in refused} == {"PERMISSION_DENIED"}
    assert "GetAuditHead" in {r[3] for r in refused}
    applied = _entry_rows(request(h, "GET", "/audit?method=Apply", cookie=cookie).body)
    assert applied and {r[3] for r in applied} == {"Apply"}
    mine = _entry_rows(request(h, "GET", f"/audit?principal={c.bank.principal_id}", cookie=cookie).body)
    assert mine and {r[2].split()[-1] for r in mine} == {c.bank.principal_id[:10]}
    latest = request(h, "GET", "/audit", cookie=cookie).body  # more than a page by now: the latest page first
    assert 'id="earlier-page"' in latest
    seqs = [int(x) for x in re.findall(r'href="/audit/entry/(\d+)"', latest)]
    first = request(h, "GET", "/audit?after=0", cookie=cookie).body
    assert re.findall(r'href="/audit/entry/(\d+)"', first)[:2] == ["1", "2"] and 'id="later-page"' in first
    assert seqs == sorted(seqs) and seqs[0] > 1
    entry = request(h, "GET", f"/audit/entry/{seqs[0]}", cookie=cookie)
    assert entry.status == 200 and "entry hash" in entry.body
    assert request(h, "GET", "/audit/entry/999999", cookie=cookie).status == 404
    assert request(h, "GET", "/audit?since=yesterday", cookie=cookie).status == 400


def test_the_head_is_checked_against_the_witness_and_what_the_console_saw(consoles: Consoles,
                                                                          tmp_path: Path) -> None:
    c = consoles
    audit_key = c.admin.audit_head().audit_public_key
    state = tmp_path / "witness"
    witnessed = witness(c.admin, state, audit_key).head
    assert witnessed is not None
    console = serve(c.admin, port=0, witness_state=state)
    try:
        cookie = open_session(console)
        head = request(console, "GET", "/audit", cookie=cookie).body
        for _ in range(5):  # a newer head may be signed meanwhile (every 32 entries, in the background): witness it
            if witnessed.root_hash in head:
                break
            witnessed = witness(c.admin, state, audit_key).head
            assert witnessed is not None
            head = request(console, "GET", "/audit", cookie=cookie).body
        assert witnessed.root_hash in head  # the page shows the head the witness cosigned
        assert "pinned by your witness" in head and "verifies" in head
        assert re.search(r"extends your witness&#39;s stored head</th><td><span class=\"state active\">yes", head)
        me = c.admin.whoami()
        assert f"{me.name} <code>{me.id}</code>" in head  # the witness's cosignature of that head, by name
        again = request(console, "GET", "/audit", cookie=cookie).body
        assert re.search(r"extends the last head this console checked</th><td><span class=\"state active\">yes",
                         again)
        # a stored head the log does not extend (another root at the same size): the page says so
        forged = TreeHead(witnessed.size, "ab" * 32, witnessed.signed_at_ms, witnessed.signature)
        (state / "head.json").write_text(json.dumps(forged.to_json(audit_key)))
        broken = request(console, "GET", "/audit", cookie=cookie).body
        assert re.search(r"extends your witness&#39;s stored head</th><td><span class=\"state revoked\">NO", broken)
    finally:
        console.stop()


SETTINGS = {"rounds": 2, "local_epochs": 1, "learning_rate": 0.5, "clipping_norm": 1.0, "noise_multiplier": 1.0,
            "delta": 1e-6}


def test_a_training_plan_is_reviewed_in_full_and_the_researcher_follows_its_job(tmp_path: Path) -> None:
    sbx = start_sandbox(tmp_path)
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "rand_hie.toml", DATA / "rand_hie.csv.gz")
    lab_key = generate_key()
    admin.enrol(name="University lab", organisation="University", roles=["researcher"],
                public_key=public_key_of(lab_key))
    lab = ResearcherClient(sbx.address, key=lab_key, ca=sbx.ca)
    features = ["xage", "female", "educdec", "lfam", "coins", "linc"]
    plan = lab.register_plan(dataset="rand_hie", features=features, label="meddol", label_threshold=35.0)
    s = lab.apply(title="Medical spending model", purpose="Predict above-threshold spending",
                  legal_basis="Research exemption", kind="FL_TRAINING", datasets={"rand_hie": [*features, "meddol"]},
                  model_hash=plan, epsilon=40, delta="1e-5", quota=3, training=SETTINGS)
    admin_console, lab_console = serve(admin, port=0), serve(lab, port=0)
    try:
        cookie = open_session(admin_console)
        review = request(admin_console, "GET", f"/admin/review/{s.id}", cookie=cookie).body
        block = review[review.index('id="plan-terms"'):]
        assert plan in block and "xage, female, educdec, lfam, coins, linc" in block and "meddol above 35" in block
        settings = review[review.index('id="run-settings"'):]
        assert "2 rounds x 1 local epoch(s)" in settings and "noise multiplier 1, delta 0.000001" in settings
        price = lab.scenario(s.id).training_epsilon
        assert price > 0 and f"epsilon {price.normalize():f} per run" in settings
        assert "SecAgg+: 6 of 6 holders a round, shares 6, threshold 4 (up to 2 may drop out)" in settings
        answer = _post(admin_console, cookie, f"/admin/review/{s.id}", f"/admin/review/{s.id}/approve",
                       [("epsilon", "20"), *(("columns.rand_hie", c) for c in [*features, "meddol"])])
        assert answer.status == 303
        g = lab.scenario(s.id).grant
        assert g is not None and g.terms.epsilon == 20
        job = lab.start_training(g.id, plan, **SETTINGS)
        events = list(lab.watch_training(job))
        assert events[-1].state == "completed"
        mine = open_session(lab_console)
        jobs = request(lab_console, "GET", "/training", cookie=mine).body
        assert str(job) in jobs and "round 2 of 2" in jobs and "completed" in jobs
        rounds = _table_rows(request(lab_console, "GET", f"/training/{job}", cookie=mine).body, "rounds")
        assert [r[0] for r in rounds][:2] == ["1 / 2", "2 / 2"]
        assert {r[2] for r in rounds[:2]} == {"withheld"}  # under DP the per-round metrics are withheld
        named = _table_rows(request(lab_console, "GET", f"/training/{job}", cookie=mine).body, "coefficients")
        assert [r[0] for r in named] == [*features, "(intercept)"]
        result = lab.training_result(job)
        assert result.named is not None and [float(r[1]) for r in named[:-1]] == pytest.approx(
            list(result.named.coefficients.values()), rel=1e-5)
        every = request(admin_console, "GET", "/training", cookie=cookie)  # an administrator sees every job
        assert every.status == 200 and str(job) in every.body and lab.principal_id in every.body
        seen = request(admin_console, "GET", f"/training/{job}", cookie=cookie).body
        assert lab.principal_id in seen and 'id="coefficients"' not in seen  # the model goes to its owner only
    finally:
        admin_console.stop()
        lab_console.stop()
        admin.close()
        lab.close()
        sbx.stop()


def test_a_suspended_principals_console_says_so_and_shows_nothing_else(consoles: Consoles) -> None:
    key = generate_key()
    p = consoles.admin.enrol(name="Short-lived", organisation="Temp", roles=["applicant"],
                             public_key=public_key_of(key))
    with ApplicantClient(consoles.sbx.address, key=key, ca=consoles.sbx.ca) as client:
        h = serve(client, port=0)
        try:
            cookie = open_session(h)
            assert request(h, "GET", "/scenarios", cookie=cookie).status == 200
            consoles.admin.suspend_principal(p.id, "contract ended")
            home = request(h, "GET", "/", cookie=cookie)  # WhoAmI still answers a suspended key: its status
            assert home.status == 200 and "<td>suspended</td>" in home.body
            for path in ("/scenarios", "/catalogue"):
                answer = request(h, "GET", path, cookie=cookie)
                assert answer.status == 403, path
                assert "The sandbox said no" in answer.body and "<table" not in answer.body
        finally:
            h.stop()


def test_a_verification_application_shows_its_templates_and_limits_and_is_approved(tmp_path: Path) -> None:
    sbx = start_sandbox(tmp_path)
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "credit_default.toml", DATA / "credit_default.csv.gz")
    key = generate_key()
    admin.enrol(name="Bank", organisation="Bank", roles=["applicant"], public_key=public_key_of(key))
    bank = ApplicantClient(sbx.address, key=key, ca=sbx.ca)
    s = bank.apply(title="Loan checks", purpose="Verify declared age", legal_basis="Applicants' consent",
                   kind="VERIFICATION", datasets={"credit_default": ["ID", "AGE", "PAY_0"]}, quota=300,
                   verification={"id_column": "ID", "templates": {"age": "AGE==?", "repaid": "PAY_0 <= 0"},
                                 "reveal_unknown": True})
    admin_console = serve(admin, port=0)
    try:
        cookie = open_session(admin_console)
        review = request(admin_console, "GET", f"/admin/review/{s.id}", cookie=cookie).body
        assert [r[:2] for r in _table_rows(review, "check-templates")] == [["age", "AGE == ?"],
                                                                         ["repaid", "PAY_0 &lt;= 0"]]
        assert "300 checks" in review and "at most <strong>3</strong> check(s) of one entity" in review
        assert "answered UNKNOWN_ENTITY" in review
        cols = [("columns.credit_default", c) for c in ["ID", "AGE", "PAY_0"]]
        none = _post(admin_console, cookie, f"/admin/review/{s.id}", f"/admin/review/{s.id}/approve", cols)
        assert none.status == 400 and "keep at least one check template" in none.body
        answer = _post(admin_console, cookie, f"/admin/review/{s.id}", f"/admin/review/{s.id}/approve",
                       [("quota", "200"), *cols, ("templates", "age"), ("per_entity_limit", "2")])
        assert answer.status == 303  # reveal_unknown's box left unticked: switched off
        g = bank.scenario(s.id).grant
        assert g is not None and g.terms.quota == 200 and g.terms.verification is not None
        assert [x.name for x in g.terms.verification.templates] == ["age"]
        assert (g.terms.verification.per_entity_limit, g.terms.verification.reveal_unknown) == (2, False)
    finally:
        admin_console.stop()
        admin.close()
        bank.close()
        sbx.stop()
