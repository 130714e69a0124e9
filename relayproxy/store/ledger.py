"""The credit ledger's SQL: append-only entries in integer micro-USD, cached balances, holds.

Theory of operation. Every movement of credit is one row in ``ledger`` with a UNIQUE business key
(``req:<request_id>:hold|charge|release``, ``checkout:<session_id>``, ``refund:<payment>:<total>``,
``grant:<uuid>``), and the account's cached ``balance_microusd`` / ``held_microusd`` change in the
SAME transaction as the row, so a replay of the same business event is a no-op and the cache can
always be re-derived from the entries:

    kind      balance   held        kind      balance   held
    grant     +amount   .           hold      .         +amount
    topup     +amount   .           release   .         -amount
    refund    -amount   .           charge    -amount   -amount   (a charge consumes its hold)

``balance`` is unspent credit, holds included; ``held`` is the sum of the open holds (the
``holds`` table); available = balance - held. A hold is taken with a guarded UPDATE (``WHERE
balance - held >= :amount``), never "read, check in Python, write", so concurrent requests and
worker processes cannot overdraw an account: the database's write lock is the arbiter.

A key with a spend limit is guarded the same way, first, in the same transaction: ``UPDATE
api_keys SET held += :amount WHERE spend + held + :amount <= limit`` (the hold counts against the
limit); the hold row names the key, and settling it moves the charge from the key's ``held`` into
its ``spend`` (a release only lowers ``held``). Rows are locked key, then account.

The functions here are plain functions of the ``sqlite3.Connection``, run on aiosqlite's database
thread inside a transaction the caller opened (``Store._write``, through group_commit.py: BEGIN
IMMEDIATE); they never commit. The store turns ``sqlite3.Error`` into ``StoreError``.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from relayproxy.billing.pricing import Booking
from relayproxy.store.owners import Owner

__all__ = [
    "CONCURRENCY",
    "HELD",
    "KEY_LIMIT",
    "MIGRATION",
    "NO_CREDIT",
    "Owner",
    "book_refund",
    "check",
    "credit_topup",
    "grant",
    "hold",
    "orphan_holds",
    "release",
    "settle_hold",
]

MIGRATION = """
    CREATE TABLE ledger (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        kind TEXT NOT NULL CHECK (kind IN ('grant', 'topup', 'hold', 'release', 'charge', 'refund')),
        amount_microusd INTEGER NOT NULL CHECK (amount_microusd >= 0),
        business_key TEXT NOT NULL UNIQUE,
        request_id TEXT,
        payment_ref TEXT,
        note TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL
    );
    CREATE INDEX ledger_account ON ledger(account_id, seq);
    CREATE INDEX ledger_request ON ledger(request_id) WHERE request_id IS NOT NULL;
    CREATE INDEX ledger_payment ON ledger(payment_ref, kind) WHERE payment_ref IS NOT NULL;
    CREATE UNIQUE INDEX ledger_topup_once ON ledger(payment_ref) WHERE kind = 'topup';
    CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
    CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
    CREATE TABLE holds (
        request_id TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        amount_microusd INTEGER NOT NULL CHECK (amount_microusd >= 0),
        owner_pid INTEGER NOT NULL,
        owner_start TEXT NOT NULL,
        owner_boot TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE stripe_events (
        event_id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        received_at TEXT NOT NULL
    );
    CREATE INDEX usage_key_aborts ON usage(key_id, created_at) WHERE outcome = 'client_disconnected'
"""

_BALANCE_EFFECT = (
    "CASE kind WHEN 'grant' THEN 1 WHEN 'topup' THEN 1 WHEN 'charge' THEN -1 WHEN 'refund' THEN -1 ELSE 0 END"
)
_HELD_EFFECT = "CASE kind WHEN 'hold' THEN 1 WHEN 'release' THEN -1 WHEN 'charge' THEN -1 ELSE 0 END"


# -- entries --------------------------------------------------------------------------------------


def _one(db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> Any:
    return db.execute(sql, args).fetchone()


def _entry(
    db: sqlite3.Connection,
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
    """Append one entry; False (and nothing written) when its business key or payment exists."""
    cur = db.execute(
        "INSERT INTO ledger(account_id, kind, amount_microusd, business_key, request_id, payment_ref, note,"
        " created_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
        (account_id, kind, amount, key, request_id, payment_ref, note, now),
    )
    return cur.rowcount == 1


def _move(db: sqlite3.Connection, account_id: int, balance: int, held: int) -> None:
    db.execute(
        "UPDATE accounts SET balance_microusd = balance_microusd + ?, held_microusd = held_microusd + ? WHERE id = ?",
        (balance, held, account_id),
    )


def grant(db: sqlite3.Connection, account_id: int, amount: int, note: str, now: str) -> int:
    """Add operator credit; returns the new balance."""
    _entry(db, account_id, "grant", amount, f"grant:{uuid.uuid4()}", now, note=note)
    _move(db, account_id, amount, 0)
    row = _one(db, "SELECT balance_microusd FROM accounts WHERE id = ?", (account_id,))
    return int(row[0])


#: What ``hold`` did: held; the account's available credit does not cover it; the key's limit does
#: not; the key has ``cap`` requests in flight already (key_limits.py).
HELD, NO_CREDIT, KEY_LIMIT, CONCURRENCY = "held", "no_credit", "key_limit", "concurrency"

#: The key's guarded share of a hold (its spend limit and in-flight cap, and its last use): one
#: conditional statement.
KEY_HOLD_SQL = (
    "UPDATE api_keys SET held_microusd = held_microusd + ?, in_flight = in_flight + 1, last_used_at = ? WHERE id = ?"
    " AND (spend_limit_microusd IS NULL OR spend_microusd + held_microusd + ? <= spend_limit_microusd)"
    " AND (? = 0 OR in_flight < ?)"
)


def hold(
    db: sqlite3.Connection,
    account_id: int,
    request_id: str,
    amount: int,
    owner: Owner,
    now: str,
    key_id: str | None = None,
    cap: int = 0,
) -> str:
    """Reserve ``amount`` if the key's spend limit and in-flight ``cap`` (with ``key_id``) and the
    account's available credit cover it: ``HELD``, ``KEY_LIMIT``, ``CONCURRENCY`` or ``NO_CREDIT``;
    no credit moves unless held (a key
    its limit admits has its ``last_used_at`` set, in that same guarded statement).
    Replaying an existing hold answers whether it is still open; a request id is held at most once."""
    if _one(db, "SELECT 1 FROM ledger WHERE business_key = ?", (f"req:{request_id}:hold",)):
        return HELD if _one(db, "SELECT 1 FROM holds WHERE request_id = ?", (request_id,)) else NO_CREDIT
    if key_id is not None:
        cur = db.execute(KEY_HOLD_SQL, (amount, now, key_id, amount, cap, cap))
        if cur.rowcount != 1:
            row = _one(db, "SELECT in_flight FROM api_keys WHERE id = ?", (key_id,))
            return CONCURRENCY if cap and row is not None and int(row[0]) >= cap else KEY_LIMIT
    cur = db.execute(
        "UPDATE accounts SET held_microusd = held_microusd + ? WHERE id = ? AND balance_microusd - held_microusd >= ?",
        (amount, account_id, amount),
    )
    if cur.rowcount != 1:
        if key_id is not None:  # undo the key's share: the transaction goes on (and commits)
            db.execute(
                "UPDATE api_keys SET held_microusd = held_microusd - ?, in_flight = in_flight - 1 WHERE id = ?",
                (amount, key_id),
            )
        return NO_CREDIT
    _entry(db, account_id, "hold", amount, f"req:{request_id}:hold", now, request_id=request_id)
    db.execute(
        "INSERT INTO holds(request_id, account_id, key_id, amount_microusd, owner_pid, owner_start, owner_boot,"
        " created_at) VALUES (?,?,?,?,?,?,?,?)",
        (request_id, account_id, key_id, amount, owner.pid, owner.start, owner.boot, now),
    )
    return HELD


def settle_hold(db: sqlite3.Connection, request_id: str, charge: int, now: str) -> int | None:
    """Charge min(charge, hold) and release the rest; returns the amount charged, or None when
    the request has no open hold (nothing is written then)."""
    row = _one(db, "SELECT account_id, amount_microusd, key_id FROM holds WHERE request_id = ?", (request_id,))
    if row is None:
        return None
    account_id, held, key_id = int(row[0]), int(row[1]), row[2]
    charged = min(max(charge, 0), held)
    if key_id is not None:
        db.execute(
            "UPDATE api_keys SET spend_microusd = spend_microusd + ?, held_microusd = held_microusd - ?,"
            " in_flight = in_flight - 1 WHERE id = ?",
            (charged, held, key_id),
        )
    if charged:
        _entry(db, account_id, "charge", charged, f"req:{request_id}:charge", now, request_id=request_id)
    if held - charged:
        _entry(db, account_id, "release", held - charged, f"req:{request_id}:release", now, request_id=request_id)
    _move(db, account_id, -charged, -held)
    db.execute("DELETE FROM holds WHERE request_id = ?", (request_id,))
    return charged


def release(db: sqlite3.Connection, request_id: str, now: str) -> int | None:
    """Release an open hold in full (never bills); returns the amount, or None when none is open."""
    row = _one(db, "SELECT amount_microusd FROM holds WHERE request_id = ?", (request_id,))
    if row is None:
        return None
    settle_hold(db, request_id, 0, now)
    return int(row[0])


def orphan_holds(db: sqlite3.Connection, owner: Owner, stale_before: str | None) -> list[str]:
    """Request ids of open holds whose owner is gone (or, with ``stale_before``, that are older)."""
    rows = db.execute("SELECT request_id, owner_pid, owner_start, owner_boot, created_at FROM holds").fetchall()
    return [
        str(rid)
        for rid, pid, start, boot, created in rows
        if owner.is_gone(int(pid), str(start), str(boot)) or (stale_before is not None and created < stale_before)
    ]


# -- Stripe bookings ------------------------------------------------------------------------------


def _new_event(db: sqlite3.Connection, event_id: str, event_type: str, now: str) -> bool:
    cur = db.execute(
        "INSERT INTO stripe_events(event_id, type, received_at) VALUES (?,?,?) ON CONFLICT DO NOTHING",
        (event_id, event_type, now),
    )
    return cur.rowcount == 1


def credit_topup(
    db: sqlite3.Connection,
    account_id: int,
    amount: int,
    *,
    event_id: str,
    event_type: str,
    payment_key: str,
    payment_ref: str,
    now: str,
) -> Booking:
    """Credit a paid top-up once per event AND once per payment (``payment_key`` e.g.
    ``checkout:<session>``, ``payment_ref`` the PaymentIntent or session id refunds refer to)."""
    if not _one(db, "SELECT 1 FROM accounts WHERE id = ?", (account_id,)):
        return Booking.UNKNOWN_ACCOUNT
    if not _new_event(db, event_id, event_type, now):
        return Booking.DUPLICATE
    if not _entry(db, account_id, "topup", amount, payment_key, now, payment_ref=payment_ref, note=event_id):
        return Booking.DUPLICATE
    _move(db, account_id, amount, 0)
    return Booking.BOOKED


def book_refund(
    db: sqlite3.Connection, payment_ref: str, refunded_total: int, *, event_id: str, event_type: str, now: str
) -> Booking:
    """Bring the payment's refunded total up to ``refunded_total`` (Stripe's cumulative
    ``amount_refunded``) with one negative entry; replays and out-of-order older totals add nothing."""
    topup = _one(
        db, "SELECT account_id, amount_microusd FROM ledger WHERE kind = 'topup' AND payment_ref = ?", (payment_ref,)
    )
    if topup is None:
        return Booking.UNKNOWN_PAYMENT  # nothing recorded: Stripe retries the event later
    account_id, target = int(topup[0]), min(refunded_total, int(topup[1]))
    if not _new_event(db, event_id, event_type, now):
        return Booking.DUPLICATE
    row = _one(
        db,
        "SELECT COALESCE(SUM(amount_microusd), 0) FROM ledger WHERE kind = 'refund' AND payment_ref = ?",
        (payment_ref,),
    )
    delta = target - int(row[0])
    if delta <= 0:
        return Booking.DUPLICATE
    _entry(
        db, account_id, "refund", delta, f"refund:{payment_ref}:{target}", now, payment_ref=payment_ref, note=event_id
    )
    _move(db, account_id, -delta, 0)
    return Booking.BOOKED


# -- the invariant ----------------------------------------------------------------------------------


def check(db: sqlite3.Connection) -> list[str]:
    """Every way the cached balances, the entries and the open holds disagree; [] when consistent."""
    problems: list[str] = []
    sql = (
        f"SELECT a.id, a.name, a.balance_microusd, a.held_microusd,"
        f" (SELECT COALESCE(SUM(amount_microusd * {_BALANCE_EFFECT}), 0) FROM ledger WHERE account_id = a.id),"
        f" (SELECT COALESCE(SUM(amount_microusd * {_HELD_EFFECT}), 0) FROM ledger WHERE account_id = a.id),"
        f" (SELECT COALESCE(SUM(amount_microusd), 0) FROM holds WHERE account_id = a.id),"
        f" (SELECT COUNT(*) FROM ledger WHERE account_id = a.id AND kind = 'refund')"
        f" FROM accounts a ORDER BY a.id"
    )
    for _, name, balance, held, entries_balance, entries_held, open_holds, refunds in db.execute(sql).fetchall():
        problems += account_problems(name, balance, held, entries_balance, entries_held, open_holds, refunds)
    problems += _request_problems(db)
    problems += key_problems(db.execute(KEY_CHECK_SQL).fetchall())
    return problems


#: Per key: its cached held and in-flight count against its open holds, and its spend + held
#: against its limit.
KEY_CHECK_SQL = (
    "SELECT k.id, k.held_microusd, (SELECT COALESCE(SUM(amount_microusd), 0) FROM holds h WHERE h.key_id = k.id),"
    " k.spend_microusd, k.spend_limit_microusd, k.in_flight, (SELECT COUNT(*) FROM holds h WHERE h.key_id = k.id)"
    " FROM api_keys k ORDER BY k.id"
)


def key_problems(rows: Any) -> list[str]:
    out = []
    for key_id, held, open_holds, spend, limit, in_flight, hold_count in rows:
        if int(held) != int(open_holds):
            out.append(f"key {key_id}: held_microusd {held} != sum of its open holds {open_holds}")
        if int(in_flight) != int(hold_count):
            out.append(f"key {key_id}: in_flight {in_flight} != its open holds {hold_count}")
        if limit is not None and int(spend) + int(held) > int(limit):
            out.append(f"key {key_id}: spend {spend} + held {held} exceed its limit {limit}")
    return out


def account_problems(name: str, *values: int) -> list[str]:
    balance, held, entries_balance, entries_held, open_holds, refunds = values
    out = []
    if balance != entries_balance:
        out.append(f"account {name}: balance_microusd {balance} != sum of entries {entries_balance}")
    if held != open_holds:
        out.append(f"account {name}: held_microusd {held} != sum of open holds {open_holds}")
    if entries_held != open_holds:
        out.append(f"account {name}: holds minus charges and releases {entries_held} != open holds {open_holds}")
    if balance - held < 0 and not refunds:
        out.append(f"account {name}: available credit {balance - held} is negative and no refund explains it")
    return out


def _request_problems(db: sqlite3.Connection) -> list[str]:
    """Per request: hold = charge + release (+ the open hold), and nothing settled without a hold."""
    sql = (
        "SELECT l.request_id, SUM(CASE kind WHEN 'hold' THEN amount_microusd ELSE 0 END),"
        " SUM(CASE WHEN kind IN ('charge', 'release') THEN amount_microusd ELSE 0 END),"
        " COALESCE((SELECT amount_microusd FROM holds h WHERE h.request_id = l.request_id), 0)"
        " FROM ledger l WHERE l.request_id IS NOT NULL GROUP BY l.request_id"
    )
    rows = db.execute(sql).fetchall()
    return [
        f"request {rid}: held {held}, settled {settled}, still open {still_open}"
        for rid, held, settled, still_open in rows
        if held != settled + still_open
    ]
