"""The dashboard's mail sender (dashboard/mail.py) against the fake SMTP server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
