"""Group commit (relayproxy/group_commit.py): batching, isolation of failures, order, durability."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiosqlite
import pytest

from relayproxy.errors import StoreError
from relayproxy.records import UsageRecord
from relayproxy.store.facade import Store
from relayproxy.store.group_commit import GroupCommit

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    conn = await aiosqlite.connect(str(tmp_path / "gc.db"), isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
        await conn.execute(f"PRAGMA {pragma}")
    await conn.executescript(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
        "CREATE TABLE t (v INTEGER NOT NULL UNIQUE,"
        " p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);"
    )
    yield conn
    await conn.close()


def insert(v: int, p: int | None = None) -> Callable[[sqlite3.Connection], int]:
    def op(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t(v, p) VALUES (?, ?)", (v, p))
        return v

    return op


def values(conn: sqlite3.Connection) -> list[int]:
    return [int(r[0]) for r in conn.execute("SELECT v FROM t ORDER BY v")]


async def test_ops_in_flight_share_one_batch_and_all_commit(db: aiosqlite.Connection) -> None:
    gc = GroupCommit(db)
    results = await asyncio.gather(*(gc.run(insert(i), durable=True) for i in range(50)))
    assert results == list(range(50))
    assert gc.ops == 50
    assert gc.batches < 50  # the first goes alone, the rest queue behind it: at most a few trips
    assert await gc.run(values, durable=False, write=False) == list(range(50))


async def test_a_failing_op_is_rolled_back_alone(db: aiosqlite.Connection) -> None:
    gc = GroupCommit(db)

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t(v) VALUES (100)")
        raise ValueError("boom")

    futures: list[asyncio.Future[int | None]] = [
        gc.submit(insert(1), durable=True),
        gc.submit(half_then_fail, durable=True),
        gc.submit(insert(1), durable=True),  # UNIQUE violation: a sqlite3 error becomes StoreError
        gc.submit(insert(2), durable=True),
    ]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert outcomes[0] == 1 and outcomes[3] == 2
    assert isinstance(outcomes[1], ValueError)
    assert isinstance(outcomes[2], StoreError)
    assert gc.batches == 1
    assert await gc.run(values, durable=False, write=False) == [1, 2]  # 100 was rolled back


async def test_a_lone_failing_op_leaves_nothing_behind(db: aiosqlite.Connection) -> None:
    gc = GroupCommit(db)

    def fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t(v) VALUES (7)")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        await gc.run(fail, durable=True)
    assert await gc.run(values, durable=False, write=False) == []
    assert not db.in_transaction


async def test_a_failed_commit_fails_every_op_of_its_batch_and_keeps_none(db: aiosqlite.Connection) -> None:
    """Nothing is acknowledged before its commit: a deferred constraint fails the COMMIT itself."""
    gc = GroupCommit(db)
    futures = [gc.submit(insert(1), durable=True), gc.submit(insert(2, p=999), durable=True)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(o, StoreError) for o in outcomes), outcomes
    assert "FOREIGN KEY" in str(outcomes[0])
    assert await gc.run(values, durable=False, write=False) == []
    assert await gc.run(insert(3), durable=True) == 3  # the queue goes on


async def test_reads_see_every_write_submitted_before_them(db: aiosqlite.Connection) -> None:
    gc = GroupCommit(db)
    gc.post(insert(5), durable=True)  # nobody waits for it
    assert await gc.run(values, durable=False, write=False) == [5]


async def test_a_batch_is_fsynced_when_any_op_in_it_is_durable(db: aiosqlite.Connection) -> None:
    gc = GroupCommit(db)

    def level(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    assert await gc.run(level, durable=False) == 1  # NORMAL: a hold, say
    mixed = [gc.submit(level, durable=False), gc.submit(level, durable=True)]
    assert await asyncio.gather(*mixed) == [2, 2]  # FULL for the whole batch
    assert (await (await db.execute("PRAGMA synchronous")).fetchone()) == (2,)  # restored


class SlowSync:
    """A ``sync`` for GroupCommit that blocks the database thread until released, and counts."""

    def __init__(self, error: Exception | None = None) -> None:
        self.release, self.entered, self.calls, self.error = threading.Event(), threading.Event(), 0, error

    def __call__(self) -> None:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(timeout=10)
        if self.error is not None:
            raise self.error


async def test_with_a_sync_a_batch_answers_its_non_durable_ops_before_the_sync(db: aiosqlite.Connection) -> None:
    """A credit hold sharing a batch with a settlement does not wait for the settlement's fsync."""
    sync = SlowSync()
    gc = GroupCommit(db, sync=sync)
    settlement, hold = gc.submit(insert(1), durable=True), gc.submit(insert(2), durable=False)
    assert await asyncio.wait_for(hold, timeout=5) == 2  # while the sync still blocks
    # The hold is answered just before the thread enters the sync: wait until it is in there.
    assert await asyncio.to_thread(sync.entered.wait, 5)
    assert not settlement.done() and sync.calls == 1
    sync.release.set()
    assert await asyncio.wait_for(settlement, timeout=5) == 1
    assert gc.batches == 1
    assert await gc.run(values, durable=False, write=False) == [1, 2]
    assert sync.calls == 1  # a batch with no durable op is not synced


