"""PostgreSQL admission: the key's read and the hold, for a batch of admissions at a time.

Every hold of a key locks the key's row (its in-flight count, spend limit and requests-per-minute
window are decided under that lock, key_limits.py) and then its account's row. Written as a
transaction of client statements, those locks were held across five round trips to the gateway
and the commit's WAL flush. The hold runs inside the database instead, as one statement in its
own transaction: the rows stay locked for the statement's own work and the commit, never while a
client thinks. ``relayproxy_hold`` (``MIGRATION``) was that statement for one admission;
``relayproxy_hold_batch`` (below) is it for a batch, and the one the store calls.

The hold is committed with ``synchronous_commit`` off for its transaction (as SQLite's holds are not
fsynced): a database that crashes loses at most the last fraction of a second of holds, whose
requests then settle unbilled (``no_hold``), never overcharged; the next settlement's durable
commit flushes every hold before it. The rules are ``ledger.hold``'s and key_limits.py's, in the
same lock order: the keys' rows, then the accounts'.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeAlias

from relayproxy.errors import StoreError
from relayproxy.records import Principal
from relayproxy.store.admission import PRINCIPAL_COLUMNS, Admission, admission, judge, over_rpm, principal_of
from relayproxy.store.key_limits import WINDOW_MS, KeyCaps, retry_after_s
from relayproxy.store.ledger import HELD

__all__ = ["BATCH", "BATCH_MIGRATION", "MIGRATION", "PIPELINE", "REVOKED", "Admissions", "Ask"]

_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg ships no type hints)
Txn: TypeAlias = Callable[[_Conn], Awaitable[list[Admission]]]
Held: TypeAlias = dict[str, tuple[int, int, str | None]]  # request id -> (account id, amount, key id)

#: The key was revoked (or deleted) after the principal was read: the caller gets 401.
REVOKED = "revoked"

MIGRATION = """
CREATE OR REPLACE FUNCTION relayproxy_hold(
    p_account BIGINT, p_request TEXT, p_amount BIGINT, p_owner TEXT, p_now TEXT,
    p_key TEXT, p_cap INTEGER, p_rpm INTEGER, p_window_ms BIGINT,
    OUT outcome TEXT, OUT oldest_ms BIGINT, OUT now_ms BIGINT)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_in_flight INTEGER;
    v_revoked BOOLEAN;
    v_over_limit BOOLEAN;
    v_count BIGINT;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    now_ms := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
    IF EXISTS (SELECT 1 FROM ledger WHERE business_key = 'req:' || p_request || ':hold') THEN
        outcome := CASE WHEN EXISTS (SELECT 1 FROM holds WHERE request_id = p_request)
                        THEN 'held' ELSE 'no_credit' END;
        RETURN;
    END IF;
    SELECT in_flight, revoked_at IS NOT NULL,
           spend_limit_microusd IS NOT NULL AND spend_microusd + held_microusd + p_amount > spend_limit_microusd
      INTO v_in_flight, v_revoked, v_over_limit
      FROM api_keys WHERE id = p_key FOR NO KEY UPDATE;
    IF NOT FOUND OR v_revoked THEN
        outcome := 'revoked';
        RETURN;
    END IF;
    IF p_rpm > 0 THEN
        SELECT COUNT(*), MIN(at_ms) INTO v_count, oldest_ms
          FROM key_admissions WHERE key_id = p_key AND at_ms > now_ms - p_window_ms;
        IF v_count >= p_rpm THEN
            outcome := 'rpm';
            RETURN;
        END IF;
    END IF;
    IF p_cap > 0 AND v_in_flight >= p_cap THEN
        outcome := 'concurrency';
        RETURN;
    END IF;
    IF v_over_limit THEN
        outcome := 'key_limit';
        RETURN;
    END IF;
    UPDATE accounts SET held_microusd = held_microusd + p_amount
     WHERE id = p_account AND balance_microusd - held_microusd >= p_amount;
    IF NOT FOUND THEN
        outcome := 'no_credit';
        RETURN;
    END IF;
    UPDATE api_keys SET held_microusd = held_microusd + p_amount, in_flight = in_flight + 1, last_used_at = p_now
     WHERE id = p_key;
    INSERT INTO ledger(account_id, kind, amount_microusd, business_key, request_id, created_at)
    VALUES (p_account, 'hold', p_amount, 'req:' || p_request || ':hold', p_request, p_now);
    INSERT INTO holds(request_id, account_id, key_id, amount_microusd, owner, created_at)
    VALUES (p_request, p_account, p_key, p_amount, p_owner, p_now);
    IF p_rpm > 0 THEN
        INSERT INTO key_admissions(key_id, at_ms, request_id) VALUES (p_key, now_ms, p_request);
    END IF;
    outcome := 'held';
