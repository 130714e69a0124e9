"""Dashboard users, their sessions, the one-time setup token, key options and the audit trail.

Plain SQL (nothing beyond ``ON CONFLICT`` that PostgreSQL lacks), over ``Store.transaction`` (a
list of statements run as one transaction) and ``Store.query``: on PostgreSQL the same SQL runs
with its ``?`` placeholders numbered (pg_qmark.py).
Secrets are never stored: a session token and the setup token are kept as their SHA-256 only, a
password as its argon2id hash (passwords.py). Timestamps are the store's ISO text (``utc_now``),
comparable as strings, so expiry checks are plain ``WHERE ... > ?``.

Sessions expire on whichever comes first: ``idle_s`` after their last use, or ``absolute_s``
after their creation. Revoking deletes the row, so every worker sees it at its next lookup.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from relayproxy.store.facade import Statement, Store, utc_iso, utc_now

__all__ = ["Accounts", "SessionInfo", "User", "token_hash"]


_USER_COLS = "u.id, u.email, a.name, u.admin, u.disabled, u.created_at, u.password_hash, u.verified"
_USER_FROM = " FROM users u JOIN accounts a ON a.id = u.account_id"
#: A session that is live (with ``s`` the session and ``u`` its user): token hash, now, now.
_LIVE_SESSION = "s.token_hash = ? AND s.idle_expires_at > ? AND s.absolute_expires_at > ? AND u.disabled = 0"


def token_hash(token: str) -> bytes:
    """What the store keeps of a session or setup token."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    account: str
    admin: bool
    disabled: bool
    created_at: str
    password_hash: str
    verified: bool = True  # False: a sign-up whose e-mail address is not confirmed yet

    def public(self) -> dict[str, object]:
        """The user without its password hash (for listings)."""
        return {
            "id": self.id,
            "email": self.email,
            "account": self.account,
            "admin": self.admin,
            "created": self.created_at,
            "disabled": self.disabled,
        }


@dataclass(frozen=True, slots=True)
class SessionInfo:
    user: User
    csrf: str


def _user(row: Sequence[Any]) -> User:
    uid, email, account, admin, disabled, created, pw, verified = row
    return User(int(uid), str(email), str(account), bool(admin), bool(disabled), str(created), str(pw), bool(verified))


def _later(seconds: float) -> str:
    return utc_iso(datetime.now(UTC) + timedelta(seconds=seconds))


