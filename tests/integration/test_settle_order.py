"""PostgreSQL settlement beside other machines: batches that lock rows in one order (no deadlock),
and a settlement whose hold another machine's lease reaper released (charged exactly once)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from relayproxy.records import UsageRecord
from relayproxy.store.backends import open_store
from relayproxy.store.facade import utc_now
from relayproxy.store.pg_outage import Backlog, Parked
from relayproxy.store.postgres import PgStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _rec(rid: str, account: str, key_id: str, cost: int) -> UsageRecord:
    return UsageRecord(
        rid,
        utc_now(),
        account=account,
        key_id=key_id,
        outcome="completed",
        cost_microusd=cost,
        billed=cost > 0,
        reason="charged",
    )


async def _pg(pg_url: str, lease_s: float = 15.0) -> PgStore:
    store = await open_store(pg_url, lease_s=lease_s)
    assert isinstance(store, PgStore)
    return store


@pytest.mark.anyio
async def test_batches_of_two_stores_on_shared_keys_and_accounts_never_deadlock(pg_url: str) -> None:
    """Each batch spans several accounts with several keys each, in an order of its own: rows
    locked settlement by settlement (hold, key, account, next hold, other key…) would deadlock two
    machines' batches; locked all keys then all accounts, in id order, they cannot."""
    first, second = await _pg(pg_url), await _pg(pg_url)
    keys = []
    for a in range(4):
        await first.grant(f"acct{a}", 100_000_000)
        for k in range(3):
            secret = bytes([a * 3 + k + 1]) * 32
            await first.add_key(f"acct{a}", f"key{a}_{k}", "rp_x", secret, "")
            keys.append((f"acct{a}", f"key{a}_{k}", secret))
    rng = random.Random(13)
    requests = []
    for n in range(800):
        account, key_id, secret = rng.choice(keys)
        got = await (first, second)[n % 2].admit(secret, f"r{n:04d}", 20_000, aborts_since=None, abort_cap=0)
        assert got.held
        requests.append((f"r{n:04d}", account, key_id))
    rng.shuffle(requests)
    futures = [rng.choice((first, second)).settle_soon(_rec(*request, 15_000), 15_000) for request in requests]
    newcomers = [rng.choice(keys) for _ in range(200)]  # admissions (key, then account) meanwhile
    admitted = [
        (first, second)[n % 2].admit(secret, f"a{n:04d}", 20_000, aborts_since=None, abort_cap=0)
        for n, (_, _, secret) in enumerate(newcomers)
    ]
    settled, admissions = await asyncio.gather(asyncio.gather(*futures), asyncio.gather(*admitted))
    assert settled == [15_000] * 800
    assert all(got.held for got in admissions)
    for n, (account, key_id, _) in enumerate(newcomers):
        assert await first.settle(_rec(f"a{n:04d}", account, key_id, 0), 0) == 0
    assert (first.batch_fallbacks, second.batch_fallbacks) == (0, 0)
    spent = {f"acct{a}": 0 for a in range(4)}
    for _, account, _ in requests:
        spent[account] += 15_000
    for account, amount in spent.items():
        assert await first.balance(account) == (100_000_000 - amount, 0)
    assert await first.ledger_check() == []
    await first.close()
    await second.close()


KEY = b"q" * 32


async def _reaped(pg_url: str, hold: int) -> tuple[PgStore, PgStore]:
    """A machine that held ``hold`` for request r1 and then lost the database past its lease, and
    a live one whose lease reaper released that hold (never billed)."""
    cut_off, live = await _pg(pg_url), await _pg(pg_url)
    await live.grant("alice", 1_000_000)
    await live.add_key("alice", "key_a", "rp_x", KEY, "")
    assert (await cut_off.admit(KEY, "r1", hold, aborts_since=None, abort_cap=0)).held
    rows = await live.query(
        "UPDATE leases SET expires_at = now() - interval '1 second' WHERE owner = ? RETURNING 1", (cut_off._owner_id,)
    )
    assert rows == [(1,)]  # its lease ran out (it could not renew it)
    assert await live.release_orphan_holds() == 1
    assert await live.balance("alice") == (1_000_000, 0)
    return cut_off, live


@pytest.mark.anyio
async def test_a_parked_settlement_whose_hold_was_reaped_is_charged_exactly_once(pg_url: str, tmp_path: Path) -> None:
    cut_off, live = await _reaped(pg_url, 300_000)
    journal = tmp_path / "settlement.journal"
    parked = Backlog()
    parked.park(Parked(_rec("r1", "alice", "key_a", 200_000), 200_000, utc_now()))
    assert parked.write_journal(journal) == 1  # the cut-off machine stopped with it still parked
    await cut_off.close()
    restarted = await open_store(pg_url, journal=journal)  # applies the journal at start
    assert await restarted.balance("alice") == (800_000, 0)
    assert journal.read_bytes() == b""
    assert await live.settle(_rec("r1", "alice", "key_a", 200_000), 200_000) == 200_000  # a replay: no change
    assert await restarted.balance("alice") == (800_000, 0)
    usage = await live.get_usage("r1")
    assert usage is not None and usage.billed and usage.cost_microusd == 200_000 and usage.reason == "charged"
    assert [k.spend_microusd for k in await live.list_keys("alice")] == [200_000]
    assert await live.ledger_check() == []
    await restarted.close()
    await live.close()


@pytest.mark.anyio
async def test_a_late_charge_never_overdraws_credit_spent_since_the_release(pg_url: str) -> None:
    cut_off, live = await _reaped(pg_url, 300_000)
    assert (await live.admit(KEY, "r2", 900_000, aborts_since=None, abort_cap=0)).held  # the freed credit, taken
    futures = [cut_off.settle_soon(_rec("r1", "alice", "key_a", 200_000), 200_000) for _ in range(2)]
    assert await asyncio.gather(*futures) == [100_000, 100_000]  # what was left, once
    assert await live.balance("alice") == (900_000, 900_000)
    usage = await live.get_usage("r1")
    assert usage is not None and usage.billed and usage.cost_microusd == 100_000
    assert await live.settle(_rec("r2", "alice", "key_a", 0), 0) == 0
    assert await live.ledger_check() == []
    await cut_off.close()
    await live.close()
