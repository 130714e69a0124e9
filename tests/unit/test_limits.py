"""KeyLimiter: exact admissions at each cap, release semantics, per-key independence, bounded memory."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayproxy.policy.limits import WINDOW_S, Admitted, Denied, DenyReason, KeyLimiter


def admit(limiter: KeyLimiter, key_id: str, now_s: float) -> Admitted:
    got = limiter.try_acquire(key_id, now_s)
    assert isinstance(got, Admitted), got
    return got


def test_concurrency_cap_is_exact() -> None:
    """N requests in flight are admitted; the N+1th is denied with reason concurrency, retry after 1 s."""
    limiter = KeyLimiter(per_key_concurrency=3, per_key_rpm=0)
    tokens = [admit(limiter, "k", 0.0) for _ in range(3)]
    assert limiter.try_acquire("k", 0.0) == Denied(DenyReason.CONCURRENCY, 1)
    assert limiter.in_flight("k") == 3
    limiter.release(tokens[0])
    admit(limiter, "k", 0.0)
    denied = limiter.try_acquire("k", 0.0)
    assert isinstance(denied, Denied)
    assert denied.reason == "concurrency"  # a StrEnum: the reason is usable as a plain string


def test_fifty_parallel_streams_against_cap_twenty() -> None:
    """hardening.md case 19: 50 parallel on one key with cap 20 -> exactly 30 denied, none admitted late."""
    limiter = KeyLimiter(per_key_concurrency=20, per_key_rpm=0)
    results = [limiter.try_acquire("k", 5.0) for _ in range(50)]
    assert sum(isinstance(r, Admitted) for r in results) == 20
    assert [r for r in results if isinstance(r, Denied)] == [Denied(DenyReason.CONCURRENCY, 1)] * 30


def test_rpm_cap_sliding_window() -> None:
    """rpm N in 60 s: the N+1th is denied until the oldest admission leaves the window, then admitted."""
    limiter = KeyLimiter(per_key_concurrency=0, per_key_rpm=3)
    for t in (0.0, 10.0, 20.0):
        limiter.release(admit(limiter, "k", t))
    assert limiter.try_acquire("k", 30.0) == Denied(DenyReason.RPM, 30)
    assert limiter.try_acquire("k", 59.5) == Denied(DenyReason.RPM, 1)  # 0.5 s left rounds up, never 0
    admit(limiter, "k", 60.0)  # the t=0 admission has left: (60 - 60, 60] excludes 0
    assert limiter.try_acquire("k", 60.0) == Denied(DenyReason.RPM, 10)  # next to leave is t=10
    admit(limiter, "k", 70.0)


def test_denied_requests_do_not_count_against_rpm() -> None:
    """A client retrying a full key must not push its own retry time further out."""
    limiter = KeyLimiter(per_key_concurrency=0, per_key_rpm=1)
    admit(limiter, "k", 0.0)
    for t in range(1, 60):
        assert isinstance(limiter.try_acquire("k", float(t)), Denied)
    admit(limiter, "k", 60.0)


def test_retry_after_never_exceeds_the_window() -> None:
    """(t + 60) - t can round to just over 60; Retry-After must still say 60, not 61."""
    limiter = KeyLimiter(per_key_concurrency=0, per_key_rpm=1)
    now = 1001.8074507028244753
    admit(limiter, "k", now)
    assert limiter.try_acquire("k", now) == Denied(DenyReason.RPM, 60)


def test_rpm_reported_when_both_caps_refuse() -> None:
    """When both caps refuse, Retry-After is the rpm wait (a 1 s retry would be refused again)."""
    limiter = KeyLimiter(per_key_concurrency=1, per_key_rpm=1)
    admit(limiter, "k", 0.0)
    assert limiter.try_acquire("k", 15.0) == Denied(DenyReason.RPM, 45)


def test_release_twice_is_a_no_op() -> None:
    """A second release of one token cannot free a slot that another request holds."""
    limiter = KeyLimiter(per_key_concurrency=2, per_key_rpm=0)
    first = admit(limiter, "k", 0.0)
    second = admit(limiter, "k", 0.0)
    limiter.release(first)
    limiter.release(first)
    assert first.released
    assert not second.released
    assert limiter.in_flight("k") == 1
    admit(limiter, "k", 0.0)
    assert limiter.try_acquire("k", 0.0) == Denied(DenyReason.CONCURRENCY, 1)


def test_token_released_into_the_limiter_that_admitted_it() -> None:
    """A token outliving its limiter (config reload) must not change the new limiter's counts."""
    old, new = KeyLimiter(1, 0), KeyLimiter(1, 0)
    token = admit(old, "k", 0.0)
    held = admit(new, "k", 0.0)
    new.release(token)
    assert old.in_flight("k") == 0
    assert new.in_flight("k") == 1
    new.release(held)
    assert new.in_flight("k") == 0


def test_keys_are_independent() -> None:
    """One key at its caps does not affect another."""
    limiter = KeyLimiter(per_key_concurrency=1, per_key_rpm=2)
    admit(limiter, "a", 0.0)
    assert limiter.try_acquire("a", 0.0) == Denied(DenyReason.CONCURRENCY, 1)
    b = admit(limiter, "b", 0.0)
    limiter.release(b)
    admit(limiter, "b", 1.0)
    assert limiter.try_acquire("b", 2.0) == Denied(DenyReason.RPM, 58)
    assert limiter.in_flight("a") == 1


def test_zero_means_unlimited() -> None:
    limiter = KeyLimiter(per_key_concurrency=0, per_key_rpm=0)
    tokens = [admit(limiter, "k", 0.0) for _ in range(10_000)]
    assert limiter.in_flight("k") == 10_000
    for token in tokens:
        limiter.release(token)
    assert limiter.tracked_keys == 0  # no window to wait for: forgotten on the last release


