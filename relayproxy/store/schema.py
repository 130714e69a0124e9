"""The database file: its schema migrations, connection pragmas and the WAL sync.

Every connection rests at ``journal_mode=WAL``, ``synchronous=FULL``, ``busy_timeout=5000`` and
``foreign_keys=ON``. ``connect`` migrates the schema (several workers may do so at once) and, for a
database on disk, opens the ``-wal`` file for ``WalSync``: the fdatasync that FULL adds to each
WAL commit, done by the store itself so that the group commit can answer the ops that need no
fsync before it (group_commit.py).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import aiosqlite

from relayproxy.errors import StoreError
from relayproxy.store import accounts_schema, key_limits, ledger

__all__ = ["WalSync", "connect"]

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
    ledger.MIGRATION,
    accounts_schema.MIGRATION,
    accounts_schema.THROTTLE_MIGRATION,
    accounts_schema.EMAIL_MIGRATION,
    key_limits.SQLITE_MIGRATION,
)


async def connect(path: str | Path) -> tuple[aiosqlite.Connection, WalSync | None]:
    """Open (creating and migrating) the database at ``path``; StoreError when it cannot."""
    try:
        db = await aiosqlite.connect(str(path), isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    try:
        # busy_timeout first: switching a fresh file to WAL takes a lock that workers starting
        # together contend for, and without a timeout the loser fails at once ("database is locked").
        for pragma in ("busy_timeout=5000", "journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            await db.execute(f"PRAGMA {pragma}")
        await _migrate(db)  # committed at FULL
        async with db.execute("PRAGMA journal_mode") as cur:
            mode = await cur.fetchone()
    except sqlite3.Error as exc:
        await db.close()  # its worker thread must not outlive the event loop
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    return db, WalSync.open(Path(str(path) + "-wal")) if mode == ("wal",) else None


async def _user_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _migrate(db: aiosqlite.Connection) -> None:
    version = await _user_version(db)
    while version < len(_MIGRATIONS):
        script = f"BEGIN IMMEDIATE; {_MIGRATIONS[version]}; PRAGMA user_version = {version + 1}; COMMIT;"
        try:
            await db.executescript(script)
        except sqlite3.OperationalError:
            # Several workers starting at once: another one migrated between our read of the
            # version and our write lock ("table ... already exists"). Re-read and go on.
            if db.in_transaction:
                await db.execute("ROLLBACK")
            if await _user_version(db) == version:
                raise
        version = await _user_version(db)


class WalSync:
    """The sync that ``synchronous=FULL`` adds to each WAL-mode commit, done by the store itself
    (fdatasync of the ``-wal`` file, as SQLite's unix VFS does), so that the group commit can
    answer a batch's non-durable ops before it (group_commit.py). The file stays the same inode
    while any connection has the database open; checkpoints rewrite it in place."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, wal: Path) -> WalSync | None:
        try:
            fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # not a plain file on disk: SQLite's own FULL commits then
        try:  # the directory entry, once (SQLite syncs it when it creates the file)
            directory = os.open(wal.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError:
            pass  # some file systems refuse a directory fsync; the file's own sync still holds
        return cls(fd)

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)
