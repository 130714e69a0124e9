"""The PostgreSQL store's admission queue (pg_admit.Admissions), without a database: batches
form while others are in flight, at most PIPELINE at once, and a caller that leaves before its
batch goes takes nothing with it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relayproxy.store.admission import Admission
from relayproxy.store.key_limits import NO_CAPS
from relayproxy.store.pg_admit import PIPELINE, Admissions, Ask

pytestmark = pytest.mark.anyio


def ask(rid: str) -> Ask:
    return Ask(b"h" * 32, rid, 1_000, None, 0, "m", NO_CAPS, "2026-01-01T00:00:00.000Z")


async def test_batches_form_behind_the_ones_in_flight_and_a_leaver_is_dropped() -> None:
    gate = asyncio.Event()
    sent: list[list[str]] = []

    async def run(txn: Any) -> list[Admission]:
        asks = txn.keywords["asks"]
        sent.append([a.request_id for a in asks])
        await gate.wait()
        return [Admission(None, None) for _ in asks]

    tasks: set[asyncio.Task[None]] = set()
    queue = Admissions(run, "owner", {}, tasks)
    first = [queue.admit(ask("a")), queue.admit(ask("b"))]  # queued in one tick: one batch
    await asyncio.sleep(0)
    second = queue.admit(ask("c"))  # the first batch is in flight: a second runner takes it
    await asyncio.sleep(0)
    assert PIPELINE == 2 and sent == [["a", "b"], ["c"]]
    waiting = [queue.admit(ask("d")), queue.admit(ask("e"))]  # both runners busy: they wait
    await asyncio.sleep(0)
    assert sent == [["a", "b"], ["c"]]
    queue.withdraw(waiting[0])  # its caller left: it never goes
    assert waiting[0].cancelled()
    gate.set()
    answers = await asyncio.gather(*first, second, waiting[1])
    assert [a.principal for a in answers] == [None] * 4
    assert sent == [["a", "b"], ["c"], ["e"]]
    assert queue.batches == 3
    await asyncio.gather(*tasks)


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_still_goes() -> None:
    calls = 0

    async def run(txn: Any) -> list[Admission]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database error")
        return [Admission(None, None) for _ in txn.keywords["asks"]]

    queue = Admissions(run, "owner", {}, set())
    failed = [queue.admit(ask("a")), queue.admit(ask("b"))]
    for future in failed:
        with pytest.raises(RuntimeError):
            await future
    assert (await queue.admit(ask("c"))).principal is None
