"""Sending the dashboard's mails through the ``[email]`` SMTP server (config/email.py).

stdlib ``smtplib`` in a worker thread (``asyncio.to_thread``), one connection per mail: these
mails are rare (a sign-up, a reset request), so a pool would buy nothing. A failure of any kind
(refused connection, TLS, login, a rejected recipient, a timeout) becomes ``MailError`` and one
warning log line naming the server and the failure, never the password, the recipient or the
message (which holds a single-use link).
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from relayproxy.config.email import EmailConfig

__all__ = ["MailError", "Mailer"]

log = logging.getLogger("relayproxy.dashboard.mail")


class MailError(Exception):
    """The mail could not be handed to the SMTP server (the log line says why)."""


class Mailer:
    def __init__(self, config: EmailConfig) -> None:
        self._config = config

    async def send(self, to: str, subject: str, body: str) -> None:
        msg = EmailMessage()
        msg["From"] = self._config.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=parseaddr(self._config.sender)[1].rpartition("@")[2] or None)
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(body)
        try:
            await asyncio.to_thread(self._deliver, msg)
        except MailError as exc:
            log.warning("mail not sent through %s: %s", self._config.server, exc)
            raise
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            log.warning("mail not sent through %s: %s", self._config.server, _describe(exc))
            raise MailError(_describe(exc)) from None

    def _deliver(self, msg: EmailMessage) -> None:
        cfg = self._config
        if cfg.user and not cfg.password:
            why = cfg.password_problem or f"the environment variable {cfg.password_env} is not set"
            raise MailError(f"no SMTP password for user login: {why}")
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if cfg.security == "tls":
            smtp = _SMTPS(cfg.host, cfg.port, timeout=cfg.timeout_s, context=context)
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
        with smtp:
            smtp.ehlo()
            if cfg.security == "starttls":
                smtp.starttls(context=context)
                smtp.ehlo()
            if cfg.user and cfg.password:
                smtp.login(cfg.user, cfg.password)
            smtp.send_message(msg)


class _SMTPS(smtplib.SMTP_SSL):
    """``SMTP_SSL`` that closes its socket when the TLS handshake fails (the stdlib's leaves the
    connected socket to the garbage collector)."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        raw = socket.create_connection((host, port), timeout, self.source_address)
        try:
            return self.context.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise


def _describe(exc: BaseException) -> str:
    """The failure in a few words: the SMTP reply code and text, or the OS error; nothing else of
    the exception (``SMTPRecipientsRefused`` would list the recipients)."""
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"{type(exc).__name__} {exc.smtp_code} {text[:200]}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "SMTPRecipientsRefused: the server refused the recipient"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__