def test_negative_limits_rejected() -> None:
    with pytest.raises(ValueError, match="per_key_rpm"):
        KeyLimiter(per_key_concurrency=1, per_key_rpm=-1)


def test_idle_keys_are_forgotten() -> None:
    """Bounded memory: once every request is released and every window expired, no key state remains."""
    limiter = KeyLimiter(per_key_concurrency=5, per_key_rpm=5)
    tokens = [admit(limiter, f"key-{i}", float(i)) for i in range(100)]
    long_running = admit(limiter, "busy", 0.0)
    for token in tokens:
        limiter.release(token)
    limiter.sweep(100.0)
    assert limiter.tracked_keys == 60  # key-41..key-99 still have an admission in their window, plus busy
    limiter.sweep(99.0 + WINDOW_S)
    assert limiter.tracked_keys == 1
    limiter.sweep(1e9)
    assert limiter.tracked_keys == 1  # in flight: kept however old
    limiter.release(long_running)
    limiter.sweep(1e9)
    assert limiter.tracked_keys == 0
    assert not limiter._idle


def test_key_reused_while_queued_idle_is_not_dropped() -> None:
    """An idle-queue entry whose key came back into use must not delete that key's live state."""
    limiter = KeyLimiter(per_key_concurrency=1, per_key_rpm=2)
    limiter.release(admit(limiter, "k", 0.0))
    again = admit(limiter, "k", 30.0)
    limiter.sweep(61.0)  # the first entry is due, but k is in flight
    assert limiter.try_acquire("k", 61.0) == Denied(DenyReason.CONCURRENCY, 1)
    limiter.release(again)
    limiter.sweep(89.0)
    assert limiter.tracked_keys == 1  # t=30 is still in the window
    limiter.sweep(90.0)
    assert limiter.tracked_keys == 0


def test_window_memory_is_bounded_by_rpm() -> None:
    limiter = KeyLimiter(per_key_concurrency=0, per_key_rpm=4)
    for i in range(1000):
        limiter.try_acquire("k", i / 100)
    assert len(limiter._keys["k"].window) == 4


def test_clock_stepping_back_keeps_window_ordered() -> None:
    limiter = KeyLimiter(per_key_concurrency=0, per_key_rpm=2)
    admit(limiter, "k", 10.0)
    admit(limiter, "k", 5.0)
    denied = limiter.try_acquire("k", 5.0)
    assert isinstance(denied, Denied)
    assert 1 <= denied.retry_after_s <= WINDOW_S


# Invariants, for any interleaving of acquires, releases (including repeats) and clock advances:
# 1. a key never has more than per_key_concurrency requests in flight;
# 2. no 60 s window ever holds more than per_key_rpm admissions of one key;
# 3. decisions are exact: admitted iff a reference model with both counts under their caps says so,
#    and a denial names the cap that refused and, for rpm, the reference retry time;
# 4. after everything is released and a window has passed, no per-key state remains.
KEYS = ["a", "b", "c"]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.sampled_from(KEYS)),
        st.tuples(st.just("release"), st.integers(0, 50)),
        st.tuples(st.just("advance"), st.one_of(st.sampled_from([0.0, 0.5, 1.0, 59.0, 60.0]), st.floats(0, 90))),
    ),
    max_size=120,
)


class Reference:
    """The obvious model: per-key counts and full admission history, no cleanup."""

    def __init__(self, concurrency: int, rpm: int) -> None:
        self.concurrency, self.rpm = concurrency, rpm
        self.in_flight: dict[str, int] = defaultdict(int)
        self.admitted_at: dict[str, list[float]] = defaultdict(list)

    def decide(self, key_id: str, now: float) -> Denied | None:
        recent = [t for t in self.admitted_at[key_id] if t + WINDOW_S > now]
        if self.rpm and len(recent) >= self.rpm:
            wait_s = math.ceil(recent[0] + WINDOW_S - now)  # float rounding can make this 61
            return Denied(DenyReason.RPM, min(max(1, wait_s), 60))
        if self.concurrency and self.in_flight[key_id] >= self.concurrency:
            return Denied(DenyReason.CONCURRENCY, 1)
        return None

    def max_in_any_window(self, key_id: str) -> int:
        times = self.admitted_at[key_id]
        return max((sum(start <= t < start + WINDOW_S for t in times) for start in times), default=0)


@settings(max_examples=300, deadline=None)
@given(concurrency=st.integers(0, 4), rpm=st.integers(0, 5), script=steps)
def test_random_sequences_keep_invariants(concurrency: int, rpm: int, script: list[tuple[str, Any]]) -> None:
    limiter, model = KeyLimiter(concurrency, rpm), Reference(concurrency, rpm)
    now = 1000.0
    tokens: list[Admitted] = []
    for op, arg in script:
        if op == "advance":
            now += arg
        elif op == "release" and tokens:
            token = tokens[arg % len(tokens)]
            model.in_flight[token.key_id] -= 0 if token.released else 1
            limiter.release(token)
        elif op == "acquire":
            got = limiter.try_acquire(arg, now)
            expected = model.decide(arg, now)
            if expected is not None:
                assert got == expected
            else:
                assert isinstance(got, Admitted)
                tokens.append(got)
                model.in_flight[arg] += 1
                model.admitted_at[arg].append(now)
        for key in KEYS:
            assert limiter.in_flight(key) == model.in_flight[key]
            assert not concurrency or model.in_flight[key] <= concurrency
    for key in KEYS:
        assert not rpm or model.max_in_any_window(key) <= rpm
    for token in tokens:
        limiter.release(token)
    limiter.sweep(now + WINDOW_S)
    assert limiter.tracked_keys == 0
