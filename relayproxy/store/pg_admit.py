"""PostgreSQL admission's hold: one server-side function, called as one statement.

Every admission of a key locks the key's row (its in-flight count, spend limit and
requests-per-minute window are decided under that lock, key_limits.py) and then its account's
row. Written as a transaction of client statements, those locks were held across five round trips
to the gateway and the commit's WAL flush, so the admissions of one key ran one at a time at the
speed of a round trip through a busy gateway's event loop. Here the whole hold runs inside the
database as one statement in its own transaction: the rows stay locked for the statement's own
work and the commit, never while a client thinks.

The hold is committed with ``synchronous_commit`` off for its transaction (as SQLite's holds are not
fsynced): a database that crashes loses at most the last fraction of a second of holds, whose
requests then settle unbilled (``no_hold``), never overcharged; the next settlement's durable
commit flushes every hold before it. The rules are ``ledger.hold``'s and key_limits.py's, in the
same lock order: the key's row, then the account's.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from relayproxy.store.key_limits import WINDOW_MS, retry_after_s

__all__ = ["MIGRATION", "REVOKED", "hold"]

_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg ships no type hints)

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

_CALL = "SELECT outcome, oldest_ms, now_ms FROM relayproxy_hold($1, $2, $3, $4, $5, $6, $7, $8, $9)"


async def hold(
    c: _Conn, account_id: int, request_id: str, amount: int, owner: str, now: str, key_id: str, cap: int, rpm: int
) -> tuple[str, int]:
    """The hold, as one statement outside any open transaction: (outcome, Retry-After seconds).
    The outcome is one of ledger.py's (``HELD``, ``NO_CREDIT``, ``KEY_LIMIT``, ``CONCURRENCY``),
    ``REVOKED``, or ``"rpm"`` with the window's Retry-After."""
    outcome, oldest, now_ms = await c.fetchrow(
        _CALL, account_id, request_id, amount, owner, now, key_id, cap, rpm, WINDOW_MS
    )
    return str(outcome), retry_after_s(int(oldest), int(now_ms)) if outcome == "rpm" else 0
