"""Dashboard users, their sessions, the one-time setup token, key options and the audit trail.

Plain SQL (nothing beyond ``ON CONFLICT`` that PostgreSQL lacks), over ``Store.transaction`` and
``Store.query``: on PostgreSQL the same SQL runs through PgStore's seam (pg_qmark.py).
Secrets are never stored: a session token and the setup token are kept as their SHA-256 only, a
password as its argon2id hash (passwords.py). Timestamps are the store's ISO text (``utc_now``),
comparable as strings, so expiry checks are plain ``WHERE ... > ?``.

Sessions expire on whichever comes first: ``idle_s`` after their last use, or ``absolute_s``
after their creation. Revoking deletes the row, so every worker sees it at its next lookup.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiosqlite

from relayproxy.store.facade import Store, utc_iso, utc_now

__all__ = ["Accounts", "SessionInfo", "User", "token_hash"]


_USER_COLS = "u.id, u.email, a.name, u.admin, u.disabled, u.created_at, u.password_hash, u.verified"
_USER_FROM = " FROM users u JOIN accounts a ON a.id = u.account_id"


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


def _user(row: tuple[object, ...]) -> User:
    uid, email, account, admin, disabled, created, pw, verified = row
    flags = bool(admin), bool(disabled)
    return User(int(uid), str(email), str(account), *flags, str(created), str(pw), bool(verified))  # type: ignore[call-overload]


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

        async def txn(db: aiosqlite.Connection) -> bool:
            await db.execute(
                "INSERT INTO accounts(name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING", (account, created)
            )
            cur = await db.execute(
                "INSERT INTO users(email, password_hash, account_id, admin, created_at, verified)"
                " SELECT ?, ?, id, ?, ?, ? FROM accounts WHERE name = ? ON CONFLICT(email) DO NOTHING",
                (email, password_hash, int(admin), created, int(verified), account),
            )
            return bool(cur.rowcount == 1)

        if not await self._store.transaction(txn):
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

        async def txn(db: aiosqlite.Connection) -> None:
            await db.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
            await _end_sessions(db, user_id, keep_session)

        await self._store.transaction(txn)

    async def rehash(self, user_id: int, password_hash: str) -> None:
        """Replace the hash after a login found its parameters outdated (sessions stay)."""

        async def txn(db: aiosqlite.Connection) -> None:
            await db.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))

        await self._store.transaction(txn)

    async def mark_verified(self, user_id: int) -> bool:
        """Confirm the user's e-mail address; True only for the call that changed it."""

        async def txn(db: aiosqlite.Connection) -> bool:
            cur = await db.execute("UPDATE users SET verified = 1 WHERE id = ? AND verified = 0", (user_id,))
            return bool(cur.rowcount == 1)

        return await self._store.transaction(txn)

    async def disable_user(self, user_id: int) -> bool:
        """Disable the user and end all its sessions at once; False when no such user."""

        async def txn(db: aiosqlite.Connection) -> bool:
            cur = await db.execute("UPDATE users SET disabled = 1 WHERE id = ?", (user_id,))
            await _end_sessions(db, user_id, None)
            return bool(cur.rowcount == 1)

        return await self._store.transaction(txn)

    # -- sessions -------------------------------------------------------------------------------

    async def start_session(self, user_id: int, token: str, csrf: str, *, idle_s: float, absolute_s: float) -> None:
        now = utc_now()

        async def txn(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO sessions(token_hash, user_id, csrf, created_at, last_seen_at,"
                " idle_expires_at, absolute_expires_at) VALUES (?,?,?,?,?,?,?)",
                (token_hash(token), user_id, csrf, now, now, _later(idle_s), _later(absolute_s)),
            )

        await self._store.transaction(txn)

    async def session(self, token: str, *, idle_s: float) -> SessionInfo | None:
        """The live session for ``token`` (its idle expiry pushed on), or None: unknown, expired,
        revoked, or its user disabled."""
        digest, now = token_hash(token), utc_now()

        async def txn(db: aiosqlite.Connection) -> SessionInfo | None:
            cur = await db.execute(
                f"SELECT s.csrf, {_USER_COLS}{_USER_FROM} JOIN sessions s ON s.user_id = u.id"
                " WHERE s.token_hash = ? AND s.idle_expires_at > ? AND s.absolute_expires_at > ? AND u.disabled = 0",
                (digest, now, now),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            await db.execute(
                "UPDATE sessions SET last_seen_at = ?, idle_expires_at = ? WHERE token_hash = ?",
                (now, _later(idle_s), digest),
            )
            return SessionInfo(_user(tuple(row[1:])), str(row[0]))

        return await self._store.transaction(txn, durable=False)

    async def end_session(self, token: str) -> None:
        async def txn(db: aiosqlite.Connection) -> None:
            await db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),))

        await self._store.transaction(txn)

    async def end_other_sessions(self, user_id: int, keep_token: str) -> None:
        await self._store.transaction(lambda db: _end_sessions(db, user_id, token_hash(keep_token)))

    # -- the one-time setup token ---------------------------------------------------------------

    async def issue_setup_token(self, token: str, *, valid_s: float = 24 * 3600) -> None:
        async def txn(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO setup_tokens(token_hash, created_at, expires_at) VALUES (?,?,?)",
                (token_hash(token), utc_now(), _later(valid_s)),
            )

        await self._store.transaction(txn)

    async def setup_token_valid(self, token: str) -> bool:
        rows = await self._store.query(
            "SELECT 1 FROM setup_tokens WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
            (token_hash(token), utc_now()),
        )
        return bool(rows)

    async def consume_setup_token(self, token: str) -> bool:
        """Mark the token used; True only for the one caller that used a valid, unused token."""
        now = utc_now()

        async def txn(db: aiosqlite.Connection) -> bool:
            cur = await db.execute(
                "UPDATE setup_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?",
                (now, token_hash(token), now),
            )
            return bool(cur.rowcount == 1)

        return await self._store.transaction(txn)

    # -- audit ----------------------------------------------------------------------------------

    async def audit(self, actor: str, action: str, target: str, detail: str = "") -> None:
        async def txn(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO audit(created_at, actor, action, target, detail) VALUES (?,?,?,?,?)",
                (utc_now(), actor, action, target, detail),
            )

        await self._store.transaction(txn)

    async def audit_log(self, limit: int = 100) -> list[tuple[str, str, str, str, str]]:
        rows = await self._store.query(
            "SELECT created_at, actor, action, target, detail FROM audit ORDER BY seq DESC LIMIT ?", (limit,)
        )
        return [tuple(str(v) for v in r) for r in rows]  # type: ignore[misc]


async def _end_sessions(db: aiosqlite.Connection, user_id: int, keep: bytes | None) -> None:
    if keep is None:
        await db.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))
    else:
        await db.execute("DELETE FROM sessions WHERE user_id = ? AND token_hash <> ?", (user_id, keep))
