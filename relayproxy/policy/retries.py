"""Pure retry policy for the upstream call, applied only before any byte reached the client.

LLM calls cost money and are not idempotent, so a request is tried again only when it surely did
not run (the connection was never established) or the upstream said so explicitly (429, 502,
503, 529 before answering). A same-route retry honours ``Retry-After`` up to a cap; past the cap
the status goes to the client (whose SDK can wait that long) unless a fallback model can serve.
A configured ``fallback`` list gives each of its models one try, in order. Timeouts are never
retried: the upstream may already be generating (and billing the operator) for the first try.
"""

from __future__ import annotations

from relayproxy.errors import RelayError, UpstreamConnectError, UpstreamStatusError

__all__ = ["RETRYABLE_STATUSES", "RETRY_AFTER_CAP_S", "next_try", "retry_delay_s", "schedule"]

RETRYABLE_STATUSES = frozenset({429, 502, 503, 529})
RETRY_AFTER_CAP_S = 2.0
BACKOFF_S = 0.25
SAME_ROUTE_TRIES = 2


def schedule(candidates: int) -> list[int]:
    """Which candidate (0 = the requested model, then its fallbacks) each try goes to."""
    return [0] * SAME_ROUTE_TRIES + list(range(1, candidates))


def next_try(order: list[int], i: int, err: RelayError) -> tuple[int, float] | None:
    """After try ``i`` of ``order`` failed with ``err``: (the next try, seconds to wait first), or
    None when ``err`` goes to the client. A same-route retry that is not allowed (say, Retry-After
    too long) moves on to the next fallback model."""
    for j in range(i + 1, len(order)):
        delay = retry_delay_s(err, same_route=order[j] == order[i])
        if delay is not None:
            return j, delay
        if order[j] != order[i]:
            return None
    return None


def retry_delay_s(err: RelayError, *, same_route: bool) -> float | None:
    """Seconds to wait before the next try after ``err``, or None when ``err`` is final."""
    if isinstance(err, UpstreamConnectError):
        if not err.before_send:
            return None
        return BACKOFF_S if same_route else 0.0
    if not isinstance(err, UpstreamStatusError) or err.upstream_status not in RETRYABLE_STATUSES:
        return None
    if not same_route:
        return 0.0  # another provider has its own capacity: no need to wait
    wait = _seconds(err.retry_after)
    if wait is None:
        return BACKOFF_S
    return wait if wait <= RETRY_AFTER_CAP_S else None


def _seconds(retry_after: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form counts as too long to wait here)."""
    if retry_after is None:
        return None
    try:
        return max(float(retry_after.strip()), 0.0)
    except ValueError:
        return RETRY_AFTER_CAP_S + 1
