"""The credit ledger: holds, settlement, sweeps, Stripe bookings, the invariant and the CLI.

Invariant (checked by ``Store.ledger_check`` after every test that writes): per account, the sum
of the entries' effects equals ``balance_microusd``; ``held_microusd`` equals the open holds and
the holds minus their charges and releases; available credit is never negative unless a refund
made it so; per request, hold = charge + release (+ what is still open).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from relayproxy import cli
from relayproxy.billing.pricing import Booking, price_list
from relayproxy.config.settings import load_config
from relayproxy.errors import StoreError
from relayproxy.records import UsageRecord
from relayproxy.store.backends import open_store
from relayproxy.store.facade import Store, utc_iso, utc_now
from relayproxy.store.ledger import Owner
from relayproxy.store.owners import _process_start
from relayproxy.store.postgres import PgStore
from tests.pgcluster import PgCluster

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def record(request_id: str, cost: int = 0, outcome: str = "completed", **kw: Any) -> UsageRecord:
    reason = "billed" if cost else "usage_unknown"
    return UsageRecord(request_id, utc_now(), outcome=outcome, cost_microusd=cost, billed=cost > 0, reason=reason, **kw)


async def funded(store: Store, usd_micro: int = 1_000_000, name: str = "alice") -> int:
    await store.grant(name, usd_micro, "test credit")
    return await store.ensure_account(name)


async def sql(store: Store, tmp_path: Path, statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run ``statement`` (``?`` placeholders) directly on the store's database, beside the store."""
    if isinstance(store, PgStore):
        parts = statement.split("?")
        statement = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        async with store._pool.acquire() as conn:
            return [tuple(row) for row in await conn.fetch(statement, *args)]
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        return conn.execute(statement, args).fetchall()


def _database_of(store: Store, tmp_path: Path) -> str:
    """What ``open_store`` opens for another process on the same database as ``store``."""
    return store.url if isinstance(store, PgStore) else str(tmp_path / "relay.db")