END
$fn$;
"""

#: Admissions in batches. One call per admission cost the gateway two round trips per request
#: (the key's read, then the hold), and under load those calls, not the database, set its rate:
#: a third of the gateway's time went to handing statements to the socket. Admissions that arrive
#: while a batch is in flight wait for the next one (at most BATCH each, PIPELINE batches at once,
#: as group commit does for settlements), so at any concurrency a batch costs two round trips: the
#: keys' rows read together, and every hold of the batch in one statement. A lone admission goes at
#: once, so an idle gateway waits for nothing. The hold statement locks every key row of the batch,
#: then every account row, each set in sorted order (the one lock order), and then takes each hold
#: by ``relayproxy_hold``'s rules, in arrival order, each seeing the ones before it.
BATCH = 64
PIPELINE = 2

BATCH_MIGRATION = """
CREATE OR REPLACE FUNCTION relayproxy_hold_batch(
    p_accounts BIGINT[], p_requests TEXT[], p_amounts BIGINT[], p_owner TEXT, p_now TEXT,
    p_keys TEXT[], p_caps INTEGER[], p_rpms INTEGER[], p_window_ms BIGINT)
RETURNS TABLE (outcome TEXT, oldest_ms BIGINT, now_ms BIGINT)
LANGUAGE plpgsql AS $fn$
DECLARE
    i INTEGER;
    v_in_flight INTEGER;
    v_revoked BOOLEAN;
    v_over_limit BOOLEAN;
    v_count BIGINT;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM 1 FROM api_keys WHERE id = ANY(p_keys) ORDER BY id FOR NO KEY UPDATE;
    PERFORM 1 FROM accounts WHERE id = ANY(p_accounts) ORDER BY id FOR NO KEY UPDATE;
    FOR i IN 1 .. coalesce(cardinality(p_requests), 0) LOOP
        now_ms := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
        oldest_ms := NULL;
        outcome := NULL;
        IF EXISTS (SELECT 1 FROM ledger WHERE business_key = 'req:' || p_requests[i] || ':hold') THEN
            outcome := CASE WHEN EXISTS (SELECT 1 FROM holds h WHERE h.request_id = p_requests[i])
                            THEN 'held' ELSE 'no_credit' END;
        ELSIF EXISTS (SELECT 1 FROM usage u WHERE u.request_id = p_requests[i]) THEN
            outcome := 'no_credit';  -- settled already (its caller left while it waited): hold nothing
        END IF;
        IF outcome IS NULL THEN
            SELECT k.in_flight, k.revoked_at IS NOT NULL,
                   k.spend_limit_microusd IS NOT NULL
                   AND k.spend_microusd + k.held_microusd + p_amounts[i] > k.spend_limit_microusd
              INTO v_in_flight, v_revoked, v_over_limit
              FROM api_keys k WHERE k.id = p_keys[i];
            IF NOT FOUND OR v_revoked THEN
                outcome := 'revoked';
            END IF;
        END IF;
        IF outcome IS NULL AND p_rpms[i] > 0 THEN
            SELECT COUNT(*), MIN(at_ms) INTO v_count, oldest_ms
              FROM key_admissions WHERE key_id = p_keys[i] AND at_ms > now_ms - p_window_ms;
            IF v_count >= p_rpms[i] THEN
                outcome := 'rpm';
            END IF;
        END IF;
        IF outcome IS NULL AND p_caps[i] > 0 AND v_in_flight >= p_caps[i] THEN
            outcome := 'concurrency';
        END IF;
        IF outcome IS NULL AND v_over_limit THEN
            outcome := 'key_limit';
        END IF;
        IF outcome IS NULL THEN
            UPDATE accounts SET held_microusd = held_microusd + p_amounts[i]
             WHERE id = p_accounts[i] AND balance_microusd - held_microusd >= p_amounts[i];
            IF NOT FOUND THEN
                outcome := 'no_credit';
            END IF;
        END IF;
        IF outcome IS NULL THEN
            UPDATE api_keys SET held_microusd = held_microusd + p_amounts[i], in_flight = in_flight + 1,
                   last_used_at = p_now
             WHERE id = p_keys[i];
            INSERT INTO ledger(account_id, kind, amount_microusd, business_key, request_id, created_at)
            VALUES (p_accounts[i], 'hold', p_amounts[i], 'req:' || p_requests[i] || ':hold', p_requests[i], p_now);
            INSERT INTO holds(request_id, account_id, key_id, amount_microusd, owner, created_at)
            VALUES (p_requests[i], p_accounts[i], p_keys[i], p_amounts[i], p_owner, p_now);
            IF p_rpms[i] > 0 THEN
                INSERT INTO key_admissions(key_id, at_ms, request_id) VALUES (p_keys[i], now_ms, p_requests[i]);
            END IF;
            outcome := 'held';
        END IF;
        RETURN NEXT;
    END LOOP;
