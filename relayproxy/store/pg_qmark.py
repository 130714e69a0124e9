"""``Store.transaction`` and ``Store.query`` on PostgreSQL: the store's portable SQL (written with
SQLite's ``?`` placeholders, accounts.py) run on an asyncpg connection.

For the store's own portable SQL only: the translation numbers each ``?`` in turn (``$1``,
``$2``, …), so a ``?`` must never appear inside a string literal there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

from relayproxy.store.facade import Outcome, Statement

__all__ = ["run_statements", "to_dollar"]

_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg ships no type hints)


def to_dollar(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's numbered ones."""
    head, *rest = sql.split("?")
    return head + "".join(f"${i}{part}" for i, part in enumerate(rest, 1))


async def run_statements(conn: _Conn, statements: Sequence[Statement]) -> list[Outcome]:
    """Each statement in turn on ``conn`` (inside the transaction the caller opened): its rows,
    and its affected-row count as SQLite's ``rowcount`` gives it (-1 for a query)."""
    outcomes = []
    for sql, params in statements:
        statement = await conn.prepare(to_dollar(sql))
        rows = [tuple(r) for r in await statement.fetch(*params)]
        verb, *_, count = (statement.get_statusmsg() or "").split() or [""]
        outcomes.append(Outcome(rows, int(count) if verb in ("INSERT", "UPDATE", "DELETE") and count.isdigit() else -1))
    return outcomes
