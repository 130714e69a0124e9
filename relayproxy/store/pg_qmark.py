"""The ``Store.transaction``/``query`` seam on PostgreSQL: SQL written for SQLite's driver
(``?`` placeholders, ``await db.execute(sql, params)`` answering a cursor with ``rowcount``,
``fetchone``, ``fetchall``), run on an asyncpg connection.

For the store's own portable SQL only (accounts.py): the translation numbers each ``?`` in
turn (``$1``, ``$2``, …), so a ``?`` must never appear inside a string literal there.
"""

from __future__ import annotations

from typing import Any, TypeAlias

__all__ = ["QmarkConnection", "to_dollar"]

_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg ships no type hints)


def to_dollar(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's numbered ones."""
    head, *rest = sql.split("?")
    return head + "".join(f"${i}{part}" for i, part in enumerate(rest, 1))


class Cursor:
    """The rows and the affected-row count of one statement (what accounts.py reads)."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    async def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Any]:
        return self._rows


class QmarkConnection:
    """An asyncpg connection inside an open transaction, spoken to like aiosqlite's."""

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Any = ()) -> Cursor:
        statement = await self._conn.prepare(to_dollar(sql))
        rows = [tuple(r) for r in await statement.fetch(*params)]
        verb, *_, count = (statement.get_statusmsg() or "").split() or [""]
        return Cursor(rows, int(count) if verb in ("INSERT", "UPDATE", "DELETE") and count.isdigit() else -1)
