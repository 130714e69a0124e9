"""Per-request state and the one place a request's usage record is written.

Every inference request leaves exactly one usage record, whatever happens: errors are recorded
before the error response is returned; responses with a body are recorded when the body has been
handed to the client's socket, or when the client went away. Writes are queued to the store
synchronously (never awaited), because the server cancels a request's task when its client
disconnects, possibly while cleanup is running: a queued write cannot be cancelled away.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction

from relayproxy.billing.pricing import clamp_usage, cost_microusd
from relayproxy.config.settings import ModelConfig
from relayproxy.http_types import HttpRequest
from relayproxy.ir import Usage
from relayproxy.records import Outcome, UsageRecord
from relayproxy.store.facade import Store, utc_now
from relayproxy.telemetry.accesslog import ACCESS_LOGGER, access_line
from relayproxy.telemetry.metrics import GatewayMetrics

__all__ = ["Charge", "Exchange", "Recorder", "TrackedBody", "access", "new_request_id"]

#: One JSON line per request (accesslog.access_line: never keys, secrets or prompts).
access = logging.getLogger(ACCESS_LOGGER)


# Request ids need to be unique, not secret: the random module's generator (seeded from the OS,
# and reseeded by it in every forked child, so workers never share a sequence) costs a fraction of
# a getrandom() system call per request.


def new_request_id() -> str:
    """``req_`` + 24 hex digits: the time in ms, then 48 random bits. Ids made later sort later,
    so the ledger's and the usage table's indexes on them grow at their right edge (a request's
    rows then share index pages with its neighbours' instead of dirtying a random page each)."""
    return f"req_{time.time_ns() // 1_000_000:012x}{random.getrandbits(48):012x}"


@dataclass(slots=True, frozen=True)
class Charge:
    """What a request holds and may be charged: set once its credit hold succeeded."""

    model: ModelConfig
    max_output_tokens: int | None
    hold_microusd: int


@dataclass(slots=True)
class Exchange:
    """One request: its id, the caller's protocol and the usage record being filled."""

    req: HttpRequest
    protocol: str
    record: UsageRecord = field(default_factory=lambda: UsageRecord(new_request_id(), utc_now()))
    started: float = field(default_factory=time.monotonic)
    tracked: bool = False  # an inference request: it must leave a usage record
    recorded: bool = False
    charge: Charge | None = None  # a credit hold is open for this request

    @property
    def request_id(self) -> str:
        return self.record.request_id

    @property
    def id_header(self) -> tuple[bytes, bytes]:
        return (b"x-request-id", self.record.request_id.encode())


class Recorder:
    """Settles requests: at most once per exchange, queued so that cancellation cannot lose it.

    Settling writes the usage record and closes the credit hold in one transaction: a completed
    request with upstream-reported usage is charged (never more than its hold); anything else
    releases the hold and is charged nothing.
    """

    def __init__(self, store: Store, discount: Fraction, metrics: GatewayMetrics, models: frozenset[str]) -> None:
        self._store = store
        self._discount = discount
        self._metrics = metrics
        self._models = models  # metric labels only for configured names: clients cannot mint series

    def _closed(self, ex: Exchange) -> None:
        """The request is over: count it, log it (its settlement closes its hold, which frees
        its key's in-flight slot)."""
        self._observe(ex)
        rec = ex.record
        access.info(
            access_line(
                rec,
                ts=rec.created_at,
                method=ex.req.method,
                path=ex.req.path,
                status=rec.http_status,
                duration_ms=rec.duration_ms,
                client=ex.req.client[0] if ex.req.client else None,
                request_id=rec.request_id,
            ),
        )

    def _observe(self, ex: Exchange) -> None:
        rec, m = ex.record, self._metrics
        model = rec.model if rec.model in self._models else "unknown"
        protocol = rec.client_protocol or ex.protocol
        m.requests.inc(protocol, model, rec.outcome)
        m.request_duration.observe(rec.duration_ms / 1000, protocol)
        if rec.billed:
            m.charged_microusd.inc(by=rec.cost_microusd)
        if rec.outcome in (Outcome.UPSTREAM_ERROR.value, Outcome.UPSTREAM_DROPPED.value):
            kind = "dropped" if rec.outcome == Outcome.UPSTREAM_DROPPED.value else "status"
            m.upstream_errors.inc(rec.provider or "unknown", kind)

    def finish(self, ex: Exchange, outcome: Outcome, status: int, reason: str, usage: Usage | None = None) -> None:
        """Settle a request that is not charged: its hold is released."""
        self._settle(ex, outcome, status, reason, usage, 0)

    def complete(self, ex: Exchange, usage: Usage | None) -> None:
        """The response's answer reached the client's socket: charge what was used. Without the
        upstream's usage nothing is charged (never an estimate): ``usage_unknown`` says why."""
        if usage is None or ex.charge is None:
            self.finish(ex, Outcome.COMPLETED, 200, "usage_unknown" if usage is None else "no_hold", usage)
            return
        billable, flags = clamp_usage(usage, ex.charge.max_output_tokens)
        # Never more than the hold (settle enforces it too): record, ledger and metrics agree.
        cost = min(cost_microusd(billable, ex.charge.model, self._discount), ex.charge.hold_microusd)
        reason = ("usage_clamped" if flags else "charged") if cost > 0 else "zero_cost"
        self._settle(ex, Outcome.COMPLETED, 200, reason, billable, cost)

    def _settle(self, ex: Exchange, outcome: Outcome, status: int, reason: str, usage: Usage | None, cost: int) -> None:
        """Fill the record once, then queue it with the ledger settlement.

        Queued, not awaited: the request (and its connection's next request) does not wait for
        the settlement's fsync. Its place in the store's queue is taken here, so no later read
        misses it, cancellation cannot lose it, and the store commits it before it closes.
        """
        if not ex.tracked or ex.recorded:
            return
        ex.recorded = True
        rec = ex.record
        rec.outcome, rec.http_status, rec.reason = outcome.value, status, reason
        rec.duration_ms = int((time.monotonic() - ex.started) * 1000)
        if usage is not None:
            rec.input_tokens, rec.cached_input_tokens = usage.input_tokens, usage.cached_input_tokens
            rec.output_tokens, rec.reasoning_tokens = usage.output_tokens, usage.reasoning_tokens
        rec.cost_microusd, rec.billed = cost, cost > 0
        self._closed(ex)
        self._store.settle_soon(rec, cost)

    def abandoned(self, ex: Exchange, status: int = 200) -> Callable[[], Awaitable[None]]:
        async def abandon() -> None:
            self.finish(ex, Outcome.CLIENT_DISCONNECTED, status, "client_disconnected")

        return abandon

    def sent(self, ex: Exchange, usage: Usage | None) -> Callable[[bool], None]:
        """The server's callback for a whole-bytes response: charged if it was handed over whole."""

        def done(delivered: bool) -> None:
            if delivered:
                self.complete(ex, usage)
            else:
                self.finish(ex, Outcome.CLIENT_DISCONNECTED, 200, "client_disconnected")

        return done


class TrackedBody:
    """A response body that still records its request if the server closes it unstarted."""

    def __init__(self, gen: AsyncIterator[bytes], on_abandon: Callable[[], Awaitable[None]]) -> None:
        self._gen = gen
        self._on_abandon = on_abandon
        self._started = False

    def __aiter__(self) -> TrackedBody:
        return self

    async def __anext__(self) -> bytes:
        self._started = True
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        if not self._started:
            await self._on_abandon()
        aclose = getattr(self._gen, "aclose", None)
        if aclose is not None:
            await aclose()
