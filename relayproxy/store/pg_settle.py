"""PostgreSQL settlement: one request, or a group-committed batch, in the one lock order; and the
charge of a request whose hold another machine's lease reaper released first.

Lock order. Every transaction locks rows in this order, on every machine: hold rows (by request
id), then key rows (by key id), then account rows (by account id). Admission locks its key, then
its account, and inserts its new hold row (pg_admit.py); the reaper and a single settlement claim
one hold row, then its key, then its account. The shared rows are locked ``FOR NO KEY UPDATE``,
the lock an UPDATE of them takes: ``FOR UPDATE`` would also wait for the key-share locks that
other transactions' ledger and hold inserts take on their account (foreign keys), and so
deadlock against an admission that holds its key's row.

Group commit. Settling request by request inside one transaction would lock the account's row at
the first settlement and keep it through every later one (six round trips each) and the commit's
WAL flush: every admission on that account would wait behind the whole batch, and the gateway
would run at the speed of that lock. ``settle_batch`` writes the per-request rows first (claimed
holds, ledger entries, usage records: a statement each for the whole batch) and the shared rows
last: the batch's keys, then its accounts, each set locked in sorted order and updated once with
the batch's sums, so they stay locked for two statements and the commit. A batch with a late
charge (below) is settled one request per transaction instead (``OneByOne``): that is rare.

One statement. A batch whose holds this process made itself and still knows (``Known``: the
admission's account, amount and key), which is every batch but after an outage or a replay, is
settled by ``settle_known`` as one call of the server-side function ``relayproxy_settle_known``,
in its own transaction: one round trip, and the shared rows locked only for the function's last
four statements and the commit, never while the gateway is busy sending the next statement. The
gateway works out every row as ``settle_batch`` would; the function claims the batch's hold rows
and checks they are exactly the ones the gateway expected. Anything else (a hold released or
settled since, a usage record or ledger entry already there) rolls the statement back and the
batch goes ``settle_batch``'s way, which handles every case.

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
from collections import defaultdict
from typing import Any, TypeAlias

import asyncpg
import orjson

from relayproxy.errors import StoreError
from relayproxy.records import UsageRecord
from relayproxy.store import pg_ledger as q
from relayproxy.store.common import as_charged
from relayproxy.store.pg_ledger import INSERT_USAGE_SQL, USAGE_FIELDS

__all__ = ["MIGRATION", "Known", "OneByOne", "settle", "settle_batch", "settle_known"]

_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg ships no type hints)
log = logging.getLogger("relayproxy.store")
Item: TypeAlias = tuple[UsageRecord, int, str]  # (record, charge asked, settlement time)
Known: TypeAlias = tuple[int, int, str | None]  # a hold this process made: (account id, amount, key id)
Hold: TypeAlias = tuple[str, int, int, str | None]  # a hold row: (request id, account id, amount, key id)


class OneByOne(StoreError):
    """The batch cannot be settled set-wise: its caller rolls it back and settles each request in
    its own transaction (what it does for any failed batch)."""


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

    def claim(self, hold: Hold, charged: int, now: str) -> None:
        """The hold ``hold`` settled with ``charged`` of it charged and the rest released."""
        rid, account_id, held, key_id = hold
        if charged:
            self.entries.append((account_id, "charge", charged, f"req:{rid}:charge", rid, now))
        if held - charged:
            self.entries.append((account_id, "release", held - charged, f"req:{rid}:release", rid, now))
        if key_id is not None:
            sums = self.keys[key_id]
            sums[0] += charged
            sums[1] += held
            sums[2] += 1
        self.accounts[account_id][0] += charged
        self.accounts[account_id][1] += held

    def key_columns(self) -> list[list[Any]]:
        """The keys' sums as the statements take them: ids (sorted), spends, helds, hold counts."""
        ids = sorted(self.keys)
        return [ids, *([self.keys[k][i] for k in ids] for i in range(3))]

    def account_columns(self) -> list[list[Any]]:
        """The accounts' sums as the statements take them: ids (sorted), charges, helds."""
        ids = sorted(self.accounts)
        return [ids, *([self.accounts[a][i] for a in ids] for i in range(2))]


def _hold(row: Any) -> Hold:
    key_id = row["key_id"]
    return (
        row["request_id"],
        int(row["account_id"]),
        int(row["amount_microusd"]),
        None if key_id is None else str(key_id),
    )


async def settle_batch(c: _Conn, items: list[Item]) -> list[int]:
    """Each (record, charge, time) settled as ``pg_ledger.settle`` would (keyed by request id: a
    replay changes nothing), all in the caller's transaction; the amounts charged, in order."""
    rids = sorted({rec.request_id for rec, _, _ in items})
    done = {r["request_id"]: int(r["cost_microusd"]) for r in await c.fetch(_DONE_SQL, rids)}
    claimed = {r["request_id"]: r for r in await c.fetch(_CLAIM_SQL, rids)}
    if any(charge > 0 and rec.request_id not in claimed and rec.request_id not in done for rec, charge, _ in items):
        raise OneByOne("a settlement in the batch has no open hold (a late charge, or none): one by one")
    sums, results = _Sums(), []
    for rec, charge, now in items:
        rid = rec.request_id
        hold = claimed.pop(rid, None)
        if rid in done:  # settled before (or earlier in this batch): release what is still held
            if hold is not None:
                sums.claim(_hold(hold), 0, now)
            results.append(done[rid])
            continue
        charged = None if hold is None else min(max(charge, 0), int(hold["amount_microusd"]))
        if hold is not None:
            sums.claim(_hold(hold), charged or 0, now)
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
        keys = sums.key_columns()
        await c.execute(_LOCK_KEYS_SQL, keys[0])
        await c.execute(_KEYS_SQL, *keys)
    if sums.accounts:
        accounts = sums.account_columns()
        await c.execute(_LOCK_ACCOUNTS_SQL, accounts[0])
        await c.execute(_ACCOUNTS_SQL, *accounts)


