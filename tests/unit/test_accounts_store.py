"""Dashboard users, sessions, setup tokens and audit records in the store (store/accounts.py),
on each backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from relayproxy.store.accounts import Accounts, token_hash
from relayproxy.store.backends import open_store
from relayproxy.store.facade import Store
from relayproxy.store.passwords import hash_password, verify, verify_dummy

pytestmark = pytest.mark.anyio

Opener = Callable[[], Awaitable[Store]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgres"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens a store on one database (each call: another store on the same one, as another worker)."""
    where: str | Path = request.getfixturevalue("pg_url") if request.param == "postgres" else tmp_path / "db.sqlite"
    return lambda: open_store(where)


async def test_user_create_unique_and_password_verifies(open_db: Opener) -> None:
    store = await open_db()
    try:
        accounts = Accounts(store)
        pw_hash = hash_password("correct horse")
        user = await accounts.create_user("Ann@Example.com", "acme", pw_hash, admin=True)
        assert user is not None and user.email == "ann@example.com" and user.account == "acme" and user.admin
        assert user.password_hash.startswith("$argon2id$")
        assert await accounts.create_user("ann@example.com", "other", pw_hash) is None
        assert verify(user.password_hash, "correct horse") == (True, False)
        assert verify(user.password_hash, "wrong")[0] is False
        assert verify_dummy("anything") is False
        assert "password_hash" not in user.public()
        assert [u.email for u in await accounts.list_users("acme")] == ["ann@example.com"]
    finally:
        await store.close()


async def test_sessions_store_only_a_hash_and_revoke_at_once(open_db: Opener) -> None:
    store, other_worker = await open_db(), await open_db()
    try:
        accounts, accounts2 = Accounts(store), Accounts(other_worker)
        user = await accounts.create_user("b@example.com", "b", hash_password("pw"))
        assert user is not None
        await accounts.start_session(user.id, "tok-1", "csrf-1", idle_s=600, absolute_s=3600)
        await accounts.start_session(user.id, "tok-2", "csrf-2", idle_s=600, absolute_s=3600)
        rows = await store.query("SELECT token_hash FROM sessions ORDER BY created_at")
        assert {bytes(r[0]) for r in rows} == {token_hash("tok-1"), token_hash("tok-2")}
        live = await accounts2.session("tok-1", idle_s=600)
        assert live is not None and live.user.id == user.id and live.csrf == "csrf-1"
        await accounts.end_other_sessions(user.id, "tok-1")
        assert await accounts2.session("tok-2", idle_s=600) is None
        assert await accounts2.session("tok-1", idle_s=600) is not None
        await accounts.end_session("tok-1")
        assert await accounts2.session("tok-1", idle_s=600) is None
        await accounts.start_session(user.id, "tok-3", "c", idle_s=600, absolute_s=3600)
        assert await accounts.disable_user(user.id)
        assert await accounts2.session("tok-3", idle_s=600) is None
    finally:
        await store.close()
        await other_worker.close()


async def test_expired_sessions_are_not_accepted(open_db: Opener) -> None:
    store = await open_db()
    try:
        accounts = Accounts(store)
        user = await accounts.create_user("c@example.com", "c", hash_password("pw"))
        assert user is not None
        await accounts.start_session(user.id, "idle", "c", idle_s=-1, absolute_s=3600)
        await accounts.start_session(user.id, "old", "c", idle_s=600, absolute_s=-1)
        assert await accounts.session("idle", idle_s=600) is None
        assert await accounts.session("old", idle_s=600) is None
    finally:
        await store.close()


async def test_setup_token_works_once_and_audit_records(open_db: Opener) -> None:
    store = await open_db()
    try:
        accounts = Accounts(store)
        await accounts.issue_setup_token("setup-secret")
        await accounts.issue_setup_token("stale", valid_s=-1)
        assert await accounts.setup_token_valid("setup-secret")
        assert not await accounts.setup_token_valid("stale")
        assert await accounts.consume_setup_token("setup-secret")
        assert not await accounts.consume_setup_token("setup-secret")
        assert not await accounts.setup_token_valid("setup-secret")
        await accounts.audit("admin@example.com", "disable_user", "user:7")
        assert [r[1:4] for r in await accounts.audit_log()] == [("admin@example.com", "disable_user", "user:7")]
    finally:
        await store.close()
