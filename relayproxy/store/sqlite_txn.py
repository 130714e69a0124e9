"""The SQLite store's own transactions (the ledger's are in ledger.py): plain functions of the
``sqlite3.Connection``, run on aiosqlite's database thread inside the transaction ``Store`` opened
(facade.py, through group_commit.py), and how a usage row reads back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from relayproxy.records import Principal, UsageRecord
from relayproxy.store import ledger
from relayproxy.store.admission import PRINCIPAL_COLUMNS, principal_of
from relayproxy.store.common import Outcome, Statement, as_charged, utc_now

__all__ = [
    "USAGE_FIELDS",
    "ensure_account",
    "insert_usage",
    "principal",
    "run_statements",
    "settle_txn",
    "usage_row",
]

USAGE_FIELDS = tuple(f for f in UsageRecord.__dataclass_fields__)


def principal(conn: sqlite3.Connection, key_hash: bytes, aborts_since: str | None) -> Principal | None:
    row = conn.execute(
        f"SELECT {PRINCIPAL_COLUMNS}, (SELECT COUNT(*) FROM usage u"
        " WHERE u.key_id = k.id AND u.created_at >= ? AND u.outcome = 'client_disconnected')"
        " FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.hash = ?",
        (aborts_since or "9999", key_hash),
    ).fetchone()
    return None if row is None else principal_of(row[:-1], key_hash, int(row[-1]))


def settle_txn(db: sqlite3.Connection, rec: UsageRecord, charge: int, now: str) -> int:
    done = db.execute("SELECT cost_microusd FROM usage WHERE request_id = ?", (rec.request_id,)).fetchone()
    if done is not None:  # a replay; a hold left open by a bare record_usage is freed, never billed
        ledger.release(db, rec.request_id, now)
        return int(done[0])
    charged = ledger.settle_hold(db, rec.request_id, charge, now)
    insert_usage(db, as_charged(rec, charge, charged))
    return charged or 0


def ensure_account(db: sqlite3.Connection, name: str) -> int:
    db.execute("INSERT INTO accounts(name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING", (name, utc_now()))
    row = db.execute("SELECT id FROM accounts WHERE name = ?", (name,)).fetchone()
    assert row is not None
    return int(row[0])


INSERT_USAGE = f"INSERT INTO usage({','.join(USAGE_FIELDS)}) VALUES ({','.join('?' * len(USAGE_FIELDS))})"


def insert_usage(db: sqlite3.Connection, rec: UsageRecord) -> None:
    db.execute(INSERT_USAGE, [getattr(rec, f) for f in USAGE_FIELDS])


def run_statements(statements: Sequence[Statement], conn: sqlite3.Connection) -> list[Outcome]:
    outcomes = []
    for sql, params in statements:
        cur = conn.execute(sql, params)
        outcomes.append(Outcome(cur.fetchall(), cur.rowcount))
    return outcomes


def usage_row(row: Any) -> UsageRecord:
    rec = UsageRecord(*row)
    rec.stream = bool(rec.stream)
    rec.billed = bool(rec.billed)
    return rec
