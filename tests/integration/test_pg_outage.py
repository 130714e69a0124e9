"""PostgreSQL outages lose nothing: a real server stopped and started (pg_ctl) under the store and
under real `relayproxy serve` processes. Each test has a cluster of its own (it is stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relayproxy.errors import StoreUnavailable
from relayproxy.records import UsageRecord
from relayproxy.store.backends import open_store
from relayproxy.store.facade import utc_now
from tests.integration.procs import DripUpstream, GatewayProcess, http_get, run_cli, start_gateway, write_config
from tests.pgcluster import PgCluster, pg_bindir


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    bindir = pg_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries not found under CI: .ci/run installs postgresql")
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql)")
    own = PgCluster(bindir)
    own.start()
    yield own
    with contextlib.suppress(subprocess.CalledProcessError):  # halted by a test that failed
        own.stop()


def _record(request_id: str, cost: int) -> UsageRecord:
    return UsageRecord(
        request_id, utc_now(), account="alice", outcome="completed", cost_microusd=cost, billed=True, reason="charged"
    )


@pytest.mark.anyio
async def test_settlements_pending_at_shutdown_while_the_database_is_down_apply_once_at_next_start(
    tmp_path: Path, cluster: PgCluster
) -> None:
    url, journal = cluster.new_database(), tmp_path / "journal.jsonl"
    store = await open_store(url, journal=journal)
    await store.grant("alice", 1_000_000)
    account = await store.ensure_account("alice")
    for i in range(5):
        assert await store.hold(account, f"r{i}", 100_000)
    cluster.halt()
    for i in range(5):
        store.settle_soon(_record(f"r{i}", 30_000), 30_000)
    await store.flush()
    with pytest.raises(StoreUnavailable):
        await store.balance("alice")
    await store.close()  # the database is still down: the settlements go to the journal
    lines = journal.read_bytes().splitlines()
    assert sorted(json.loads(line)["record"]["request_id"] for line in lines) == [f"r{i}" for i in range(5)]

    cluster.resume()
    again = await open_store(url, journal=journal)
    assert journal.read_bytes() == b""
    assert await again.balance("alice") == (1_000_000 - 5 * 30_000, 0)
    assert sorted(r.request_id for r in await again.list_usage("alice")) == [f"r{i}" for i in range(5)]
    await again.close()

    # A crash between applying and emptying the journal: the same entries are applied again, a no-op.
    journal.write_bytes(b"\n".join(lines) + b"\n")
    third = await open_store(url, journal=journal)
    assert journal.read_bytes() == b""
    assert await third.balance("alice") == (1_000_000 - 5 * 30_000, 0)
    assert len(await third.list_usage("alice")) == 5
    assert await third.ledger_check() == []
    await third.close()


@pytest.mark.anyio
async def test_a_settlement_parked_during_an_outage_is_applied_once_the_database_returns(cluster: PgCluster) -> None:
    url = cluster.new_database()
    store = await open_store(url, lease_s=3)
    await store.grant("alice", 1_000_000)
    account = await store.ensure_account("alice")
    assert await store.hold(account, "r1", 100_000)
    upkeep = asyncio.get_running_loop().create_task(store.maintain())
    try:
        cluster.halt()
        assert not await store.ping()
        assert await store.settle_soon(_record("r1", 40_000), 40_000) == 0  # parked
        cluster.resume()
        for _ in range(150):  # the upkeep retries about every second
            if await store.get_usage("r1") is not None:
                break
            await asyncio.sleep(0.2)
        assert await store.balance("alice") == (960_000, 0)
        assert await store.ping()
    finally:
        upkeep.cancel()
    assert (await store.settle(_record("r1", 40_000), 40_000)) == 40_000  # a replay changes nothing
    assert await store.balance("alice") == (960_000, 0)
    assert await store.ledger_check() == []
    await store.close()


@dataclass
class Answer:
    status: int  # 0: no HTTP answer at all
    request_id: str
    done: bool  # a 200 stream that reached its end
    started: float = 0.0
    ended: float = 0.0


def _stream(port: int, key: str, model: str) -> Answer:
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    data, started = b"", time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(head.encode() + body.encode())
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return Answer(0, "", False)
    found = re.search(rb"(?i)\r\nx-request-id: *(\S+)", data.partition(b"\r\n\r\n")[0])
    rid = found.group(1).decode() if found else ""
    return Answer(int(data[9:12]), rid, b"data: [DONE]" in data, started, time.monotonic())


STREAM = "drip-20-25"  # 20 events 25 ms apart: half a second, 20 output tokens


def _gateways(
    tmp_path: Path, upstream: DripUpstream, url: str, names: tuple[str, ...] = ("a", "b")
) -> tuple[list[GatewayProcess], str]:
    gateways, key = [], ""
    for name in names:
        home = tmp_path / name
        home.mkdir()
        config = home / "config.toml"
        write_config(config, upstream.port, [STREAM], limits={"per_key_concurrency": 1000})
        config.write_text(config.read_text().replace('database = "relay.db"', f'database = "{url}"\nhold_lease_s = 3'))
        if name == "a":
            key = run_cli(config, "keys", "create", "--account", "shared").stdout.strip()
            assert run_cli(config, "credits", "add", "--account", "shared", "--usd", "100").returncode == 0
        gateways.append(start_gateway(config))
    return gateways, key


async def _usage_and_balance(url: str) -> tuple[list[UsageRecord], tuple[int, int] | None, list[str]]:
    store = await open_store(url)
    try:
        return (
            await store.list_usage(limit=100_000),
            await store.balance("shared"),
            await store.ledger_check(),
        )
    finally:
        await store.close()


def _ready(port: int) -> int:
    return int(http_get(port, "/readyz")[9:12])


def test_postgres_restarted_in_the_middle_of_a_load_loses_and_doubles_nothing(
    tmp_path: Path, cluster: PgCluster
) -> None:
    url = cluster.new_database()
    answers: list[Answer] = []
    stop = threading.Event()
    with DripUpstream() as upstream:
        gateways, key = _gateways(tmp_path, upstream, url)
        ports = [gw.port for gw in gateways]

        def client(n: int) -> None:
            while not stop.is_set():
                answers.append(_stream(ports[n % 2], key, STREAM))
                n += 1
                if answers[-1].status != 200:
                    time.sleep(0.05)  # as a client backs off

        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                for n in range(8):
                    pool.submit(client, n)
                time.sleep(2)
                halted = time.monotonic()
                cluster.halt()  # streams in flight keep going; their settlements are parked
                time.sleep(1)
                ready_while_down = [_ready(p) for p in ports]
                time.sleep(1)
                cluster.resume()
                time.sleep(3)
                stop.set()
            answered = [a for a in answers if a.status]
            for _ in range(150):  # the gateways apply what they parked within about a second
                usage, balance, problems = asyncio.run(_usage_and_balance(url))
                if len(usage) >= len(answered):
                    break
                time.sleep(0.2)
            ready_after = [_ready(p) for p in ports]
            after = [_stream(p, key, STREAM) for p in ports]
        finally:
            for gw in gateways:
                gw.signal(signal.SIGTERM)
            exits = [gw.wait(30) for gw in gateways]  # the store's upkeep task stops with the app
    assert exits == [0, 0]
    assert ready_while_down == [503, 503]
    assert ready_after == [200, 200]
    assert [(a.status, a.done) for a in after] == [(200, True), (200, True)]  # recovered by themselves
    statuses = [a.status for a in answers]
    assert statuses.count(200) > 0 and statuses.count(503) > 0, statuses
    assert set(statuses) == {200, 503}, statuses
    assert all(a.done for a in answers if a.status == 200)
    assert any(a.status == 200 and a.started < halted < a.ended for a in answers)  # admitted, then finished
    # One usage record per request that got an answer: none lost, none doubled, none invented.
    assert sorted(r.request_id for r in usage) == sorted(a.request_id for a in answered)
    by_id = {r.request_id: r for r in usage}
    charged = {by_id[a.request_id].cost_microusd for a in answered if a.status == 200}
    assert len(charged) == 1 and min(charged) > 0  # every stream the same, and charged
    assert all(by_id[a.request_id].cost_microusd == 0 for a in answered if a.status != 200)
    assert balance == (100_000_000 - statuses.count(200) * charged.pop(), 0)
    assert problems == []
    for name in ("a", "b"):
        journal = tmp_path / name / "relayproxy-journal.jsonl"
        assert not journal.exists() or journal.read_bytes() == b""


def _post_json(port: int, path: str, headers: dict[str, str], body: dict[str, object]) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{head}"
        f"content-length: {len(data)}\r\nconnection: close\r\n\r\n"
    ).encode() + data
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head_bytes, _, payload = raw.partition(b"\r\n\r\n")
    assert re.search(rb"(?i)\r\nretry-after: *1\r\n", head_bytes + b"\r\n"), head_bytes
    return int(raw[9:12]), json.loads(payload)


def test_while_postgres_is_down_each_protocol_gets_its_own_503(tmp_path: Path, cluster: PgCluster) -> None:
    url = cluster.new_database()
    with DripUpstream() as upstream:
        (gateway,), key = _gateways(tmp_path, upstream, url, names=("a",))
        try:
            cluster.halt()
            msgs = [{"role": "user", "content": "hi"}]
            chat = _post_json(
                gateway.port,
                "/v1/chat/completions",
                {"authorization": f"Bearer {key}"},
                {"model": STREAM, "messages": msgs},
            )
            messages = _post_json(
                gateway.port,
                "/v1/messages",
                {"x-api-key": key, "anthropic-version": "2023-06-01"},
                {"model": STREAM, "max_tokens": 10, "messages": msgs},
            )
            gemini = _post_json(
                gateway.port,
                f"/v1beta/models/{STREAM}:generateContent",
                {"x-goog-api-key": key},
                {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
            )
            responses = _post_json(
                gateway.port, "/v1/responses", {"authorization": f"Bearer {key}"}, {"model": STREAM, "input": "hi"}
            )
            ready = _ready(gateway.port)
            cluster.resume()
        finally:
            gateway.signal(signal.SIGTERM)
            gateway.wait(30)
    assert ready == 503
    for status, body in (chat, responses):
        assert status == 503
        assert body["error"]["type"] == "service_unavailable_error" and body["error"]["code"] == "store_unavailable"
        assert "127.0.0.1" not in body["error"]["message"]  # no database address for callers
    assert messages[0] == 503 and messages[1]["type"] == "error" and messages[1]["error"]["type"] == "api_error"
    assert gemini[0] == 503 and gemini[1]["error"]["status"] == "UNAVAILABLE" and gemini[1]["error"]["code"] == 503
    usage, balance, problems = asyncio.run(_usage_and_balance(url))
    assert sorted(r.http_status for r in usage) == [503] * 4  # recorded once the database returned
    assert all(r.cost_microusd == 0 and not r.billed for r in usage)
    assert balance == (100_000_000, 0) and problems == []
