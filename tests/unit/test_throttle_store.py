"""The login throttle's counts in the store (store/throttle.py), on each backend, shared by two
stores on one database as two workers (or two gateways) share it."""

from __future__ import annotations

import pytest

from relayproxy.dashboard.sessions import Throttle
from relayproxy.store.throttle import Attempts
from tests.conftest import Opener

pytestmark = pytest.mark.anyio


async def test_throttle_per_email_and_per_client_across_stores(open_db: Opener) -> None:
    one, two = await open_db(), await open_db()
    try:
        a = Throttle(Attempts(one), per_email=3, per_client=5, window_s=60)
        b = Throttle(Attempts(two), per_email=3, per_client=5, window_s=60)
        for worker in (a, b, a):
            assert not await worker.blocked("a@x", "1.1.1.1")
            await worker.failed("a@x", "1.1.1.1")
        assert await b.blocked("a@x", "2.2.2.2")  # the e-mail, from anywhere, on the other worker
        assert not await b.blocked("b@x", "2.2.2.2")
        await b.failed("b@x", "1.1.1.1")
        await a.failed("c@x", "1.1.1.1")
        assert await a.blocked("d@x", "1.1.1.1")  # the client, for any e-mail
        await b.succeeded("b@x")
        assert await a.blocked("b@x", "1.1.1.1") and not await a.blocked("b@x", "3.3.3.3")
        rows = await one.query("SELECT key FROM throttle_events")
        assert all(b"a@x" not in bytes(r[0]) and b"1.1.1.1" not in bytes(r[0]) for r in rows)  # hashed
    finally:
        await one.close()
        await two.close()


async def test_attempts_window_and_pruning(open_db: Opener) -> None:
    store = await open_db()
    try:
        attempts = Attempts(store, keep_s=3600)

        await store.transaction(
            [("INSERT INTO throttle_events(key, at) VALUES (?, ?)", (b"\x00" * 32, "2020-01-01T00:00:00.000Z"))]
        )
        await attempts.record(["k1", "k2"])
        await attempts.record(["k1"])
        assert await attempts.count(["k1", "k2", "k3"], 60) == {"k1": 2, "k2": 1, "k3": 0}
        assert await attempts.count(["k1"], 0) == {"k1": 0}  # outside a zero window
        rows = await store.query("SELECT COUNT(*) FROM throttle_events")
        assert int(rows[0][0]) == 3  # the 2020 row was pruned by the first record
    finally:
        await store.close()