END
$fn$;
"""

_PRINCIPALS_SQL = (
    f"SELECT d.i, {PRINCIPAL_COLUMNS}, (SELECT COUNT(*) FROM usage u WHERE u.key_id = k.id"
    " AND u.created_at >= d.since AND u.outcome = 'client_disconnected')"
    " FROM unnest($1::bytea[], $2::text[]) WITH ORDINALITY AS d(hash, since, i)"
    " JOIN api_keys k ON k.hash = d.hash JOIN accounts a ON a.id = k.account_id"
)
_HOLDS_SQL = "SELECT outcome, oldest_ms, now_ms FROM relayproxy_hold_batch($1, $2, $3, $4, $5, $6, $7, $8, $9)"


@dataclass(slots=True)
class Ask:
    """One admission waiting for its batch: ``Store.admit``'s arguments."""

    key_hash: bytes
    request_id: str
    hold_microusd: int | None
    aborts_since: str | None  # None: the key's aborts are not counted
    abort_cap: int
    model: str | None
    caps: KeyCaps
    now: str


class Admissions:
    """The admission queue of one PgStore (the batching above). ``run`` runs a function of a pooled
    connection, outside any transaction; ``held`` is told of every hold taken."""

    def __init__(
        self, run: Callable[[Txn], Awaitable[list[Admission]]], owner: str, held: Held, tasks: set[asyncio.Task[None]]
    ) -> None:
        self._run = run
        self._owner = owner
        self._held = held
        self._tasks = tasks  # the store's own, which it awaits before it closes
        self._queue: list[tuple[Ask, asyncio.Future[Admission]]] = []
        self._runners = 0
        self.batches = 0  # batches sent (each: the keys' read and one hold statement)

    def admit(self, ask: Ask) -> asyncio.Future[Admission]:
        """The admission's answer, to come with its batch's (shield it: a batch runs to its end)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Admission] = loop.create_future()
        future.add_done_callback(_retrieved)  # a caller cancelled meanwhile leaves no unread error
        self._queue.append((ask, future))
        if self._runners < PIPELINE:
            self._runners += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    def withdraw(self, future: asyncio.Future[Admission]) -> None:
        """The caller of ``future`` left: its admission is dropped if its batch has not gone yet
        (the request settles unbilled and must not hold afterwards)."""
        for n, (_, queued) in enumerate(self._queue):
            if queued is future:
                del self._queue[n]
                future.cancel()
                return

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue[:BATCH] = self._queue[:BATCH], []
                self.batches += 1
                try:
                    answers = await self._run(partial(self._admit_batch, asks=[ask for ask, _ in batch]))
                except Exception as exc:  # noqa: BLE001 - any failure is each caller's (StoreError, or a bug): none may hang
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:  # cancelled: the store closes
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._runners -= 1

    async def _admit_batch(self, c: _Conn, asks: list[Ask]) -> list[Admission]:
        rows = await c.fetch(
            _PRINCIPALS_SQL,
            [a.key_hash for a in asks],
            [(a.aborts_since if a.abort_cap > 0 else None) or "9999" for a in asks],
        )
        found = {int(r[0]): r for r in rows}
        answers: list[Admission | None] = []
        holding: list[tuple[int, Principal]] = []  # (place in asks, principal) of the holds to take
        for i, ask in enumerate(asks):
            row = found.get(i + 1)
            principal = None if row is None else principal_of(tuple(row)[1:-1], ask.key_hash, int(row[-1]))
            answer = judge(principal, ask.hold_microusd, ask.abort_cap, ask.model, ask.now)
            answers.append(answer)
            if answer is None:
                assert principal is not None
                holding.append((i, principal))
        if holding:
            picked = [asks[i] for i, _ in holding]
            outcomes = await c.fetch(
                _HOLDS_SQL,
                [p.account_id for _, p in holding],
                [a.request_id for a in picked],
                [a.hold_microusd for a in picked],
                self._owner,
                picked[0].now,
                [p.key_id for _, p in holding],
                [a.caps.concurrency for a in picked],
                [a.caps.rpm for a in picked],
                WINDOW_MS,
            )
            for (i, principal), (outcome, oldest, now_ms) in zip(holding, outcomes, strict=True):
                answers[i] = _answer(principal, str(outcome), oldest, now_ms)
                if outcome == HELD:
                    amount = asks[i].hold_microusd
                    assert amount is not None
                    self._held[asks[i].request_id] = (principal.account_id, amount, principal.key_id)
        if any(answer is None for answer in answers):  # never: every hold taken has its outcome
            raise StoreError("an admission of the batch got no answer")
        return [answer for answer in answers if answer is not None]


def _retrieved(future: asyncio.Future[Admission]) -> None:
    if not future.cancelled():
        future.exception()


def _answer(principal: Principal, outcome: str, oldest: int | None, now_ms: int) -> Admission:
    if outcome == REVOKED:
        return Admission(None, None)
    if outcome == "rpm":
        return over_rpm(principal, retry_after_s(int(oldest or now_ms), int(now_ms)))
    return admission(principal, outcome)