async def entries(
    store: Store, tmp_path: Path, where: str = "true", args: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    return await sql(
        store, tmp_path, f"SELECT kind, amount_microusd, business_key FROM ledger WHERE {where} ORDER BY seq", args
    )


# -- holds and settlement -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_hold_then_settle_charges_the_actual_and_releases_the_rest(store: Store, tmp_path: Path) -> None:
    account = await funded(store)
    assert await store.hold(account, "r1", 300_000)
    assert await store.balance("alice") == (1_000_000, 300_000)
    assert await store.settle(record("r1", 120_000), 120_000) == 120_000
    assert await store.balance("alice") == (880_000, 0)
    assert await entries(store, tmp_path, "request_id = ?", ("r1",)) == [
        ("hold", 300_000, "req:r1:hold"),
        ("charge", 120_000, "req:r1:charge"),
        ("release", 180_000, "req:r1:release"),
    ]
    stored = await store.get_usage("r1")
    assert stored is not None and (stored.cost_microusd, stored.billed) == (120_000, True)


@pytest.mark.anyio
async def test_settle_is_idempotent_per_request(store: Store) -> None:
    account = await funded(store)
    await store.hold(account, "r1", 300_000)
    assert await store.settle(record("r1", 100_000), 100_000) == 100_000
    assert await store.settle(record("r1", 250_000), 250_000) == 100_000  # replay: the recorded cost
    assert await store.balance("alice") == (900_000, 0)


@pytest.mark.anyio
async def test_settle_replay_frees_a_hold_left_by_a_bare_record(store: Store) -> None:
    account = await funded(store)
    await store.hold(account, "r1", 300_000)
    await store.record_usage(record("r1", 0, "gateway_error"))
    assert await store.settle(record("r1", 100_000), 100_000) == 0
    assert await store.balance("alice") == (1_000_000, 0)


@pytest.mark.anyio
async def test_settle_never_charges_more_than_the_hold(store: Store) -> None:
    account = await funded(store)
    await store.hold(account, "r1", 50_000)
    assert await store.settle(record("r1", 80_000), 80_000) == 50_000
    stored = await store.get_usage("r1")
    assert stored is not None and (stored.cost_microusd, stored.billed) == (50_000, True)
    assert await store.balance("alice") == (950_000, 0)


@pytest.mark.parametrize("outcome", ["upstream_error", "upstream_dropped", "client_disconnected", "gateway_error"])
@pytest.mark.anyio
async def test_unbilled_outcomes_release_the_whole_hold(store: Store, outcome: str) -> None:
    account = await funded(store)
    await store.hold(account, "r1", 300_000)
    assert await store.settle(record("r1", 0, outcome), 0) == 0
    assert await store.balance("alice") == (1_000_000, 0)


@pytest.mark.anyio
async def test_settle_without_a_hold_only_records(store: Store) -> None:
    await funded(store)
    assert await store.settle(record("rejected-1", 0, "rejected"), 0) == 0
    assert await store.settle(record("r2", 5_000), 5_000) == 0
    stored = await store.get_usage("r2")
    assert stored is not None and (stored.cost_microusd, stored.billed, stored.reason) == (0, False, "no_hold")
    assert await store.balance("alice") == (1_000_000, 0)


@pytest.mark.anyio
async def test_hold_refuses_what_is_not_covered(store: Store, tmp_path: Path) -> None:
    account = await funded(store, 100)
    assert not await store.hold(account, "big", 101)
    assert await store.hold(account, "exact", 100)
    assert not await store.hold(account, "zero-but-nothing-left", 1)
    assert not await store.hold(9999, "no-such-account", 0)
    assert await entries(store, tmp_path, "kind = 'hold'") == [("hold", 100, "req:exact:hold")]
    await store.release("exact")


@pytest.mark.anyio
async def test_a_request_is_held_once(store: Store) -> None:
    account = await funded(store)
    assert await store.hold(account, "r1", 100_000)
    assert await store.hold(account, "r1", 100_000)  # replay of an open hold: still held, not twice
    assert await store.balance("alice") == (1_000_000, 100_000)
    assert await store.release("r1") == 100_000
    assert not await store.hold(account, "r1", 100_000)  # a finished request id cannot hold again
    assert await store.release("r1") == 0


@pytest.mark.anyio
async def test_grant_and_balance(store: Store) -> None:
    assert await store.balance("bob") is None
    assert await store.grant("bob", 2_500_000, "welcome") == 2_500_000
    assert await store.grant("bob", 1, "") == 2_500_001
    with pytest.raises(ValueError, match="positive"):
        await store.grant("bob", 0, "")


@pytest.mark.anyio
async def test_recent_aborts_counts_client_disconnects_of_the_key(store: Store) -> None:
    since = utc_iso(datetime.now(UTC))
    for i, outcome in enumerate(["client_disconnected", "client_disconnected", "completed", "upstream_error"]):
        await store.settle(record(f"r{i}", 0, outcome, key_id="k1"), 0)
    await store.settle(record("other", 0, "client_disconnected", key_id="k2"), 0)
    assert await store.recent_aborts("k1", since) == 2
    assert await store.recent_aborts("k1", "9999-01-01T00:00:00.000Z") == 0


async def keyed(store: Store, name: str = "alice", secret: bytes = b"k" * 32) -> bytes:
    """A funded account with one key; returns the key's hash."""
    await funded(store, name=name)
    await store.add_key(name, f"key_{name}", "rp_x", secret, "")
    return secret


@pytest.mark.anyio
async def test_admit_looks_up_the_key_and_holds_in_one_step(store: Store) -> None:
    key = await keyed(store)
    since = utc_iso(datetime.now(UTC))
    admitted = await store.admit(key, "r1", 250_000, aborts_since=since, abort_cap=5)
    assert admitted.held is True
    assert admitted.principal is not None and admitted.principal.key_id == "key_alice"
    assert await store.balance("alice") == (1_000_000, 250_000)
    refused = await store.admit(key, "r2", 900_000, aborts_since=since, abort_cap=5)
    assert refused.held is False and refused.principal is not None  # 402, not 401
    assert await store.balance("alice") == (1_000_000, 250_000)
    assert (await store.admit(key, "r3", None, aborts_since=since, abort_cap=5)).held is None  # auth only
    await store.settle(record("r1", 0), 0)


@pytest.mark.anyio
async def test_admit_refuses_unknown_and_revoked_keys_without_holding(store: Store) -> None:
    key = await keyed(store)
    since = utc_iso(datetime.now(UTC))
    assert (await store.admit(b"x" * 32, "r1", 1, aborts_since=since, abort_cap=0)).principal is None
    assert await store.revoke_key("key_alice")
    revoked = await store.admit(key, "r2", 1, aborts_since=since, abort_cap=0)
    assert revoked.principal is None and revoked.held is None
    assert await store.balance("alice") == (1_000_000, 0)


@pytest.mark.anyio
async def test_admit_over_the_abort_cap_holds_nothing(store: Store) -> None:
    key = await keyed(store)
    since = utc_iso(datetime.now(UTC))
    for i in range(2):
        await store.settle(record(f"a{i}", 0, "client_disconnected", key_id="key_alice"), 0)
    capped = await store.admit(key, "r1", 1_000, aborts_since=since, abort_cap=2)
    assert capped.principal is not None and capped.principal.recent_aborts == 2 and capped.held is None
    uncapped = await store.admit(key, "r2", 1_000, aborts_since=since, abort_cap=0)  # 0 = no cap
    assert uncapped.held is True and uncapped.principal is not None and uncapped.principal.recent_aborts == 0
    await store.settle(record("r2", 0), 0)
    assert await store.balance("alice") == (1_000_000, 0)


@pytest.mark.anyio
async def test_ledger_is_append_only(store: Store, tmp_path: Path) -> None:
    await funded(store)
    refused = (sqlite3.IntegrityError, asyncpg.RaiseError)
    with pytest.raises(refused, match="append-only"):
        await sql(store, tmp_path, "UPDATE ledger SET amount_microusd = 0")
    with pytest.raises(refused, match="append-only"):
        await sql(store, tmp_path, "DELETE FROM ledger")


@pytest.mark.anyio
async def test_ledger_check_lists_every_broken_rule(store: Store, tmp_path: Path) -> None:
    account = await funded(store)
    await store.hold(account, "r1", 10_000)
    await sql(store, tmp_path, "UPDATE accounts SET balance_microusd = 5, held_microusd = 7")
    problems = await store.ledger_check()
    await sql(store, tmp_path, "UPDATE accounts SET balance_microusd = 1000000, held_microusd = 10000")
    assert problems == [
        "account alice: balance_microusd 5 != sum of entries 1000000",
        "account alice: held_microusd 7 != sum of open holds 10000",
        "account alice: available credit -2 is negative and no refund explains it",
    ]


# -- the overdraft race -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_overdraft_race_in_process_admits_exactly_what_is_covered(store: Store) -> None:
    """Balance 5.00, 1,000 concurrent holds of 0.10: exactly 50 admitted (hardening case 32)."""
    account = await funded(store, 5_000_000)
    results = await asyncio.gather(*(store.hold(account, f"r{i}", 100_000) for i in range(1000)))
    assert sum(results) == 50
    assert await store.balance("alice") == (5_000_000, 5_000_000)


RACE_CHILD = """
import asyncio, sys
from relayproxy.store.facade import Store

async def main(db, worker, n):
    store = await Store.open(db)  # four processes migrate a fresh file at once
    print("ready", flush=True)
    sys.stdin.readline()
    account = await store.ensure_account("race")
    results = await asyncio.gather(*(store.hold(account, f"w{worker}-{i}", 100_000) for i in range(n)))
    print(sum(results), flush=True)
    await store.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def spawn(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def reap(proc: subprocess.Popen[str]) -> str:
    """SIGKILL the process (if still running) and return what it wrote before dying.

    Read through the same buffered reader that read its "ready" line: that readline may have
    buffered the lines after it, which communicate() (reading the raw pipe) would lose.
    """
    proc.kill()
    assert proc.stdout is not None
    out = "" if proc.stdout.closed else proc.stdout.read()  # closed: communicate() had it all
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()
    proc.wait(timeout=30)
    return out


@pytest.mark.anyio
async def test_overdraft_race_across_four_processes(tmp_path: Path) -> None:
    """Four worker processes, each with its own connection, 250 holds each against 50 holds' worth."""
    db = tmp_path / "race.db"
    workers = [spawn(RACE_CHILD, db, w, 250) for w in range(4)]
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"
        store = await Store.open(db)
        await store.grant("race", 5_000_000, "")
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        admitted = [int(w.communicate(timeout=60)[0]) for w in workers]
    finally:
        for w in workers:
            reap(w)
    assert sum(admitted) == 50
    assert await store.balance("race") == (5_000_000, 5_000_000)
    assert await store.ledger_check() == []
    await store.close()


# -- orphan holds ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sweep_releases_holds_of_an_earlier_store_in_this_process(tmp_path: Path) -> None:
    first = await Store.open(tmp_path / "relay.db")
    account = await funded(first)
    await first.hold(account, "crashed-1", 100_000)
    await first.hold(account, "crashed-2", 200_000)
    await first.close()  # as good as a crash: nothing settled
    second = await Store.open(tmp_path / "relay.db")
    await second.hold(account, "mine", 50_000)
    assert await second.release_orphan_holds() == 2
    assert await second.balance("alice") == (1_000_000, 50_000)  # released, never billed; own hold kept
    assert await second.release_orphan_holds() == 0
    assert (await second.ledger_check()) == []
    await second.close()


HOLDER_CHILD = """
import asyncio, sys
from relayproxy.store.backends import open_store

async def main(db):
    store = await open_store(db, lease_s=2)
    upkeep = asyncio.create_task(store.maintain())  # as the app runs it: renews the lease on PostgreSQL
    account = await store.ensure_account("alice")
    print(await store.hold(account, "live-1", 100_000), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # a request in flight until told otherwise

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.anyio
async def test_sweep_leaves_live_workers_alone_and_releases_dead_ones(store: Store, tmp_path: Path) -> None:
    await funded(store)
    on_pg = isinstance(store, PgStore)
    child = spawn(HOLDER_CHILD, _database_of(store, tmp_path))
    assert child.stdout is not None and child.stdout.readline().strip() == "True"
    assert await store.release_orphan_holds() == 0  # another worker starting must not free it
    assert await store.balance("alice") == (1_000_000, 100_000)
    assert child.stdin is not None
    child.stdin.write("done\n")
    child.stdin.flush()
    await asyncio.to_thread(os.waitid, os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # a zombie: exited, not reaped
    if on_pg:  # its lease (2 s) runs out; this store's housekeeping then releases the hold by itself
        async with asyncio.TaskGroup() as tg:
            upkeep = tg.create_task(store.maintain())
            for _ in range(50):
                if await store.balance("alice") == (1_000_000, 0):
                    break
                await asyncio.sleep(0.2)
            upkeep.cancel()
    else:
        assert await store.release_orphan_holds() == 1
    assert await store.balance("alice") == (1_000_000, 0)
    reap(child)


def test_a_recycled_pid_is_not_mistaken_for_the_owner() -> None:
    """The owner is pid + kernel start time: a live process with another start time is not it."""
    me, parent = Owner.current(), os.getppid()
    assert not me.is_gone(parent, _process_start(parent), "any")
    assert me.is_gone(parent, "12345", "any")
    assert not me.is_gone(me.pid, me.start, me.boot)
    assert me.is_gone(me.pid, me.start, "an-earlier-store")
    assert me.is_gone(2**22 + 1, "", "no-such-pid")


@pytest.mark.anyio
async def test_sweep_can_release_stale_holds_whoever_owns_them(store: Store) -> None:
    account = await funded(store)
    await store.hold(account, "stuck", 1_000)
    await asyncio.sleep(0.01)
    assert await store.release_orphan_holds(stale_after_s=3600) == 0
    assert await store.release_orphan_holds(stale_after_s=0) == 1


# -- kill -9 -------------------------------------------------------------------------------------------

KILL_CHILD = """
import asyncio, random, sys
from relayproxy.records import UsageRecord
from relayproxy.store.facade import Store, utc_now

def say(*words):
    sys.stdout.write(" ".join(map(str, words)) + "\\n")  # one write per line
    sys.stdout.flush()

async def main(db, seed):
    store = await Store.open(db)
    await store.release_orphan_holds()  # what app startup does
    account = await store.ensure_account("crash")
    rnd = random.Random(seed)
    print("ready", flush=True)
    for n in range(10**9):
        rid = f"s{seed}-{n}"
        if rnd.random() < 0.3:
            booking = await store.credit_topup(account, 1_000_000, event_id=f"evt_{rid}", event_type="t",
                                               payment_key=f"checkout:cs_{rid}", payment_ref=f"pi_{rid}")
            say("topup", rid, booking)
            continue
        amount = rnd.randrange(1, 100_000)
        if not await store.hold(account, rid, amount):
            continue
        if rnd.random() < 0.1:
            continue  # a request still streaming when the process dies
        charge = rnd.randrange(0, 2 * amount)
        rec = UsageRecord(rid, utc_now(), account="crash", outcome="completed", cost_microusd=charge,
                          billed=charge > 0, reason="billed")
        say("settled", rid, await store.settle(rec, charge))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_kill_9_loses_no_acknowledged_write_and_never_double_charges(tmp_path: Path) -> None:
    """A worker is SIGKILLed at random moments (hardening case 35, 10 kills in CI)."""
    db = tmp_path / "crash.db"
    asyncio.run(_grant(db, "crash", 10**12))
    rnd, topups, settled = random.Random(7), set(), {}
    # 10 kills, more if a loaded machine kept the child from acknowledging anything before them.
    for seed in range(40):
        if seed >= 10 and topups and settled:
            break
        child = spawn(KILL_CHILD, db, seed)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.02, 0.4))
        out = reap(child)
        for line in out.split("\n")[:-1]:  # the last piece is empty, or a line the kill cut short
            assert len(line.split()) == 3, f"malformed line {line!r} in {out[-500:]!r}"
            kind, rid, value = line.split()
            if kind == "topup":
                assert value == Booking.BOOKED
                topups.add(rid)
            else:
                settled[rid] = int(value)
    assert topups and settled, "the child never got to work before being killed"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        keys = {k for (k,) in conn.execute("SELECT business_key FROM ledger")}
        charges = dict(conn.execute("SELECT request_id, amount_microusd FROM ledger WHERE kind = 'charge'").fetchall())
    assert {f"checkout:cs_{rid}" for rid in topups} <= keys  # every acknowledged top-up survived
    assert all(charges.get(rid, 0) == amount for rid, amount in settled.items())
    asyncio.run(_after_the_crashes(db, topups))


