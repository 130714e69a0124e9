"""A fresh relayproxy (`serve` on an empty store) with the dashboard on, for the page tests:
its stdout gives the first-start key and the one-time setup link."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from tests.e2e.conftest import UPSTREAM_KEY, _wait_port, write_config
from tests.fakes.stripe import API_KEY as STRIPE_API_KEY
from tests.fakes.stripe import WEBHOOK_SECRET, FakeStripe
from tests.fakes.upstream import FakeUpstream


@dataclass
class FreshGateway:
    base_url: str
    port: int
    setup_link: str
    default_key: str
    db: Path  # the SQLite file (unused when ``database`` is a PostgreSQL URL)
    database: str  # the store, as in the config's ``database``
    log: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_fresh(
    tmp: Path,
    upstream: FakeUpstream,
    stripe: FakeStripe,
    signup: str = "open",
    *,
    extra: str = "",
    env: dict[str, str] | None = None,
    database: str | None = None,
) -> FreshGateway:
    """``extra``: TOML appended to the config (an ``[email]`` table, say); ``env``: more variables
    for the process; ``database``: another store than ``relay.db`` (a postgresql:// URL)."""
    config = tmp / "config.toml"
    write_config(config, upstream, stripe.url)
    port = _free_port()
    text = config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
    text += f'\n[dashboard]\nsignup = "{signup}"\nsignup_credit_usd = 1\npublic_url = "http://127.0.0.1:{port}"\n'
    if database is not None:
        text = text.replace('database = "relay.db"', f'database = "{database}"')
    config.write_text(text + extra)
    env = {
        **os.environ,
        "RELAYPROXY_TEST_UPSTREAM_KEY": UPSTREAM_KEY,
        "STRIPE_SECRET_KEY": STRIPE_API_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        **(env or {}),
    }
    log, out = tmp / "gateway.log", tmp / "gateway.out"
    with log.open("wb") as err, out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relayproxy", "serve", "--config", str(config)], stdout=stdout, stderr=err, env=env
        )
    assert _wait_port(log, proc) == port
    deadline = time.monotonic() + 10
    while len(out.read_text().splitlines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    key, link = out.read_text().splitlines()[:2]
    assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/setup\?token=[\w-]+", link), link
    return FreshGateway(f"http://127.0.0.1:{port}", port, link, key, tmp / "relay.db", database, log, proc)


class Browserless:
    """A plain HTTP client keeping the dashboard's cookies, for the security tests."""

    def __init__(self, gw: FreshGateway) -> None:
        self.gw = gw
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, fields: dict[str, str] | None = None, *, origin: str | None = "self"
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=30)
        headers = {"host": f"127.0.0.1:{self.gw.port}"}
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if fields is not None:
            body = urlencode(fields)
            headers["content-type"] = "application/x-www-form-urlencoded"
        if origin is not None and method == "POST":
            headers["origin"] = self.gw.base_url if origin == "self" else origin
        try:
            conn.request(method, path, body, headers)
            resp = conn.getresponse()
            text = resp.read().decode()
            for name, value in resp.getheaders():
                if name.lower() == "set-cookie":
                    cname, _, rest = value.partition("=")
                    cvalue = rest.split(";", 1)[0]
                    if "Max-Age=0" in value:
                        self.cookies.pop(cname, None)
                    else:
                        self.cookies[cname] = cvalue
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, text
        finally:
            conn.close()

    def csrf(self, path: str) -> str:
        status, _, html = self.request("GET", path)
        assert status == 200, html
        found = re.search(r'name="csrf" value="([^"]+)"', html)
        assert found, html
        return found.group(1)

    def signup(self, email: str, password: str) -> int:
        token = self.csrf("/signup")
        status, _, _ = self.request("POST", "/signup", {"csrf": token, "email": email, "password": password})
        return status

    def login(self, email: str, password: str) -> tuple[int, str]:
        token = self.csrf("/login")
        status, _, html = self.request("POST", "/login", {"csrf": token, "email": email, "password": password})
        return status, html

    def form(self, path: str, action: str, fields: dict[str, str]) -> tuple[int, str]:
        """GET ``path`` for its CSRF token, then POST ``fields`` to ``action``."""
        token = self.csrf(path)
        status, _, html = self.request("POST", action, {"csrf": token, **fields})
        return status, html
