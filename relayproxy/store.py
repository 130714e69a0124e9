"""SQLite store through aiosqlite: accounts, API keys and usage records.

The store knows nothing of HTTP. Every write transaction starts with ``BEGIN IMMEDIATE`` (a
deferred transaction that later upgrades to a write lock skips SQLite's busy handler and fails
with "database is locked" under concurrency) and is serialised per connection by a lock.
``sqlite3.Error`` never leaves this module: it becomes ``StoreError``.
"""

from __future__ import annotations

import hmac
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from .errors import StoreError
from .records import KeyInfo, Principal, UsageRecord

__all__ = ["Store", "utc_now"]

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        balance_microusd INTEGER NOT NULL DEFAULT 0,
        held_microusd INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        prefix TEXT NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        label TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE usage (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        account TEXT,
        key_id TEXT,
        model TEXT,
        provider TEXT,
        client_protocol TEXT,
        upstream_protocol TEXT,
        stream INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        http_status INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        cached_input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost_microusd INTEGER NOT NULL,
        billed INTEGER NOT NULL,
        reason TEXT NOT NULL,
        duration_ms INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX usage_account ON usage(account, seq);
    """,
)

_USAGE_FIELDS = tuple(f for f in UsageRecord.__dataclass_fields__)


def utc_now() -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2026-11-23T10:00:00.123Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    """A narrow async interface over one SQLite database file."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Open (creating and migrating) the database at ``path``."""
        try:
            db = await aiosqlite.connect(str(path), isolation_level=None)
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000", "foreign_keys=ON"):
                await db.execute(f"PRAGMA {pragma}")
            store = cls(db)
            await store._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        return store

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            await self._all("SELECT 1")
        except StoreError:
            return False
        return True

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            await self._db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One short write transaction; never held across a network await."""
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"database write failed: {exc}") from exc

    async def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        try:
            async with self._db.execute(sql, tuple(args)) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"database read failed: {exc}") from exc

    # -- accounts and keys ----------------------------------------------------------------------

    async def account_count(self) -> int:
        rows = await self._all("SELECT COUNT(*) FROM accounts")
        return int(rows[0][0])

    async def ensure_account(self, name: str) -> int:
        """The id of account ``name``, created if missing."""
        async with self._write() as db:
            await db.execute(
                "INSERT INTO accounts(name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                (name, utc_now()),
            )
            async with db.execute("SELECT id FROM accounts WHERE name = ?", (name,)) as cur:
                row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def add_key(self, account: str, key_id: str, prefix: str, key_hash: bytes, label: str) -> KeyInfo:
        account_id = await self.ensure_account(account)
        created = utc_now()
        async with self._write() as db:
            await db.execute(
                "INSERT INTO api_keys(id, account_id, prefix, hash, label, created_at) VALUES (?,?,?,?,?,?)",
                (key_id, account_id, prefix, key_hash, label, created),
            )
        return KeyInfo(key_id, prefix, label, account, created, None)

    async def list_keys(self, account: str | None = None) -> list[KeyInfo]:
        sql = (
            "SELECT k.id, k.prefix, k.label, a.name, k.created_at, k.revoked_at"
            " FROM api_keys k JOIN accounts a ON a.id = k.account_id"
        )
        rows = await (
            self._all(sql + " WHERE a.name = ? ORDER BY k.created_at", (account,))
            if account
            else self._all(sql + " ORDER BY k.created_at")
        )
        return [KeyInfo(*row) for row in rows]

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False when no active key has that id."""
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (utc_now(), key_id)
            )
            return cur.rowcount == 1

    async def authenticate(self, key_hash: bytes) -> Principal | None:
        """The principal for an active key with this hash, or None (unknown and revoked alike)."""
        rows = await self._all(
            "SELECT k.hash, k.revoked_at, a.id, a.name, k.id FROM api_keys k"
            " JOIN accounts a ON a.id = k.account_id WHERE k.hash = ?",
            (key_hash,),
        )
        if not rows:
            return None
        stored, revoked, account_id, account, key_id = rows[0]
        if revoked is not None or not hmac.compare_digest(bytes(stored), key_hash):
            return None
        return Principal(int(account_id), str(account), str(key_id))

    # -- usage ------------------------------------------------------------------------------------

    async def record_usage(self, rec: UsageRecord) -> None:
        values = [getattr(rec, f) for f in _USAGE_FIELDS]
        placeholders = ",".join("?" * len(values))
        async with self._write() as db:
            await db.execute(f"INSERT INTO usage({','.join(_USAGE_FIELDS)}) VALUES ({placeholders})", values)

    async def list_usage(self, account: str | None = None, limit: int = 50) -> list[UsageRecord]:
        cols = ",".join(_USAGE_FIELDS)
        if account:
            rows = await self._all(
                f"SELECT {cols} FROM usage WHERE account = ? ORDER BY seq DESC LIMIT ?", (account, limit)
            )
        else:
            rows = await self._all(f"SELECT {cols} FROM usage ORDER BY seq DESC LIMIT ?", (limit,))
        return [_usage_row(row) for row in rows]

    async def get_usage(self, request_id: str) -> UsageRecord | None:
        rows = await self._all(f"SELECT {','.join(_USAGE_FIELDS)} FROM usage WHERE request_id = ?", (request_id,))
        return _usage_row(rows[0]) if rows else None


def _usage_row(row: Any) -> UsageRecord:
    rec = UsageRecord(*row)
    rec.stream = bool(rec.stream)
    rec.billed = bool(rec.billed)
    return rec
