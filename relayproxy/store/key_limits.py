"""Per-key concurrency and requests per minute, counted in the database at admission.

Theory of operation. Both caps are decided in the admission's own transaction (``Store.admit``),
next to the credit hold, so they hold across ``--workers`` and across machines sharing one
PostgreSQL database, and a denial takes no credit and makes no upstream call.

* **In flight** is the number of open holds of the key: every admitted request holds (a hold of
  0 included), and a request's hold closes when it settles, or when the lease reaper releases the
  holds of a dead process, so a crashed machine's slots free themselves. The count is cached on
  the key's row (``api_keys.in_flight``), moved by the same statements that move the key's
  ``held_microusd`` (ledger.py, pg_admit.py, pg_settle.py), and checked under the key's row lock
  (SQLite: in its one conditional UPDATE, ``… AND (cap = 0 OR in_flight < cap)``; PostgreSQL: in
  the hold's function, which locks the row first), so it is exact under concurrency and costs no
  statement of its own. ``ledger_check`` verifies it against the open holds.
* **Requests per minute** is a sliding window: one row in ``key_admissions`` per admitted
  request, timestamped in milliseconds (PostgreSQL's clock, so machines with skewed clocks agree;
  SQLite's is the one machine's). A request is admitted while fewer than ``rpm`` rows of its key
  are younger than 60 s; the row is written in the same transaction as its hold, so every
  admitted request is counted once and a refused one not at all. Counting is serialised by the
  key's row lock, taken before the count (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: the hold's
  server-side function, pg_admit.py, locks the key's row and only then counts, so it sees every
  admission committed before the lock was granted). Rows older than the window are pruned by
  the admission itself on SQLite, and by the lease upkeep's sweep on PostgreSQL (never by an
  admission there: two deletes of the same rows in different orders could deadlock). With
  ``per_key_rpm = 0`` (the default) nothing of this runs.

A request's slot frees when its settlement commits, a little after its response ended. So that a
client sending one request after another at the cap is not refused for its own previous request,
a PostgreSQL store that finds the key full while settlements of that key are still on their way
from this very process (``Settling``) waits for those (at most ``SETTLE_WAIT_S``) and tries once
more: only the refusal path pays for it. (SQLite needs none of this within a process: its
operations run in submission order, so an admission sees every settlement queued before it.
Across ``--workers`` the gap is the settlement's commit, a few milliseconds.)

When both caps refuse, rpm answers (its ``Retry-After`` is honest; retrying after the
concurrency's 1 s would be refused again until the window moves).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "NO_CAPS",
    "PG_MIGRATION",
    "SETTLE_WAIT_S",
    "SQLITE_MIGRATION",
    "WINDOW_MS",
    "KeyCaps",
    "Settling",
    "pg_forget_window",
    "retry_after_s",
    "sqlite_count",
    "sqlite_window_full",
]

_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg ships no type hints)

WINDOW_MS = 60_000
SETTLE_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class KeyCaps:
    """``[limits] per_key_concurrency`` and ``per_key_rpm``; 0 means unlimited."""

    concurrency: int = 0
    rpm: int = 0


NO_CAPS = KeyCaps()

SQLITE_MIGRATION = """
    ALTER TABLE api_keys ADD COLUMN in_flight INTEGER NOT NULL DEFAULT 0;
    UPDATE api_keys SET in_flight = (SELECT COUNT(*) FROM holds h WHERE h.key_id = api_keys.id);
    CREATE TABLE key_admissions (key_id TEXT NOT NULL, at_ms INTEGER NOT NULL, request_id TEXT NOT NULL);
    CREATE INDEX key_admissions_window ON key_admissions(key_id, at_ms)
"""

PG_MIGRATION = """
    ALTER TABLE api_keys ADD COLUMN in_flight INTEGER NOT NULL DEFAULT 0;
    UPDATE api_keys k SET in_flight = (SELECT COUNT(*) FROM holds h WHERE h.key_id = k.id);
    CREATE TABLE key_admissions (key_id TEXT NOT NULL, at_ms BIGINT NOT NULL, request_id TEXT NOT NULL);
    CREATE INDEX key_admissions_window ON key_admissions(key_id, at_ms);
"""


def retry_after_s(oldest_ms: int, now_ms: int) -> int:
    """When the oldest admission in a full window leaves it: whole seconds, 1 to 60."""
    return min(max(1, math.ceil((oldest_ms + WINDOW_MS - now_ms) / 1000)), WINDOW_MS // 1000)


# -- SQLite (on the database thread, inside the admission's BEGIN IMMEDIATE) ------------------------


def sqlite_window_full(conn: sqlite3.Connection, key_id: str, rpm: int, now_ms: int) -> int:
    """0 when the key may be admitted now, else the Retry-After of its full window."""
    conn.execute("DELETE FROM key_admissions WHERE key_id = ? AND at_ms <= ?", (key_id, now_ms - WINDOW_MS))
    count, oldest = conn.execute(
        "SELECT COUNT(*), MIN(at_ms) FROM key_admissions WHERE key_id = ?", (key_id,)
    ).fetchone()
    return retry_after_s(int(oldest), now_ms) if int(count) >= rpm else 0


def sqlite_count(conn: sqlite3.Connection, key_id: str, request_id: str, now_ms: int) -> None:
    """Count an admitted request in its key's window."""
    conn.execute("INSERT INTO key_admissions(key_id, at_ms, request_id) VALUES (?,?,?)", (key_id, now_ms, request_id))


# -- PostgreSQL (inside the admission's transaction, after the key's row is locked) -----------------


async def pg_forget_window(c: _Conn) -> None:
    """The sweep's part: drop every admission older than the window (in one statement)."""
    await c.execute(
        "DELETE FROM key_admissions WHERE at_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint - $1",
        WINDOW_MS,
    )


class Settling:
    """This process's settlements not committed yet, by key (their futures answer once committed),
    and when each key last had one committed (``mark``: a sequence number, not a clock)."""

    def __init__(self) -> None:
        self._by_key: dict[str, set[asyncio.Future[int]]] = {}
        self._seq = 0
        self._last_done: dict[str, int] = {}

    def mark(self) -> int:
        return self._seq

    def add(self, key_id: str | None, future: asyncio.Future[int]) -> None:
        if key_id is None:
            return
        self._by_key.setdefault(key_id, set()).add(future)
        future.add_done_callback(lambda done: self._done(key_id, done))

    def _done(self, key_id: str, future: asyncio.Future[int]) -> None:
        self._seq += 1
        self._last_done[key_id] = self._seq
        pending = self._by_key.get(key_id)
        if pending is not None:
            pending.discard(future)
            if not pending:
                del self._by_key[key_id]

    async def settled_since(self, key_id: str, mark: int) -> bool:
        """Whether a settlement of the key committed since ``mark`` or is on its way (then waited
        for, at most ``SETTLE_WAIT_S``): an admission refused for concurrency may then retry."""
        pending = self._by_key.get(key_id)
        if pending:
            await asyncio.wait(list(pending), timeout=SETTLE_WAIT_S)
            return True
        return self._last_done.get(key_id, 0) > mark
