"""The optional ``[email]`` table: the SMTP server the dashboard sends its mails through
(sign-up verification, password-reset links).

``smtp_url`` names the server and how to reach it: ``smtp://host:port`` (plain, port 25 by
default), ``smtps://host:port`` (TLS from the first byte, 465) or ``smtp+starttls://host:port``
(STARTTLS, 587). A login user goes in the URL (``smtp+starttls://user@host:587``, percent-encoded);
its password never does: it is read from the environment variable named by ``password_env``
(default ``RELAYPROXY_SMTP_PASSWORD``, or the systemd credential file of that name). ``sender``
is the From address. Without the table the dashboard sends no mail at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any
from urllib.parse import unquote, urlsplit

from relayproxy.config.credentials import CredentialError, credential_name, read_secret

__all__ = ["EmailConfig", "EmailConfigError", "parse_email"]

_SCHEMES = {"smtp": ("plain", 25), "smtps": ("tls", 465), "smtp+starttls": ("starttls", 587)}
_KEYS = {"smtp_url", "sender", "password_env", "timeout_s"}


class EmailConfigError(ValueError):
    """The ``[email]`` table is invalid (settings.py turns it into its ConfigError)."""


@dataclass(frozen=True, slots=True)
class EmailConfig:
    host: str
    port: int
    security: str  # "plain" | "tls" (smtps) | "starttls"
    sender: str
    user: str | None = None
    password_env: str = "RELAYPROXY_SMTP_PASSWORD"
    timeout_s: float = 10.0
    # Read once when the config is loaded; None when the variable (and credential file) is unset.
    password: str | None = field(default=None, repr=False)
    password_problem: str = ""

    @property
    def server(self) -> str:
        """The server for log lines and error pages: scheme, host and port, never the user."""
        scheme = {"plain": "smtp", "tls": "smtps", "starttls": "smtp+starttls"}[self.security]
        return f"{scheme}://{self.host}:{self.port}"


def parse_email(t: dict[str, Any]) -> EmailConfig:
    """The ``[email]`` table; EmailConfigError naming the key and the fix."""
    for key in t:
        if key not in _KEYS:
            raise EmailConfigError(f"[email] {key}: unknown key; allowed keys: {', '.join(sorted(_KEYS))}")
    url = _text(t, "smtp_url", None)
    sender = _text(t, "sender", None)
    _, address = parseaddr(sender)
    if "@" not in address:
        raise EmailConfigError(
            f'[email] sender: expected an address such as "Relay <relay@example.com>", got {sender!r}'
        )
    password_env = _text(t, "password_env", "RELAYPROXY_SMTP_PASSWORD")
    try:
        credential_name(password_env)
    except CredentialError as exc:
        raise EmailConfigError(f"[email] password_env: {exc}") from None
    timeout = t.get("timeout_s", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
        raise EmailConfigError(f"[email] timeout_s: expected seconds between 0 and 300, got {timeout!r}")
    host, port, security, user = _server(url)
    try:
        password, problem = read_secret(password_env), ""
    except CredentialError as exc:
        password, problem = None, str(exc)
    return EmailConfig(host, port, security, sender, user, password_env, float(timeout), password, problem)


def _text(t: dict[str, Any], key: str, default: str | None) -> str:
    value = t.get(key, default)
    if value is None:
        raise EmailConfigError(f"[email] {key}: missing; add {key} = ... to the table")
    if not isinstance(value, str) or not value.strip():
        raise EmailConfigError(f"[email] {key}: expected a non-empty string, got {value!r}")
    return value.strip()


def _server(url: str) -> tuple[str, int, str, str | None]:
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise EmailConfigError(
            f'[email] smtp_url: must start with smtp://, smtps:// or smtp+starttls://, got "{parts.scheme}://…"'
        )
    if parts.password is not None:
        raise EmailConfigError(
            "[email] smtp_url: no password in the URL; put it in the environment variable named by password_env"
        )
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise EmailConfigError('[email] smtp_url: expected "smtp://[user@]host[:port]", with nothing after the port')
    security, default_port = _SCHEMES[parts.scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        raise EmailConfigError("[email] smtp_url: the port must be a number from 1 to 65535") from None
    user = unquote(parts.username) if parts.username else None
    return parts.hostname, port, security, user
