"""The dashboard's mails through a real `serve` with ``[email]`` pointing at a fake SMTP server
(tests/fakes/smtp.py): sign-up verification, the password reset, the same answer for an unknown
address, rate limits, a server that refuses mail, and no token or SMTP password in the logs."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.e2e.dashboard_gateway import Browserless, FreshGateway, start_fresh
from tests.fakes.smtp import FakeSmtp, Mail
from tests.fakes.stripe import FakeStripe
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new passphrase"
SMTP_SECRET = "smtp-password-never-logged-0001"


@pytest.fixture(scope="module")
def smtp() -> Iterator[FakeSmtp]:
    fake = FakeSmtp().start()
    yield fake
    fake.stop()


def _start(tmp: Path, upstream: FakeUpstream, stripe: FakeStripe, smtp: FakeSmtp, **kw: str) -> FreshGateway:
    email = (
        f'\n[email]\nsmtp_url = "smtp://relay-user@127.0.0.1:{smtp.port}"\n'
        'sender = "Relay <relay@example.test>"\npassword_env = "RELAYPROXY_TEST_SMTP_PASSWORD"\n'
    )
    return start_fresh(tmp, upstream, stripe, extra=email, env={"RELAYPROXY_TEST_SMTP_PASSWORD": SMTP_SECRET}, **kw)


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, stripe_fake: FakeStripe, smtp: FakeSmtp
) -> Iterator[FreshGateway]:
    gateway = _start(tmp_path_factory.mktemp("dash-mail"), upstream, stripe_fake, smtp)
    yield gateway
    gateway.stop()


def _link(mail: Mail, path: str) -> str:
    found = re.search(rf"http://127\.0\.0\.1:\d+{path}\?token=([\w-]+)", mail.body)
    assert found, mail.body
    parts = urlparse(found.group(0))
    return f"{parts.path}?{parts.query}"


def _signed_up(gw: FreshGateway, smtp: FakeSmtp, email: str) -> Browserless:
    """A user who signed up and opened the verification link (logged in)."""
    client, before = Browserless(gw), len(smtp.mails)
    status, html = client.form("/signup", "/signup", {"email": email, "password": PASSWORD})
    assert status == 200 and "Check your mail" in html, html
    mail = smtp.wait_for(before + 1)[before]
    assert mail.rcpt_to == [email] and mail.auth == ("relay-user", SMTP_SECRET)
    assert client.request("GET", _link(mail, "/verify"))[0] == 200
    assert client.login(email, PASSWORD)[0] == 303
    return client


def _log_once(gw: FreshGateway, text: str) -> str:
    """The gateway's log once it holds ``text`` (log lines reach the file a moment after the answer)."""
    deadline = time.monotonic() + 10
    while text not in (log := gw.log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert text in log, log
    return log


def _balance(gw: FreshGateway, email: str) -> int:
    with sqlite3.connect(gw.db) as db:
        row = db.execute("SELECT balance_microusd FROM accounts WHERE name = ?", (email,)).fetchone()
    return int(row[0])


def test_signup_is_verified_by_a_link_that_works_once(gw: FreshGateway, smtp: FakeSmtp) -> None:
    client, email, before = Browserless(gw), "new@example.test", len(smtp.mails)
    status, html = client.form("/signup", "/signup", {"email": email, "password": PASSWORD})
    assert status == 200 and "new@example.test" in html and "rp_session" not in client.cookies
    first = smtp.wait_for(before + 1)[before]
    assert first.message["To"] == email and first.message["From"] == "Relay <relay@example.test>"
    assert _balance(gw, email) == 0  # the sign-up credit waits for the verification
    status, html = client.login(email, PASSWORD)  # not verified yet: no session, a new link instead
    assert status == 403 and "Confirm your e-mail address" in html and "rp_session" not in client.cookies
    second = smtp.wait_for(before + 2)[before + 1]
    status, _, html = client.request("GET", _link(second, "/verify"))
    assert status == 200 and "confirmed" in html
    assert client.request("GET", _link(second, "/verify"))[0] == 404  # once
    assert client.request("GET", _link(first, "/verify"))[0] == 404  # the older link died with it
    assert client.login(email, PASSWORD)[0] == 303
    assert client.request("GET", "/dashboard")[0] == 200
    assert _balance(gw, email) == 1_000_000  # granted once, at the verification
    with sqlite3.connect(gw.db) as db:
        assert db.execute("SELECT verified FROM users WHERE email = ?", (email,)).fetchone() == (1,)


def test_forgot_password_answers_alike_and_the_reset_link_works_once(gw: FreshGateway, smtp: FakeSmtp) -> None:
    email = "forgetful@example.test"
    old_session = _signed_up(gw, smtp, email)
    assert old_session.request("GET", "/dashboard")[0] == 200
    client = Browserless(gw)
    _, _, login_page = client.request("GET", "/login")
    assert '<a href="/forgot">Forgot password?</a>' in login_page
    _, _, forgot_page = client.request("GET", "/forgot")
    assert ">Email</label>" in forgot_page and ">Send reset link</button>" in forgot_page
    before = len(smtp.mails)
    unknown = client.form("/forgot", "/forgot", {"email": "nobody-here@example.test"})
    known = client.form("/forgot", "/forgot", {"email": email})
    assert unknown[0] == known[0] == 200
    assert re.sub(r'value="[^"]+"', "", unknown[1]) == re.sub(r'value="[^"]+"', "", known[1])
    mails = smtp.wait_for(before + 1)
    assert [m.rcpt_to for m in mails[before:]] == [[email]]  # none for the unknown address
    reset = _link(mails[before], "/reset")
    status, _, page = client.request("GET", reset)
    assert status == 200 and ">New password</label>" in page and ">Set password</button>" in page
    token = reset.partition("token=")[2]
    status, html = client.form(reset, "/reset", {"token": token, "password": NEW_PASSWORD})
    assert status == 200 and "every session" in html
    assert old_session.request("GET", "/dashboard")[0] == 303  # the old session has ended
    assert client.request("GET", reset)[0] == 404  # once
    assert client.form("/login", "/reset", {"token": token, "password": "another one, too late"})[0] == 404
    assert client.login(email, PASSWORD)[0] == 401
    assert client.login(email, NEW_PASSWORD)[0] == 303


def test_a_reset_link_expires(gw: FreshGateway, smtp: FakeSmtp) -> None:
    email = "slow@example.test"
    _signed_up(gw, smtp, email)
    client, before = Browserless(gw), len(smtp.mails)
    assert client.form("/forgot", "/forgot", {"email": email})[0] == 200
    reset = _link(smtp.wait_for(before + 1)[before], "/reset")
    assert client.request("GET", reset)[0] == 200
    with sqlite3.connect(gw.db) as db:  # an hour later
        db.execute("UPDATE email_tokens SET expires_at = '2020-01-01T00:00:00.000Z' WHERE purpose = 'reset'")
    assert client.request("GET", reset)[0] == 404
    fields = {"token": reset.partition("token=")[2], "password": NEW_PASSWORD}
    assert client.form("/login", "/reset", fields)[0] == 404
    assert client.login(email, PASSWORD)[0] == 303


def test_reset_mails_are_rate_limited_per_address(gw: FreshGateway) -> None:
    client = Browserless(gw)
    statuses = [client.form("/forgot", "/forgot", {"email": "flood@example.test"})[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_a_refusing_mail_server_gives_a_clear_page(gw: FreshGateway, smtp: FakeSmtp) -> None:
    smtp.reject_mail = True
    try:
        status, html = Browserless(gw).form(
            "/signup", "/signup", {"email": "unlucky@example.test", "password": PASSWORD}
        )
    finally:
        smtp.reject_mail = False
    assert status == 503 and "could not send the mail" in html and "Traceback" not in html
    log = _log_once(gw, f"mail not sent through smtp://127.0.0.1:{smtp.port}: SMTPSenderRefused 451")
    assert "Traceback" not in log and "unlucky@example.test" not in log


def test_no_token_or_smtp_password_in_logs_or_pages(gw: FreshGateway, smtp: FakeSmtp) -> None:
    _signed_up(gw, smtp, "careful@example.test")
    log = gw.log.read_text()
    assert smtp.mails and SMTP_SECRET not in log
    for mail in smtp.mails:
        for token in re.findall(r"\?token=([\w-]+)", mail.body):
            assert token not in log
    with sqlite3.connect(gw.db) as db:
        stored = [bytes(r[0]) for r in db.execute("SELECT token_hash FROM email_tokens")]
    assert stored and all(len(h) == 32 for h in stored)  # hashes only


def test_the_reset_flow_on_postgresql(
    tmp_path: Path, upstream: FakeUpstream, stripe_fake: FakeStripe, smtp: FakeSmtp, pg_url: str
) -> None:
    gateway = _start(tmp_path, upstream, stripe_fake, smtp, database=pg_url)
    try:
        email = "pg@example.test"
        old_session = _signed_up(gateway, smtp, email)
        client, before = Browserless(gateway), len(smtp.mails)
        assert client.form("/forgot", "/forgot", {"email": email})[0] == 200
        reset = _link(smtp.wait_for(before + 1)[before], "/reset")
        fields = {"token": reset.partition("token=")[2], "password": NEW_PASSWORD}
        assert client.form(reset, "/reset", fields)[0] == 200
        assert client.form("/login", "/reset", fields)[0] == 404
        assert old_session.request("GET", "/dashboard")[0] == 303
        assert client.login(email, NEW_PASSWORD)[0] == 303
    finally:
        gateway.stop()
