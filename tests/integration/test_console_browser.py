"""The console in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

The whole review in the browser: an applicant applies through the SDK for HE scoring on a dataset whose
steward must co-sign; the administrator opens the pending application in the console, reads the model in full
(every term and its share of the score's range), approves it with a narrowed budget by clicking, the steward
co-signs in its own console, the grant verifies offline, a score runs, and a revocation clicked in the console
refuses the next call. And the refusals a browser meets: no launch secret, a form posted from another origin.

The review page and the audit page are saved as PNGs: into the directory ``SANDBOX_SCREENSHOTS`` names (the
README's come from ``SANDBOX_SCREENSHOTS=docs/screenshots``), else into the test's temporary directory.
Chromium is installed by ``make test`` (scripts/install_browser.sh); a machine without it fails here, loudly.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from clients import AdminClient, ApplicantClient, PermissionDenied, StewardClient, generate_key, public_key_of
from clients.console import ConsoleHandle, serve
from tests.conftest import DATA, SCHEMAS, apply_dp, start_sandbox

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WIDTH = 1200
PUBLIC = {"LIMIT_BAL": -2.0e-6, "AGE": 0.02, "PAY_0": 0.55, "PAY_2": 0.1}
PRIVATE = {"bill_amt1_1e5": 0.12, "pay_amt1_1e4": -0.35}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install_browser.sh (make test runs it) to install "
                    "Debian's chromium and chromium-driver")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


def screenshots(tmp_path: Path) -> Path:
    named = os.environ.get("SANDBOX_SCREENSHOTS", "")
    folder = Path(named) if named else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_console(browser: Browser, handle: ConsoleHandle) -> Page:
    """A fresh browser profile that opens the printed address: the secret leaves the address at once."""
    page = browser.new_context(viewport={"width": WIDTH, "height": 900}).new_page()
    page.goto(handle.url)
    expect(page).to_have_url(f"{handle.origin}/")
    return page


def test_review_approve_cosign_score_and_revoke_in_the_browser(browser: Browser, tmp_path: Path) -> None:
    sbx = start_sandbox(tmp_path)
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "credit_default.toml", DATA / "credit_default.csv.gz")
    bank_key, steward_key = generate_key(), generate_key()
    admin.enrol(name="Harbour Bank", organisation="Harbour Bank Ltd", roles=["applicant"],
                public_key=public_key_of(bank_key))
    keeper = admin.enrol(name="Credit registry", organisation="City finance department", roles=["steward"],
                         public_key=public_key_of(steward_key))
    admin.set_stewardship("credit_default", owner="City finance department", stewards=(keeper.id,),
                          policy="always")
    bank = ApplicantClient(sbx.address, key=bank_key, ca=sbx.ca)
    steward = StewardClient(sbx.address, key=steward_key, ca=sbx.ca)
    model = bank.submit_model(name="default-risk-v1", dataset="credit_default", public_features=PUBLIC,
                              private_features=PRIVATE, bias=-1.1)
    s = bank.apply(title="Default risk of loan applicants", purpose="Score applicants' default risk with the "
                   "bank's own features kept encrypted", legal_basis="Applicants' consent; Credit Reporting "
                   "Regulation art. 12", kind="HE_SCORING", datasets={"credit_default": ["ID", *PUBLIC]},
                   model_hash=model, epsilon=2, max_epsilon_per_call="0.5", quota=100)
    admin_console, steward_console = serve(admin, port=0), serve(steward, port=0)
    shots = screenshots(tmp_path)
    try:
        # The administrator reviews the application in full.
        page = open_console(browser, admin_console)
        page.get_by_role("link", name="Pending applications").first.click()
        page.locator(f"a[href='/admin/review/{s.id}']").click()
        expect(page.locator("h1")).to_contain_text("Default risk of loan applicants")
        terms = page.locator("#model-terms")
        review = bank.model(model).review
        assert review is not None
        for x in review.terms:  # every sandbox term with its share of the score's range
            expect(terms.locator("tr", has_text=x.column)).to_contain_text(f"{x.share:.0%}")
        for name in PRIVATE:
            expect(terms.locator("tr", has_text=name)).to_contain_text("the applicant, encrypted")
        expect(page.locator("#dataset-credit_default")).to_contain_text("identifier")
        page.screenshot(path=shots / "console-review.png", full_page=True)

        # ... narrows the budget and the quota, and approves by clicking.
        page.locator("#approve-form input[name=epsilon]").fill("1")
        page.locator("#approve-form input[name=quota]").fill("40")
        page.locator("#approve").click()
        page.wait_for_url(f"{admin_console.origin}/admin/grants/*")
        expect(page.locator(".notice.ok")).to_contain_text("approved")
        expect(page.locator("h1")).to_contain_text("Grant")
        grant = bank.scenario(s.id).grant
        assert grant is not None and grant.terms.epsilon == Decimal(1) and grant.terms.quota == 40
        assert grant.awaiting == ("credit_default",)
        with pytest.raises(PermissionDenied):
            bank.verify_grant(grant)  # not yet: the steward's co-signature is missing

        # The steward reads the same application in its own console and co-signs.
        spage = open_console(browser, steward_console)
        spage.get_by_role("link", name="Stewardship").first.click()
        spage.locator(f"a[href='/steward/scenario/{s.id}']").click()
        expect(spage.locator("#model-terms")).to_contain_text("LIMIT_BAL")
        spage.locator("#cosign").click()
        expect(spage.locator(".notice.ok")).to_contain_text("co-signed")

        # The grant verifies offline, with the co-signature; a score runs under it.
        grant = bank.scenario(s.id).grant
        assert grant is not None and grant.awaiting == ()
        assert bank.verify_grant(grant).quota == 40
        ids = ["1", "2", "3"]
        scored = bank.score(grant.id, model, ids, np.array([[0.5, 0.2], [1.0, 0.0], [0.1, 0.9]]))
        assert scored.probabilities is not None and len(scored.probabilities) == len(ids)

        # The administrator sees the use and revokes by clicking; the next call is refused.
        page.goto(f"{admin_console.origin}/admin/grants/{grant.id}")
        expect(page.locator("#usage figcaption").nth(1)).to_contain_text("quota used: 3")
        page.locator("#revoke-form textarea[name=reason]").fill("The bank's consent records are under review")
        page.locator("#revoke").click()
        expect(page.locator(".notice.ok")).to_contain_text("revoked")
        with pytest.raises(PermissionDenied):
            bank.score(grant.id, model, ids[:1], np.array([[0.5, 0.2]]))

        # The audit log shows the refusal; its detail page shows the canonical request.
        page.get_by_role("link", name="Audit log").first.click()
        page.locator("#audit-filters input[name=grant]").fill(grant.id)
        page.locator("#audit-filters button").click()
        expect(page.locator("#entries")).to_contain_text("PERMISSION_DENIED")
        expect(page.locator("#head")).to_contain_text("verifies")
        page.screenshot(path=shots / "console-audit.png", full_page=True)
        page.locator("#entries a").first.click()
        expect(page.locator("#request")).to_contain_text(grant.id)
    finally:
        admin_console.stop()
        steward_console.stop()
        for c in (admin, bank, steward):
            c.close()
        sbx.stop()
    assert (shots / "console-review.png").stat().st_size > 0 and (shots / "console-audit.png").stat().st_size > 0


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    """Another local web app (same site as the console: only the port differs) with a form aimed at it."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = (f'<form method="post" action="{self.target}"><input type="hidden" name="csrf" value="guess">'
                '<input type="hidden" name="reason" value="from elsewhere"><button id="go">go</button></form>'
                ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_browser_is_refused_without_the_secret_and_from_another_origin(browser: Browser,
                                                                           tmp_path: Path) -> None:
    sbx = start_sandbox(tmp_path)
    admin = sbx.admin()
    admin.import_dataset(SCHEMAS / "adult_census.toml", DATA / "adult_census.csv.gz")
    bank_key = generate_key()
    admin.enrol(name="Office", organisation="Statistics office", roles=["applicant"],
                public_key=public_key_of(bank_key))
    with ApplicantClient(sbx.address, key=bank_key, ca=sbx.ca) as bank:
        s = apply_dp(bank)
    console = serve(admin, port=0)
    _AttackerPage.target = f"{console.origin}/admin/review/{s.id}/reject"  # type: ignore[attr-defined]
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        stranger = browser.new_context().new_page()  # a profile that never opened the printed address
        answer = stranger.goto(f"{console.origin}/admin/pending")
        assert answer is not None and answer.status == 403
        expect(stranger.locator("body")).to_contain_text("refused")
        wrong = stranger.goto(f"{console.origin}/?token=guessed")
        assert wrong is not None and wrong.status == 403

        # The user's own browser, signed in: a page of another origin posts a form to the console.
        page = open_console(browser, console)
        page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        with page.expect_response(_AttackerPage.target) as posted:
            page.locator("#go").click()
        assert posted.value.status == 403
        expect(page.locator("body")).to_contain_text("refused")
        assert isinstance(admin, AdminClient) and admin.scenario(s.id).status == "pending"  # type: ignore[attr-defined]
        # ... while the same form from the console's own page goes through
        page.goto(f"{console.origin}/admin/review/{s.id}")  # type: ignore[attr-defined]
        page.locator("#reject-form textarea[name=reason]").fill("Stated purpose too broad")
        page.locator("#reject").click()
        expect(page.locator(".notice.ok")).to_contain_text("rejected")
        assert admin.scenario(s.id).status == "rejected"  # type: ignore[attr-defined]
    finally:
        attacker.shutdown()
        console.stop()
        admin.close()
        sbx.stop()
