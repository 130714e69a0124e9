"""Group commit: the store's transactions, batched into one database-thread trip and one commit.

Theory of operation. SQLite allows one writer, and aiosqlite runs every call on one thread that
owns the connection; each trip there costs a thread wake-up and an event-loop wake-up, and each
``synchronous=FULL`` commit an fsync. So the store never talks to the thread per statement: it
hands whole transactions (``Op``: a function of the plain ``sqlite3.Connection``) to
``GroupCommit.run``, which queues them. Whatever is queued when a batch starts (see
``GroupCommit``) runs as ONE batch on the thread:

    BEGIN IMMEDIATE          (plain BEGIN when every op only reads)
      op 1; op 2; ...        (if one raises: ROLLBACK, and again with each op in a SAVEPOINT,
                              so that only the failing op is rolled back: ROLLBACK TO op)
    COMMIT                   (synchronous=FULL when any op is durable, NORMAL otherwise)

and only after the COMMIT returns does any op's future get its result: nothing is acknowledged
before it is durable (a batch whose commit fails fails every op in it, and none of them happened).

While a batch runs, new ops queue for the next one, so under load the trips, wake-ups and fsyncs
are shared by every request in flight. An op someone waits for goes at once (no waiting to fill a
batch); writes nobody waits for (settlements) linger up to ``LINGER_S`` for company, and go with
the next waited-for op, so a lone client's settlement shares its next request's trip.

With ``sync`` (the store passes one that fdatasyncs the WAL file: exactly the sync that
``synchronous=FULL`` adds to a WAL commit), a batch with a durable op is committed at NORMAL too,
then its other ops are answered at once, then the WAL is synced, and only then are its durable ops
answered (the connection rests at FULL between batches either way). So a request's credit hold
(which needs no fsync: the startup sweep releases holds lost in a crash) does not wait for the
fsync of the previous request's settlement it shares a batch with; the settlement is as durable
as before, just out of its way.

Ops run in the order they were submitted, so a caller reads its own writes: a read submitted after
a write (even one nobody awaited) sees it. Ops must be short and must not wait on the event loop:
they are plain functions of the ``sqlite3.Connection`` (the ledger's, ledger.py, among them).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import aiosqlite

from relayproxy.errors import StoreError
from relayproxy.store._aiosqlite_adapter import plain_connection, queue_on_thread

__all__ = ["GroupCommit", "Op"]

T = TypeVar("T")
log = logging.getLogger("relayproxy.store")

#: How long a write nobody waits for (a settlement) may wait for others to share its commit, and
#: how many such writes make a batch go at once.
LINGER_S = 0.002
MAX_LINGER_OPS = 256

#: One transaction's work, run on the database thread inside the batch's transaction.
Op = Callable[[sqlite3.Connection], T]


@dataclass(slots=True)
class _Queued(Generic[T]):
    fn: Op[T]
    durable: bool  # commit with synchronous=FULL
    write: bool  # needs the write lock (BEGIN IMMEDIATE)
    what: str  # for error messages: "write", "read"
    future: asyncio.Future[T]
    waited: bool  # False: posted, nobody reads the future, so a failure is logged here


class GroupCommit:
    """Runs ops in batches on aiosqlite's database thread; see the module docstring.

    It reaches that thread through ``_aiosqlite_adapter`` (the one module that uses aiosqlite's
    private attributes): aiosqlite's public calls make one trip per statement.

    Driven by callbacks, not a task: ``submit`` schedules a start for the end of the current
    loop iteration (so what that iteration submits shares one batch), which starts a batch when
    none is in flight or arms the linger timer; the batch's completion callback answers its ops
    and starts the next. So an op costs no task switch of its own, and nothing here can be cancelled
    half-way: a batch handed to the thread always runs, and its ops always hear how it went.
    """

    def __init__(
        self, db: aiosqlite.Connection, *, linger_s: float = LINGER_S, sync: Callable[[], None] | None = None
    ) -> None:
        """``sync``: makes every commit so far durable (run on the database thread; OSError = failed);
        without it durable batches commit at ``synchronous=FULL``, the connection's resting level."""
        self._db = db
        self._linger_s = linger_s
        self._sync = sync
        self._queue: list[_Queued[Any]] = []
        self._waited = 0  # queued ops someone is waiting for: while there are none, the batch may linger
        self._in_flight = False  # a batch is on the database thread
        self._soon = False  # _next is scheduled (call_soon)
        self._timer: asyncio.TimerHandle | None = None  # set while lingering
        self._idle: list[asyncio.Future[None]] = []  # drain() waiting for the queue to empty
        self._draining = 0
        self.batches = 0  # batches committed (or failed): for tests and metrics
        self.ops = 0

    def submit(self, fn: Op[T], *, durable: bool, write: bool = True, waited: bool = True) -> asyncio.Future[T]:
        """Queue ``fn`` for the next batch; the future settles once its batch has committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append(_Queued(fn, durable, write, "write" if write else "read", future, waited))
        if waited:
            self._waited += 1
        if not self._soon:  # at the end of this loop iteration: what else it submits joins the batch
            self._soon = True
            loop.call_soon(self._next, loop)
        return future

    async def run(self, fn: Op[T], *, durable: bool, write: bool = True) -> T:
        """Submit ``fn`` and wait for its result (StoreError when the database failed)."""
        return await self.submit(fn, durable=durable, write=write)

    def post(self, fn: Op[T], *, durable: bool) -> asyncio.Future[T]:
        """Submit a write nobody waits for (it runs all the same; a failure is logged). It may
        linger up to ``linger_s`` for company, and goes at once with the next op someone waits for."""
        return self.submit(fn, durable=durable, waited=False)

    async def drain(self) -> None:
        """Commit everything queued so far, without lingering, and wait for it."""
        loop = asyncio.get_running_loop()
        self._draining += 1
        try:
            while self._queue or self._in_flight:
                idle = loop.create_future()
                self._idle.append(idle)
                self._next(loop)
                await idle
        finally:
            self._draining -= 1

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a batch if none is in flight and the queue should not linger; else arm the timer."""
        self._soon = False
        if self._in_flight or not self._queue:
            return
        if self._waited or self._draining or self._linger_s <= 0 or len(self._queue) >= MAX_LINGER_OPS:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._start(loop)
        elif self._timer is None:
            self._timer = loop.call_later(self._linger_s, self._linger_over, loop)

    def _linger_over(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if not self._in_flight and self._queue:
            self._start(loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._queue, self._waited = self._queue, [], 0
        early = _Early(loop, batch)
        trip: asyncio.Future[list[Any]] = loop.create_future()
        try:
            queue_on_thread(self._db, trip, partial(_run_batch, plain_connection(self._db), batch, self._sync, early))
        except ValueError:  # aiosqlite: the connection is closed
            trip.set_exception(StoreError("the database is closed"))
        self._in_flight = True
        trip.add_done_callback(partial(self._done, loop, batch, early))

    def _done(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Queued[Any]], early: _Early, trip: asyncio.Future[list[Any]]
    ) -> None:
        self._in_flight = False
        exc = StoreError("the database trip was cancelled") if trip.cancelled() else trip.exception()
        if exc is None:
            results = trip.result()
        elif isinstance(exc, sqlite3.Error):
            results = [StoreError(f"database {q.what} failed: {exc}") for q in batch]
        else:
            results = [exc for _ in batch]
        self.batches += 1
        self.ops += len(batch)
        for queued, result in zip(batch, results, strict=True):
            if not (early.sent and not queued.durable):  # those were answered before the sync
                _settle(queued, result)
        if self._idle and not self._queue:
            idle, self._idle = self._idle, []
            for waiter in idle:
                if not waiter.done():
                    waiter.set_result(None)
        if self._queue and not self._soon:  # after the callers just answered had their turn
            self._soon = True
            loop.call_soon(self._next, loop)


class _Early:
    """Answers a batch's non-durable ops from the database thread, before the batch's sync."""

    __slots__ = ("_batch", "_loop", "sent")

    def __init__(self, loop: asyncio.AbstractEventLoop, batch: list[_Queued[Any]]) -> None:
        self._loop, self._batch, self.sent = loop, batch, False

    def __call__(self, results: Sequence[Any]) -> None:  # on the database thread
        try:
            self._loop.call_soon_threadsafe(_settle_not_durable, self._batch, results)
        except RuntimeError:  # the loop is closing: they are answered with the batch, if at all
            return
        self.sent = True


def _settle_not_durable(batch: list[_Queued[Any]], results: Sequence[Any]) -> None:
    for queued, result in zip(batch, results, strict=True):
        if not queued.durable:
            _settle(queued, result)


def _settle(queued: _Queued[Any], result: Any) -> None:
    future = queued.future
    failed = isinstance(result, BaseException)
    if future.cancelled() or not queued.waited:  # nobody (any longer) waits: the op ran all the same
        if failed:
            log.error(
                "store operation failed after its caller left: %s" if queued.waited else "store operation failed: %s",
                result,
            )
        if future.cancelled():
            return
    if failed:
        future.set_exception(result)
        if not queued.waited:
            future.exception()  # retrieved (logged above): no "never retrieved" warning later
    else:
        future.set_result(result)


def _run_batch(
    conn: sqlite3.Connection,
    batch: list[_Queued[Any]],
    sync: Callable[[], None] | None,
    early: Callable[[Sequence[Any]], None],
) -> list[Any]:
    """On the database thread: every op of the batch in one transaction.

    Returns one result per op: its value, or the exception it raised (sqlite3 errors as StoreError),
    in which case nothing that op wrote is kept. Optimistic: the ops first run back to back; only
    if one of them raises is the transaction rolled back and run again with each op in its own
    savepoint, so that the others still commit (failures are rare; savepoints cost two statements
    per op). A failing COMMIT raises sqlite3.Error for the whole batch. With ``sync``, a durable
    batch hands its non-durable ops' results to ``early`` after the commit and before the sync; a
    failing sync fails the durable ops (committed, but not known to be on disk).
    """
    durable = any(q.durable for q in batch)
    own_sync = durable and sync is not None
    begin = "BEGIN IMMEDIATE" if any(q.write for q in batch) else "BEGIN"
    if own_sync or not durable:
        conn.execute("PRAGMA synchronous=NORMAL")
    try:
        results = _attempt(conn, batch, begin, savepoints=False)
        if results is None:
            results = _attempt(conn, batch, begin, savepoints=True)
        assert results is not None
    finally:
        if own_sync or not durable:
            conn.execute("PRAGMA synchronous=FULL")
    if own_sync:
        assert sync is not None
        if not all(q.durable for q in batch):
            early(results)
        try:
            sync()
        except OSError as exc:
            failed = StoreError(f"database sync failed: {exc}")
            results = [failed if q.durable else r for q, r in zip(batch, results, strict=True)]
    return results


def _attempt(conn: sqlite3.Connection, batch: list[_Queued[Any]], begin: str, *, savepoints: bool) -> list[Any] | None:
    """One transaction over the batch; None (rolled back) when an op raised without savepoints."""
    results: list[Any] = []
    conn.execute(begin)
    try:
        for q in batch:
            if savepoints:
                conn.execute("SAVEPOINT op")
            try:
                results.append(q.fn(conn))
            except Exception as exc:  # noqa: BLE001 - handed to that op's caller
                if not savepoints:
                    conn.execute("ROLLBACK")
                    return None if len(batch) > 1 else [_as_store_error(exc, q.what)]
                conn.execute("ROLLBACK TO op")
                results.append(_as_store_error(exc, q.what))
            if savepoints:
                conn.execute("RELEASE op")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


def _as_store_error(exc: Exception, what: str) -> Exception:
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"database {what} failed: {exc}")
    return exc
