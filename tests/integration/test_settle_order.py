"""PostgreSQL settlement beside other machines: batches that lock rows in one order (no deadlock)."""

from __future__ import annotations

import asyncio
import random

import pytest

from relayproxy.records import UsageRecord
from relayproxy.store.backends import open_store
from relayproxy.store.facade import utc_now
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
