"""``relayproxy db copy``: every row of one store into an empty other, across backends.

``TABLES`` is the one list of what moves (a table added to both backends' migrations gets a line
here); columns are named, so each backend's own extra columns (ids it generates, hold owners)
stay out of it. Open holds do not move: they belong to running gateways, so the source must have
none (stop the gateways first). Dashboard sessions, setup tokens, mailed links and throttle
counts do not move either (users log in again). The target must be empty; both ledgers are checked afterwards.
"""

from __future__ import annotations

from typing import Any

from relayproxy.errors import StoreError
from relayproxy.store.facade import Store

__all__ = ["TABLES", "copy_store"]

#: Table → its columns, in an order that satisfies the foreign keys.
TABLES: dict[str, tuple[str, ...]] = {
    "accounts": ("id", "name", "created_at", "balance_microusd", "held_microusd"),
    "api_keys": (
        "id", "account_id", "prefix", "hash", "label", "created_at", "revoked_at", "spend_limit_microusd", "expires",
        "models", "spend_microusd", "held_microusd", "last_used_at",
    ),
    "ledger": (
        "seq", "account_id", "kind", "amount_microusd", "business_key", "request_id", "payment_ref", "note",
        "created_at",
    ),
    "stripe_events": ("event_id", "type", "received_at"),
    "users": ("id", "email", "password_hash", "account_id", "admin", "disabled", "created_at", "verified"),
    "audit": ("seq", "created_at", "actor", "action", "target", "detail"),
    "usage": (
        "seq", "request_id", "created_at", "account", "key_id", "model", "provider", "client_protocol",
        "upstream_protocol", "stream", "outcome", "http_status", "input_tokens", "cached_input_tokens",
        "output_tokens", "reasoning_tokens", "cost_microusd", "billed", "reason", "duration_ms",
    ),
}  # fmt: skip

#: Columns that SQLite keeps as 0/1 and PostgreSQL as BOOLEAN.
_BOOLEANS = {("usage", "stream"), ("usage", "billed")}


async def copy_store(source: Store, target: Store) -> dict[str, int]:
    """Copy every table of ``source`` into the empty ``target``; rows copied per table.

    StoreError when the target is not empty, the source has open holds, or either ledger
    check fails afterwards (the message lists the problems)."""
    problems = await source.ledger_check()
    if problems:
        raise StoreError("the source ledger is inconsistent: " + "; ".join(problems))
    if await source.export_rows("holds", ("request_id",)):
        raise StoreError("the source has open credit holds: stop every gateway on it, then copy")
    for table in TABLES:
        if await target.export_rows(table, (TABLES[table][0],)):
            raise StoreError(f"the target is not empty (table {table} has rows): copy only into a new store")
    counts: dict[str, int] = {}
    for table, columns in TABLES.items():
        rows = [_convert(table, columns, row) for row in await source.export_rows(table, columns)]
        await target.import_rows(table, columns, rows)
        counts[table] = len(rows)
    await target.flush()
    problems = await target.ledger_check()
    if problems:
        raise StoreError("the copied ledger is inconsistent: " + "; ".join(problems))
    return counts


def _convert(table: str, columns: tuple[str, ...], row: Any) -> tuple[Any, ...]:
    return tuple(
        bool(v) if (table, c) in _BOOLEANS else bytes(v) if isinstance(v, memoryview) else v
        for c, v in zip(columns, row, strict=True)
    )
