"""PostgreSQL settlement: one request, or a group-committed batch, in the one lock order; and the
charge of a request whose hold another machine's lease reaper released first.

Lock order. Every transaction locks rows in this order, on every machine: hold rows (by request
id), then key rows (by key id), then account rows (by account id). Admission locks its key then
its account (and inserts its new hold row); the reaper and a single settlement claim one hold
row, then its key, then its account. A batch of settlements would break it if it locked row by
row (hold, key, account, next hold, another key…: two machines' batches then deadlock), so
``settle_batch`` first locks every hold row of the batch, then every key, then every account,
each set sorted, in three statements, and only then settles each request (re-locking a row one
already holds never waits).

Settling after the reaper. A machine cut off from PostgreSQL for longer than its lease keeps its
streams running and parks their settlements (pg_outage.py); meanwhile another machine's reaper
releases the holds of the expired lease (never billing them). When the parked settlement is
applied, its hold is gone. ``settle`` then charges it all the same, exactly once: the ledger
shows the hold and its full release, so the charge is booked as a fresh hold (business key
``req:<id>:late``) consumed at once by the charge (``req:<id>:charge``, unique), which keeps
every ledger invariant (per request: holds = charges + releases). The amount is what the request
was to be charged, capped by its original hold, by the key's remaining spend limit and by the
account's available credit (never an overdraft; a shortfall is logged). A replay finds the usage
record and changes nothing, so the charge is booked once whichever machine applies it.
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

from relayproxy.records import UsageRecord
from relayproxy.store import pg_ledger as q
from relayproxy.store.facade import as_charged

__all__ = ["settle", "settle_batch"]

_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg ships no type hints)
log = logging.getLogger("relayproxy.store")


async def settle(c: _Conn, rec: UsageRecord, charge: int, now: str) -> int:
    """Charge min(charge, hold), release the rest, insert the usage record; keyed by request id."""
    done = await c.fetchval("SELECT cost_microusd FROM usage WHERE request_id = $1", rec.request_id)
    if done is not None:
        await q.release(c, rec.request_id, now)
        return int(done)
    charged = await q.settle_hold(c, rec.request_id, charge, now)
    if charged is None and charge > 0:
        charged = await _late_charge(c, rec, charge, now)
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
    # Late charges (a hold gone, something to charge) lock their key and account too.
    late = [rec for rec, charge, _ in items if charge > 0]
    keys = sorted({str(h["key_id"]) for h in holds if h["key_id"] is not None} | {r.key_id for r in late if r.key_id})
    if keys:
        await c.execute("SELECT 1 FROM api_keys WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", keys)
    accounts = sorted({int(h["account_id"]) for h in holds})
    names = sorted({r.account for r in late if r.account})
    if accounts or names:
        await c.execute(
            "SELECT 1 FROM accounts WHERE id = ANY($1::bigint[]) OR name = ANY($2::text[]) ORDER BY id FOR UPDATE",
            accounts,
            names,
        )
    order = sorted(range(len(items)), key=lambda i: items[i][0].request_id)
    results = [0] * len(items)
    for i in order:
        rec, charge, at = items[i]
        results[i] = await settle(c, rec, charge, at)
    return results


async def _late_charge(c: _Conn, rec: UsageRecord, charge: int, now: str) -> int | None:
    """Charge a request whose hold was released by another machine's reaper (the module
    docstring); None when it never held (nothing to charge it against)."""
    rid = rec.request_id
    hold = await c.fetchrow("SELECT account_id, amount_microusd FROM ledger WHERE business_key = $1", f"req:{rid}:hold")
    if hold is None or await c.fetchval("SELECT 1 FROM ledger WHERE business_key = $1", f"req:{rid}:charge"):
        return None
    account_id, held = int(hold[0]), int(hold[1])
    room = None
    if rec.key_id is not None:  # the key's row first: the one lock order
        room = await c.fetchval(
            "SELECT spend_limit_microusd - spend_microusd - held_microusd FROM api_keys WHERE id = $1 FOR UPDATE",
            rec.key_id,
        )
    available = await c.fetchval(
        "SELECT balance_microusd - held_microusd FROM accounts WHERE id = $1 FOR UPDATE", account_id
    )
    amount = max(0, min(charge, held, int(available), int(room) if room is not None else charge))
    if amount < min(charge, held):
        log.warning("request %s: charged %d of %d after its hold was released (credit used since)", rid, amount, charge)
    if amount == 0:
        return 0
    if not await q.entry(c, account_id, "hold", amount, f"req:{rid}:late", now, request_id=rid):
        return None  # a concurrent replay booked it first
    await q.entry(c, account_id, "charge", amount, f"req:{rid}:charge", now, request_id=rid)
    await q.move(c, account_id, -amount, 0)
    if rec.key_id is not None:
        await c.execute("UPDATE api_keys SET spend_microusd = spend_microusd + $1 WHERE id = $2", amount, rec.key_id)
    log.warning("request %s: charged %d after another gateway released its hold (lease expired)", rid, amount)
    return amount