#: The usage columns the function below inserts (its text is a migration, fixed): a new usage
#: field needs a migration that replaces the function (tests check the two lists agree).
KNOWN_USAGE_COLUMNS = (
    "request_id", "created_at", "account", "key_id", "model", "provider", "client_protocol",
    "upstream_protocol", "stream", "outcome", "http_status", "input_tokens", "cached_input_tokens",
    "output_tokens", "reasoning_tokens", "cost_microusd", "billed", "reason", "duration_ms",
)  # fmt: skip
_COLUMNS = ", ".join(KNOWN_USAGE_COLUMNS)
MIGRATION = f"""
CREATE OR REPLACE FUNCTION relayproxy_settle_known(
    p_rids TEXT[],
    p_hold_rids TEXT[], p_hold_accounts BIGINT[], p_hold_amounts BIGINT[], p_hold_keys TEXT[],
    e_accounts BIGINT[], e_kinds TEXT[], e_amounts BIGINT[], e_keys TEXT[], e_rids TEXT[], e_at TEXT[],
    p_usage JSONB,
    k_ids TEXT[], k_spend BIGINT[], k_held BIGINT[], k_holds INTEGER[],
    a_ids BIGINT[], a_charged BIGINT[], a_held BIGINT[])
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    v_claimed INTEGER;
    v_matched INTEGER;
BEGIN
    WITH claimed AS (
        DELETE FROM holds WHERE request_id IN (
            SELECT request_id FROM holds WHERE request_id = ANY(p_rids) ORDER BY request_id FOR UPDATE)
        RETURNING request_id, account_id, amount_microusd, key_id)
    SELECT count(*), count(e.rid) INTO v_claimed, v_matched
      FROM claimed c
      LEFT JOIN unnest(p_hold_rids, p_hold_accounts, p_hold_amounts, p_hold_keys) AS e(rid, account, amount, key)
        ON e.rid = c.request_id AND e.account = c.account_id AND e.amount = c.amount_microusd
       AND e.key IS NOT DISTINCT FROM c.key_id;
    IF v_claimed <> v_matched OR v_claimed <> cardinality(p_hold_rids) THEN
        RAISE EXCEPTION USING ERRCODE = 'RP002', MESSAGE = 'the batch holds differ from what was expected';
    END IF;
    INSERT INTO ledger(account_id, kind, amount_microusd, business_key, request_id, created_at)
    SELECT * FROM unnest(e_accounts, e_kinds, e_amounts, e_keys, e_rids, e_at);
    INSERT INTO usage({_COLUMNS}) SELECT {_COLUMNS} FROM jsonb_populate_recordset(NULL::usage, p_usage);
    PERFORM 1 FROM api_keys WHERE id = ANY(k_ids) ORDER BY id FOR NO KEY UPDATE;
    UPDATE api_keys k SET spend_microusd = k.spend_microusd + d.spend, held_microusd = k.held_microusd - d.held,
           in_flight = k.in_flight - d.holds
      FROM unnest(k_ids, k_spend, k_held, k_holds) AS d(id, spend, held, holds) WHERE k.id = d.id;
    PERFORM 1 FROM accounts WHERE id = ANY(a_ids) ORDER BY id FOR NO KEY UPDATE;
    UPDATE accounts a SET balance_microusd = a.balance_microusd - d.charged, held_microusd = a.held_microusd - d.held
      FROM unnest(a_ids, a_charged, a_held) AS d(id, charged, held) WHERE a.id = d.id;
END
$fn$;
"""
_KNOWN_SQL = "SELECT relayproxy_settle_known(" + ", ".join(f"${i}" for i in range(1, 20)) + ")"
#: The function's refusal (the holds differ), and a usage record or ledger entry already there.
_NOT_AS_KNOWN = {"RP002", "23505"}


async def settle_known(c: _Conn, items: list[Item], holds: list[Known | None]) -> list[int] | None:
    """``settle_batch``'s result for ``items`` whose holds (``holds``, in order; None: the request
    held nothing) this process made, as one statement in its own transaction (the module
    docstring); None when the batch is not as known, with nothing changed."""
    rids = [rec.request_id for rec, _, _ in items]
    if len(set(rids)) != len(rids):
        return None
    sums, results, records = _Sums(), [], []
    expected: list[Hold] = []
    for (rec, charge, now), known in zip(items, holds, strict=True):
        charged = None
        if known is not None:
            hold = (rec.request_id, *known)
            charged = min(max(charge, 0), hold[2])
            expected.append(hold)
            sums.claim(hold, charged, now)
        elif charge > 0:
            return None  # a charge with no hold of ours: settle_batch knows what to do
        records.append(as_charged(rec, charge, charged))
        results.append(charged or 0)
    try:
        await c.execute(
            _KNOWN_SQL,
            sorted(rids),
            *_columns(expected, 4),
            *_columns(sums.entries, 6),
            orjson.dumps(records).decode(),
            *sums.key_columns(),
            *sums.account_columns(),
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate in _NOT_AS_KNOWN:
            return None
        raise
    return results


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]