async def test_with_a_sync_a_failed_sync_fails_only_the_durable_ops(db: aiosqlite.Connection) -> None:
    sync = SlowSync(OSError(5, "Input/output error"))
    sync.release.set()
    gc = GroupCommit(db, sync=sync)
    futures = [gc.submit(insert(1), durable=True), gc.submit(insert(2), durable=False)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(outcomes[0], StoreError) and "sync failed" in str(outcomes[0])
    assert outcomes[1] == 2
    assert await gc.run(insert(3), durable=False) == 3  # the queue goes on


async def test_with_a_sync_an_all_durable_batch_is_answered_after_it(db: aiosqlite.Connection) -> None:
    sync = SlowSync()
    gc = GroupCommit(db, sync=sync)
    futures = [gc.submit(insert(1), durable=True), gc.submit(insert(2), durable=True)]
    await asyncio.sleep(0.05)
    assert not any(f.done() for f in futures)
    sync.release.set()
    assert await asyncio.wait_for(asyncio.gather(*futures), timeout=5) == [1, 2]
    assert sync.calls == 1


async def test_a_store_on_a_file_syncs_the_wal_itself(tmp_path: Path) -> None:
    """Durable batches commit at NORMAL and the store fdatasyncs the WAL (what FULL adds); the
    connection rests at FULL (hardening gate 40)."""
    store = await Store.open(tmp_path / "relay.db")
    try:
        assert await (await store._db.execute("PRAGMA synchronous")).fetchone() == (2,)
        assert store._wal is not None
        assert (tmp_path / "relay.db-wal").exists()
        account_id = await store.ensure_account("a")
        await store.grant("a", 1_000)
        assert await store.hold(account_id, "r1", 100)
    finally:
        await store.close()
    again = await Store.open(tmp_path / "relay.db")  # an existing, migrated database: the same
    try:
        assert again._wal is not None and await again.balance("a") == (1_000, 100)
    finally:
        await again.close()


async def test_a_store_in_memory_commits_at_full() -> None:
    store = await Store.open(":memory:")
    try:
        assert store._wal is None
        assert await store._commits.run(lambda conn: conn.execute("PRAGMA synchronous").fetchone(), durable=True) == (
            2,
        )
        await store.ensure_account("a")
    finally:
        await store.close()


async def test_a_cancelled_caller_does_not_cancel_its_op(db: aiosqlite.Connection) -> None:
    gc = GroupCommit(db)
    first = gc.submit(insert(1), durable=True)
    second = gc.submit(insert(2), durable=True)
    second.cancel()
    await first
    await gc.drain()
    assert await gc.run(values, durable=False, write=False) == [1, 2]


async def test_store_close_commits_settlements_nobody_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = await Store.open(path)
    account_id = await store.ensure_account("a")
    await store.grant("a", 1_000_000)
    ids = [f"req_{i}" for i in range(20)]
    assert all(await asyncio.gather(*(store.hold(account_id, rid, 1_000) for rid in ids)))
    for rid in ids:
        rec = UsageRecord(rid, "2026-11-24T00:00:00.000Z", account="a", outcome="completed", http_status=200)
        rec.cost_microusd, rec.billed, rec.reason = 400, True, "charged"
        store.settle_soon(rec, 400)
    await store.close()

    again = await Store.open(path)
    try:
        assert await again.balance("a") == (1_000_000 - 20 * 400, 0)
        assert [r.cost_microusd for r in await again.list_usage("a", limit=100)] == [400] * 20
        assert await again.ledger_check() == []
    finally:
        await again.close()


async def test_writes_nobody_waits_for_linger_and_ride_with_the_next_awaited_op(db: aiosqlite.Connection) -> None:
    gc = GroupCommit(db, linger_s=60.0)  # longer than the test: only the awaited op can send them
    for i in range(3):
        gc.post(insert(i), durable=True)
    await asyncio.sleep(0.05)
    assert gc.batches == 0  # still lingering
    assert await gc.run(values, durable=False, write=False) == [0, 1, 2]
    assert (gc.batches, gc.ops) == (1, 4)


async def test_drain_does_not_linger(db: aiosqlite.Connection) -> None:
    gc = GroupCommit(db, linger_s=60.0)
    gc.post(insert(1), durable=True)
    await asyncio.wait_for(gc.drain(), timeout=5)
    assert (gc.batches, gc.ops) == (1, 1)


async def test_a_lone_write_nobody_waits_for_goes_after_the_linger(db: aiosqlite.Connection) -> None:
    gc = GroupCommit(db, linger_s=0.01)
    done = gc.post(insert(1), durable=True)
    assert await asyncio.wait_for(done, timeout=5) == 1


async def test_an_error_escaping_the_batch_reaches_its_ops_and_the_queue_goes_on(db: aiosqlite.Connection) -> None:
    """Whatever the database thread raises, every op of the batch hears of it: none is left waiting."""
    sync = SlowSync(RuntimeError("disk gone"))  # not an OSError: escapes _run_batch itself
    sync.release.set()
    gc = GroupCommit(db, sync=sync)
    futures = [gc.submit(insert(1), durable=True), gc.submit(insert(2), durable=False)]
    outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout=5)
    assert isinstance(outcomes[0], RuntimeError) and outcomes[1] == 2  # the hold was answered before
    assert await gc.run(values, durable=False, write=False) == [1, 2]  # committed all the same


async def test_ops_on_a_closed_connection_fail_at_once(tmp_path: Path) -> None:
    conn = await aiosqlite.connect(str(tmp_path / "closed.db"), isolation_level=None)
    gc = GroupCommit(conn)
    await conn.close()
    with pytest.raises(StoreError, match="closed"):
        await asyncio.wait_for(gc.run(values, durable=False, write=False), timeout=5)
    await asyncio.wait_for(gc.drain(), timeout=5)
