"""The PostgreSQL backend beyond the shared ledger suite: migrate, db copy both ways, and
several gateways on one database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relayproxy import cli
from relayproxy.errors import StoreError
from relayproxy.records import UsageRecord
from relayproxy.store.backends import open_store
from relayproxy.store.copy import TABLES, copy_store
from relayproxy.store.facade import Store, utc_now


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def populate(store: Store) -> None:
    """Accounts, keys (one revoked), grants, a top-up and a refund, charges and usage records."""
    for i, name in enumerate(("alice", "bob", "carol")):
        await store.grant(name, 1_000_000 * (i + 1), "credit")
        await store.add_key(name, f"k-{name}", f"rp-{name}", f"hash-{name}".encode(), f"label {name}")
    await store.revoke_key("k-bob")
    bob = await store.ensure_account("bob")
    await store.credit_topup(
        bob,
        5_000_000,
        event_id="evt_1",
        event_type="checkout.session.completed",
        payment_key="checkout:cs_1",
        payment_ref="pi_1",
    )
    await store.book_refund("pi_1", 1_000_000, event_id="evt_2", event_type="charge.refunded")
    alice = await store.ensure_account("alice")
    for n in range(20):
        await store.hold(alice, f"r{n}", 10_000)
        rec = UsageRecord(
            f"r{n}",
            utc_now(),
            account="alice",
            key_id="k-alice",
            model="m",
            stream=n % 2 == 0,
            outcome="completed",
            cost_microusd=n * 100,
            billed=n > 0,
            reason="billed" if n else "usage_unknown",
            input_tokens=n,
            output_tokens=2 * n,
        )
        await store.settle(rec, n * 100)


async def snapshot(store: Store) -> dict[str, list[tuple[object, ...]]]:
    return {table: await store.export_rows(table, columns) for table, columns in TABLES.items()}


@pytest.mark.anyio
async def test_db_copy_round_trip_sqlite_postgres_sqlite_is_identical(tmp_path: Path, pg_url: str) -> None:
    first = await open_store(tmp_path / "first.db")
    await populate(first)
    pg = await open_store(pg_url)
    assert await copy_store(first, pg) == {t: len(rows) for t, rows in (await snapshot(first)).items()}
    back = await open_store(tmp_path / "back.db")
    await copy_store(pg, back)
    original, on_pg, returned = await snapshot(first), await snapshot(pg), await snapshot(back)
    assert original == on_pg == returned
    assert original["usage"] and original["ledger"]
    for name in ("alice", "bob", "carol"):
        assert await first.balance(name) == await pg.balance(name) == await back.balance(name)
    assert await first.list_keys() == await pg.list_keys() == await back.list_keys()
    assert await first.list_usage(limit=100) == await pg.list_usage(limit=100) == await back.list_usage(limit=100)
    # the copy goes on working: new rows get fresh ids after the copied ones
    await pg.grant("dave", 1_000, "after the copy")
    assert await pg.ledger_check() == []
    with pytest.raises(StoreError, match="not empty"):
        await copy_store(first, pg)
    for s in (first, pg, back):
        await s.close()


@pytest.mark.anyio
async def test_db_copy_refuses_a_source_with_open_holds(tmp_path: Path, pg_url: str) -> None:
    source = await open_store(tmp_path / "relay.db")
    alice = await source.ensure_account("alice")
    await source.grant("alice", 1_000, "")
    await source.hold(alice, "in-flight", 500)
    target = await open_store(pg_url)
    with pytest.raises(StoreError, match="open credit holds"):
        await copy_store(source, target)
    assert await target.export_rows("accounts", ("id",)) == []
    await source.close()
    await target.close()


def test_cli_migrate_and_db_copy(tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\ndatabase = "{pg_url}"\n')
    assert cli.main(["--config", str(config), "migrate"]) == 0
    assert cli.main(["--config", str(config), "migrate"]) == 0  # idempotent
    assert cli.main(["--config", str(config), "credits", "add", "--account", "alice", "--usd", "2"]) == 0
    assert cli.main(["--config", str(config), "db", "copy", "--to", str(tmp_path / "copy.db")]) == 0
    out = capsys.readouterr().out
    assert "schema up to date" in out and "ledger check ok on both" in out

    async def balance() -> tuple[int, int] | None:
        s = await open_store(tmp_path / "copy.db")
        try:
            return await s.balance("alice")
        finally:
            await s.close()

    assert asyncio.run(balance()) == (2_000_000, 0)
    assert cli.main(["--config", str(config), "db", "copy", "--to", str(tmp_path / "copy.db")]) == 1
    assert "not empty" in capsys.readouterr().err
