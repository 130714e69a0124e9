"""The PostgreSQL store's bookings: operator grants, Stripe top-ups and refunds, balances, the
ledger check and whole-table copies (``db copy``). A part of ``PgStore`` (postgres.py, whose
docstring has the rules) kept apart, as pg_upkeep.py is.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeAlias, TypeVar

from relayproxy.billing.pricing import Booking
from relayproxy.store import pg_ledger as q
from relayproxy.store.common import utc_now

__all__ = ["Bookings"]

T = TypeVar("T")
_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg ships no type hints)
Txn = Callable[[_Conn], Awaitable[T]]


class Bookings:
    """Mixed into PgStore, which provides the transactions below."""

    async def _run(self, txn: Txn[T]) -> T:
        raise NotImplementedError

    async def _money(self, txn: Txn[T]) -> T:
        raise NotImplementedError

    async def _all(self, sql: str, args: Any = ()) -> list[Any]:
        raise NotImplementedError

    async def grant(self, account: str, amount_microusd: int, note: str = "") -> int:
        if amount_microusd <= 0:
            raise ValueError(f"a grant must be positive, got {amount_microusd} micro-USD")
        now = utc_now()

        async def txn(c: _Conn) -> int:
            account_id = await q.ensure_account(c, account)
            await q.entry(c, account_id, "grant", amount_microusd, f"grant:{uuid.uuid4()}", now, note=note)
            return int(
                await c.fetchval(
                    "UPDATE accounts SET balance_microusd = balance_microusd + $1 WHERE id = $2"
                    " RETURNING balance_microusd",
                    amount_microusd,
                    account_id,
                )
            )

        return await self._money(txn)

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
        if amount_microusd < 0:
            raise ValueError(f"a top-up must be 0 or more, got {amount_microusd}")
        now = utc_now()

        txn = partial(
            q.credit_topup,
            account_id=account_id,
            amount=amount_microusd,
            event_id=event_id,
            event_type=event_type,
            payment_key=payment_key,
            payment_ref=payment_ref,
            now=now,
        )
        try:
            return await self._money(txn)
        except q.DuplicatePayment:
            return Booking.DUPLICATE

    async def book_refund(
        self, payment_ref: str, refunded_total_microusd: int, *, event_id: str, event_type: str
    ) -> Booking:
        now = utc_now()

        txn = partial(
            q.book_refund,
            payment_ref=payment_ref,
            refunded_total=refunded_total_microusd,
            event_id=event_id,
            event_type=event_type,
            now=now,
        )
        return await self._money(txn)

    async def ledger_check(self) -> list[str]:
        async def txn(c: _Conn) -> list[str]:
            await c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return await q.check(c)

        return await self._run(txn)

    async def export_rows(self, table: str, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._all(f"SELECT {','.join(columns)} FROM {table} ORDER BY 1")]

    async def import_rows(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        async def txn(c: _Conn) -> None:
            await c.copy_records_to_table(table, records=rows, columns=list(columns))
            sequence = await c.fetchval("SELECT pg_get_serial_sequence($1, $2)", table, columns[0])
            if sequence is not None and rows:  # an identity column continues after the copied keys
                await c.execute(f"SELECT setval($1, (SELECT max({columns[0]}) FROM {table}))", sequence)

        await self._run(txn)