async def _grant(db: Path, account: str, amount: int) -> None:
    store = await Store.open(db)
    await store.grant(account, amount, "")
    await store.close()


async def _after_the_crashes(db: Path, topups: set[str]) -> None:
    store = await Store.open(db)
    try:
        await store.release_orphan_holds()
        assert await store.ledger_check() == []
        assert (await store.balance("crash") or (0, -1))[1] == 0
        for rid in topups:  # Stripe retries what we acknowledged before dying: no second credit
            again = await store.credit_topup(
                1,
                1_000_000,
                event_id=f"evt_{rid}",
                event_type="t",
                payment_key=f"checkout:cs_{rid}",
                payment_ref=f"pi_{rid}",
            )
            assert again is Booking.DUPLICATE
    finally:
        await store.close()


# -- random operation sequences -------------------------------------------------------------------------

ACCOUNTS = ("a", "b")


class LedgerMachine(RuleBasedStateMachine):
    """Random grants, top-ups, duplicate webhooks, holds, settlements, releases, refunds and
    crash-restarts against a model; the invariant and the model's balances hold after every step
    (hardening case 33). On SQLite by default; ``new_database`` set: on a fresh PostgreSQL
    database per example."""

    new_database: Callable[[], str] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.path: str | Path = (
            type(self).new_database() if type(self).new_database else Path(self.tmp.name) / "ledger.db"  # type: ignore[misc]
        )
        self.runner = asyncio.Runner()
        self.store = self.run(open_store(self.path))
        self.ids = {
            name: self.run(self.store.grant(name, 1, "")) and self.run(self.store.ensure_account(name))
            for name in ACCOUNTS
        }
        self.balance = dict.fromkeys(ACCOUNTS, 1)
        self.held = dict.fromkeys(ACCOUNTS, 0)
        self.holds: dict[str, tuple[str, int]] = {}
        self.settled: dict[str, int] = {}
        self.payments: dict[str, list[Any]] = {}  # payment ref -> [account, amount, refunded]
        self.events: list[tuple[str, str, int, str]] = []  # (event id, account, amount, payment ref)
        self.serial = 0

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def teardown(self) -> None:
        self.run(self.store.close())
        self.runner.close()
        self.tmp.cleanup()

    @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(1, 10**7))
    def grant(self, account: str, amount: int) -> None:
        assert self.run(self.store.grant(account, amount, "")) == self.balance[account] + amount
        self.balance[account] += amount

    @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(0, 10**7))
    def topup(self, account: str, amount: int) -> None:
        event_id, ref = self.next_id("evt_"), self.next_id("pi_")
        assert self.credit(event_id, self.ids[account], amount, ref) is Booking.BOOKED
        self.balance[account] += amount
        self.payments[ref] = [account, amount, 0]
        self.events.append((event_id, account, amount, ref))

    def credit(self, event_id: str, account_id: int, amount: int, ref: str) -> Booking:
        coro = self.store.credit_topup(
            account_id, amount, event_id=event_id, event_type="t", payment_key=f"checkout:{ref}", payment_ref=ref
        )
        result: Booking = self.run(coro)
        return result

    @precondition(lambda self: self.events)
    @rule(data=st.data(), same_event=st.booleans())
    def duplicate_webhook(self, data: st.DataObject, same_event: bool) -> None:
        event_id, account, amount, ref = data.draw(st.sampled_from(self.events))
        replay_id = event_id if same_event else self.next_id("evt_")
        assert self.credit(replay_id, self.ids[account], amount, ref) is Booking.DUPLICATE

    @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(0, 2 * 10**7))
    def hold(self, account: str, amount: int) -> None:
        rid = self.next_id("req")
        covered = self.balance[account] - self.held[account] >= amount
        assert self.run(self.store.hold(self.ids[account], rid, amount)) is covered
        if covered:
            self.holds[rid] = (account, amount)
            self.held[account] += amount

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), over=st.booleans())
    def settle(self, data: st.DataObject, over: bool) -> None:
        rid = data.draw(st.sampled_from(sorted(self.holds)))
        account, amount = self.holds.pop(rid)
        charge = amount + data.draw(st.integers(1, 10**6)) if over else data.draw(st.integers(0, amount))
        assert self.run(self.store.settle(record(rid, charge), charge)) == min(charge, amount)
        self.balance[account] -= min(charge, amount)
        self.held[account] -= amount
        self.settled[rid] = min(charge, amount)

    @precondition(lambda self: self.settled)
    @rule(data=st.data())
    def settle_again(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.settled)))
        assert self.run(self.store.settle(record(rid, 10**9), 10**9)) == self.settled[rid]

    @rule(charge=st.integers(0, 10**6))
    def settle_without_hold(self, charge: int) -> None:
        assert self.run(self.store.settle(record(self.next_id("rej"), charge, "rejected"), charge)) == 0

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.holds)))
        account, amount = self.holds.pop(rid)
        assert self.run(self.store.release(rid)) == amount
        self.held[account] -= amount

    @precondition(lambda self: self.payments)
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(sorted(self.payments)))
        account, amount, refunded = self.payments[ref]
        total = data.draw(st.integers(0, amount + 10))
        delta = max(min(total, amount) - refunded, 0)
        booking = self.run(
            self.store.book_refund(ref, total, event_id=self.next_id("evt_"), event_type="charge.refunded")
        )
        assert booking is (Booking.BOOKED if delta else Booking.DUPLICATE)
        self.balance[account] -= delta
        self.payments[ref][2] += delta

    @rule()
    def crash_restart(self) -> None:
        self.run(self.store.close())
        self.store = self.run(open_store(self.path))
        if isinstance(self.store, PgStore):  # the dead store's lease has run out (as if lease_s had passed)
            self.run(sql(self.store, Path(), "UPDATE leases SET expires_at = now() - interval '1 s'"))
            self.run(self.store._renew())  # this store's own lease stays live
        assert self.run(self.store.release_orphan_holds()) == len(self.holds)
        self.holds.clear()
        self.held = dict.fromkeys(ACCOUNTS, 0)

    @invariant()
    def consistent(self) -> None:
        assert self.run(self.store.ledger_check()) == []
        for account in ACCOUNTS:
            assert self.run(self.store.balance(account)) == (self.balance[account], self.held[account])


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


