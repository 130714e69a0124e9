"""PostgreSQL settlement: one request, or a group-committed batch, in the one lock order; and the
charge of a request whose hold another machine's lease reaper released first.

Lock order. Every transaction locks rows in this order, on every machine: hold rows (by request
id), then key rows (by key id), then account rows (by account id). Admission locks its key then
its account (and inserts its new hold row); the reaper and a single settlement claim one hold
row, then its key, then its account. A batch of settlements would break it if it locked row by
row (hold, key, account, next hold, another key…: two machines' batches then deadlock), so
``settle_batch`` locks every hold row of the batch first, then every key, then every account,
each set sorted (re-locking a row one already holds never waits).

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
from relayproxy.store.common import as_charged

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
    """``settle`` for each (record, charge, time) in one transaction, rows locked in the one
    order; answers in the order of ``items``.

    The hot rows (a busy key, its account) are locked last and briefly: the batch first claims its
    hold rows (sorted) and books every entry and usage record, adding up what each key and
    account must move, then applies one update per key, then per account (each set sorted), and
    only then the rare late charges (whose key and account are then locked already). Admissions of
    that key wait for the last few statements of a batch, not for all of it."""
    await c.fetch(
        "SELECT 1 FROM holds WHERE request_id = ANY($1::text[]) ORDER BY request_id FOR UPDATE",
        sorted({rec.request_id for rec, _, _ in items}),
    )
    moves = _Moves()
    results = [0] * len(items)
    late: list[int] = []
    for i in sorted(range(len(items)), key=lambda i: items[i][0].request_id):
        rec, charge, at = items[i]
        done = await c.fetchval("SELECT cost_microusd FROM usage WHERE request_id = $1", rec.request_id)
        claimed = await _claim(c, rec.request_id, 0 if done is not None else charge, at, moves)
        if done is not None:
            results[i] = int(done)
        elif claimed is None and charge > 0 and await _held_once(c, rec.request_id):
            late.append(i)
        else:
            results[i] = await _record(c, rec, charge, claimed)
    await moves.apply(
        c, late_keys=[items[i][0].key_id for i in late], late_accounts=[items[i][0].account for i in late]
    )
    for i in late:
        rec, charge, at = items[i]
        results[i] = await _record(c, rec, charge, await _late_charge(c, rec, charge, at))
    return results


async def _record(c: _Conn, rec: UsageRecord, charge: int, charged: int | None) -> int:
    if not await q.insert_usage(c, as_charged(rec, charge, charged)):  # a concurrent replay settled it first
        return int(await c.fetchval("SELECT cost_microusd FROM usage WHERE request_id = $1", rec.request_id))
    return charged or 0


async def _held_once(c: _Conn, rid: str) -> bool:
    return bool(await c.fetchval("SELECT 1 FROM ledger WHERE business_key = $1", f"req:{rid}:hold"))


async def _claim(c: _Conn, rid: str, charge: int, now: str, moves: _Moves) -> int | None:
    """pg_ledger.settle_hold's entries, with the key's and account's moves added to ``moves``."""
    row = await c.fetchrow("DELETE FROM holds WHERE request_id = $1 RETURNING account_id, amount_microusd, key_id", rid)
    if row is None:
        return None
    account_id, held, key_id = int(row[0]), int(row[1]), row[2]
    charged = min(max(charge, 0), held)
    if charged:
        await q.entry(c, account_id, "charge", charged, f"req:{rid}:charge", now, request_id=rid)
    if held - charged:
        await q.entry(c, account_id, "release", held - charged, f"req:{rid}:release", now, request_id=rid)
    moves.add(account_id, None if key_id is None else str(key_id), charged, held)
    return charged


class _Moves:
    """What a batch's settlements move on each key and account, applied once per row."""

    def __init__(self) -> None:
        self.keys: dict[str, list[int]] = {}  # key -> [spend +, held -, holds closed]
        self.accounts: dict[int, list[int]] = {}  # account -> [balance -, held -]

    def add(self, account_id: int, key_id: str | None, charged: int, held: int) -> None:
        if key_id is not None:
            k = self.keys.setdefault(key_id, [0, 0, 0])
            k[0], k[1], k[2] = k[0] + charged, k[1] + held, k[2] + 1
        a = self.accounts.setdefault(account_id, [0, 0])
        a[0], a[1] = a[0] + charged, a[1] + held

    async def apply(self, c: _Conn, *, late_keys: list[str | None], late_accounts: list[str | None]) -> None:
        keys = sorted(set(self.keys) | {k for k in late_keys if k})
        if keys:  # locked in id order first: one UPDATE over several rows locks them in no set order
            await c.execute("SELECT 1 FROM api_keys WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE", keys)
        if self.keys:
            ids = sorted(self.keys)
            await c.execute(
                "UPDATE api_keys k SET spend_microusd = spend_microusd + m.spend,"
                " held_microusd = held_microusd - m.held, in_flight = in_flight - m.n"
                " FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[])"
                " AS m(id, spend, held, n) WHERE k.id = m.id",
                ids,
                *([self.keys[i][j] for i in ids] for j in range(3)),
            )
        names = sorted({a for a in late_accounts if a})
        if self.accounts or names:
            await c.execute(
                "SELECT 1 FROM accounts WHERE id = ANY($1::bigint[]) OR name = ANY($2::text[])"
                " ORDER BY id FOR NO KEY UPDATE",
                sorted(self.accounts),
                names,
            )
        if self.accounts:
            accounts = sorted(self.accounts)
            await c.execute(
                "UPDATE accounts a SET balance_microusd = balance_microusd - m.spent,"
                " held_microusd = held_microusd - m.held"
                " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS m(id, spent, held) WHERE a.id = m.id",
                accounts,
                *([self.accounts[i][j] for i in accounts] for j in range(2)),
            )


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
            "SELECT spend_limit_microusd - spend_microusd - held_microusd FROM api_keys WHERE id = $1"
            " FOR NO KEY UPDATE",
            rec.key_id,
        )
    available = await c.fetchval(
        "SELECT balance_microusd - held_microusd FROM accounts WHERE id = $1 FOR NO KEY UPDATE", account_id
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
