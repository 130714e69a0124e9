"""The PostgreSQL ledger's statements: they run inside a transaction the caller (postgres.py) opened.

The same rules as ledger.py's for SQLite (its docstring has the theory): guarded holds, business
keys that make every replay a no-op, and rows locked in one order: hold rows, then keys, then
accounts (pg_settle.py, which also has settlement itself).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeAlias

from relayproxy.billing.pricing import Booking
from relayproxy.records import Principal, UsageRecord
from relayproxy.store.admission import PRINCIPAL_COLUMNS, principal_of
from relayproxy.store.common import utc_now
from relayproxy.store.ledger import (
    HELD,
    KEY_CHECK_SQL,
    NO_CREDIT,
    account_problems,
    key_problems,
)

_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg ships no type hints)

USAGE_FIELDS = tuple(f.name for f in fields(UsageRecord))
INSERT_USAGE_SQL = (
    f"INSERT INTO usage({','.join(USAGE_FIELDS)}) VALUES ({','.join(f'${i + 1}' for i in range(len(USAGE_FIELDS)))})"
    " ON CONFLICT (request_id) DO NOTHING"
)


async def principal(c: _Conn, key_hash: bytes, aborts_since: str | None, lock: bool = False) -> Principal | None:
    """The key's principal; with ``lock`` its row stays locked to the end of the transaction
    (the requests-per-minute count needs it, key_limits.py)."""
    row = await c.fetchrow(
        f"SELECT {PRINCIPAL_COLUMNS}, (SELECT COUNT(*) FROM usage u"
        " WHERE u.key_id = k.id AND u.created_at >= $1 AND u.outcome = 'client_disconnected')"
        " FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.hash = $2"
        + (" FOR NO KEY UPDATE OF k" if lock else ""),
        aborts_since or "9999",
        key_hash,
    )
    return None if row is None else principal_of(tuple(row)[:-1], key_hash, int(row[-1]))


async def ensure_account(c: _Conn, name: str) -> int:
    await c.execute(
        "INSERT INTO accounts(name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, utc_now()
    )
    return int(await c.fetchval("SELECT id FROM accounts WHERE name = $1", name))


async def insert_usage(c: _Conn, rec: UsageRecord) -> bool:
    status = await c.execute(INSERT_USAGE_SQL, *[getattr(rec, f) for f in USAGE_FIELDS])
    return bool(status == "INSERT 0 1")


async def entry(
    c: _Conn,
    account_id: int,
    kind: str,
    amount: int,
    key: str,
    now: str,
    *,
    request_id: str | None = None,
    payment_ref: str | None = None,
    note: str = "",
) -> bool:
    status = await c.execute(
        "INSERT INTO ledger(account_id, kind, amount_microusd, business_key, request_id, payment_ref, note,"
        " created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT DO NOTHING",
        account_id,
        kind,
        amount,
        key,
        request_id,
        payment_ref,
        note,
        now,
    )
    return bool(status == "INSERT 0 1")


async def move(c: _Conn, account_id: int, balance: int, held: int) -> None:
    await c.execute(
        "UPDATE accounts SET balance_microusd = balance_microusd + $1, held_microusd = held_microusd + $2"
        " WHERE id = $3",
        balance,
        held,
        account_id,
    )


async def new_event(c: _Conn, event_id: str, event_type: str, now: str) -> bool:
    status = await c.execute(
        "INSERT INTO stripe_events(event_id, type, received_at) VALUES ($1,$2,$3) ON CONFLICT DO NOTHING",
        event_id,
        event_type,
        now,
    )
    return bool(status == "INSERT 0 1")


async def hold(c: _Conn, account_id: int, request_id: str, amount: int, owner: str, now: str) -> str:
    """ledger.hold's rules for a hold of no key (``Store.hold``; an admission's hold is
    pg_admit.py's): the account's guarded UPDATE, its ledger entry and the hold row."""
    if await c.fetchval("SELECT 1 FROM ledger WHERE business_key = $1", f"req:{request_id}:hold"):
        return HELD if await c.fetchval("SELECT 1 FROM holds WHERE request_id = $1", request_id) else NO_CREDIT
    row = await c.fetchrow(
        "UPDATE accounts SET held_microusd = held_microusd + $1"
        " WHERE id = $2 AND balance_microusd - held_microusd >= $1 RETURNING held_microusd",
        amount,
        account_id,
    )
    if row is None:
        return NO_CREDIT
    await entry(c, account_id, "hold", amount, f"req:{request_id}:hold", now, request_id=request_id)
    await c.execute(
        "INSERT INTO holds(request_id, account_id, amount_microusd, owner, created_at) VALUES ($1,$2,$3,$4,$5)",
        request_id,
        account_id,
        amount,
        owner,
        now,
    )
    return HELD


async def settle_hold(c: _Conn, request_id: str, charge: int, now: str) -> int | None:
    """Claim the hold row first (then the key's row, then the account's: the one lock order),
    charge, release."""
    row = await c.fetchrow(
        "DELETE FROM holds WHERE request_id = $1 RETURNING account_id, amount_microusd, key_id", request_id
    )
    if row is None:
        return None
    account_id, held, key_id = int(row[0]), int(row[1]), row[2]
    charged = min(max(charge, 0), held)
    if key_id is not None:
        await c.execute(
            "UPDATE api_keys SET spend_microusd = spend_microusd + $1, held_microusd = held_microusd - $2,"
            " in_flight = in_flight - 1 WHERE id = $3",
            charged,
            held,
            key_id,
        )
    if charged:
        await entry(c, account_id, "charge", charged, f"req:{request_id}:charge", now, request_id=request_id)
    if held - charged:
        await entry(c, account_id, "release", held - charged, f"req:{request_id}:release", now, request_id=request_id)
    await move(c, account_id, -charged, -held)
    return charged


async def release(c: _Conn, request_id: str, now: str) -> int | None:
    row = await c.fetchrow("SELECT amount_microusd FROM holds WHERE request_id = $1", request_id)
    if row is None or await settle_hold(c, request_id, 0, now) is None:
        return None
    return int(row[0])


BALANCE_EFFECT = (
    "CASE kind WHEN 'grant' THEN 1 WHEN 'topup' THEN 1 WHEN 'charge' THEN -1 WHEN 'refund' THEN -1 ELSE 0 END"
)
HELD_EFFECT = "CASE kind WHEN 'hold' THEN 1 WHEN 'release' THEN -1 WHEN 'charge' THEN -1 ELSE 0 END"


async def check(c: _Conn) -> list[str]:
    problems: list[str] = []
    rows = await c.fetch(
        f"SELECT a.name, a.balance_microusd, a.held_microusd,"
        f" (SELECT COALESCE(SUM(amount_microusd * {BALANCE_EFFECT}), 0) FROM ledger WHERE account_id = a.id),"
        f" (SELECT COALESCE(SUM(amount_microusd * {HELD_EFFECT}), 0) FROM ledger WHERE account_id = a.id),"
        f" (SELECT COALESCE(SUM(amount_microusd), 0) FROM holds WHERE account_id = a.id),"
        f" (SELECT COUNT(*) FROM ledger WHERE account_id = a.id AND kind = 'refund')"
        f" FROM accounts a ORDER BY a.id"
    )
    for name, *values in rows:
        problems += account_problems(name, *(int(v) for v in values))
    rows = await c.fetch(
        "SELECT l.request_id, SUM(CASE kind WHEN 'hold' THEN amount_microusd ELSE 0 END),"
        " SUM(CASE WHEN kind IN ('charge', 'release') THEN amount_microusd ELSE 0 END),"
        " COALESCE((SELECT amount_microusd FROM holds h WHERE h.request_id = l.request_id), 0)"
        " FROM ledger l WHERE l.request_id IS NOT NULL GROUP BY l.request_id"
    )
    problems += [
        f"request {rid}: held {held}, settled {settled}, still open {still_open}"
        for rid, held, settled, still_open in rows
        if held != settled + still_open
    ]
    problems += key_problems(await c.fetch(KEY_CHECK_SQL))
    return problems


class DuplicatePayment(Exception):
    """Raised inside a top-up transaction to roll its event row back too (as SQLite's caller sees it)."""


async def credit_topup(
    c: _Conn,
    *,
    account_id: int,
    amount: int,
    event_id: str,
    event_type: str,
    payment_key: str,
    payment_ref: str,
    now: str,
) -> Booking:
    if not await c.fetchval("SELECT 1 FROM accounts WHERE id = $1", account_id):
        return Booking.UNKNOWN_ACCOUNT
    if not await new_event(c, event_id, event_type, now):
        return Booking.DUPLICATE
    if not await entry(c, account_id, "topup", amount, payment_key, now, payment_ref=payment_ref, note=event_id):
        raise DuplicatePayment
    await move(c, account_id, amount, 0)
    return Booking.BOOKED


async def book_refund(
    c: _Conn, *, payment_ref: str, refunded_total: int, event_id: str, event_type: str, now: str
) -> Booking:
    topup = await c.fetchrow(
        "SELECT account_id, amount_microusd FROM ledger WHERE kind = 'topup' AND payment_ref = $1", payment_ref
    )
    if topup is None:
        return Booking.UNKNOWN_PAYMENT
    account_id, target = int(topup[0]), min(refunded_total, int(topup[1]))
    if not await new_event(c, event_id, event_type, now):
        return Booking.DUPLICATE
    await c.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", account_id)  # one refund at a time
    done = await c.fetchval(
        "SELECT COALESCE(SUM(amount_microusd), 0) FROM ledger WHERE kind = 'refund' AND payment_ref = $1",
        payment_ref,
    )
    delta = target - int(done)
    if delta <= 0:
        return Booking.DUPLICATE
    await entry(
        c, account_id, "refund", delta, f"refund:{payment_ref}:{target}", now, payment_ref=payment_ref, note=event_id
    )
    await move(c, account_id, -delta, 0)
    return Booking.BOOKED
