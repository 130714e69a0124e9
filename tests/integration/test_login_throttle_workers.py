"""The login throttle under `serve --workers 2`, and with two gateways on one PostgreSQL: failures
answered by either worker, or either gateway, count together (the counts are in the store, not in
a process's memory).

Each client below keeps one keep-alive connection, so each stays with the worker that accepted it;
the access log (``"worker": N`` on each line) says which one that is.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.integration.procs import DripUpstream, GatewayProcess, run_cli, start_gateway, write_config

PASSWORD = "correct horse battery"


class PinnedClient:
    """One keep-alive connection (so one worker) with the dashboard's cookies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, fields: dict[str, str] | None = None) -> tuple[int, str]:
        headers = {"host": f"127.0.0.1:{self.port}", "origin": f"http://127.0.0.1:{self.port}"}
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = urlencode(fields) if fields is not None else None
        if body is not None:
            headers["content-type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body, headers)
        resp = self.conn.getresponse()
        text = resp.read().decode()
        for name, value in resp.getheaders():
            if name.lower() == "set-cookie":
                cname, _, rest = value.partition("=")
                self.cookies[cname] = rest.split(";", 1)[0]
        return resp.status, text

    def login(self, email: str, password: str) -> int:
        _, html = self.request("GET", "/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
        return self.request("POST", "/login", {"csrf": csrf, "email": email, "password": password})[0]


def _worker_of(gw: GatewayProcess, client: PinnedClient, mark: str) -> int:
    """Which worker serves ``client``'s connection (a request to a path of its own, then the log)."""
    client.request("GET", f"/pin-{mark}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in gw.log_text().splitlines():
            if line.startswith("{") and f'"/pin-{mark}"' in line:
                return int(json.loads(line)["worker"])
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for /pin-{mark}")


def _one_per_worker(gw: GatewayProcess) -> dict[int, PinnedClient]:
    pinned: dict[int, PinnedClient] = {}
    for n in range(60):
        client = PinnedClient(gw.port)
        worker = _worker_of(gw, client, str(n))
        if worker in pinned:
            client.conn.close()
        else:
            pinned[worker] = client
        if len(pinned) == 2:
            return pinned
    for client in pinned.values():
        client.conn.close()
    raise AssertionError("60 connections all went to one worker")


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[GatewayProcess]:
    with DripUpstream() as up:
        config = tmp_path / "config.toml"
        write_config(config, up.port, ["drip-1-1"], dashboard={"signup": "closed"})
        made = run_cli(config, "users", "create", "--email", "w@example.test", "--account", "w", "--password-stdin",
                       stdin=PASSWORD + "\n")  # fmt: skip
        assert made.returncode == 0, made.stderr
        gw = start_gateway(config, "--workers", "2", ready_pattern="(?s)(?=.*worker 0 ready)(?=.*worker 1 ready)")
        try:
            yield gw
        finally:
            gw.close()


def test_failures_on_either_worker_count_together(two_workers: GatewayProcess) -> None:
    pinned = _one_per_worker(two_workers)
    try:
        _alternate(pinned[0], pinned[1])
    finally:
        for client in pinned.values():
            client.conn.close()


def _alternate(first: PinnedClient, second: PinnedClient) -> None:
    # Five failures for one e-mail, alternating workers: neither saw five by itself.
    statuses = [(first if i % 2 == 0 else second).login("w@example.test", f"wrong {i}") for i in range(5)]
    assert statuses == [401] * 5
    assert second.login("w@example.test", PASSWORD) == 429  # even the right password now waits
    assert first.login("w@example.test", PASSWORD) == 429
    # Another e-mail from the same address is not blocked yet (per client: 20).
    assert second.login("nobody@example.test", "wrong") == 401


def test_failures_on_two_gateways_on_one_postgresql_count_together(tmp_path: Path, pg_url: str) -> None:
    with DripUpstream() as up:
        gateways: list[GatewayProcess] = []
        try:
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                config = tmp_path / name / "config.toml"
                write_config(config, up.port, ["drip-1-1"], dashboard={"signup": "closed"})
                config.write_text(config.read_text().replace('database = "relay.db"', f'database = "{pg_url}"'))
                if name == "a":
                    made = run_cli(config, "users", "create", "--email", "w@example.test", "--account", "w",
                                   "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
                    assert made.returncode == 0, made.stderr
                gateways.append(start_gateway(config))
            clients = [PinnedClient(gw.port) for gw in gateways]
            try:
                _alternate(clients[0], clients[1])
            finally:
                for client in clients:
                    client.conn.close()
        finally:
            for gw in gateways:
                gw.close()
