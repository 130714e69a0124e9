"""SQLite store through aiosqlite: accounts, API keys, usage records and the credit ledger.

The store knows nothing of HTTP. Every write transaction starts with ``BEGIN IMMEDIATE`` (a
deferred transaction that later upgrades to a write lock skips SQLite's busy handler and fails
with "database is locked" under concurrency). Each store call is one transaction, handed whole to
the database thread and committed in a group with the others in flight (group_commit.py).
``sqlite3.Error`` never leaves this module: it becomes ``StoreError``. The ledger's SQL lives in
``ledger.py``; its rules (guarded holds, one transaction per money movement) are described there.
The store's other transactions are in ``sqlite_txn.py``, what both backends share in ``common.py``.

Orphan holds. A hold records its owner: the pid, the kernel's start time of that process (so a
recycled pid is not mistaken for the owner) and a ``boot`` id fresh per ``Store.open``. At
startup, ``release_orphan_holds`` releases (never bills) the holds of owners that are gone: other
processes that no longer run, and earlier stores of this same pid. Holds of other live workers are
left alone, so several workers may start at once. One Store per process, swept once at startup;
all processes sharing the database must share a host and a pid namespace (WAL needs one host
anyway). ``stale_after_s`` additionally releases holds older than any request can live.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from relayproxy.billing.pricing import Booking
from relayproxy.errors import StoreError
from relayproxy.records import KeyInfo, Principal, UsageRecord
from relayproxy.store import key_limits, ledger, schema, sqlite_txn
from relayproxy.store.admission import Admission, admission, judge, over_rpm
from relayproxy.store.common import KEY_COLUMNS, Outcome, Statement, utc_iso, utc_now
from relayproxy.store.group_commit import GroupCommit, Op
from relayproxy.store.key_limits import NO_CAPS, KeyCaps

__all__ = ["KEY_COLUMNS", "Admission", "Booking", "Outcome", "Statement", "Store", "utc_iso", "utc_now"]

T = TypeVar("T")


class Store:
    """A narrow async interface over one SQLite database file.

    Every call is one transaction run through ``GroupCommit`` (group_commit.py): batched with
    whatever else is in flight into one database-thread trip and one commit, answered only once
    committed, and run in submission order (so a read sees every write submitted before it).
    """

    def __init__(self, db: aiosqlite.Connection, wal: schema.WalSync | None = None) -> None:
        self._db = db
        self._owner = ledger.Owner.current()
        self._wal = wal
        self._commits = GroupCommit(db, sync=wal.sync if wal else None)

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Open (creating and migrating) the database at ``path``."""
        db, wal = await schema.connect(path)
        return cls(db, wal)

    async def close(self) -> None:
        """Commit everything queued (settlements nobody waited for), then close."""
        await self._commits.drain()
        await self._db.close()
        if self._wal is not None:
            self._wal.close()

    async def maintain(self) -> None:
        """The store's background work, run in the app's TaskGroup for as long as it serves.
        SQLite has none (its sweep runs once at start); PostgreSQL renews its hold lease there."""

    async def flush(self) -> None:
        """Wait until every operation submitted so far has been committed."""
        await self._commits.drain()

    async def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            await self._all("SELECT 1")
        except StoreError:
            return False
        return True

    async def _write(self, txn: Op[T], *, durable: bool = True) -> T:
        """Run ``txn`` (a function of the ``sqlite3.Connection``, as the ledger's are) as one write
        transaction on the database thread, committed with its batch; durable = fsynced (FULL)."""
        return await self._commits.run(txn, durable=durable)

    async def _read(self, txn: Op[T]) -> T:
        """Run ``txn`` as one read transaction (one consistent snapshot)."""
        return await self._commits.run(txn, durable=False, write=False)

    async def transaction(self, statements: Sequence[Statement], *, durable: bool = True) -> list[Outcome]:
        """For the store's other modules (accounts.py): ``statements`` (portable SQL with ``?``
        placeholders) run in order as one write transaction; one ``Outcome`` per statement."""
        return await self._write(partial(sqlite_txn.run_statements, statements), durable=durable)

    async def query(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        """All rows of one read-only statement."""
        return await self._all(sql, args)

    async def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        params = tuple(args)
        return await self._commits.run(lambda conn: conn.execute(sql, params).fetchall(), durable=False, write=False)

    # -- accounts and keys ----------------------------------------------------------------------

    async def account_count(self) -> int:
        rows = await self._all("SELECT COUNT(*) FROM accounts")
        return int(rows[0][0])

    async def ensure_account(self, name: str) -> int:
        """The id of account ``name``, created if missing."""
        return await self._write(lambda db: sqlite_txn.ensure_account(db, name))

    async def add_key(
        self,
        account: str,
        key_id: str,
        prefix: str,
        key_hash: bytes,
        label: str,
        *,
        spend_limit_microusd: int | None = None,
        expires: str | None = None,
        models: tuple[str, ...] | None = None,
    ) -> KeyInfo:
        """A new key of ``account`` (created if missing), with its options (records.KeyInfo)."""
        created = utc_now()
        allowed = None if models is None else ",".join(models)

        # Portable statements (Store.transaction): the PostgreSQL store runs the same ones.
        await self.transaction(
            [
                (
                    "INSERT INTO accounts(name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                    (account, created),
                ),
                (
                    "INSERT INTO api_keys(id, account_id, prefix, hash, label, created_at, spend_limit_microusd,"
                    " expires, models) SELECT ?, id, ?, ?, ?, ?, ?, ?, ? FROM accounts WHERE name = ?",
                    (key_id, prefix, key_hash, label, created, spend_limit_microusd, expires, allowed, account),
                ),
            ]
        )
        return KeyInfo(key_id, prefix, label, account, created, None, spend_limit_microusd, expires, models)

    async def list_keys(self, account: str | None = None) -> list[KeyInfo]:
        sql = f"SELECT {KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.account_id"
        rows = await (
            self._all(sql + " WHERE a.name = ? ORDER BY k.created_at", (account,))
            if account
            else self._all(sql + " ORDER BY k.created_at")
        )
        return [KeyInfo.from_row(tuple(row)) for row in rows]

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False when no active key has that id."""

        def txn(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (utc_now(), key_id)
            )
            return bool(cur.rowcount == 1)

        return await self._write(txn)

    async def authenticate(self, key_hash: bytes, aborts_since: str | None = None) -> Principal | None:
        """The principal for an active key with this hash, or None (unknown and revoked alike).

        With ``aborts_since`` (utc_iso), the same query also counts the key's ``client_disconnected``
        requests since then (``Principal.recent_aborts``): one database trip instead of two.
        """
        return await self._commits.run(
            lambda conn: sqlite_txn.principal(conn, key_hash, aborts_since), durable=False, write=False
        )

    async def admit(
        self,
        key_hash: bytes,
        request_id: str,
        hold_microusd: int | None,
        *,
        aborts_since: str | None,
        abort_cap: int,
        model: str | None = None,
        caps: KeyCaps = NO_CAPS,
    ) -> Admission:
        """An inference request's whole way in, in one database trip: ``authenticate`` (with the
        abort count), the key's options (expiry; ``model`` against its allow-list), then, when the
        key is valid, under the abort cap and ``hold_microusd`` is given, the key's per-key
        ``caps`` (key_limits.py) and ``hold`` guarded by the key's spend limit too. Revocation
        stays instant: the key is read in the same transaction."""
        if hold_microusd is not None and hold_microusd < 0:
            raise ValueError(f"hold amount must be 0 or more, got {hold_microusd}")
        now, owner, now_ms = utc_now(), self._owner, time.time_ns() // 1_000_000

        def txn(conn: sqlite3.Connection) -> Admission:
            principal = sqlite_txn.principal(conn, key_hash, aborts_since if abort_cap > 0 else None)
            found = judge(principal, hold_microusd, abort_cap, model, now)
            if found is not None:
                return found
            assert principal is not None and hold_microusd is not None
            key_id = principal.key_id
            if caps.rpm and (wait_s := key_limits.sqlite_window_full(conn, key_id, caps.rpm, now_ms)):
                return over_rpm(principal, wait_s)
            account_id, cap = principal.account_id, caps.concurrency
            held = ledger.hold(conn, account_id, request_id, hold_microusd, owner, now, key_id, cap)
            if caps.rpm and held == ledger.HELD:
                key_limits.sqlite_count(conn, key_id, request_id, now_ms)
            return admission(principal, held)

        # Not fsynced on its own, like ``hold``: the next durable commit's sync flushes it. Nor
        # does it wait for the sync of a settlement that shares its batch (group_commit.py).
        return await self._commits.run(txn, durable=False)

    # -- usage ------------------------------------------------------------------------------------

    async def record_usage(self, rec: UsageRecord) -> None:
        await self._write(lambda db: sqlite_txn.insert_usage(db, rec))

    async def list_usage(self, account: str | None = None, limit: int = 50) -> list[UsageRecord]:
        cols = ",".join(sqlite_txn.USAGE_FIELDS)
        if account:
            rows = await self._all(
                f"SELECT {cols} FROM usage WHERE account = ? ORDER BY seq DESC LIMIT ?", (account, limit)
            )
        else:
            rows = await self._all(f"SELECT {cols} FROM usage ORDER BY seq DESC LIMIT ?", (limit,))
        return [sqlite_txn.usage_row(row) for row in rows]

    async def get_usage(self, request_id: str) -> UsageRecord | None:
        rows = await self._all(
            f"SELECT {','.join(sqlite_txn.USAGE_FIELDS)} FROM usage WHERE request_id = ?", (request_id,)
        )
        return sqlite_txn.usage_row(rows[0]) if rows else None

    async def recent_aborts(self, key_id: str, since_iso: str) -> int:
        """How many of the key's requests ended ``client_disconnected`` since ``since_iso`` (utc_iso)."""
        rows = await self._all(
            "SELECT COUNT(*) FROM usage WHERE key_id = ? AND created_at >= ? AND outcome = 'client_disconnected'",
            (key_id, since_iso),
        )
        return int(rows[0][0])

    # -- credit: holds and settlement (the gateway) ----------------------------------------------

    async def hold(self, account_id: int, request_id: str, amount_microusd: int) -> bool:
        """Reserve credit for a request before calling upstream; False = not covered (answer 402)."""
        if amount_microusd < 0:
            raise ValueError(f"hold amount must be 0 or more, got {amount_microusd}")
        now, owner = utc_now(), self._owner
        # Not fsynced on its own (durable=False): other processes see a hold as soon as it commits,
        # and after a crash every hold is released by the startup sweep anyway, so losing one
        # costs nothing; the next durable commit's sync (the settlement's, say) flushes it too.
        held = await self._write(
            lambda db: ledger.hold(db, account_id, request_id, amount_microusd, owner, now), durable=False
        )
        return held == ledger.HELD

    def settle_soon(self, rec: UsageRecord, charge_microusd: int) -> asyncio.Future[int]:
        """``settle``, queued without waiting: the request that ends need not wait for the fsync.

        Its place in the queue is taken now, so any later read sees it; ``close`` commits it
        before the database closes. A crash before its commit leaves the hold open, and the
        startup sweep releases it: a request is then never charged, never charged twice.
        """
        now = utc_now()
        return self._commits.post(lambda db: sqlite_txn.settle_txn(db, rec, charge_microusd, now), durable=True)

    async def settle(self, rec: UsageRecord, charge_microusd: int) -> int:
        """In one transaction: charge min(charge, hold), release the rest, insert the usage record.

        Returns the amount charged. Idempotent per request id (a replay changes nothing and
        returns the recorded cost). Without an open hold nothing is charged. The stored record's
        ``cost_microusd`` is what was really charged: when that differs from ``charge_microusd``,
        ``billed`` follows it (and ``reason`` becomes ``no_hold`` if there was no hold at all).
        """
        now = utc_now()
        return await self._write(lambda db: sqlite_txn.settle_txn(db, rec, charge_microusd, now))

    async def release(self, request_id: str) -> int:
        """Release a request's open hold in full without recording usage; returns the amount."""
        now = utc_now()

        def txn(db: sqlite3.Connection) -> int:
            return ledger.release(db, request_id, now) or 0

        return await self._write(txn)

    async def release_orphan_holds(self, stale_after_s: float | None = None) -> int:
        """Startup sweep: release (never bill) holds whose owner process or store is gone, and
        with ``stale_after_s`` any hold older than that. Returns how many were released."""
        stale = utc_iso(datetime.now(UTC) - timedelta(seconds=stale_after_s)) if stale_after_s is not None else None
        orphans = await self._read(lambda db: ledger.orphan_holds(db, self._owner, stale))
        now = utc_now()

        def txn(db: sqlite3.Connection) -> int:
            released = 0
            for request_id in orphans:  # a concurrent sweep already released some: no-ops then
                released += ledger.release(db, request_id, now) is not None
            return released

        return await self._write(txn) if orphans else 0

    # -- credit: operator and Stripe bookings ---------------------------------------------------

    async def grant(self, account: str, amount_microusd: int, note: str = "") -> int:
        """Operator credit for ``account`` (created if missing); returns the new balance."""
        if amount_microusd <= 0:
            raise ValueError(f"a grant must be positive, got {amount_microusd} micro-USD")
        now = utc_now()

        def txn(db: sqlite3.Connection) -> int:
            account_id = sqlite_txn.ensure_account(db, account)
            return ledger.grant(db, account_id, amount_microusd, note, now)

        return await self._write(txn)

    async def balance(self, account: str) -> tuple[int, int] | None:
        """(balance_microusd, held_microusd) of ``account``, or None when it does not exist."""
        rows = await self.query("SELECT balance_microusd, held_microusd FROM accounts WHERE name = ?", (account,))
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    async def credit_topup(
        self,
        account_id: int,
        amount_microusd: int,
        *,
        event_id: str,
        event_type: str,
        payment_key: str,
        payment_ref: str,
    ) -> Booking:
        """Book a paid top-up exactly once per Stripe event and once per payment (one transaction)."""
        if amount_microusd < 0:
            raise ValueError(f"a top-up must be 0 or more, got {amount_microusd}")
        now = utc_now()
        return await self._write(
            lambda db: ledger.credit_topup(
                db,
                account_id,
                amount_microusd,
                event_id=event_id,
                event_type=event_type,
                payment_key=payment_key,
                payment_ref=payment_ref,
                now=now,
            )
        )

    async def book_refund(
        self, payment_ref: str, refunded_total_microusd: int, *, event_id: str, event_type: str
    ) -> Booking:
        """Book a refund of a credited payment as a negative entry (up to the refunded total)."""
        now = utc_now()
        return await self._write(
            lambda db: ledger.book_refund(
                db, payment_ref, refunded_total_microusd, event_id=event_id, event_type=event_type, now=now
            )
        )

    async def ledger_check(self) -> list[str]:
        """The invariant, on one consistent snapshot: [] when the ledger and balances agree."""
        return await self._read(ledger.check)

    # -- whole tables (``db copy``) ---------------------------------------------------------------

    async def export_rows(self, table: str, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """Every row of ``table`` (a name from store/copy.py, never user input), in key order."""
        return [tuple(row) for row in await self._all(f"SELECT {','.join(columns)} FROM {table} ORDER BY 1")]

    async def import_rows(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` into ``table`` as they are, in one transaction."""
        sql = f"INSERT INTO {table}({','.join(columns)}) VALUES ({','.join('?' * len(columns))})"

        await self._commits.run(lambda conn: conn.executemany(sql, rows), durable=True)
