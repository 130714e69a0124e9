"""The pool's assignment step (no I/O) over fake connections: which idle connection a request
gets, which ones are closed, and which are evicted when one is parked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from relayproxy.upstream.connection import Origin, UpstreamConnection
from relayproxy.upstream.pool import Pool, split_url

A = Origin("https", "a.example", 443)
B = Origin("http", "b.example", 8080)


@dataclass(eq=False)
class FakeConn:
    origin: Origin
    idle_since_s: float
    dead: bool = False

    def is_dead(self) -> bool:
        return self.dead


def pool_with(*conns: FakeConn, max_idle: int = 64, expiry_s: float = 60.0) -> Pool:
    pool = Pool(max_idle_per_origin=max_idle, idle_expiry_s=expiry_s)
    for conn in conns:
        assert pool._park(cast(UpstreamConnection, conn)) == []
    return pool


def assign(pool: Pool, origin: Origin, now: float) -> tuple[Any, list[Any]]:
    return pool._assign_connection(origin, now)


def test_split_url() -> None:
    assert split_url("https://a.example/v1/chat") == (A, "/v1/chat")
    assert split_url("http://b.example:8080") == (B, "/")


def test_nothing_idle_means_a_new_connection() -> None:
    assert assign(pool_with(), A, 0.0) == (None, [])


def test_the_most_recently_parked_live_connection_is_reused() -> None:
    old, warm = FakeConn(A, 10.0), FakeConn(A, 20.0)
    pool = pool_with(old, warm)
    assert assign(pool, A, 30.0) == (warm, [])
    assert assign(pool, A, 30.0) == (old, [])
    assert assign(pool, A, 30.0) == (None, [])


def test_dead_connections_met_on_the_way_are_closed() -> None:
    live, dead1, dead2 = FakeConn(A, 1.0), FakeConn(A, 2.0, dead=True), FakeConn(A, 3.0, dead=True)
    pool = pool_with(live, dead1, dead2)
    chosen, to_close = assign(pool, A, 5.0)
    assert chosen is live and to_close == [dead2, dead1]
    assert pool.idle_count() == 0


def test_other_origins_are_never_handed_out() -> None:
    pool = pool_with(FakeConn(B, 1.0))
    assert assign(pool, A, 2.0) == (None, [])
    assert pool.idle_count("http://b.example:8080/x") == 1


def test_expired_connections_of_every_origin_are_closed() -> None:
    a_old, b_old, a_new = FakeConn(A, 0.0), FakeConn(B, 5.0), FakeConn(A, 50.0)
    pool = pool_with(a_old, b_old, a_new, expiry_s=10.0)
    chosen, to_close = assign(pool, A, 20.0)  # cutoff 10: a_old and b_old expired
    assert chosen is a_new and to_close == [a_old, b_old]
    assert pool.idle_count() == 0


def test_parking_over_the_cap_evicts_the_oldest() -> None:
    first, second = FakeConn(A, 1.0), FakeConn(A, 2.0)
    pool = pool_with(first, second, max_idle=2)
    third = FakeConn(A, 3.0)
    assert pool._park(cast(UpstreamConnection, third)) == [first]
    assert pool.idle_count("https://a.example/") == 2
    assert assign(pool, A, 4.0) == (third, [])
