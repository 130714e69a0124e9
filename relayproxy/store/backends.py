"""Picks the store's backend by the ``[server] database`` value: a SQLite path or a PostgreSQL URL.

Nothing above ``store/`` knows which backend runs: callers open the store here and use the
``Store`` interface (facade.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from relayproxy.store.facade import Store

__all__ = ["is_url", "open_store", "open_store_for"]


def is_url(database: str | Path) -> bool:
    """A PostgreSQL URL, not a SQLite path."""
    return isinstance(database, str) and database.startswith(("postgresql://", "postgres://"))


async def open_store(
    database: str | Path,
    *,
    pool_size: int = 10,
    lease_s: float = 15.0,
    password_env: str = "PGPASSWORD",
    journal: Path | None = None,
) -> Store:
    """Open (creating and migrating) the store ``database`` names. ``journal``: PostgreSQL's
    settlement journal (settlements kept while the database was unreachable; pg_outage.py)."""
    if is_url(database):
        # Imported here: a SQLite deployment does not load asyncpg (a few MB of resident memory).
        from relayproxy.store.postgres import PgStore

        return await PgStore.connect(
            str(database), pool_size=pool_size, lease_s=lease_s, password_env=password_env, journal=journal
        )
    return await Store.open(database)


class _ServerSettings(Protocol):
    @property
    def database(self) -> Path | str: ...
    @property
    def database_pool_size(self) -> int: ...
    @property
    def hold_lease_s(self) -> float: ...
    @property
    def database_password_env(self) -> str: ...
    @property
    def settlement_journal(self) -> Path: ...


class _Config(Protocol):
    @property
    def server(self) -> _ServerSettings: ...


async def open_store_for(config: _Config) -> Store:
    """The store of a configuration's ``[server]`` section."""
    s = config.server
    return await open_store(
        s.database,
        pool_size=s.database_pool_size,
        lease_s=s.hold_lease_s,
        password_env=s.database_password_env,
        journal=s.settlement_journal,
    )
