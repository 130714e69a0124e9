"""Per-key concurrency and requests per minute, counted in the database (store/key_limits.py):
the store on both backends, then real ``relayproxy serve`` processes sharing one database."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relayproxy.records import UsageRecord
from relayproxy.store.backends import open_store
from relayproxy.store.facade import Store, utc_iso, utc_now
from relayproxy.store.key_limits import KeyCaps
from tests.integration.procs import (
    DripUpstream,
    GatewayProcess,
    post_stream,
    run_cli,
    start_gateway,
    usage_rows,
    write_config,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


KEY = b"k" * 32


async def _keyed(store: Store) -> None:
    await store.grant("alice", 1_000_000)
    await store.add_key("alice", "key_alice", "rp_x", KEY, "")


async def _admit(store: Store, rid: str, caps: KeyCaps, amount: int = 1_000) -> tuple[bool | None, str | None, int]:
    got = await store.admit(KEY, rid, amount, aborts_since=utc_iso(datetime.now(UTC)), abort_cap=0, caps=caps)
    return got.held, got.refused, got.retry_after_s


def _rec(rid: str) -> UsageRecord:
    return UsageRecord(rid, utc_now(), key_id="key_alice", outcome="completed", reason="usage_unknown")


@pytest.mark.anyio
async def test_in_flight_is_the_open_holds_of_the_key(store: Store) -> None:
    await _keyed(store)
    caps = KeyCaps(concurrency=2)
    assert await _admit(store, "r1", caps) == (True, None, 0)
    assert await _admit(store, "r2", caps, amount=0) == (True, None, 0)  # a hold of 0 counts too
    assert await _admit(store, "r3", caps) == (None, "concurrency", 1)
    assert await store.balance("alice") == (1_000_000, 1_000)  # the refusal held nothing
    await store.settle(_rec("r1"), 0)
    assert await _admit(store, "r4", caps) == (True, None, 0)
    assert await store.release("r2") == 0 and await store.release("r4") == 1_000
    assert await _admit(store, "r5", KeyCaps(concurrency=1)) == (True, None, 0)
    await store.settle(_rec("r5"), 0)


@pytest.mark.anyio
async def test_a_refused_hold_frees_its_slot_and_the_spend_limit_still_answers(store: Store) -> None:
    await _keyed(store)
    caps = KeyCaps(concurrency=1)
    assert await _admit(store, "big", caps, amount=5_000_000) == (False, None, 0)  # 402: no slot kept
    assert await _admit(store, "r1", caps) == (True, None, 0)
    await store.settle(_rec("r1"), 0)


@pytest.mark.anyio
async def test_requests_per_minute_count_every_admission_and_no_refusal(store: Store) -> None:
    await _keyed(store)
    caps = KeyCaps(rpm=3)
    assert await _admit(store, "big", caps, amount=5_000_000) == (False, None, 0)  # not admitted: not counted
    for n in range(3):
        assert await _admit(store, f"r{n}", caps) == (True, None, 0)
        await store.settle(_rec(f"r{n}"), 0)  # finished requests stay in the window
    held, refused, retry = await _admit(store, "r3", caps)
    assert (held, refused) == (None, "rpm") and 58 <= retry <= 60
    assert await store.balance("alice") == (1_000_000, 0)
    assert await _admit(store, "r4", KeyCaps(rpm=4)) == (True, None, 0)
    await store.settle(_rec("r4"), 0)


@pytest.mark.anyio
async def test_rpm_answers_before_concurrency_when_both_refuse(store: Store) -> None:
    await _keyed(store)
    caps = KeyCaps(concurrency=1, rpm=1)
    assert await _admit(store, "r1", caps) == (True, None, 0)
    held, refused, retry = await _admit(store, "r2", caps)
    assert (held, refused) == (None, "rpm") and retry > 1
    await store.settle(_rec("r1"), 0)


@pytest.mark.anyio
async def test_concurrent_admissions_of_two_stores_never_pass_the_cap(pg_url: str) -> None:
    first, second = await open_store(pg_url), await open_store(pg_url)
    await _keyed(first)
    caps = KeyCaps(concurrency=5, rpm=40)
    results = await asyncio.gather(*(_admit((first, second)[n % 2], f"r{n}", caps) for n in range(60)))
    assert sum(held is True for held, _, _ in results) == 5
    assert {refused for held, refused, _ in results if not held} == {"concurrency"}
    for n, (held, _, _) in enumerate(results):
        if held:
            await first.settle(_rec(f"r{n}"), 0)
    results = await asyncio.gather(*(_admit((first, second)[n % 2], f"s{n}", KeyCaps(rpm=40)) for n in range(60)))
    assert sum(held is True for held, _, _ in results) == 35  # 40 a minute, 5 of them taken above
    assert await first.ledger_check() == []
    await first.close()
    await second.close()


# -- real gateways --------------------------------------------------------------------------------

SLOW = "drip-60-100"  # 60 events 100 ms apart: about 6 s a stream
FAST = "drip-1-0"


def _gateway_config(home: Path, upstream: DripUpstream, database: str, **limits: int) -> Path:
    home.mkdir()
    config = home / "config.toml"
    write_config(config, upstream.port, [SLOW, FAST], limits=dict(limits))
    text = config.read_text().replace('database = "relay.db"', f'database = "{database}"\nhold_lease_s = 3')
    config.write_text(text)
    return config


def _post(port: int, key: str, model: str) -> tuple[int, dict[str, str], bytes]:
    return post_stream(port, key, model)


def _start(configs: list[Path], *args: str) -> tuple[list[GatewayProcess], str]:
    created = run_cli(configs[0], "keys", "create", "--account", "shared")
    assert created.returncode == 0, created.stderr
    funded = run_cli(configs[0], "credits", "add", "--account", "shared", "--usd", "100")
    assert funded.returncode == 0, funded.stderr
    return [start_gateway(config, *args) for config in configs], created.stdout.strip()


def _burst(ports: list[int], key: str, model: str, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda i: _post(ports[i % len(ports)], key, model), range(count)))


def _assert_rate_limited(results: list[tuple[int, dict[str, str], bytes]]) -> None:
    for status, headers, body in results:
        if status == 429:
            assert json.loads(body)["error"]["type"] == "rate_limit_error"
            assert 1 <= int(headers["retry-after"]) <= 60


N = 3


def test_two_gateways_on_one_postgresql_admit_at_most_n_streams_of_a_key_at_once(tmp_path: Path, pg_url: str) -> None:
    with DripUpstream() as upstream:
        configs = [_gateway_config(tmp_path / n, upstream, pg_url, per_key_concurrency=N) for n in "ab"]
        gateways, key = _start(configs)
        try:
            results = _burst([gw.port for gw in gateways], key, SLOW, 3 * N)
            checked = run_cli(configs[0], "ledger", "check")
        finally:
            for gw in gateways:
                gw.close()
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 429} and statuses.count(429) >= 1, statuses
    assert upstream.peak <= N, upstream.peak
    assert statuses.count(200) == upstream.finished  # every admitted stream ran to its end
    _assert_rate_limited(results)
    assert checked.returncode == 0, checked.stdout


def test_two_gateways_on_one_postgresql_share_a_key_s_requests_per_minute(tmp_path: Path, pg_url: str) -> None:
    with DripUpstream() as upstream:
        configs = [_gateway_config(tmp_path / n, upstream, pg_url, per_key_rpm=4) for n in "ab"]
        gateways, key = _start(configs)
        try:
            ports = [gw.port for gw in gateways]
            results = [_post(ports[n % 2], key, FAST) for n in range(10)]  # one after another, both ways
            listed = run_cli(configs[0], "usage", "--json", "--limit", "20")
        finally:
            for gw in gateways:
                gw.close()
    statuses = [status for status, _, _ in results]
    assert statuses == [200] * 4 + [429] * 6, statuses
    _assert_rate_limited(results)
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    refused = [r for r in records if r["outcome"] == "rejected"]
    assert len(refused) == 6 and {r["reason"] for r in refused} == {"rate_limited"}
    assert not any(r["billed"] for r in refused)


def test_workers_on_sqlite_share_a_key_s_concurrency_and_rpm(tmp_path: Path) -> None:
    with DripUpstream() as upstream:
        config = _gateway_config(tmp_path / "w", upstream, "relay.db", per_key_concurrency=2, per_key_rpm=5)
        (gateway,), key = _start([config], "--workers", "2")
        try:
            burst = _burst([gateway.port], key, SLOW, 6)
            after = [_post(gateway.port, key, FAST) for _ in range(4)]
        finally:
            gateway.close()
    statuses = [status for status, _, _ in burst]
    assert set(statuses) <= {200, 429} and statuses.count(429) >= 1, statuses
    assert upstream.peak <= 2, upstream.peak
    # at most 5 admissions in the minute over both workers, the burst's included
    assert statuses.count(200) + [status for status, _, _ in after].count(200) <= 5
    assert [status for status, _, _ in after].count(429) >= 1
    _assert_rate_limited(burst + after)
    rows = usage_rows(gateway.db)
    assert len(rows) == 10 and sum(r["outcome"] == "rejected" for r in rows) == sum(
        s == 429 for s, _, _ in burst + after
    )


def test_a_client_one_request_after_another_is_never_refused_at_a_cap_of_one(tmp_path: Path, pg_url: str) -> None:
    """A finished request's slot is free for the next one at once, though its settlement (which
    closes the hold in the database) may still be on its way."""
    with DripUpstream() as upstream:
        configs = [_gateway_config(tmp_path / "a", upstream, pg_url, per_key_concurrency=1)]
        gateways, key = _start(configs)
        try:
            statuses = [_post(gateways[0].port, key, FAST)[0] for _ in range(30)]
        finally:
            gateways[0].close()
    assert statuses == [200] * 30, statuses
