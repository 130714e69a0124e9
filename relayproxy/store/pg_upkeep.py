"""The PostgreSQL store's upkeep: its hold lease, the sweep of dead owners' holds, and the
settlements parked during an outage (applied when the database answers, or from the journal at
the next start). A part of ``PgStore`` (postgres.py, whose docstring has the rules) kept apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from relayproxy.errors import StoreError, StoreUnavailable
from relayproxy.store import key_limits, pg_outage, pg_settle
from relayproxy.store import pg_ledger as q
from relayproxy.store.facade import utc_iso, utc_now
from relayproxy.store.pg_outage import Backlog, Parked

__all__ = ["SETTLE_BATCH", "SETTLE_PIPELINE", "Upkeep"]

#: Group commit: queued settlements go in batches of up to SETTLE_BATCH, one transaction (and one
#: commit, one WAL flush) each, with up to SETTLE_PIPELINE batches in flight on their own connections.
SETTLE_BATCH = 64
SETTLE_PIPELINE = 2

T = TypeVar("T")
log = logging.getLogger("relayproxy.store")
_Conn: TypeAlias = Any  # asyncpg.Connection
Txn = Callable[[_Conn], Awaitable[T]]


class Upkeep:
    """Mixed into PgStore, which provides the transactions and the state below."""

    _lease_s: float
    _owner_id: str
    _journal: Path | None
    _backlog: Backlog
    _down: bool
    _sweep_after: float
    _queue: list[tuple[Parked, asyncio.Future[int]]]
    _committers: int
    batch_fallbacks: int  # batches that failed whole and were settled one by one (a deadlock would count)

    _held: dict[str, pg_settle.Known]  # the holds this process made and has not settled yet

    async def _run(self, txn: Txn[T], *, transaction: bool = True) -> T:
        raise NotImplementedError

    async def _money(self, txn: Txn[T]) -> T:
        raise NotImplementedError

    async def _all(self, sql: str, args: Any = ()) -> list[Any]:
        raise NotImplementedError

    async def maintain(self) -> None:
        """For as long as the app runs (in its TaskGroup; cancelled with it): renew this store's
        lease every third of ``lease_s``, release the holds of owners whose lease ran out, and
        apply parked settlements once the database answers again (within about a second).
        A database error is logged and retried; anything else ends the app, visibly."""
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + self._lease_s / 3
        while True:
            await asyncio.sleep(min(1.0, self._lease_s / 3) if self._backlog or self._down else self._lease_s / 3)
            if loop.time() < renew_at and not self._backlog and not self._down:
                continue
            try:
                await self._renew()
                if self._down:
                    self._down = False
                    self._sweep_after = loop.time() + self._lease_s
                    log.warning("the database answers again; applying %d parked settlements", len(self._backlog))
                await self._apply_backlog()
                if loop.time() >= self._sweep_after:
                    await self._sweep()
                renew_at = loop.time() + self._lease_s / 3
            except StoreError as exc:
                self._mark_down(exc)

    def _mark_down(self, exc: StoreError) -> None:
        if not self._down:
            why = exc.__cause__ or exc
            log.warning("database unreachable (new requests get 503, settlements are parked): %s", why)
        self._down = True

    async def _sweep(self) -> None:
        """Release the holds of owners whose lease ran out. Not in the first lease time after an
        outage: the other gateways were cut off too, and must first renew and settle their own."""
        released = await self.release_orphan_holds()
        if released:
            log.warning("released %d credit holds of a gateway whose lease expired (never billed)", released)
        await self._run(
            lambda c: c.execute(
                "DELETE FROM leases l WHERE expires_at < now() - interval '1 hour'"
                " AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.owner = l.owner)"
            )
        )
        await self._run(key_limits.pg_forget_window)

    async def _commit_settlements(self) -> None:
        """Commit the queued settlements, a batch per transaction, until the queue is empty.

        A batch locks its rows in the one order (pg_settle.py: its hold rows, then its keys, then
        its accounts, each sorted), so concurrent batches, here or on other machines, cannot
        deadlock each other nor admissions. A batch that fails for another reason than an outage is
        retried one settlement per transaction, so one bad settlement cannot sink the others."""
        try:
            while self._queue:
                batch, self._queue[:SETTLE_BATCH] = self._queue[:SETTLE_BATCH], []
                try:
                    results = await self._settle_batch([item for item, _ in batch])
                except StoreError as exc:
                    self.batch_fallbacks += 1
                    log.warning("a batch of %d settlements failed (%s); settling them one by one", len(batch), exc)
                    results = [await self._settle_alone(item) for item, _ in batch]
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)
        finally:
            self._committers -= 1

    async def _settle_batch(self, items: list[Parked]) -> list[int]:
        if self._backlog:  # behind the parked ones: a settlement is applied after the earlier
            for item in items:
                self._backlog.park(item)
            return [0] * len(items)
        try:
            known = [self._held.pop(item.rec.request_id, None) for item in items]
            return await self._run(partial(_settle_all, items=items, known=known), transaction=False)
        except StoreUnavailable as exc:  # committed or not, the replay is right: keyed by request id
            self._mark_down(exc)
            for item in items:
                self._backlog.park(item)
            return [0] * len(items)

    async def _settle_alone(self, item: Parked) -> int:
        try:
            return await self._settle_or_park(item)
        except StoreError as exc:  # not an outage: the statement itself fails (a bug); never retried
            log.error("settlement of %s failed, nothing charged: %s", item.rec.request_id, exc)
            return 0

    async def _settle_or_park(self, item: Parked) -> int:
        if not self._backlog:  # else behind the parked ones: a settlement is applied after the earlier
            try:
                return await self._run(lambda c: pg_settle.settle(c, item.rec, item.charge_microusd, item.at))
            except StoreUnavailable as exc:  # committed or not, the replay is right: keyed by request id
                self._mark_down(exc)
        self._backlog.park(item)
        return 0

    async def _apply_backlog(self) -> None:
        """Apply parked settlements, oldest first, one transaction each; StoreError stops it."""
        while (item := self._backlog.oldest()) is not None:
            await self._run(partial(_settle_parked, item=item))
            self._backlog.applied(item)

    async def _apply_journal(self) -> None:
        """Apply and empty the settlement journal a stopped gateway left (each entry exactly once)."""
        if self._journal is None or not self._journal.exists():
            return
        with pg_outage.locked_journal(self._journal) as f:
            items = pg_outage.read_lines(f)
            for item in items:
                await self._run(partial(_settle_parked, item=item))
            pg_outage.empty(f)
        if items:
            log.warning("applied %d settlements from the journal %s", len(items), self._journal)

    async def release_orphan_holds(self, stale_after_s: float | None = None) -> int:
        """Release (never bill) holds whose owner's lease has expired (or is missing), and with
        ``stale_after_s`` any hold older than that. Returns how many were released."""
        stale = utc_iso(datetime.now(UTC) - timedelta(seconds=stale_after_s)) if stale_after_s is not None else ""
        rows = await self._all(
            "SELECT h.request_id FROM holds h LEFT JOIN leases l ON l.owner = h.owner"
            " WHERE (h.owner <> $1 AND (l.owner IS NULL OR l.expires_at < now())) OR h.created_at < $2",
            (self._owner_id, stale),
        )
        released = 0
        for (request_id,) in rows:  # one transaction each: a concurrent sweep makes the others no-ops
            released += await self._money(partial(q.release, request_id=str(request_id), now=utc_now())) is not None
        return released

    async def _renew(self) -> None:
        await self._run(
            lambda c: c.execute(
                "INSERT INTO leases(owner, expires_at) VALUES ($1, now() + make_interval(secs => $2))"
                " ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                self._owner_id,
                self._lease_s,
            )
        )


async def _settle_all(c: _Conn, items: list[Parked], known: list[pg_settle.Known | None]) -> list[int]:
    """The batch as one statement when its holds are as this process made them, else set-wise."""
    batch = [(item.rec, item.charge_microusd, item.at) for item in items]
    settled = await pg_settle.settle_known(c, batch, known)
    if settled is not None:
        return settled
    async with c.transaction():
        return await pg_settle.settle_batch(c, batch)


async def _settle_parked(c: _Conn, item: Parked) -> int:
    return await pg_settle.settle(c, item.rec, item.charge_microusd, item.at)
