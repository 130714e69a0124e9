"""The dashboard's cookie attributes, Origin check, as plain functions (the login throttle: test_throttle_store.py)."""

from __future__ import annotations

import pytest

from relayproxy.config.settings import DashboardConfig
from relayproxy.dashboard.sessions import Cookies, check_origin, check_token
from relayproxy.dashboard.web import PageError
from relayproxy.http_types import HttpRequest


def test_cookies_are_host_prefixed_and_secure_only_on_https() -> None:
    plain = Cookies(DashboardConfig(public_url="http://127.0.0.1:8080"))
    assert plain.session == "rp_session"
    assert plain.set(plain.session, "t")[1] == b"rp_session=t; Path=/; HttpOnly; SameSite=Lax"
    tls = Cookies(DashboardConfig(public_url="https://relay.example.com"))
    assert tls.session == "__Host-rp_session" and tls.csrf == "__Host-rp_csrf"
    assert tls.set(tls.session, "t")[1] == b"__Host-rp_session=t; Path=/; HttpOnly; SameSite=Lax; Secure"
    assert tls.clear(tls.session)[1].endswith(b"; Max-Age=0")


def _post(**headers: str) -> HttpRequest:
    return HttpRequest("POST", "/login", "", [(k.encode(), v.encode()) for k, v in headers.items()])


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({"origin": "https://relay.example.com"}, True),
        ({"origin": "https://relay.example.com", "host": "other.example"}, True),
        ({"referer": "https://relay.example.com/login?x=1"}, True),
        ({"origin": "http://internal:8080", "host": "internal:8080"}, False),  # https configured: scheme differs
        ({"origin": "https://evil.example", "host": "relay.example.com"}, False),
        ({"origin": "null"}, False),
        ({}, False),
    ],
)
def test_origin_check(headers: dict[str, str], ok: bool) -> None:
    config = DashboardConfig(public_url="https://relay.example.com/base")
    if ok:
        check_origin(_post(**headers), config)
    else:
        with pytest.raises(PageError) as info:
            check_origin(_post(**headers), config)
        assert info.value.status == 403


def test_token_check() -> None:
    check_token("abc", "abc")
    for expected, sent in (("abc", "abd"), ("abc", None), (None, "abc"), ("", "")):
        with pytest.raises(PageError):
            check_token(expected, sent)
