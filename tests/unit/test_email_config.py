"""The ``[email]`` table (config/email.py), through the config loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relayproxy.config.settings import ConfigError, parse_config


def _email(monkeypatch: pytest.MonkeyPatch, table: dict[str, Any], password: str | None = None) -> Any:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    if password is None:
        monkeypatch.delenv("RELAYPROXY_SMTP_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("RELAYPROXY_SMTP_PASSWORD", password)
    return parse_config({"email": table}, Path("config.toml")).email


def test_no_table_no_mail() -> None:
    assert parse_config({}, Path("config.toml")).email is None


@pytest.mark.parametrize(
    ("url", "host", "port", "security", "user"),
    [
        ("smtp://mail.example.com", "mail.example.com", 25, "plain", None),
        ("smtps://relay%40example.com@mail.example.com", "mail.example.com", 465, "tls", "relay@example.com"),
        ("smtp+starttls://u@mail.example.com:2525", "mail.example.com", 2525, "starttls", "u"),
    ],
)
def test_smtp_urls(
    monkeypatch: pytest.MonkeyPatch, url: str, host: str, port: int, security: str, user: str | None
) -> None:
    cfg = _email(monkeypatch, {"smtp_url": url, "sender": "Relay <relay@example.com>"}, password="s3cret")
    assert (cfg.host, cfg.port, cfg.security, cfg.user, cfg.password) == (host, port, security, user, "s3cret")
    assert "s3cret" not in repr(cfg) and (user or "@@") not in cfg.server


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"sender": "a@b.c"}, "[email] smtp_url: missing"),
        ({"smtp_url": "http://x", "sender": "a@b.c"}, "[email] smtp_url: must start with smtp://"),
        ({"smtp_url": "smtp://u:pw@x", "sender": "a@b.c"}, "no password in the URL"),
        ({"smtp_url": "smtp://x:99999", "sender": "a@b.c"}, "the port must be a number"),
        ({"smtp_url": "smtp://x"}, "[email] sender: missing"),
        ({"smtp_url": "smtp://x", "sender": "nobody"}, "[email] sender: expected an address"),
        ({"smtp_url": "smtp://x", "sender": "a@b.c", "password_env": "not a name"}, "[email] password_env"),
        ({"smtp_url": "smtp://x", "sender": "a@b.c", "pasword": "x"}, "[email] pasword: unknown key"),
    ],
)
def test_errors_name_the_key(monkeypatch: pytest.MonkeyPatch, table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _email(monkeypatch, table)
    assert message in str(info.value)
