"""PostgreSQL's admissions (in batches, one hold statement each, pg_admit.py) and its group
commit (pg_settle.py): the same answers as the statement-by-statement rules, under concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relayproxy.records import UsageRecord
from relayproxy.store import pg_ledger
from relayproxy.store.backends import open_store
from relayproxy.store.facade import Store, utc_now
from relayproxy.store.key_limits import NO_CAPS, KeyCaps
from relayproxy.store.pg_ledger import USAGE_FIELDS
from relayproxy.store.pg_settle import KNOWN_USAGE_COLUMNS, OneByOne, settle_batch, settle_known

pytestmark = pytest.mark.anyio

KEY = b"h" * 32


async def funded(url: str, usd: int = 1, **key_options: Any) -> Store:
    store = await open_store(url)
    await store.grant("alice", usd * 1_000_000, "credit")
    await store.add_key("alice", "k1", "rp_x", KEY, "", **key_options)
    return store


def record(rid: str, cost: int, outcome: str = "completed") -> UsageRecord:
    return UsageRecord(
        rid, utc_now(), account="alice", key_id="k1", outcome=outcome, cost_microusd=cost, billed=cost > 0
    )


async def admit(store: Store, rid: str, amount: int, caps: KeyCaps = NO_CAPS) -> Any:
    return await store.admit(KEY, rid, amount, aborts_since=None, abort_cap=0, model="m", caps=caps)


async def test_the_hold_answers_as_the_ledger_rules_do(pg_url: str) -> None:
    store = await funded(pg_url, spend_limit_microusd=600_000)
    try:
        assert (await admit(store, "r1", 500_000)).held is True
        assert (await admit(store, "r1", 500_000)).held is True  # a replay: the same open hold
        over = await admit(store, "r2", 200_000)  # 500k held + 200k > the key's 600k limit
        assert over.refused == "key_spend_limit" and over.held is False
        assert await store.balance("alice") == (1_000_000, 500_000)
        capped = await admit(store, "r3", 1, KeyCaps(concurrency=1))
        assert capped.refused == "concurrency" and capped.held is None
        await store.revoke_key("k1")
        assert (await admit(store, "r4", 1)).principal is None  # 401
        assert await store.ledger_check() == []
    finally:
        await store.close()


async def test_no_credit_takes_nothing_and_rpm_counts_only_admitted(pg_url: str) -> None:
    store = await funded(pg_url)
    try:
        assert (await admit(store, "big", 2_000_000)).held is False
        got = [await admit(store, f"r{n}", 1_000, KeyCaps(rpm=3)) for n in range(5)]
        assert [a.held for a in got[:3]] == [True, True, True]
        assert got[3].refused == "rpm" and 1 <= got[3].retry_after_s <= 60
        assert await store.balance("alice") == (1_000_000, 3_000)
        rows = await store.query("SELECT in_flight, held_microusd FROM api_keys WHERE id = ?", ("k1",))
        assert tuple(rows[0]) == (3, 3_000)
        assert await store.ledger_check() == []
    finally:
        await store.close()


async def test_a_batch_settles_as_one_by_one_would(pg_url: str) -> None:
    store = await funded(pg_url)
    try:
        for rid in ("a", "b", "c", "d"):
            assert (await admit(store, rid, 100_000)).held is True
        await store.settle(record("d", 40_000), 40_000)  # settled before the batch: a replay in it
        items = [
            (record("a", 30_000), 30_000, utc_now()),
            (record("b", 250_000), 250_000, utc_now()),  # asks more than held: charged the hold
            (record("c", 0, "upstream_error"), 0, utc_now()),
            (record("d", 40_000), 40_000, utc_now()),
            (record("a", 30_000), 30_000, utc_now()),  # the same request twice in one batch
            (record("zero", 0, "upstream_error"), 0, utc_now()),  # never held, nothing to charge
        ]
        pool = store._pool  # type: ignore[attr-defined]
        async with pool.acquire() as conn, conn.transaction():
            results = await settle_batch(conn, items)
        assert results == [30_000, 100_000, 0, 40_000, 30_000, 0]
        assert await store.balance("alice") == (1_000_000 - 170_000, 0)
        zero = await store.get_usage("zero")
        assert zero is not None and zero.cost_microusd == 0 and not zero.billed
        rows = await store.query("SELECT in_flight, held_microusd, spend_microusd FROM api_keys WHERE id = ?", ("k1",))
        assert tuple(rows[0]) == (0, 0, 170_000)
        # A charge without an open hold (a late one, after another machine's reaper) is not
        # settled set-wise: the batch refuses, and its caller settles one by one (pg_settle.py).
        assert (await admit(store, "e", 100_000)).held is True
        with pytest.raises(OneByOne):
            async with pool.acquire() as conn, conn.transaction():
                await settle_batch(conn, [(record("e", 10_000), 10_000, utc_now()), (record("x", 1), 1, utc_now())])
        assert await store.balance("alice") == (1_000_000 - 170_000, 100_000)  # rolled back whole
        assert await store.ledger_check() == []
    finally:
        await store.close()


async def test_two_stores_admit_and_settle_one_key_concurrently_without_deadlock(pg_url: str) -> None:
    one = await funded(pg_url, usd=10)
    two = await open_store(pg_url)
    try:

        async def request(store: Store, rid: str) -> int:
            got = await admit(store, rid, 10_000, KeyCaps(concurrency=64))
            if not got.held:
                return 0
            await asyncio.sleep(0)
            return await store.settle_soon(record(rid, 7_000), 7_000)

        results = await asyncio.gather(*(request((one, two)[n % 2], f"r{n}") for n in range(400)))
        await one.flush()
        await two.flush()
        charged = sum(results)
        assert charged > 0 and charged % 7_000 == 0
        balance, held = await one.balance("alice") or (0, 0)
        assert (balance, held) == (10_000_000 - charged, 0)
        assert await one.ledger_check() == []
    finally:
        await one.close()
        await two.close()


async def test_concurrent_admissions_share_batches_and_each_gets_its_own_answer(pg_url: str) -> None:
    store = await funded(pg_url)  # $1: ten holds of $0.10
    await store.add_key("alice", "k2", "rp_y", b"y" * 32, "", models=("other",))
    await store.add_key("alice", "k3", "rp_z", b"z" * 32, "")
    await store.revoke_key("k3")
    try:

        async def ask(n: int) -> Any:
            key = (KEY, b"y" * 32, b"z" * 32, b"u" * 32)[n % 4] if n < 8 else KEY
            return await store.admit(key, f"r{n}", 100_000, aborts_since=None, abort_cap=0, model="m")

        got = await asyncio.gather(*(ask(n) for n in range(48)))
        batches = store._admissions.batches  # type: ignore[attr-defined]
        assert batches < 48  # they waited for one another's batches
        assert [got[n].refused for n in (1, 5)] == ["model_not_allowed"] * 2
        assert all(got[n].principal is None for n in (2, 3, 6, 7))  # revoked, unknown: 401
        held = [n for n, a in enumerate(got) if a.held]
        refused = [n for n, a in enumerate(got) if a.held is False]
        assert len(held) == 10 and len(held) + len(refused) == 48 - 6
        assert await store.balance("alice") == (1_000_000, 1_000_000)
        rows = await store.query("SELECT in_flight, held_microusd FROM api_keys WHERE id = ?", ("k1",))
        assert tuple(rows[0]) == (10, 1_000_000)
        settled = await asyncio.gather(*(store.settle_soon(record(f"r{n}", 60_000), 60_000) for n in held))
        assert settled == [60_000] * 10
        assert await store.balance("alice") == (400_000, 0)
        assert await store.ledger_check() == []
    finally:
        await store.close()


async def test_a_batch_whose_hold_another_machine_released_is_still_charged_once(pg_url: str) -> None:
    store = await funded(pg_url)
    try:
        assert (await admit(store, "a", 100_000)).held is True
        assert (await admit(store, "b", 100_000)).held is True
        async with store._pool.acquire() as conn, conn.transaction():  # type: ignore[attr-defined]
            await pg_ledger.release(conn, "a", utc_now())  # as another machine's lease reaper does
        got = await asyncio.gather(
            store.settle_soon(record("a", 30_000), 30_000), store.settle_soon(record("b", 20_000), 20_000)
        )
        assert got == [30_000, 20_000]
        assert await store.balance("alice") == (1_000_000 - 50_000, 0)
        a = await store.get_usage("a")
        assert a is not None and a.cost_microusd == 30_000 and a.billed
        assert await store.ledger_check() == []
    finally:
        await store.close()


async def test_the_one_statement_settlement_answers_as_the_set_wise_one_or_changes_nothing(pg_url: str) -> None:
    store = await funded(pg_url)
    try:
        for rid in ("a", "b", "c"):
            assert (await admit(store, rid, 100_000)).held is True
        known = store._held  # type: ignore[attr-defined]
        holds = [known["a"], known["b"], known["c"], None]
        items = [
            (record("a", 30_000), 30_000, utc_now()),
            (record("b", 250_000), 250_000, utc_now()),  # asks more than held: charged the hold
            (record("c", 0, "upstream_error"), 0, utc_now()),
            (record("zero", 0, "upstream_error"), 0, utc_now()),  # never held, nothing to charge
        ]
        pool = store._pool  # type: ignore[attr-defined]
        before = await store.balance("alice")
        async with pool.acquire() as conn:
            wrong = [(h[0], h[1] + 1, h[2]) if h else None for h in holds]  # not the amounts held
            assert await settle_known(conn, items, wrong) is None
            assert await settle_known(conn, [items[0], items[0]], holds[:1] * 2) is None  # twice in one batch
            assert await settle_known(conn, [(record("x", 5), 5, utc_now())], [None]) is None  # a charge, no hold
            assert await store.balance("alice") == before  # none of them changed anything
            assert await settle_known(conn, items, holds) == [30_000, 100_000, 0, 0]
            assert await settle_known(conn, items[:1], holds[:1]) is None  # a replay: settle_batch's way
        assert await store.balance("alice") == (1_000_000 - 130_000, 0)
        b = await store.get_usage("b")
        assert b is not None and b.cost_microusd == 100_000 and b.billed
        rows = await store.query("SELECT in_flight, held_microusd, spend_microusd FROM api_keys WHERE id = ?", ("k1",))
        assert tuple(rows[0]) == (0, 0, 130_000)
        assert await store.ledger_check() == []
    finally:
        await store.close()


def test_the_one_statement_settlement_inserts_every_usage_field() -> None:
    assert KNOWN_USAGE_COLUMNS == USAGE_FIELDS  # else a migration must replace relayproxy_settle_known
