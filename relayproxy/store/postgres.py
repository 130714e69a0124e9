"""The PostgreSQL backend of the store (asyncpg): the same interface and ledger rules as SQLite's.

Every store call is one transaction on a connection of this process's pool (``pool_size``,
plus one connection for the lease housekeeping). Each connection runs with a
``statement_timeout`` and an ``idle_in_transaction_session_timeout``, so a stuck or abandoned
transaction cannot keep a row lock; every money transaction runs in a task shielded from the
caller's cancellation, so it always commits or rolls back whole.

Ledger rules across processes and machines. Admissions go in batches (pg_admit.py): the batch's
keys are read in one statement, then every hold in one server-side statement that locks the
keys' rows, re-checks their revocation (so it stays instant) and reserves credit with a guarded
``UPDATE accounts … WHERE balance - held >= $h``; settlement is one transaction (one statement
when its holds are as this process made them) that first claims the hold row
(``DELETE … RETURNING``: a replay finds nothing and changes nothing), then the key's row, then the
account's: the one order every transaction locks rows in, group-committed batches included
(pg_settle.py). Stripe events are exactly-once through the
``stripe_events`` primary key and the ledger's unique business keys (``ON CONFLICT DO NOTHING``).

Holds belong to an owner (one opened store) with a row in ``leases`` that the store renews every
third of ``lease_s`` (``maintain``, which the app runs in its TaskGroup); any live store releases
(never bills) the holds of owners whose lease has expired, so the holds of a dead process are
freed within about two lease times.

Outages. An error that means the database cannot be reached (refused or cut connections, a
server shutting down or starting) is ``StoreUnavailable``: a 503 for the caller, and the pool's
connections are expired so that the next call opens fresh ones (the pool reconnects by itself).
Settlements that meet it are parked and applied by ``maintain`` once the database answers, or
kept in the settlement journal when the store closes first (pg_outage.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import asyncpg

from relayproxy.errors import StoreError, StoreUnavailable
from relayproxy.records import KeyInfo, Principal, UsageRecord
from relayproxy.store import key_limits, pg_admit, pg_schema, pg_settle
from relayproxy.store import pg_ledger as q
from relayproxy.store.admission import Admission
from relayproxy.store.facade import KEY_COLUMNS, Outcome, Statement, Store, utc_now
from relayproxy.store.key_limits import NO_CAPS, KeyCaps
from relayproxy.store.ledger import HELD
from relayproxy.store.pg_bookings import Bookings
from relayproxy.store.pg_outage import Backlog, Parked
from relayproxy.store.pg_qmark import run_statements, to_dollar
from relayproxy.store.pg_upkeep import SETTLE_PIPELINE, Upkeep

__all__ = ["PgStore"]

T = TypeVar("T")
log = logging.getLogger("relayproxy.store")

#: Each connection's settings: the timeouts (the module docstring), and prepared statements
#: planned once per connection (``force_generic_plan``). PostgreSQL's default plans a statement
#: anew at each of its first five executions, and for good whenever a plan for the values at hand
#: looks cheaper than the generic one; the store's statements are short, on indexes, with one good
#: plan for any value. Measured at c=1: an admission's two statements 1.74 -> 1.31 ms.
_SERVER_SETTINGS = {
    "statement_timeout": "10000",
    "idle_in_transaction_session_timeout": "15000",
    "plan_cache_mode": "force_generic_plan",
}
_CONNECT_TIMEOUT_S = 5.0
UNREACHABLE_MESSAGE = "The gateway's database is unreachable; retry shortly. The request was not billed."
#: Errors that mean the database cannot be reached now (the request may be retried later), as
#: opposed to a failed statement: refused or cut connections, a server shutting down or starting.
_UNREACHABLE = (
    TimeoutError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
)
_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg ships no type hints)
Txn = Callable[[_Conn], Awaitable[T]]


def _password(env: str) -> str | None:
    """The password from ``env`` or a systemd credential of that name; None: asyncpg's own
    lookup (PGPASSWORD, ~/.pgpass) applies."""
    if env in os.environ:
        return os.environ[env]
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / env).is_file():
        return (Path(creds) / env).read_text().strip()
    return None


class PgStore(Bookings, Upkeep, Store):
    """The store over one PostgreSQL database; see the module docstring."""

    def __init__(self, pool: asyncpg.Pool, url: str, lease_s: float, journal: Path | None = None) -> None:
        # no SQLite state: no super()
        self._pool = pool
        self.url = url  # for another process to open the same database (never holds a password)
        self._lease_s = lease_s
        self._owner_id = uuid.uuid4().hex
        self._pending: set[asyncio.Task[Any]] = set()
        self._journal = journal
        self._backlog = Backlog()
        self._queue: list[tuple[Parked, asyncio.Future[int]]] = []  # settlements not yet sent
        self._committers = 0  # tasks committing batches of them (at most SETTLE_PIPELINE)
        self.batch_fallbacks = 0
        self._down = False  # the last housekeeping round found the database unreachable
        self._sweep_after = 0.0  # loop time before which others' holds are left alone (after an outage)
        self._settling = key_limits.Settling()  # queued settlements by key, for the in-flight cap
        self._held: dict[str, pg_settle.Known] = {}  # this process's open holds (pg_settle.settle_known)
        self._admissions = pg_admit.Admissions(
            partial(self._run, transaction=False), self._owner_id, self._held, self._pending
        )

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        pool_size: int = 10,
        lease_s: float = 15.0,
        password_env: str = "PGPASSWORD",
        journal: Path | None = None,
    ) -> PgStore:
        try:
            pool = await asyncpg.create_pool(
                url,
                password=_password(password_env),
                min_size=0,  # no floor: no reconnect loop of asyncpg's own while the database is down
                max_size=pool_size + 1,  # one for the lease housekeeping
                server_settings=_SERVER_SETTINGS,
                command_timeout=30,
                timeout=_CONNECT_TIMEOUT_S,
                reset=_keep_session,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot open database {_redact(url)}: {exc}") from exc
        store = cls(pool, url, lease_s, journal)
        try:
            await store._run(pg_schema.migrate)
            await store._renew()
            await store._apply_journal()
        except StoreError:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        await self.flush()
        if self._backlog:
            with contextlib.suppress(StoreError):
                await self._apply_backlog()
        if self._backlog and self._journal is not None:
            try:
                count = self._backlog.write_journal(self._journal)
                log.warning("database unreachable: %d settlements kept in %s for the next start", count, self._journal)
            except OSError as exc:
                log.error("database unreachable and the settlement journal cannot be written: %s", exc)
        if self._backlog:
            log.error("database unreachable: %d settlements lost (no settlement journal)", len(self._backlog))
        with contextlib.suppress(Exception):
            await self._run(
                lambda c: c.execute(
                    "DELETE FROM leases WHERE owner = $1 AND NOT EXISTS (SELECT 1 FROM holds WHERE owner = $1)",
                    self._owner_id,
                )
            )
        try:
            async with asyncio.timeout(5):
                await self._pool.close()
        except TimeoutError:
            self._pool.terminate()

    async def flush(self) -> None:
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def ping(self) -> bool:
        try:
            await self._run(lambda c: c.fetchval("SELECT 1"))
        except StoreError:
            return False
        return True

    # -- running transactions --------------------------------------------------------------------

    async def _run(self, txn: Txn[T], *, transaction: bool = True) -> T:
        """``txn`` as one transaction on a pooled connection (``transaction=False``: its statements
        each in their own); StoreError when the database fails."""
        try:
            async with self._pool.acquire() as conn:
                if not transaction:
                    return await txn(conn)
                async with conn.transaction():
                    return await txn(conn)
        except _UNREACHABLE as exc:
            await self._pool.expire_connections()  # the pool's idle connections are dead too: open new ones
            raise StoreUnavailable(UNREACHABLE_MESSAGE) from exc  # the details are for the log, not callers
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"database error: {exc}") from exc

    def _spawn(self, txn: Txn[T], *, transaction: bool = True) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(self._run(txn, transaction=transaction))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _money(self, txn: Txn[T], *, transaction: bool = True) -> T:
        """A money transaction: runs to its end even when the caller is cancelled."""
        return await asyncio.shield(self._spawn(txn, transaction=transaction))

    async def _all(self, sql: str, args: Any = ()) -> list[Any]:
        return await self._run(lambda c: c.fetch(sql, *args))

    async def transaction(self, statements: Sequence[Statement], *, durable: bool = True) -> list[Outcome]:
        """``Store.transaction`` for the store's other modules (accounts.py): the portable
        statements as one PostgreSQL transaction (pg_qmark.py numbers their placeholders)."""
        return await self._money(lambda c: run_statements(c, statements))

    async def query(self, sql: str, args: Any = ()) -> list[Any]:
        """All rows of one read-only statement written with ``?`` placeholders."""
        return [tuple(r) for r in await self._all(to_dollar(sql), tuple(args))]

    # -- accounts and keys ----------------------------------------------------------------------

    async def account_count(self) -> int:
        return int(await self._run(lambda c: c.fetchval("SELECT COUNT(*) FROM accounts")))

    async def ensure_account(self, name: str) -> int:
        return await self._run(lambda c: q.ensure_account(c, name))

    async def list_keys(self, account: str | None = None) -> list[KeyInfo]:
        sql = f"SELECT {KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.account_id"
        rows = await (
            self._all(sql + " WHERE a.name = $1 ORDER BY k.created_at", (account,))
            if account
            else self._all(sql + " ORDER BY k.created_at")
        )
        return [KeyInfo.from_row(tuple(row)) for row in rows]

    async def revoke_key(self, key_id: str) -> bool:
        status = await self._run(
            lambda c: c.execute(
                "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL", utc_now(), key_id
            )
        )
        return bool(status == "UPDATE 1")

    async def authenticate(self, key_hash: bytes, aborts_since: str | None = None) -> Principal | None:
        return await self._run(lambda c: q.principal(c, key_hash, aborts_since))

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
        if hold_microusd is not None and hold_microusd < 0:
            raise ValueError(f"hold amount must be 0 or more, got {hold_microusd}")
        ask = pg_admit.Ask(key_hash, request_id, hold_microusd, aborts_since, abort_cap, model, caps, utc_now())
        mark = self._settling.mark()
        got = await self._admit(ask)
        if (
            got.refused == "concurrency"
            and got.principal
            and await self._settling.settled_since(got.principal.key_id, mark)
        ):  # the key's slots this process was still settling (key_limits.py)
            got = await self._admit(ask)
        return got

    async def _admit(self, ask: pg_admit.Ask) -> Admission:
        future = self._admissions.admit(ask)
        try:
            return await asyncio.shield(future)  # a batch that has gone runs to its end
        except asyncio.CancelledError:
            self._admissions.withdraw(future)
            raise

    # -- usage ------------------------------------------------------------------------------------

    async def record_usage(self, rec: UsageRecord) -> None:
        await self._run(lambda c: q.insert_usage(c, rec))

    async def list_usage(self, account: str | None = None, limit: int = 50) -> list[UsageRecord]:
        cols = ",".join(q.USAGE_FIELDS)
        if account:
            rows = await self._all(
                f"SELECT {cols} FROM usage WHERE account = $1 ORDER BY seq DESC LIMIT $2", (account, limit)
            )
        else:
            rows = await self._all(f"SELECT {cols} FROM usage ORDER BY seq DESC LIMIT $1", (limit,))
        return [UsageRecord(*row) for row in rows]

    async def get_usage(self, request_id: str) -> UsageRecord | None:
        rows = await self._all(f"SELECT {','.join(q.USAGE_FIELDS)} FROM usage WHERE request_id = $1", (request_id,))
        return UsageRecord(*rows[0]) if rows else None

    async def recent_aborts(self, key_id: str, since_iso: str) -> int:
        rows = await self._all(
            "SELECT COUNT(*) FROM usage WHERE key_id = $1 AND created_at >= $2 AND outcome = 'client_disconnected'",
            (key_id, since_iso),
        )
        return int(rows[0][0])

    # -- credit -----------------------------------------------------------------------------------

    async def hold(self, account_id: int, request_id: str, amount_microusd: int) -> bool:
        if amount_microusd < 0:
            raise ValueError(f"hold amount must be 0 or more, got {amount_microusd}")
        now = utc_now()
        held = await self._money(lambda c: q.hold(c, account_id, request_id, amount_microusd, self._owner_id, now))
        if held == HELD:
            self._held[request_id] = (account_id, amount_microusd, None)
        return held == HELD

    def settle_soon(self, rec: UsageRecord, charge_microusd: int) -> asyncio.Future[int]:
        """``settle``, queued and group-committed with the others in flight (pg_upkeep.py); while
        the database is unreachable the settlement is parked (the future then answers 0) and
        applied when it answers again (pg_outage.py)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((Parked(rec, charge_microusd, utc_now()), future))
        self._settling.add(rec.key_id, future)
        if self._committers < SETTLE_PIPELINE:
            self._committers += 1
            task = asyncio.get_running_loop().create_task(self._commit_settlements())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return future

    async def settle(self, rec: UsageRecord, charge_microusd: int) -> int:
        now = utc_now()
        self._held.pop(rec.request_id, None)
        return await self._money(lambda c: pg_settle.settle(c, rec, charge_microusd, now))

    async def release(self, request_id: str) -> int:
        now = utc_now()
        self._held.pop(request_id, None)

        async def txn(c: _Conn) -> int:
            return await q.release(c, request_id, now) or 0

        return await self._money(txn)


async def _keep_session(conn: Any) -> None:
    """The pool's reset of a connection coming back: nothing to send. asyncpg's default sends
    ``RESET ALL; CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all()``, one more round trip
    per transaction, for session state this store never leaves behind (settings are fixed at
    connect or ``SET LOCAL``, no cursors, no LISTEN, advisory locks per transaction). An open
    transaction is still rolled back by asyncpg itself before this is called."""


def _redact(url: str) -> str:
    scheme, _, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}://{creds.split(':')[0]}@{host}" if at else url
