"""The one place relayproxy uses aiosqlite's private attributes (pinned range in pyproject.toml).

``GroupCommit`` runs a whole batch of transactions in one trip to aiosqlite's database thread.
aiosqlite's public API makes one trip per statement (``execute``, each ``BEGIN``/``COMMIT``) and
runs each in a coroutine, so a batch would cost a task and a thread wake-up per statement; its
thread offers no public way to run a function of the plain ``sqlite3.Connection``. This module
does exactly that and nothing else, through three private attributes of ``aiosqlite.Connection``
(as aiosqlite 0.22's own ``_execute`` uses them):

- ``_connection``: the ``sqlite3.Connection`` (``None`` before connect and after close);
- ``_running``: ``False`` once ``close``/``stop`` began;
- ``_tx``: the ``queue.SimpleQueue`` of ``(future, function)`` pairs the thread takes one by one,
  setting the future (through ``call_soon_threadsafe``) to the function's result or exception.

tests/unit/test_aiosqlite_adapter.py checks each of them and fails, naming this module, when an
aiosqlite release changes them: update this module (or the pin) then, nowhere else.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite

__all__ = ["plain_connection", "queue_on_thread"]


def plain_connection(db: aiosqlite.Connection) -> sqlite3.Connection:
    """The ``sqlite3.Connection`` under ``db``, for functions run on its thread. ValueError: closed."""
    conn: sqlite3.Connection | None = db._connection
    if conn is None:
        raise ValueError("no active connection")
    return conn


def queue_on_thread(db: aiosqlite.Connection, future: asyncio.Future[Any], function: Callable[[], Any]) -> None:
    """Queue ``function`` on ``db``'s thread, which sets ``future`` to its outcome (what aiosqlite's
    ``Connection._execute`` does, without a coroutine, so without a task to run it). ValueError: closed."""
    if not db._running or db._connection is None:
        raise ValueError("Connection closed")
    db._tx.put_nowait((future, function))
