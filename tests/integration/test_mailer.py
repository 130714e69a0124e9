"""The dashboard's mail sender (dashboard/mail.py) against the fake SMTP server."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from relayproxy.config.email import EmailConfig
from relayproxy.dashboard.mail import Mailer, MailError
from tests.fakes.smtp import FakeSmtp

pytestmark = pytest.mark.anyio


@pytest.fixture
def smtp() -> Iterator[FakeSmtp]:
    fake = FakeSmtp().start()
    yield fake
    fake.stop()


def _config(smtp: FakeSmtp, **kw: object) -> EmailConfig:
    return EmailConfig("127.0.0.1", smtp.port, "plain", "Relay <relay@example.test>", **kw)  # type: ignore[arg-type]


async def test_sends_one_mail_with_login(smtp: FakeSmtp) -> None:
    await Mailer(_config(smtp, user="u", password="pw-1")).send("ann@example.test", "Hello", "line one\n.dot line\n")
    [mail] = smtp.mails
    assert (
        mail.auth == ("u", "pw-1") and mail.rcpt_to == ["ann@example.test"] and mail.mail_from == "relay@example.test"
    )
    assert mail.message["Subject"] == "Hello" and mail.message["Message-ID"].endswith("@example.test>")
    assert mail.body == "line one\n.dot line\n"


async def test_failures_are_mail_errors_logged_without_secrets(
    smtp: FakeSmtp, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(MailError, match="no SMTP password"):
        await Mailer(_config(smtp, user="u", password_env="NOT_SET_X")).send("a@example.test", "s", "secret-link")
    smtp.reject_mail = True
    with pytest.raises(MailError, match="451"):
        await Mailer(_config(smtp, user="u", password="pw-2")).send("a@example.test", "s", "secret-link")
    refused = EmailConfig("127.0.0.1", 9, "plain", "r@example.test", timeout_s=5)
    with pytest.raises(MailError):
        await Mailer(refused).send("a@example.test", "s", "secret-link")
    assert not smtp.mails
    text = caplog.text
    assert "mail not sent through smtp://127.0.0.1" in text
    assert "pw-2" not in text and "secret-link" not in text and "a@example.test" not in text


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(tls_ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def trusted(tls_ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test CA as the system's trust store (OpenSSL's SSL_CERT_FILE, read by each new context)."""
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))


@pytest.mark.parametrize("security", ["tls", "starttls"])
@pytest.mark.usefixtures("trusted")
async def test_tls_and_starttls_encrypt_before_the_login(server_tls: ssl.SSLContext, security: str) -> None:
    fake = FakeSmtp(server_tls, implicit=security == "tls").start()
    try:
        config = EmailConfig("127.0.0.1", fake.port, security, "r@example.test", user="u", password="pw-tls")
        await Mailer(config).send("ann@example.test", "Hello", "over TLS\n")
        [mail] = fake.mails
        assert mail.tls and mail.auth == ("u", "pw-tls") and mail.body == "over TLS\n"
    finally:
        fake.stop()


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_an_untrusted_certificate_is_refused(
    server_tls: ssl.SSLContext, security: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeSmtp(server_tls, implicit=security == "tls").start()
    try:
        config = EmailConfig("127.0.0.1", fake.port, security, "r@example.test", user="u", password="pw-tls")
        with pytest.raises(MailError, match="SSLCertVerificationError"):
            await Mailer(config).send("ann@example.test", "Hello", "never sent\n")
        assert not fake.mails and "pw-tls" not in caplog.text
    finally:
        fake.stop()
