"""One stream's response body: wait (pinging) for the upstream, relay it, record the outcome.

The outcome is decided only from what reached the client: ``completed`` needs the bytes that end
the client's answer handed to the client's socket (the body generator is resumed after yielding
them; the relay's ``answered``, by the client codec's definition), whatever framing follows; a
client that leaves after that is ``completed`` too, and the upstream read is cancelled at once. An
upstream failure before its answer is an ``upstream_error``, after it an ``upstream_dropped``; the
client leaving before the answer's end is ``client_disconnected``; the gateway's own drain deadline
is ``shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from relayproxy.codecs import StreamEncoder
from relayproxy.errors import FramingError, RelayError, ShuttingDown, UpstreamProtocolError
from relayproxy.gateway.exchange import Exchange, Recorder
from relayproxy.gateway.opening import Answer, Opened, unwrap
from relayproxy.policy.plan import Plan, output_limit
from relayproxy.records import Outcome
from relayproxy.relay import Passthrough, Relay, Translate
from relayproxy.telemetry.metrics import GatewayMetrics
from relayproxy.upstream import UpstreamResponse

__all__ = ["OutputBudget", "OverHold", "StreamBody", "make_relay"]


def make_relay(p: Plan, encoder: StreamEncoder) -> Relay:
    """Passthrough when the plan allows it, else decode -> IR -> the client's encoder."""
    if p.passthrough:
        return Passthrough(p.upstream.stream_tap(p.req))
    return Translate(p.upstream.stream_decoder(), encoder)


