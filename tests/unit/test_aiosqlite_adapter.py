"""aiosqlite's private attributes that relayproxy/store/_aiosqlite_adapter.py relies on are still there.

When one of these fails after an aiosqlite upgrade, the adapter (and only the adapter) needs
updating to the new release, or the pin in pyproject.toml must stay where it was.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import sqlite3
from collections.abc import AsyncIterator
from importlib.metadata import version

import aiosqlite
import pytest
from aiosqlite import core

from relayproxy.store._aiosqlite_adapter import plain_connection, queue_on_thread

ADAPTER = "relayproxy/store/_aiosqlite_adapter.py"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def db() -> AsyncIterator[aiosqlite.Connection]:
    conn = await aiosqlite.connect(":memory:", isolation_level=None)
    try:
        yield conn
    finally:
        await conn.close()


def changed(what: str) -> str:
    return (
        f"aiosqlite {version('aiosqlite')} changed {what}: {ADAPTER} relies on it; update the adapter or keep the pin"
    )


async def test_the_private_attributes_are_there_with_their_types(db: aiosqlite.Connection) -> None:
    assert isinstance(getattr(db, "_connection", None), sqlite3.Connection), changed("Connection._connection")
    assert getattr(db, "_running", None) is True, changed("Connection._running")
    tx = getattr(db, "_tx", None)
    assert isinstance(tx, queue.SimpleQueue), changed("Connection._tx (a queue.SimpleQueue)")
    worker = getattr(core, "_connection_worker_thread", None)
    assert worker is not None, changed("core._connection_worker_thread")
    # The thread unpacks each item as (future, function) and calls function().
    assert "future, function = tx.get()" in inspect.getsource(worker), changed("the database thread's queue items")


async def test_a_queued_function_runs_on_the_thread_with_the_plain_connection(db: aiosqlite.Connection) -> None:
    loop = asyncio.get_running_loop()
    conn = plain_connection(db)
    future: asyncio.Future[object] = loop.create_future()
    queue_on_thread(db, future, lambda: conn.execute("SELECT 40 + 2").fetchone())
    assert await asyncio.wait_for(future, 10) == (42,), changed("how the database thread answers a queued item")
    failing: asyncio.Future[object] = loop.create_future()
    queue_on_thread(db, failing, lambda: conn.execute("SELECT * FROM missing"))
    with pytest.raises(sqlite3.OperationalError):
        await asyncio.wait_for(failing, 10)


async def test_a_closed_connection_is_refused() -> None:
    db = await aiosqlite.connect(":memory:")
    await db.close()
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError):
        plain_connection(db)
    with pytest.raises(ValueError):
        queue_on_thread(db, loop.create_future(), lambda: None)
    assert getattr(db, "_running", None) is False, changed("Connection._running after close")
