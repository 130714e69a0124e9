"""Counted attempts in a sliding window, shared by every worker and every gateway on one store:
failed logins per e-mail and per client address, mails sent per address.

Each attempt is one row of ``throttle_events`` (the SHA-256 of its key, and when); counting is a
``COUNT(*)`` over the window, and recording prunes the rows older than the longest window in
use, so the table stays small. Plain SQL over ``Store.transaction``/``query``: both backends.
Keys are hashed so that the table holds no e-mail address or client address in clear.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from relayproxy.store.facade import Store, utc_iso, utc_now

__all__ = ["Attempts"]


def _key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _ago(seconds: float) -> str:
    return utc_iso(datetime.now(UTC) - timedelta(seconds=seconds))


class Attempts:
    """Attempts per key in the store; ``keep_s`` is how long a row is kept (the longest window)."""

    def __init__(self, store: Store, keep_s: float = 3600.0) -> None:
        self._store = store
        self._keep_s = keep_s

    async def count(self, keys: Sequence[str], window_s: float) -> dict[str, int]:
        """How many attempts each key had in the last ``window_s`` seconds."""
        hashed = {_key(k): k for k in keys}
        marks = ", ".join("?" for _ in hashed)
        rows = await self._store.query(
            f"SELECT key, COUNT(*) FROM throttle_events WHERE key IN ({marks}) AND at > ? GROUP BY key",
            (*hashed, _ago(window_s)),
        )
        counts = dict.fromkeys(keys, 0)
        for key, n in rows:
            counts[hashed[bytes(key)]] = int(n)
        return counts

    async def record(self, keys: Sequence[str]) -> None:
        """One attempt for each key (and the rows past ``keep_s`` pruned)."""
        now, cutoff = utc_now(), _ago(self._keep_s)

        inserts = [("INSERT INTO throttle_events(key, at) VALUES (?, ?)", (_key(key), now)) for key in keys]
        await self._store.transaction(
            [*inserts, ("DELETE FROM throttle_events WHERE at <= ?", (cutoff,))], durable=False
        )

    async def clear(self, key: str) -> None:
        await self._store.transaction([("DELETE FROM throttle_events WHERE key = ?", (_key(key),))], durable=False)
