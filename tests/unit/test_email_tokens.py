"""Mailed-link tokens (store/email_tokens.py) and the users' verified flag, on each backend."""

from __future__ import annotations

import pytest

from relayproxy.store.accounts import Accounts, token_hash
from relayproxy.store.email_tokens import EmailTokens
from relayproxy.store.passwords import hash_password
from tests.conftest import Opener

pytestmark = pytest.mark.anyio


async def test_tokens_are_single_use_per_purpose_and_expire(open_db: Opener) -> None:
    store = await open_db()
    try:
        accounts, tokens = Accounts(store), EmailTokens(store)
        user = await accounts.create_user("t@example.com", "t", hash_password("pw"), verified=False)
        assert user is not None and not user.verified
        await tokens.issue(user.id, "reset", "old-link", valid_s=3600)
        await tokens.issue(user.id, "reset", "new-link", valid_s=3600)
        await tokens.issue(user.id, "verify", "verify-link", valid_s=3600)
        await tokens.issue(user.id, "reset", "expired-link", valid_s=-1)
        assert await tokens.peek("new-link", "reset") == user.id
        assert await tokens.peek("new-link", "verify") is None  # another purpose
        assert await tokens.peek("expired-link", "reset") is None
        assert await tokens.consume("new-link", "reset") == user.id
        assert await tokens.consume("new-link", "reset") is None  # once
        assert await tokens.consume("old-link", "reset") is None  # spent with the newer one
        assert await tokens.consume("verify-link", "verify") == user.id  # another purpose stays good
        rows = await store.query("SELECT token_hash FROM email_tokens")
        assert token_hash("new-link") in {bytes(r[0]) for r in rows}  # only hashes are kept
        assert await accounts.mark_verified(user.id) is True
        assert await accounts.mark_verified(user.id) is False  # only the first call changes it
        again = await accounts.user_by_id(user.id)
        assert again is not None and again.verified
    finally:
        await store.close()
