"""Suite-wide settings."""

from hypothesis import HealthCheck, settings

# Timing is measured by `make bench`, never asserted by tests: a loaded CI machine must not turn a
# slow example into a failure.
settings.register_profile("relayproxy", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("relayproxy")

import os  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from relayproxy.store.backends import open_store  # noqa: E402
from relayproxy.store.facade import Store  # noqa: E402
from tests.pgcluster import PgCluster, pg_bindir  # noqa: E402

Opener = Callable[[], Awaitable[Store]]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL for the session (skipped when no PostgreSQL is installed, except
    under CI, where .ci/run installs it and a missing server is a failure)."""
    bindir = pg_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries not found under CI: .ci/run installs postgresql")
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql): PostgreSQL backend tests skipped")
    cluster = PgCluster(bindir)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """The URL of a fresh, empty PostgreSQL database for one test."""
    return pg_cluster.new_database()


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: trio is installed as a dependency of selenium (the dashboard's browser test),
    and anyio's plugin would otherwise run every async test on it too."""
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgres"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens a store on each backend (SQLite in a temp file, PostgreSQL in a fresh database), as
    often as a test needs (several stores on one database: several machines)."""
    where: str | Path = request.getfixturevalue("pg_url") if request.param == "postgres" else tmp_path / "db.sqlite"
    return lambda: open_store(where)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The store on each backend, its ledger checked clean at the end."""
    if request.param == "postgres":
        s = await open_store(request.getfixturevalue("pg_url"), lease_s=2)
    else:
        s = await open_store(tmp_path / "relay.db")
    yield s
    assert await s.ledger_check() == []
    await s.close()
