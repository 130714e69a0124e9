"""The PostgreSQL backend beyond the shared ledger suite: migrate, db copy both ways, and
several gateways on one database."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from relayproxy import cli
from relayproxy.billing.pricing import Booking
from relayproxy.errors import StoreError
from relayproxy.records import UsageRecord
from relayproxy.store.accounts import Accounts
from relayproxy.store.backends import open_store
from relayproxy.store.copy import TABLES, copy_store
from relayproxy.store.facade import Store, utc_now
from tests.integration.procs import (
    DripUpstream,
    GatewayProcess,
    post_stream,
    run_cli,
    start_gateway,
    stream_in_thread,
    write_config,
)


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
    accounts = Accounts(store)
    await accounts.create_user("ann@example.com", "alice", "$argon2id$hash-a", admin=True)
    await accounts.create_user("bob@example.com", "bob", "$argon2id$hash-b")
    await accounts.disable_user(2)
    await accounts.audit("cli", "user.disable", "bob@example.com", "detail")
    limited = b"limited-key-hash"
    await store.add_key("carol", "k-lim", "rp-lim", limited, "", spend_limit_microusd=9_000, models=("m",))
    assert (await store.admit(limited, "lim-1", 5_000, aborts_since=None, abort_cap=0, model="m")).held
    await store.settle(UsageRecord("lim-1", utc_now(), account="carol", key_id="k-lim", model="m"), 3_000)


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
    assert original["users"] and original["audit"]
    assert [u.public() for u in await Accounts(first).list_users()] == [
        u.public() for u in await Accounts(pg).list_users()
    ]
    assert {k.id: k.spend_microusd for k in await pg.list_keys()}["k-lim"] == 3_000
    # the copy goes on working: new rows get fresh ids after the copied ones
    await pg.grant("dave", 1_000, "after the copy")
    new_user = await Accounts(pg).create_user("dave@example.com", "dave", "$argon2id$hash-d")
    assert new_user is not None and new_user.id == 3
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


def test_cli_users_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\ndatabase = "{pg_url}"\n')
    made = run_cli(config, "users", "create", "--email", "ann@example.com", "--account", "acme", "--admin")
    assert made.returncode == 0 and len(made.stdout.splitlines()) == 1, made.stderr
    assert run_cli(config, "users", "disable", "--email", "ann@example.com").returncode == 0
    rows = [json.loads(line) for line in run_cli(config, "users", "list", "--json").stdout.splitlines()]
    assert [(r["email"], r["account"], r["admin"], r["disabled"]) for r in rows] == [
        ("ann@example.com", "acme", True, True)
    ]


# -- two gateways, one database ---------------------------------------------------------------------

# 100 output tokens at $2,000 per 1M list, 50 % below list: exactly $0.10 held and $0.10 charged,
# since the drip upstream sends as many tokens as max_tokens allows (input is free).
PRICED = "drip-100-0"


def _two_gateways(
    tmp_path: Path,
    upstream: DripUpstream,
    pg_url: str,
    models: tuple[str, ...] = (),
    key_options: tuple[str, ...] = (),
    usd: str = "2",
) -> tuple[list[GatewayProcess], str]:
    gateways, key = [], ""
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        config = home / "config.toml"
        write_config(
            config, upstream.port, list(models), billing={"discount": 0.5}, limits={"per_key_concurrency": 1000}
        )
        text = config.read_text().replace('database = "relay.db"', f'database = "{pg_url}"\nhold_lease_s = 3')
        config.write_text(
            text
            + f'[models."{PRICED}"]\nprovider = "drip"\ninput_price = 0.0\noutput_price = 2000.0\n'
            + "max_output_tokens = 1000\n"
        )
        if name == "a":
            created = run_cli(config, "keys", "create", "--account", "shared", *key_options)
            assert created.returncode == 0, created.stderr
            key = created.stdout.strip()
            funded = run_cli(config, "credits", "add", "--account", "shared", "--usd", usd)
            assert funded.returncode == 0, funded.stderr
        gateways.append(start_gateway(config))
    return gateways, key


def _post(port: int, key: str, max_tokens: int = 100) -> int:
    return post_stream(port, key, PRICED, max_tokens)[0]


def test_two_gateways_on_one_database_admit_exactly_what_the_credit_covers(tmp_path: Path, pg_url: str) -> None:
    with DripUpstream() as upstream:
        gateways, key = _two_gateways(tmp_path, upstream, pg_url)
        try:
            ports = [gw.port for gw in gateways]
            with ThreadPoolExecutor(max_workers=100) as pool:
                statuses = list(pool.map(lambda i: _post(ports[i % 2], key), range(300)))
            config = tmp_path / "a" / "config.toml"
            shown = run_cli(config, "credits", "show", "--account", "shared", "--json")
            checked = run_cli(config, "ledger", "check")
        finally:
            for gw in gateways:
                gw.signal(signal.SIGTERM)
                gw.wait(30)
    assert sorted(set(statuses)) == [200, 402], statuses
    assert statuses.count(200) == 20  # $2.00 / $0.10, spread over both gateways
    assert json.loads(shown.stdout) == {"account": "shared", "balance_microusd": 0, "held_microusd": 0}
    assert checked.returncode == 0, checked.stdout


def test_two_gateways_hold_a_1_usd_key_limit_with_10_usd_of_credit(tmp_path: Path, pg_url: str) -> None:
    with DripUpstream() as upstream:
        gateways, key = _two_gateways(tmp_path, upstream, pg_url, key_options=("--limit-usd", "1"), usd="10")
        try:
            ports = [gw.port for gw in gateways]
            with ThreadPoolExecutor(max_workers=100) as pool:
                statuses = list(pool.map(lambda i: _post(ports[i % 2], key), range(200)))
            config = tmp_path / "a" / "config.toml"
            shown = run_cli(config, "credits", "show", "--account", "shared", "--json")
            listed = run_cli(config, "keys", "list", "--account", "shared", "--json")
            checked = run_cli(config, "ledger", "check")
        finally:
            for gw in gateways:
                gw.signal(signal.SIGTERM)
                gw.wait(30)
    assert sorted(set(statuses)) == [200, 402], statuses
    assert statuses.count(200) == 10  # the key's $1.00 / $0.10, though the account has $10
    assert json.loads(shown.stdout) == {"account": "shared", "balance_microusd": 9_000_000, "held_microusd": 0}
    assert json.loads(listed.stdout.splitlines()[0])["spend_microusd"] == 1_000_000
    assert checked.returncode == 0, checked.stdout


def test_a_key_revoked_through_one_gateway_is_refused_by_the_other(tmp_path: Path, pg_url: str) -> None:
    with DripUpstream() as upstream:
        gateways, key = _two_gateways(tmp_path, upstream, pg_url)
        try:
            a, b = (gw.port for gw in gateways)
            assert _post(b, key, max_tokens=1) == 200
            listed = run_cli(tmp_path / "a" / "config.toml", "keys", "list", "--account", "shared", "--json")
            key_id = json.loads(listed.stdout.splitlines()[0])["id"]
            assert run_cli(tmp_path / "a" / "config.toml", "keys", "revoke", key_id).returncode == 0
            assert _post(b, key, max_tokens=1) == 401
            assert _post(a, key, max_tokens=1) == 401
        finally:
            for gw in gateways:
                gw.close()


@pytest.mark.anyio
async def test_two_stores_on_one_database_credit_one_stripe_event_once(pg_url: str) -> None:
    first, second = await open_store(pg_url), await open_store(pg_url)
    account = await first.ensure_account("payer")

    async def deliver(store: Store) -> object:
        return await store.credit_topup(
            account,
            700_000,
            event_id="evt_same",
            event_type="checkout.session.completed",
            payment_key="checkout:cs_same",
            payment_ref="pi_same",
        )

    results = await asyncio.gather(*(deliver(s) for s in (first, second) for _ in range(10)))
    assert sorted(str(r) for r in results).count(str(Booking.BOOKED)) == 1
    assert await second.balance("payer") == (700_000, 0)
    assert await first.ledger_check() == []
    await first.close()
    await second.close()


@pytest.mark.anyio
async def test_concurrent_settlements_of_one_request_charge_once(pg_url: str) -> None:
    first, second = await open_store(pg_url), await open_store(pg_url)
    await first.grant("alice", 1_000_000)
    account = await first.ensure_account("alice")
    assert await first.hold(account, "r1", 300_000)
    rec = UsageRecord("r1", utc_now(), outcome="completed", cost_microusd=200_000, billed=True, reason="billed")
    charged = await asyncio.gather(*(s.settle(rec, 200_000) for s in (first, second) for _ in range(5)))
    assert charged == [200_000] * 10
    assert await first.balance("alice") == (800_000, 0)
    assert await second.ledger_check() == []
    await first.close()
    await second.close()


def test_kill_9_of_one_gateway_the_other_releases_its_holds_within_the_lease(tmp_path: Path, pg_url: str) -> None:
    with DripUpstream() as upstream:
        gateways, key = _two_gateways(tmp_path, upstream, pg_url, ("drip-1000-50",))
        a, b = gateways
        try:
            streams = [stream_in_thread(a.port, key, "drip-1000-50") for _ in range(10)]
            for _, result in streams:
                assert result.started.wait(20) and result.status == 200
            config = tmp_path / "b" / "config.toml"
            held = json.loads(run_cli(config, "credits", "show", "--account", "shared", "--json").stdout)
            assert held["held_microusd"] > 0
            a.signal(signal.SIGKILL)
            a.wait(10)
            deadline = time.monotonic() + 2 * 3 + 10  # 2 x hold_lease_s, plus slack for a loaded machine
            while time.monotonic() < deadline:
                shown = json.loads(run_cli(config, "credits", "show", "--account", "shared", "--json").stdout)
                if shown["held_microusd"] == 0:
                    break
                time.sleep(0.5)
            assert shown == {"account": "shared", "balance_microusd": 2_000_000, "held_microusd": 0}
            assert "released 10 credit holds" in b.log_text()
            checked = run_cli(config, "ledger", "check")
            assert checked.returncode == 0, checked.stdout
        finally:
            for gw in gateways:
                gw.close()


@pytest.mark.anyio
async def test_group_committed_settlements_of_two_stores_charge_each_request_once(pg_url: str) -> None:
    """Queued settlements go in batches (several accounts each, in one lock order): two stores
    settling interleaved accounts at once neither deadlock nor charge anything twice."""
    first, second = await open_store(pg_url), await open_store(pg_url)
    names = [f"acct{i}" for i in range(5)]
    for name in names:
        await first.grant(name, 10_000_000)
    ids = {name: await first.ensure_account(name) for name in names}
    requests = [(f"r{n}", names[n % 5]) for n in range(400)]
    for rid, name in requests:
        assert await (first if int(rid[1:]) % 2 else second).hold(ids[name], rid, 20_000)

    def rec(rid: str, name: str) -> UsageRecord:
        return UsageRecord(rid, utc_now(), account=name, outcome="completed", cost_microusd=15_000, billed=True)

    futures = [(first if int(rid[1:]) % 2 else second).settle_soon(rec(rid, name), 15_000) for rid, name in requests]
    futures += [first.settle_soon(rec(rid, name), 15_000) for rid, name in requests[:50]]  # replays
    assert await asyncio.gather(*futures) == [15_000] * 450
    for name in names:
        assert await first.balance(name) == (10_000_000 - 80 * 15_000, 0)
    assert len(await second.list_usage(limit=1000)) == 400
    assert await first.ledger_check() == []
    await first.close()
    await second.close()
