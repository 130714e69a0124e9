"""PostgreSQL outages lose nothing: a real server stopped and started (pg_ctl) under the store and
under real `relayproxy serve` processes. Each test has a cluster of its own (it is stopped)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayproxy.errors import StoreUnavailable
from relayproxy.records import UsageRecord
from relayproxy.store.backends import open_store
from relayproxy.store.facade import utc_now
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
