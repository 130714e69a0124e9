"""PostgreSQL group commit: a batch of settlements as a few set-wise statements in one transaction.

Settling request by request inside one transaction would take the account's row lock at the
first settlement and keep it through every later one (six round trips each) and the commit's
WAL flush: every admission on that account waits behind the whole batch, and the gateway runs
at the speed of that lock. Here the per-request rows (claimed holds, ledger entries, usage
records) are written first, a statement each for the whole batch, and the shared rows last: the
batch's keys, then its accounts, each set locked in sorted order and updated once with the
batch's sums. The locks on the shared rows are then held for two statements and the commit.

Lock order, as every transaction takes them: hold rows (by request id), key rows (by id), account
rows (by id); admission locks its key, then its account, and only inserts a hold row. The shared
rows are locked ``FOR NO KEY UPDATE``, the lock an UPDATE of them takes: ``FOR UPDATE`` would also
wait for the key-share locks that other transactions' ledger and hold inserts take on their account
(foreign keys), which deadlocks against an admission holding its key row.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, TypeAlias

from relayproxy.records import UsageRecord
from relayproxy.store.facade import as_charged
from relayproxy.store.pg_ledger import INSERT_USAGE_SQL, USAGE_FIELDS

__all__ = ["settle_batch"]

_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg ships no type hints)
Item: TypeAlias = tuple[UsageRecord, int, str]  # (record, charge asked, settlement time)

_DONE_SQL = "SELECT request_id, cost_microusd FROM usage WHERE request_id = ANY($1::text[])"
_CLAIM_SQL = (
    "DELETE FROM holds WHERE request_id IN (SELECT request_id FROM holds WHERE request_id = ANY($1::text[])"
    " ORDER BY request_id FOR UPDATE) RETURNING request_id, account_id, amount_microusd, key_id"
)
_ENTRIES_SQL = (
    "INSERT INTO ledger(account_id, kind, amount_microusd, business_key, request_id, created_at)"
    " SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[])"
    " ON CONFLICT DO NOTHING"
)
_LOCK_KEYS_SQL = "SELECT 1 FROM api_keys WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE"
_KEYS_SQL = (
    "UPDATE api_keys k SET spend_microusd = k.spend_microusd + d.spend, held_microusd = k.held_microusd - d.held,"
    " in_flight = k.in_flight - d.holds"
    " FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::integer[]) AS d(id, spend, held, holds) WHERE k.id = d.id"
)
_LOCK_ACCOUNTS_SQL = "SELECT 1 FROM accounts WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE"
_ACCOUNTS_SQL = (
    "UPDATE accounts a SET balance_microusd = a.balance_microusd - d.charged, held_microusd = a.held_microusd - d.held"
    " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS d(id, charged, held) WHERE a.id = d.id"
)


class _Sums:
    """What one batch writes: ledger entries, usage rows, and each key's and account's sums."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str, int, str, str, str]] = []
        self.usage: list[tuple[Any, ...]] = []
        self.keys: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # id -> [spend, held, holds]
        self.accounts: defaultdict[int, list[int]] = defaultdict(lambda: [0, 0])  # id -> [charged, held]

    def claim(self, hold: Any, charged: int, now: str) -> None:
        """The hold ``hold`` settled with ``charged`` of it charged and the rest released."""
        rid, account_id, held, key_id = (
            hold["request_id"],
            int(hold["account_id"]),
            int(hold["amount_microusd"]),
            hold["key_id"],
        )
        if charged:
            self.entries.append((account_id, "charge", charged, f"req:{rid}:charge", rid, now))
        if held - charged:
            self.entries.append((account_id, "release", held - charged, f"req:{rid}:release", rid, now))
        if key_id is not None:
            sums = self.keys[str(key_id)]
            sums[0] += charged
            sums[1] += held
            sums[2] += 1
        self.accounts[account_id][0] += charged
        self.accounts[account_id][1] += held


async def settle_batch(c: _Conn, items: list[Item]) -> list[int]:
    """Each (record, charge, time) settled as ``pg_ledger.settle`` would (keyed by request id: a
    replay changes nothing), all in the caller's transaction; the amounts charged, in order."""
    rids = sorted({rec.request_id for rec, _, _ in items})
    done = {r["request_id"]: int(r["cost_microusd"]) for r in await c.fetch(_DONE_SQL, rids)}
    claimed = {r["request_id"]: r for r in await c.fetch(_CLAIM_SQL, rids)}
    sums, results = _Sums(), []
    for rec, charge, now in items:
        rid = rec.request_id
        hold = claimed.pop(rid, None)
        if rid in done:  # settled before (or earlier in this batch): release what is still held
            if hold is not None:
                sums.claim(hold, 0, now)
            results.append(done[rid])
            continue
        charged = None if hold is None else min(max(charge, 0), int(hold["amount_microusd"]))
        if hold is not None:
            sums.claim(hold, charged or 0, now)
        stored = as_charged(rec, charge, charged)
        sums.usage.append(tuple(getattr(stored, f) for f in USAGE_FIELDS))
        done[rid] = charged or 0
        results.append(charged or 0)
    await _write(c, sums)
    return results


async def _write(c: _Conn, sums: _Sums) -> None:
    if sums.entries:
        await c.execute(_ENTRIES_SQL, *(list(column) for column in zip(*sums.entries, strict=True)))
    if sums.usage:
        await c.executemany(INSERT_USAGE_SQL, sums.usage)
    if sums.keys:
        ids = sorted(sums.keys)
        await c.execute(_LOCK_KEYS_SQL, ids)
        await c.execute(_KEYS_SQL, ids, *([sums.keys[k][i] for k in ids] for i in range(3)))
    if sums.accounts:
        ids_a = sorted(sums.accounts)
        await c.execute(_LOCK_ACCOUNTS_SQL, ids_a)
        await c.execute(_ACCOUNTS_SQL, ids_a, *([sums.accounts[a][i] for a in ids_a] for i in range(2)))