class Accounts:
    """Users, sessions, setup tokens and the audit trail, over the gateway's ``Store`` (either backend)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # -- users ----------------------------------------------------------------------------------

    async def create_user(
        self, email: str, account: str, password_hash: str, *, admin: bool = False, verified: bool = True
    ) -> User | None:
        """The new user (its account created if missing); None when the e-mail is taken."""
        email = email.strip().lower()
        created = utc_now()

        _, inserted = await self._store.transaction(
            [
                (
                    "INSERT INTO accounts(name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                    (account, created),
                ),
                (
                    "INSERT INTO users(email, password_hash, account_id, admin, created_at, verified)"
                    " SELECT ?, ?, id, ?, ?, ? FROM accounts WHERE name = ? ON CONFLICT(email) DO NOTHING",
                    (email, password_hash, int(admin), created, int(verified), account),
                ),
            ]
        )
        if inserted.rowcount != 1:
            return None
        return await self.user_by_email(email)

    async def user_by_email(self, email: str) -> User | None:
        rows = await self._store.query(f"SELECT {_USER_COLS}{_USER_FROM} WHERE u.email = ?", (email.strip().lower(),))
        return _user(rows[0]) if rows else None

    async def user_by_id(self, user_id: int) -> User | None:
        rows = await self._store.query(f"SELECT {_USER_COLS}{_USER_FROM} WHERE u.id = ?", (user_id,))
        return _user(rows[0]) if rows else None

    async def list_users(self, account: str | None = None) -> list[User]:
        sql = f"SELECT {_USER_COLS}{_USER_FROM}"
        rows = await (
            self._store.query(sql + " WHERE a.name = ? ORDER BY u.id", (account,))
            if account
            else self._store.query(sql + " ORDER BY u.id")
        )
        return [_user(r) for r in rows]

    async def user_count(self) -> int:
        rows = await self._store.query("SELECT COUNT(*) FROM users")
        return int(rows[0][0])

    async def set_password(self, user_id: int, password_hash: str, *, keep_session: bytes | None = None) -> None:
        """Replace the hash and end the user's sessions (all but ``keep_session``)."""
        await self._store.transaction(
            [
                ("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)),
                _end_sessions(user_id, keep_session),
            ]
        )

    async def rehash(self, user_id: int, password_hash: str) -> None:
        """Replace the hash after a login found its parameters outdated (sessions stay)."""
        await self._store.transaction([("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))])

    async def mark_verified(self, user_id: int) -> bool:
        """Confirm the user's e-mail address; True only for the call that changed it."""

        (changed,) = await self._store.transaction(
            [("UPDATE users SET verified = 1 WHERE id = ? AND verified = 0", (user_id,))]
        )
        return changed.rowcount == 1

    async def disable_user(self, user_id: int) -> bool:
        """Disable the user and end all its sessions at once; False when no such user."""
        disabled, _ = await self._store.transaction(
            [("UPDATE users SET disabled = 1 WHERE id = ?", (user_id,)), _end_sessions(user_id, None)]
        )
        return disabled.rowcount == 1

    # -- sessions -------------------------------------------------------------------------------

    async def start_session(self, user_id: int, token: str, csrf: str, *, idle_s: float, absolute_s: float) -> None:
        now = utc_now()
        await self._store.transaction(
            [
                (
                    "INSERT INTO sessions(token_hash, user_id, csrf, created_at, last_seen_at,"
                    " idle_expires_at, absolute_expires_at) VALUES (?,?,?,?,?,?,?)",
                    (token_hash(token), user_id, csrf, now, now, _later(idle_s), _later(absolute_s)),
                )
            ]
        )

    async def session(self, token: str, *, idle_s: float) -> SessionInfo | None:
        """The live session for ``token`` (its idle expiry pushed on), or None: unknown, expired,
        revoked, or its user disabled."""
        digest, now = token_hash(token), utc_now()
        # The read, then the push-on guarded by the same conditions, in one transaction.
        found, _ = await self._store.transaction(
            [
                (
                    f"SELECT s.csrf, {_USER_COLS}{_USER_FROM} JOIN sessions s ON s.user_id = u.id"
                    f" WHERE {_LIVE_SESSION}",
                    (digest, now, now),
                ),
                (
                    "UPDATE sessions SET last_seen_at = ?, idle_expires_at = ? WHERE token_hash IN"
                    f" (SELECT s.token_hash{_USER_FROM} JOIN sessions s ON s.user_id = u.id WHERE {_LIVE_SESSION})",
                    (now, _later(idle_s), digest, now, now),
                ),
            ],
            durable=False,
        )
        if not found.rows:
            return None
        row = found.rows[0]
        return SessionInfo(_user(row[1:]), str(row[0]))

    async def end_session(self, token: str) -> None:
        await self._store.transaction([("DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),))])

    async def end_other_sessions(self, user_id: int, keep_token: str) -> None:
        await self._store.transaction([_end_sessions(user_id, token_hash(keep_token))])

    # -- the one-time setup token ---------------------------------------------------------------

    async def issue_setup_token(self, token: str, *, valid_s: float = 24 * 3600) -> None:
        await self._store.transaction(
            [
                (
                    "INSERT INTO setup_tokens(token_hash, created_at, expires_at) VALUES (?,?,?)",
                    (token_hash(token), utc_now(), _later(valid_s)),
                )
            ]
        )

    async def setup_token_valid(self, token: str) -> bool:
        rows = await self._store.query(
            "SELECT 1 FROM setup_tokens WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
            (token_hash(token), utc_now()),
        )
        return bool(rows)

    async def consume_setup_token(self, token: str) -> bool:
        """Mark the token used; True only for the one caller that used a valid, unused token."""
        now = utc_now()
        (used,) = await self._store.transaction(
            [
                (
                    "UPDATE setup_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
                    (now, token_hash(token), now),
                )
            ]
        )
        return used.rowcount == 1

    # -- audit ----------------------------------------------------------------------------------

    async def audit(self, actor: str, action: str, target: str, detail: str = "") -> None:
        await self._store.transaction(
            [
                (
                    "INSERT INTO audit(created_at, actor, action, target, detail) VALUES (?,?,?,?,?)",
                    (utc_now(), actor, action, target, detail),
                )
            ]
        )

    async def audit_log(self, limit: int = 100) -> list[tuple[str, str, str, str, str]]:
        rows = await self._store.query(
            "SELECT created_at, actor, action, target, detail FROM audit ORDER BY seq DESC LIMIT ?", (limit,)
        )
        return [
            (str(when), str(actor), str(action), str(target), str(detail))
            for when, actor, action, target, detail in rows
        ]


def _end_sessions(user_id: int, keep: bytes | None) -> Statement:
    if keep is None:
        return ("DELETE FROM sessions WHERE user_id = ?", (user_id,))
    return ("DELETE FROM sessions WHERE user_id = ? AND token_hash <> ?", (user_id, keep))
