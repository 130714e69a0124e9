"""The dashboard's read queries over the store (plain SQL through ``Store.query``, ``?`` params).

Every customer query is scoped by the caller's account name in its WHERE clause, so guessing
another account's key id or request id finds nothing.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from relayproxy.records import UsageRecord
from relayproxy.store.facade import Store

__all__ = ["UsageFilter", "account_id", "accounts_with_balances", "csv_rows", "ledger_history", "usage_page"]

_USAGE_FIELDS = tuple(UsageRecord.__dataclass_fields__)
_CSV_FIELDS = (
    "request_id", "created_at", "key_id", "model", "client_protocol", "stream", "outcome", "http_status",
    "input_tokens", "cached_input_tokens", "output_tokens", "cost_microusd", "billed", "reason",
)  # fmt: skip
_FLAGS = frozenset(i for i, name in enumerate(_CSV_FIELDS) if name in ("stream", "billed"))  # 1/0 or true/false
PAGE_SIZE = 50


def _day(text: str) -> str | None:
    try:
        return date.fromisoformat(text).isoformat() if text else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class UsageFilter:
    key: str = ""
    model: str = ""
    outcome: str = ""
    since: str = ""  # YYYY-MM-DD, inclusive
    until: str = ""  # YYYY-MM-DD, inclusive

    @classmethod
    def from_query(cls, params: dict[str, str]) -> UsageFilter:
        return cls(
            params.get("key", "")[:64],
            params.get("model", "")[:200],
            params.get("outcome", "")[:64],
            _day(params.get("from", "")) or "",
            _day(params.get("to", "")) or "",
        )

    def where(self, account: str) -> tuple[str, list[Any]]:
        sql, args = ["account = ?"], [account]
        for column, value in (("key_id", self.key), ("model", self.model), ("outcome", self.outcome)):
            if value:
                sql.append(f"{column} = ?")
                args.append(value)
        if self.since:
            sql.append("created_at >= ?")
            args.append(self.since)
        if self.until:
            sql.append("created_at < ?")
            args.append((date.fromisoformat(self.until) + timedelta(days=1)).isoformat())
        return " AND ".join(sql), args

    def query_string(self) -> str:
        from urllib.parse import urlencode

        pairs = {"key": self.key, "model": self.model, "outcome": self.outcome, "from": self.since, "to": self.until}
        return urlencode({k: v for k, v in pairs.items() if v})


def _record(row: Any) -> UsageRecord:
    rec = UsageRecord(*row)
    rec.stream, rec.billed = bool(rec.stream), bool(rec.billed)
    return rec


async def usage_page(store: Store, account: str, flt: UsageFilter, page: int) -> tuple[list[UsageRecord], bool]:
    """One page of the account's records, newest first, and whether there is a next page."""
    where, args = flt.where(account)
    rows = await store.query(
        f"SELECT {','.join(_USAGE_FIELDS)} FROM usage WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
        [*args, PAGE_SIZE + 1, page * PAGE_SIZE],
    )
    return [_record(r) for r in rows[:PAGE_SIZE]], len(rows) > PAGE_SIZE


async def csv_rows(store: Store, account: str, flt: UsageFilter, batch: int = 500) -> AsyncIterator[bytes]:
    """The filtered records as CSV, read and sent a batch at a time (never all in memory)."""
    where, args = flt.where(account)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(_CSV_FIELDS)
    yield out.getvalue().encode()
    last: int | None = None
    while True:
        more = " AND seq < ?" if last is not None else ""
        rows = await store.query(
            f"SELECT seq, {','.join(_CSV_FIELDS)} FROM usage WHERE {where}{more} ORDER BY seq DESC LIMIT ?",
            [*args, *([last] if last is not None else []), batch],
        )
        if not rows:
            return
        out.seek(0)
        out.truncate()
        for row in rows:
            writer.writerow([_cell(i, v) for i, v in enumerate(row[1:])])
        last = int(rows[-1][0])
        yield out.getvalue().encode()


def _cell(index: int, value: Any) -> Any:
    if index in _FLAGS:
        return "true" if value else "false"
    return value


async def ledger_history(store: Store, account: str, limit: int = 100) -> list[tuple[str, str, int, str]]:
    """Top-ups, grants and refunds one by one, charges summed per day; newest first."""
    rows = await store.query(
        "SELECT l.created_at, l.kind, l.amount_microusd, l.note FROM ledger l JOIN accounts a ON a.id = l.account_id"
        " WHERE a.name = ? AND l.kind IN ('grant', 'topup', 'refund') ORDER BY l.seq DESC LIMIT ?",
        (account, limit),
    )
    charges = await store.query(
        "SELECT substr(l.created_at, 1, 10), SUM(l.amount_microusd), COUNT(*) FROM ledger l"
        " JOIN accounts a ON a.id = l.account_id WHERE a.name = ? AND l.kind = 'charge'"
        " GROUP BY substr(l.created_at, 1, 10) ORDER BY 1 DESC LIMIT ?",
        (account, limit),
    )
    entries = [(str(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows]
    entries += [
        (str(r[0]), "charges", int(r[1]), f"{int(r[2])} request{'' if int(r[2]) == 1 else 's'}") for r in charges
    ]
    return sorted(entries, reverse=True)[:limit]


async def accounts_with_balances(store: Store) -> list[tuple[str, int, int]]:
    rows = await store.query("SELECT name, balance_microusd, held_microusd FROM accounts ORDER BY name")
    return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]


async def account_id(store: Store, name: str) -> int | None:
    rows = await store.query("SELECT id FROM accounts WHERE name = ?", (name,))
    return int(rows[0][0]) if rows else None


async def outcomes_since(store: Store, account: str, since: str) -> list[tuple[str, int]]:
    rows = await store.query(
        "SELECT outcome, COUNT(*) FROM usage WHERE account = ? AND created_at >= ? GROUP BY outcome ORDER BY 2 DESC",
        (account, since),
    )
    return [(str(r[0]), int(r[1])) for r in rows]


async def spend_per_day(store: Store, account: str, since_day: str) -> dict[str, int]:
    rows = await store.query(
        "SELECT substr(l.created_at, 1, 10), SUM(l.amount_microusd) FROM ledger l"
        " JOIN accounts a ON a.id = l.account_id WHERE a.name = ? AND l.kind = 'charge' AND l.created_at >= ?"
        " GROUP BY substr(l.created_at, 1, 10)",
        (account, since_day),
    )
    return {str(r[0]): int(r[1]) for r in rows}
