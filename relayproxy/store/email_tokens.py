"""The single-use links the dashboard mails: sign-up verification (``verify``) and password reset
(``reset``).

Only the SHA-256 of a link's token is stored. A token is good once, until its expiry; using one
also spends every other token of that user for the same purpose (an older reset link dies with
the newer one). Expired rows are pruned when a new token is issued. Plain SQL over
``Store.transaction``/``query``: both backends.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from relayproxy.store.accounts import token_hash
from relayproxy.store.facade import Store, utc_iso, utc_now

__all__ = ["PURPOSES", "EmailTokens"]

PURPOSES = ("verify", "reset")


def _later(seconds: float) -> str:
    return utc_iso(datetime.now(UTC) + timedelta(seconds=seconds))


class EmailTokens:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def issue(self, user_id: int, purpose: str, token: str, *, valid_s: float) -> None:
        assert purpose in PURPOSES
        now = utc_now()

        await self._store.transaction(
            [
                ("DELETE FROM email_tokens WHERE expires_at <= ?", (now,)),
                (
                    "INSERT INTO email_tokens(token_hash, user_id, purpose, created_at, expires_at) VALUES (?,?,?,?,?)",
                    (token_hash(token), user_id, purpose, now, _later(valid_s)),
                ),
            ]
        )

    async def peek(self, token: str, purpose: str) -> int | None:
        """The user id of a good (unused, unexpired) token, which stays good."""
        rows = await self._store.query(
            "SELECT user_id FROM email_tokens WHERE token_hash = ? AND purpose = ? AND used_at IS NULL"
            " AND expires_at > ?",
            (token_hash(token), purpose, utc_now()),
        )
        return int(rows[0][0]) if rows else None

    async def consume(self, token: str, purpose: str) -> int | None:
        """Spend a good token: its user id for the one caller that spent it, else None."""
        digest, now = token_hash(token), utc_now()

        # Spend it (the guard makes one caller win), then every other live link of its user and kind.
        spent, _ = await self._store.transaction(
            [
                (
                    "UPDATE email_tokens SET used_at = ? WHERE token_hash = ? AND purpose = ? AND used_at IS NULL"
                    " AND expires_at > ? RETURNING user_id",
                    (now, digest, purpose, now),
                ),
                (
                    "UPDATE email_tokens SET used_at = ? WHERE purpose = ? AND used_at IS NULL AND user_id ="
                    " (SELECT user_id FROM email_tokens WHERE token_hash = ? AND used_at = ?)",
                    (now, purpose, digest, now),
                ),
            ]
        )
        return int(spent.rows[0][0]) if spent.rows else None