class StreamBody:
    """One stream's body: waits (pinging) for the upstream, relays it, then records the outcome."""

    def __init__(
        self,
        recorder: Recorder,
        metrics: GatewayMetrics,
        registry: set[StreamBody],
        ping_s: float,
        ex: Exchange,
        head: Opened | asyncio.Task[Answer],
        encoder: StreamEncoder,
    ) -> None:
        self._recorder = recorder
        self._metrics = metrics
        self._registry = registry  # the streams in progress (so a drain deadline can cut them)
        self._task: asyncio.Task[Any] | None = None
        self._cut = False
        self._ping_s = ping_s
        self._ex = ex
        self._head = head
        self._encoder = encoder
        self._resp: UpstreamResponse | None = None  # these three are set once the upstream answers
        self._relay: Relay | None = None
        self._budget: OutputBudget | None = None
        if not isinstance(head, asyncio.Task):
            self._opened(head)
        self.outcome, self.reason = Outcome.CLIENT_DISCONNECTED, "client_disconnected"
        self.delivered = False  # the terminal bytes were handed to the client's socket
        self.answered = False  # the bytes ending the client's answer were handed to its socket
        # What an upstream failure means in the current phase: before the upstream's answer it
        # is an error; once its body is flowing, a broken or truncated stream is "dropped".
        self._failure = Outcome.UPSTREAM_ERROR

    def cut(self) -> None:
        """End this stream now (the gateway is stopping): cancel whatever it waits on."""
        if self._task is not None and not self._cut:
            self._cut = True
            self._task.cancel()

    async def run(self) -> AsyncIterator[bytes]:
        metrics = self._metrics
        metrics.active_streams.inc()
        self._task = asyncio.current_task()
        self._registry.add(self)
        first = True
        try:
            try:
                async for out in self._pump():
                    if first:
                        first = False
                        metrics.time_to_first_byte.observe(time.monotonic() - self._ex.started, self._ex.protocol)
                    yield out
            except RelayError as err:
                if not (self.delivered or self.answered):  # after the answer: nothing to tell
                    self._fail(self._failure)
                    if isinstance(err, OverHold):
                        self.reason = err.kind
                    yield self._encoder.error(err)
            except asyncio.CancelledError:
                if not self._cut or self._task is None:
                    raise
                # Our own cancel (cut): consumed here, so the stream can still say why it ends.
                self._task.uncancel()
                if self.answered:
                    return  # the client has its whole answer: it ends completed
                self.outcome, self.reason = Outcome.GATEWAY_ERROR, "shutdown"
                yield self._encoder.error(
                    ShuttingDown("The gateway is shutting down; this stream was cut and not billed.")
                )
            if self.delivered:
                self.outcome, self.reason = Outcome.COMPLETED, ""
        finally:
            self._registry.discard(self)
            metrics.active_streams.dec()
            await asyncio.shield(self._settle())

    def _opened(self, opened: Opened) -> None:
        p, self._resp = opened
        self._relay = make_relay(p, self._encoder)
        echo = len(p.call.body) if p.passthrough else 0
        self._budget = OutputBudget(output_limit(p), passthrough=p.passthrough, echo_bytes=echo)

    async def _pump(self) -> AsyncIterator[bytes]:
        async for ping in self._wait_head():
            yield ping
        assert self._resp is not None and self._relay is not None and self._budget is not None
        self._failure = Outcome.UPSTREAM_DROPPED
        relay, budget = self._relay, self._budget
        try:
            async for chunk in self._resp.aiter_body(heartbeat_s=self._ping_s):
                # No keep-alive after the answer: only its framing may follow it.
                out = relay.feed(chunk) if chunk else b"" if self.answered else self._encoder.ping()
                budget.check(relay)  # before the bytes go out: an over-limit stream is cut
                if out:
                    yield out  # passthrough: usually the upstream's own chunk object
                if relay.answered:
                    self.answered = True  # resumed: the answer's end is on the client's socket
                if relay.done or relay.failed is not None:
                    break
            else:
                tail = relay.close()
                if tail:
                    yield tail
        except FramingError as exc:
            raise UpstreamProtocolError(f"The upstream stream could not be framed: {exc}") from None
        async for end in self._end():
            yield end

    async def _wait_head(self) -> AsyncIterator[bytes]:
        head = self._head
        if not isinstance(head, asyncio.Task):
            return
        while not head.done():
            await asyncio.wait({head}, timeout=self._ping_s)
            if not head.done():
                yield self._encoder.ping()
        self._opened(unwrap(head.result()))  # raises the upstream's error: reported in-band

    async def _end(self) -> AsyncIterator[bytes]:
        relay = self._relay
        assert relay is not None
        if relay.done:
            finish = self._encoder.finish()
            if finish:
                yield finish
            self.delivered = True  # we were resumed after yielding the terminal bytes
            return
        if relay.failed is not None:  # the upstream's own error event already went out
            self._fail(Outcome.UPSTREAM_ERROR)
            return
        raise UpstreamProtocolError("The upstream stream ended before it was complete; this request was not billed.")

    def _fail(self, outcome: Outcome) -> None:
        self.outcome, self.reason = outcome, outcome.value

    async def _settle(self) -> None:
        """Close the upstream (cancelling it if unfinished), then write the record."""
        head = self._head
        if isinstance(head, asyncio.Task):
            if not head.done():
                head.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await head
            late = head.result() if head.done() and not head.cancelled() else None
            if isinstance(late, tuple) and self._resp is None:
                await late[1].aclose()  # answered just as the client left: close it, never leak it
        try:
            if self._resp is not None:
                await self._resp.aclose()
        finally:
            self._record()

    def _record(self) -> None:
        usage = self._relay.usage if self._relay is not None else None
        if self.delivered or self.answered:  # after the whole answer, whatever happened next
            self._recorder.complete(self._ex, usage)
        else:
            self._recorder.finish(self._ex, self.outcome, 200, self.reason, usage)


class OutputBudget:
    """Cuts a stream whose output passes what its credit hold covers (an upstream ignoring the
    output limit): the exact check uses the upstream's own cumulative usage where it reports it
    mid-stream (Gemini); the byte check bounds every other stream, generously enough that an
    upstream honouring the limit is never cut (OpenAI-style passthrough spends ~250 bytes of JSON
    per token, translated output ~4 bytes per token of text). ``echo_bytes`` is the request body's
    size on a passthrough: a Responses stream repeats the request (instructions, tools) in its
    ``response.created``, ``.in_progress`` and ``.completed`` events, which is not output."""

    def __init__(self, max_output_tokens: int, *, passthrough: bool, echo_bytes: int = 0) -> None:
        self._max_tokens = 2 * max_output_tokens + 1000  # billing.clamp_usage's "absurd" line
        self._max_bytes = (400 if passthrough else 16) * max_output_tokens + 64 * 1024 + 4 * echo_bytes

    def check(self, relay: Relay) -> None:
        usage = relay.usage
        if relay.relayed_bytes > self._max_bytes or (usage is not None and usage.output_tokens > self._max_tokens):
            raise OverHold(
                "The upstream kept generating past the request's output limit; the stream was cut and not billed."
            )


class OverHold(UpstreamProtocolError):
    """The upstream ignored the output limit the credit hold was sized for."""

    kind = "over_hold"
