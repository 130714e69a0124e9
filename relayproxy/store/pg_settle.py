"""PostgreSQL settlement: one request, or a group-committed batch, in the one lock order.

Lock order. Every transaction locks rows in this order, on every machine: hold rows (by request
id), then key rows (by key id), then account rows (by account id). Admission locks its key then
its account (and inserts its new hold row); the reaper and a single settlement claim one hold
row, then its key, then its account. A batch of settlements would break it if it locked row by
row (hold, key, account, next hold, another key…: two machines' batches then deadlock), so
``settle_batch`` first locks every hold row of the batch, then every key, then every account,
each set sorted, in three statements, and only then settles each request (re-locking a row one
already holds never waits).
"""

from __future__ import annotations

from typing import Any, TypeAlias

from relayproxy.records import UsageRecord
from relayproxy.store import pg_ledger as q
from relayproxy.store.facade import as_charged

__all__ = ["settle", "settle_batch"]

_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg ships no type hints)


async def settle(c: _Conn, rec: UsageRecord, charge: int, now: str) -> int:
    """Charge min(charge, hold), release the rest, insert the usage record; keyed by request id."""
    done = await c.fetchval("SELECT cost_microusd FROM usage WHERE request_id = $1", rec.request_id)
    if done is not None:
        await q.release(c, rec.request_id, now)
        return int(done)
    charged = await q.settle_hold(c, rec.request_id, charge, now)
    if not await q.insert_usage(c, as_charged(rec, charge, charged)):  # a concurrent replay settled it first
        return int(await c.fetchval("SELECT cost_microusd FROM usage WHERE request_id = $1", rec.request_id))
    return charged or 0


async def settle_batch(c: _Conn, items: list[tuple[UsageRecord, int, str]]) -> list[int]:
    """``settle`` for each (record, charge, time) in one transaction, after locking the rows the
    batch touches in the one order; answers in the order of ``items``."""
    rids = sorted({rec.request_id for rec, _, _ in items})
    holds = await c.fetch(
        "SELECT request_id, account_id, key_id FROM holds WHERE request_id = ANY($1::text[])"
        " ORDER BY request_id FOR UPDATE",
        rids,
    )
    keys = sorted({str(h["key_id"]) for h in holds if h["key_id"] is not None})
    if keys:
        await c.execute("SELECT 1 FROM api_keys WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", keys)
    accounts = sorted({int(h["account_id"]) for h in holds})
    if accounts:
        await c.execute("SELECT 1 FROM accounts WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE", accounts)
    order = sorted(range(len(items)), key=lambda i: items[i][0].request_id)
    results = [0] * len(items)
    for i in order:
        rec, charge, at = items[i]
        results[i] = await settle(c, rec, charge, at)
    return results
