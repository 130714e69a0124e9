"""What both store backends share: the timestamp format, a key's columns, the portable statements
of ``Store.transaction`` and the usage record as charged. The ``Store`` interface (facade.py)
exports them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple, TypeAlias

from relayproxy.records import UsageRecord

__all__ = ["KEY_COLUMNS", "Outcome", "Statement", "as_charged", "utc_iso", "utc_now"]

#: A key's columns as ``KeyInfo.from_row`` reads them (``k``: api_keys, ``a``: accounts).
KEY_COLUMNS = (
    "k.id, k.prefix, k.label, a.name, k.created_at, k.revoked_at,"
    " k.spend_limit_microusd, k.expires, k.models, k.spend_microusd, k.last_used_at"
)

#: One statement of ``Store.transaction``: portable SQL with ``?`` placeholders, and its parameters.
Statement: TypeAlias = tuple[str, tuple[Any, ...]]


class Outcome(NamedTuple):
    """What one statement of ``Store.transaction`` did: its rows ([] for most writes) and how many
    rows it changed (-1 for a query)."""

    rows: list[Any]
    rowcount: int


def utc_now() -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2026-11-23T10:00:00.123Z (the same as
    ``utc_iso(datetime.now(UTC))``; the text up to the second is formatted once per second)."""
    second, ms = divmod(time.time_ns() // 1_000_000, 1000)
    return f"{_second_text(second)}.{ms:03d}Z"


@lru_cache(maxsize=1)  # a pure function of its argument; strftime costs more than the whole rest
def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def utc_iso(moment: datetime) -> str:
    """``moment`` in the store's timestamp format (comparable as text), e.g. for ``recent_aborts``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def as_charged(rec: UsageRecord, asked: int, charged: int | None) -> UsageRecord:
    """The record as stored: its cost is what was really charged."""
    got = charged or 0
    if got == asked:
        return rec if rec.cost_microusd == got else replace(rec, cost_microusd=got)
    return replace(rec, cost_microusd=got, billed=got > 0, reason=rec.reason if charged is not None else "no_hold")