def test_ledger_machine_on_postgres(pg_cluster: PgCluster) -> None:
    class OnPostgres(LedgerMachine):
        new_database = staticmethod(pg_cluster.new_database)

    run_state_machine_as_test(OnPostgres, settings=settings(max_examples=25, stateful_step_count=30, deadline=None))


@pytest.mark.slow
class TestLedgerMachineLong(LedgerMachine.TestCase):  # type: ignore[valid-type, misc]
    """The full hardening.md budget: 200 examples x 50 steps."""

    settings = settings(max_examples=200, stateful_step_count=50, deadline=None)


# -- the CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        '[server]\ndatabase = "relay.db"\n[billing]\ndiscount = 0.3\n'
        '[providers.openai]\nprotocol = "openai"\nbase_url = "https://api.openai.com/v1"\napi_key_env = "K"\n'
        '[models."gpt-5.5"]\nprovider = "openai"\ninput_price = 1.25\noutput_price = 10.0\ncached_input_price = 0.125\n'
    )
    return path


def run_cli(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = cli.main(["--config", str(config), *args])
    return rc, capsys.readouterr().out


def test_cli_credits_add_and_show(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(config, capsys, "credits", "add", "--account", "alice", "--usd", "12.50", "--note", "welcome") == (
        0,
        "alice: balance 12.500000 USD (12500000 micro-USD)\n",
    )
    rc, out = run_cli(config, capsys, "credits", "show", "--account", "alice", "--json")
    assert (rc, out) == (0, '{"account":"alice","balance_microusd":12500000,"held_microusd":0}\n')
    rc, out = run_cli(config, capsys, "credits", "show", "--account", "alice")
    assert rc == 0 and out.split("\n")[1].split() == ["alice", "12.500000", "0.000000", "12.500000"]
    assert run_cli(config, capsys, "credits", "show", "--account", "nobody")[0] == 1


@pytest.mark.parametrize("amount", ["0", "-3", "abc", "0.0000001"])
def test_cli_credits_add_rejects_bad_amounts(config: Path, capsys: pytest.CaptureFixture[str], amount: str) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--config", str(config), "credits", "add", "--account", "alice", "--usd", amount])
    assert info.value.code == 2
    assert "--usd" in capsys.readouterr().err


def test_cli_ledger_check(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(config, capsys, "credits", "add", "--account", "alice", "--usd", "1")
    assert run_cli(config, capsys, "ledger", "check") == (0, "ledger check: ok\n")
    with sqlite3.connect(config.parent / "relay.db") as conn:
        conn.execute("UPDATE accounts SET balance_microusd = balance_microusd + 1")
    rc, out = run_cli(config, capsys, "ledger", "check")
    assert rc == 1
    assert out == "account alice: balance_microusd 1000001 != sum of entries 1000000\nledger check: 1 problem(s)\n"


def test_cli_models(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_cli(config, capsys, "models", "--json")
    assert rc == 0 and json.loads(out) == price_list(load_config(config))
    rc, out = run_cli(config, capsys, "models")
    assert rc == 0 and out.splitlines()[2].split() == [
        "gpt-5.5",
        "openai",
        "openai",
        "0.875",
        "0.0875",
        "7.0",
        "1.25",
        "10.0",
    ]


def test_store_errors_stay_store_errors(tmp_path: Path) -> None:
    """A file that is not a database is a StoreError naming it, never a sqlite3 exception."""
    bogus = tmp_path / "not-a.db"
    bogus.write_bytes(b"this is not an SQLite database, just some bytes" * 100)
    with pytest.raises(StoreError, match=r"not-a\.db"):
        asyncio.run(Store.open(bogus))


def test_utc_now_matches_the_store_timestamp_format() -> None:
    """The per-second cache gives the same text as formatting the moment in full."""
    for _ in range(3):
        before = utc_iso(datetime.now(UTC))
        now = utc_now()
        after = utc_iso(datetime.now(UTC))
        assert before <= now <= after
        assert len(now) == len("2026-11-23T10:00:00.123Z") and now.endswith("Z") and now[19] == "."
        time.sleep(0.6)  # crosses a second boundary at least once


@pytest.mark.anyio
async def test_key_options_round_trip(store: Store) -> None:
    made = await store.add_key(
        "opts", "key_opts", "rp_o", b"h" * 32, "ci", spend_limit_microusd=1_000_000, expires="2027-01-31",
        models=("gpt-5.5", "claude-x"),
    )  # fmt: skip
    plain = await store.add_key("opts", "key_plain", "rp_p", b"p" * 32, "plain")
    listed = {k.id: k for k in await store.list_keys("opts")}
    assert listed["key_opts"] == made
    assert (made.spend_limit_microusd, made.expires, made.models) == (1_000_000, "2027-01-31", ("gpt-5.5", "claude-x"))
    assert (made.spend_microusd, made.last_used_at) == (0, None)
    assert listed["key_plain"] == plain
    assert (plain.spend_limit_microusd, plain.expires, plain.models) == (None, None, None)


async def limited_key(store: Store, **options: Any) -> bytes:
    """A key of account ``opts`` ($10 of credit) with ``options`` (add_key's)."""
    await funded(store, 10_000_000, name="opts")
    secret = os.urandom(32)
    await store.add_key("opts", "key_lim", "rp_l", secret, "", **options)
    return secret


async def key_info(store: Store) -> Any:
    return {k.id: k for k in await store.list_keys("opts")}["key_lim"]


async def key_held(store: Store) -> int:
    rows = await store.export_rows("api_keys", ("id", "held_microusd"))
    return {str(r[0]): int(r[1]) for r in rows}["key_lim"]


@pytest.mark.anyio
async def test_an_expired_key_is_refused_without_a_hold_and_one_valid_today_is_admitted(store: Store) -> None:
    old = await limited_key(store, expires="2020-01-31")
    refused = await store.admit(old, "r1", 1_000, aborts_since=None, abort_cap=0, model="m")
    assert (refused.refused, refused.held) == ("key_expired", None) and refused.principal is not None
    assert (await store.admit(old, "r2", None, aborts_since=None, abort_cap=0)).refused == "key_expired"
    today = os.urandom(32)
    await store.add_key("opts", "key_today", "rp_t", today, "", expires=utc_now()[:10])
    admitted = await store.admit(today, "r3", 1_000, aborts_since=None, abort_cap=0, model="m")
    assert (admitted.refused, admitted.held) == (None, True)
    await store.settle(record("r3", 0), 0)
    assert await store.balance("opts") == (10_000_000, 0)


@pytest.mark.anyio
async def test_a_model_outside_the_allow_list_is_refused_without_a_hold(store: Store) -> None:
    key = await limited_key(store, models=("gpt-5.5", "claude-x"))
    refused = await store.admit(key, "r1", 1_000, aborts_since=None, abort_cap=0, model="gemini-y")
    assert (refused.refused, refused.held) == ("model_not_allowed", None)
    assert await store.balance("opts") == (10_000_000, 0)
    admitted = await store.admit(key, "r2", 1_000, aborts_since=None, abort_cap=0, model="claude-x")
    assert (admitted.refused, admitted.held) == (None, True)
    await store.settle(record("r2", 0), 0)


@pytest.mark.anyio
async def test_the_spend_limit_counts_holds_and_charges_and_settlement_moves_them(store: Store) -> None:
    key = await limited_key(store, spend_limit_microusd=1_000)
    first = await store.admit(key, "r1", 600, aborts_since=None, abort_cap=0, model="m")
    assert (first.refused, first.held) == (None, True)
    assert await key_held(store) == 600
    second = await store.admit(key, "r2", 600, aborts_since=None, abort_cap=0, model="m")
    assert (second.refused, second.held) == ("key_spend_limit", False)
    assert await store.balance("opts") == (10_000_000, 600)  # the account's credit untouched
    assert await store.settle(record("r1", 400, key_id="key_lim"), 400) == 400
    info = await key_info(store)
    assert (info.spend_microusd, await key_held(store)) == (400, 0)
    assert info.last_used_at is not None
    third = await store.admit(key, "r3", 600, aborts_since=None, abort_cap=0, model="m")  # 400 + 600 <= 1000
    assert third.held is True
    assert (await store.admit(key, "r4", 1, aborts_since=None, abort_cap=0)).refused == "key_spend_limit"
    assert await store.release("r3") == 600
    assert ((await key_info(store)).spend_microusd, await key_held(store)) == (400, 0)
    assert await store.balance("opts") == (10_000_000 - 400, 0)


@pytest.mark.anyio
async def test_a_hold_the_account_cannot_cover_leaves_the_key_untouched(store: Store) -> None:
    key = await limited_key(store, spend_limit_microusd=50_000_000)
    refused = await store.admit(key, "r1", 20_000_000, aborts_since=None, abort_cap=0, model="m")
    assert (refused.refused, refused.held) == (None, False)  # the account's 402, not the key's
    assert await key_held(store) == 0


@pytest.mark.anyio
async def test_the_orphan_sweep_releases_the_keys_share_of_a_hold(store: Store) -> None:
    key = await limited_key(store, spend_limit_microusd=1_000)
    assert (await store.admit(key, "r1", 700, aborts_since=None, abort_cap=0)).held is True
    await asyncio.sleep(0.01)
    assert await store.release_orphan_holds(stale_after_s=0) == 1
    assert await key_held(store) == 0 and (await key_info(store)).spend_microusd == 0
    assert (await store.admit(key, "r2", 1_000, aborts_since=None, abort_cap=0)).held is True
    await store.settle(record("r2", 0), 0)


@pytest.mark.anyio
async def test_200_concurrent_requests_on_a_1_usd_key_with_10_usd_of_credit_spend_at_most_1_usd(store: Store) -> None:
    key = await limited_key(store, spend_limit_microusd=1_000_000)
    hold, charge = 30_000, 25_000
    peak = 0

    async def one(i: int) -> int:
        nonlocal peak
        admitted = await store.admit(key, f"c{i}", hold, aborts_since=None, abort_cap=0, model="m")
        if admitted.refused is not None:
            assert admitted.refused == "key_spend_limit" and not admitted.held
            return 0
        assert admitted.held
        info = await key_info(store)
        peak = max(peak, info.spend_microusd + await key_held(store))
        await asyncio.sleep(random.random() / 100)
        return await store.settle(record(f"c{i}", charge, key_id="key_lim"), charge)

    charged = await asyncio.gather(*(one(i) for i in range(200)))
    spent = sum(charged)
    info = await key_info(store)
    assert 0 < spent <= 1_000_000 and info.spend_microusd == spent
    assert peak <= 1_000_000 and await key_held(store) == 0
    assert sum(1 for c in charged if c) < 200  # the limit refused some
    assert await store.balance("opts") == (10_000_000 - spent, 0)
    assert await store.ledger_check() == []
