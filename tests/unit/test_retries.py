"""The retry policy: only what surely did not run, or what the upstream said to retry, and only
with bounded waits; fallback models get one try each."""

from __future__ import annotations

import pytest

from relayproxy.errors import InvalidRequest, UpstreamConnectError, UpstreamStatusError, UpstreamTimeout
from relayproxy.policy.retries import BACKOFF_S, next_try, retry_delay_s, schedule


def status(code: int, retry_after: str | None = None) -> UpstreamStatusError:
    return UpstreamStatusError(code, "x", retry_after=retry_after)


def test_schedule_retries_the_requested_model_once_then_each_fallback_once() -> None:
    assert schedule(1) == [0, 0]
    assert schedule(3) == [0, 0, 1, 2]


@pytest.mark.parametrize(
    ("err", "same", "delay"),
    [
        (UpstreamConnectError("refused", before_send=True), True, BACKOFF_S),
        (UpstreamConnectError("refused", before_send=True), False, 0.0),
        (UpstreamConnectError("reset after sending"), True, None),  # it may have run: never twice
        (UpstreamTimeout("slow"), True, None),
        (status(429, "1"), True, 1.0),
        (status(429, "7"), True, None),  # longer than the cap: the client's SDK waits, not us
        (status(429, "7"), False, 0.0),  # a fallback has its own capacity
        (status(429, "Wed, 21 Oct 2026 07:28:00 GMT"), True, None),
        (status(503), True, BACKOFF_S),
        (status(529), True, BACKOFF_S),
        (status(500), True, None),
        (status(400), False, None),
        (InvalidRequest("bad"), True, None),
    ],
)
def test_retry_delay(err: Exception, same: bool, delay: float | None) -> None:
    assert retry_delay_s(err, same_route=same) == delay  # type: ignore[arg-type]


def test_next_try_moves_to_a_fallback_when_the_same_route_must_not_be_retried() -> None:
    order = schedule(2)  # [0, 0, 1]
    assert next_try(order, 0, status(503)) == (1, BACKOFF_S)
    assert next_try(order, 0, status(429, "30")) == (2, 0.0)
    assert next_try(order, 1, status(503)) == (2, 0.0)
    assert next_try(order, 2, status(503)) is None
    assert next_try(order, 0, status(400)) is None
    assert next_try(schedule(1), 0, status(429, "30")) is None
