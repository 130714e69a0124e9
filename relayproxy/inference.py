"""Inference requests for every (client protocol, upstream protocol) pair.

Decide first, then do I/O: ``plan`` decodes the client's request into IR, routes the model and
builds the upstream call (the client's own body, minimally changed, when both sides speak the same
protocol; an encoded IR request otherwise) without touching the network. Then the call goes out,
and the answer comes back whole (unary) or through a relay (stream).

Streams: the client's status line waits for the upstream's, so an upstream error before its
first byte is a real HTTP error in the client's dialect that its SDK can retry. If the upstream
takes longer than ``keepalive_ping_s`` to answer, the 200 is committed and protocol-safe pings go
out while waiting (an error after that is in-band); pings also cover long pauses mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

import orjson

from relayproxy.billing import hold_microusd
from relayproxy.codecs import Codec, StreamEncoder, UpstreamCall
from relayproxy.codecs.registry import CODECS
from relayproxy.config import Config
from relayproxy.errors import (
    FramingError,
    InsufficientBalance,
    InvalidRequest,
    ProviderUnavailable,
    RelayError,
    ShuttingDown,
    UpstreamError,
    UpstreamProtocolError,
)
from relayproxy.exchange import Charge, Exchange, Recorder, TrackedBody
from relayproxy.http_types import HttpResponse, header
from relayproxy.ir import ChatRequest
from relayproxy.metrics import GatewayMetrics
from relayproxy.records import Outcome, Principal
from relayproxy.relay import Passthrough, Relay, Translate
from relayproxy.retries import next_try, schedule
from relayproxy.router import Endpoint, Route, resolve_model
from relayproxy.store import Store
from relayproxy.tokens import estimate_input_tokens
from relayproxy.upstream import Pool, UpstreamResponse

__all__ = ["Inference", "Plan", "parse_json"]

log = logging.getLogger("relayproxy.inference")

MAX_UNARY_BYTES = 16 * 1024 * 1024
HOLD_INPUT_FLOOR_TOKENS = 1024
MAX_ERROR_BYTES = 256 * 1024
_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_ARRAY_HEADERS = [_JSON, (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_USER_AGENT = b"relayproxy"

#: An upstream that answered 200: the plan that reached it (the requested model or a fallback).
Opened = tuple["Plan", UpstreamResponse]
#: What a spawned upstream opening ends with: the answer, or the error it raised (captured,
#: because an exception escaping a TaskGroup child would cancel the whole group).
Answer = Opened | Exception
Spawn = Callable[[Coroutine[Any, Any, Answer]], "asyncio.Task[Answer]"]


@dataclass(slots=True)
class Plan:
    """What one inference request will do, decided before any I/O."""

    req: ChatRequest
    route: Route
    client: Codec
    upstream: Codec
    call: UpstreamCall
    passthrough: bool  # same protocol and framing: the client gets the upstream's own bytes
    sse: bool  # the client's stream framing (False: Gemini JSON array)


def parse_json(body: bytes) -> Any:
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON ({exc})") from None


def plan(config: Config, ex: Exchange, ep: Endpoint, body: Any) -> list[Plan]:
    """Decode, route and build the upstream calls: the requested model's, then one per configured
    fallback whose provider is available. Pure: raises RelayErrors, does no I/O."""
    client: Codec = CODECS[ep.protocol]
    req = client.decode_request(body, model=ep.model, stream=ep.stream)
    ex.record.model, ex.record.stream = req.model, req.stream
    primary = resolve_model(config, req.model)
    plans = [plan_route(ep, body, client, req, route) for route in [primary, *fallback_routes(config, primary)]]
    chose(ex, plans[0])
    return plans


def fallback_routes(config: Config, primary: Route) -> list[Route]:
    routes = []
    for name in primary.model.fallback:
        try:
            routes.append(resolve_model(config, name))
        except ProviderUnavailable:
            continue  # a fallback whose provider has no key is skipped, not an error
    return routes


def chose(ex: Exchange, p: Plan) -> None:
    """Record which provider serves the request (a fallback's, if it came to that)."""
    ex.record.provider, ex.record.upstream_protocol = p.route.provider.name, p.route.provider.protocol
    if ex.charge is not None:
        ex.charge = replace(ex.charge, model=p.route.model)


def plan_route(ep: Endpoint, body: Any, client: Codec, req: ChatRequest, route: Route) -> Plan:
    upstream: Codec = CODECS[route.provider.protocol]
    same = route.provider.protocol == ep.protocol and route.provider.passthrough
    passthrough = same and (ep.sse or not req.stream)
    name = route.model.upstream_model
    if passthrough:
        call = upstream.prepare_passthrough(body, req, name)
    else:
        # The credit hold covers the model's output limit when the request sets none: send that
        # limit upstream too, so the upstream stops where the hold does.
        translated = replace(req, max_output_tokens=req.max_output_tokens or route.model.max_output_tokens)
        call = upstream.encode_request(translated, name)
    return Plan(req, route, client, upstream, call, passthrough, ep.sse)


def output_limit(p: Plan) -> int:
    return p.req.max_output_tokens or p.route.model.max_output_tokens


class Inference:
    """Runs planned inference requests against upstreams and relays the answers."""

    def __init__(
        self,
        config: Config,
        store: Store,
        pool: Pool,
        recorder: Recorder,
        metrics: GatewayMetrics,
        spawn: Spawn | None = None,
    ) -> None:
        self._metrics = metrics
        self._streams: set[_StreamBody] = set()  # in progress: end_streams() can cut them
        self._config = config
        self._store = store
        self._pool = pool
        self._recorder = recorder
        self._spawn = spawn

    async def run(self, ex: Exchange, ep: Endpoint, principal: Principal) -> HttpResponse:
        plans = plan(self._config, ex, ep, parse_json(ex.req.body))
        await self._hold(ex, plans, principal)
        if plans[0].req.stream:
            return await self._stream(ex, plans)
        return await self._unary(ex, plans)

    async def _hold(self, ex: Exchange, plans: list[Plan], principal: Principal) -> None:
        """Reserve the request's maximum cost before any upstream call (402 when not covered):
        the dearest of the models that may serve it (the requested one or a fallback)."""
        # Generous on purpose: an unused hold is released, a short one undercharges. Doubled, plus
        # a floor for the prompt tokens providers add unseen (tool-use system prompts, templates).
        p = plans[0]
        estimate = 2 * estimate_input_tokens(p.req) + HOLD_INPUT_FLOOR_TOKENS
        discount = self._config.billing.discount
        amount = max(hold_microusd(estimate, output_limit(c), c.route.model, discount) for c in plans)
        if not await self._store.hold(principal.account_id, ex.request_id, amount):
            raise InsufficientBalance(
                f"Insufficient credit: this request needs up to ${amount / 1e6:.6f} held while it runs "
                f"(unused credit is released when it ends). Top up, or ask the operator to run "
                f"`relayproxy credits add --account {principal.account} --usd AMOUNT`."
            )
        ex.charge = Charge(p.route.model, output_limit(p), amount)

    def end_streams(self) -> None:
        for body in list(self._streams):
            body.cut()

    async def count_tokens(self, ex: Exchange, ep: Endpoint) -> HttpResponse:
        """Token count from the upstream where it can count, else the local estimate (tokens.py)."""
        body = parse_json(ex.req.body)
        if isinstance(body, dict):
            body = body.get("generateContentRequest", body)  # Gemini's wrapped form
            if ep.protocol == "anthropic":
                body = {**body, "max_tokens": 1}  # count_tokens bodies carry no output limit
        client: Codec = CODECS[ep.protocol]
        req = client.decode_request(body, model=ep.model, stream=False)
        route = resolve_model(self._config, req.model)
        upstream: Codec = CODECS[route.provider.protocol]
        call = upstream.encode_count_request(req, route.model.upstream_model)
        if call is None:
            tokens = estimate_input_tokens(req)
        else:
            resp = await self._open(route, upstream, call, stream=False)
            tokens = upstream.decode_count_response(await self._read_json(resp))
        return HttpResponse(200, [_JSON, ex.id_header], orjson.dumps(client.encode_count_response(tokens)))

    # -- upstream -------------------------------------------------------------------------------

    async def _open(self, route: Route, upstream: Codec, call: UpstreamCall, *, stream: bool) -> UpstreamResponse:
        """Send the call; an error status becomes UpstreamStatusError before any client byte."""
        headers = [
            _JSON,
            (b"accept", b"text/event-stream" if stream else b"application/json"),
            (b"accept-encoding", b"identity"),
            (b"user-agent", _USER_AGENT),
            *call.headers,
            *upstream.auth_headers(route.api_key),
        ]
        t = self._config.timeouts
        resp = await self._pool.request(
            "POST",
            route.provider.base_url + call.path,
            headers,
            call.body,
            connect_timeout_s=t.upstream_connect_s,
            first_byte_timeout_s=t.upstream_first_byte_s,
            read_timeout_s=t.stream_idle_s,
        )
        if resp.status == 200:
            return resp
        try:
            body = await resp.aread(MAX_ERROR_BYTES)
        except UpstreamError:
            body = b""
        finally:
            await resp.aclose()
        retry_after = header(resp.headers, b"retry-after")
        raise upstream.decode_error(resp.status, body, retry_after.decode("latin-1") if retry_after else None)

    async def _open_any(self, ex: Exchange, plans: list[Plan], *, stream: bool) -> Opened:
        """The first upstream that answers 200, trying again only as retries.py allows, and only
        within the first-byte deadline; the last failure goes to the client."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.timeouts.upstream_first_byte_s
        order, i = schedule(len(plans)), 0
        while True:
            p = plans[order[i]]
            try:
                resp = await self._open(p.route, p.upstream, p.call, stream=stream)
            except UpstreamError as err:
                nxt = next_try(order, i, err)
                if nxt is None or loop.time() + nxt[1] >= deadline:
                    raise
                log.info(
                    "request %s: upstream %s failed (%s); trying again", ex.request_id, p.route.provider.name, err.kind
                )
                i = nxt[0]
                await asyncio.sleep(nxt[1])
                continue
            chose(ex, p)
            return p, resp

    async def _read_json(self, resp: UpstreamResponse) -> Any:
        try:
            raw = await resp.aread(MAX_UNARY_BYTES)
        finally:
            await resp.aclose()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("The upstream answered with a body that is not JSON.") from None

    # -- unary ----------------------------------------------------------------------------------

    async def _unary(self, ex: Exchange, plans: list[Plan]) -> HttpResponse:
        p, resp = await self._open_any(ex, plans, stream=False)
        data = await self._read_json(resp)
        embedded = p.upstream.embedded_error(data)
        if embedded is not None:
            raise embedded
        usage = p.upstream.response_usage(data)
        if p.passthrough:
            out = orjson.dumps(data)
        else:
            out = orjson.dumps(p.client.encode_response(p.upstream.decode_response(data), p.req.model))
        headers = [_JSON, (b"content-length", b"%d" % len(out)), ex.id_header]
        return HttpResponse(200, headers, TrackedBody(self._deliver(ex, out, usage), self._recorder.abandoned(ex)))

    async def _deliver(self, ex: Exchange, out: bytes, usage: Any) -> AsyncIterator[bytes]:
        delivered = False
        try:
            yield out
            delivered = True
        finally:
            if delivered:
                await self._recorder.complete(ex, usage)
            else:
                await self._recorder.finish(ex, Outcome.CLIENT_DISCONNECTED, 200, "client_disconnected")

    # -- streams --------------------------------------------------------------------------------

    async def _stream(self, ex: Exchange, plans: list[Plan]) -> HttpResponse:
        p = plans[0]
        encoder = p.client.stream_encoder(p.req, p.req.model, sse=p.sse)
        head = await self._first_answer(ex, plans)
        headers = [*(_SSE_HEADERS if p.sse else _ARRAY_HEADERS), ex.id_header]
        body = _StreamBody(self, ex, head, encoder)
        return HttpResponse(200, headers, TrackedBody(body.run(), self._recorder.abandoned(ex)))

    async def _first_answer(self, ex: Exchange, plans: list[Plan]) -> Opened | asyncio.Task[Answer]:
        """The upstream's answer if it comes within one ping interval (errors raise as HTTP errors);
        else the pending task, and the stream commits to 200 and pings while it waits."""
        if self._spawn is None:
            return await self._open_any(ex, plans, stream=True)
        task = self._spawn(_captured(self._open_any(ex, plans, stream=True)))
        try:
            await asyncio.wait({task}, timeout=self._config.timeouts.keepalive_ping_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        return _answer(task.result()) if task.done() else task


def make_relay(p: Plan, encoder: StreamEncoder) -> Relay:
    """Passthrough when the plan allows it, else decode -> IR -> the client's encoder."""
    if p.passthrough:
        return Passthrough(p.upstream.stream_tap(p.req))
    return Translate(p.upstream.stream_decoder(), encoder)


async def _captured(opening: Coroutine[Any, Any, Opened]) -> Answer:
    """Run an upstream opening in a TaskGroup child: its error becomes a value, not a group abort."""
    try:
        return await opening
    except Exception as exc:  # noqa: BLE001 - handed back to the request task, which raises it
        return exc


def _answer(result: Answer) -> Opened:
    if isinstance(result, Exception):
        raise result
    return result


class _StreamBody:
    """One stream's body: waits (pinging) for the upstream, relays it, then records the outcome."""

    def __init__(
        self,
        owner: Inference,
        ex: Exchange,
        head: Opened | asyncio.Task[Answer],
        encoder: StreamEncoder,
    ) -> None:
        self._recorder = owner._recorder
        self._metrics = owner._metrics
        self._registry = owner._streams
        self._task: asyncio.Task[Any] | None = None
        self._cut = False
        self._ping_s = owner._config.timeouts.keepalive_ping_s
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
                if not self.delivered:
                    self._fail(self._failure)
                    if isinstance(err, OverHold):
                        self.reason = err.kind
                    yield self._encoder.error(err)
            except asyncio.CancelledError:
                if not self._cut or self._task is None:
                    raise
                # Our own cancel (cut): consumed here, so the stream can still say why it ends.
                self._task.uncancel()
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
        self._budget = OutputBudget(output_limit(p), passthrough=p.passthrough)

    async def _pump(self) -> AsyncIterator[bytes]:
        async for ping in self._wait_head():
            yield ping
        assert self._resp is not None and self._relay is not None and self._budget is not None
        self._failure = Outcome.UPSTREAM_DROPPED
        relay, budget = self._relay, self._budget
        try:
            async for chunk in self._resp.aiter_body(heartbeat_s=self._ping_s):
                pieces = relay.feed(chunk) if chunk else [self._encoder.ping()]
                budget.check(relay)  # before the bytes go out: an over-limit stream is cut
                if pieces:
                    yield _one(pieces)
                if relay.done or relay.failed is not None:
                    break
            else:
                tail = relay.close()
                if tail:
                    yield _one(tail)
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
        self._opened(_answer(head.result()))  # raises the upstream's error: reported in-band

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
            await self._record()

    async def _record(self) -> None:
        usage = self._relay.usage if self._relay is not None else None
        if self.delivered:
            await self._recorder.complete(self._ex, usage)
        else:
            await self._recorder.finish(self._ex, self.outcome, 200, self.reason, usage)


class OutputBudget:
    """Cuts a stream whose output passes what its credit hold covers (an upstream ignoring the
    output limit): the exact check uses the upstream's own cumulative usage where it reports it
    mid-stream (Gemini); the byte check bounds every other stream, generously enough that an
    upstream honouring the limit is never cut (OpenAI-style passthrough spends ~250 bytes of JSON
    per token, translated output ~4 bytes per token of text)."""

    def __init__(self, max_output_tokens: int, *, passthrough: bool) -> None:
        self._max_tokens = 2 * max_output_tokens + 1000  # billing.clamp_usage's "absurd" line
        self._max_bytes = (400 if passthrough else 16) * max_output_tokens + 64 * 1024

    def check(self, relay: Relay) -> None:
        usage = relay.usage
        if relay.relayed_bytes > self._max_bytes or (usage is not None and usage.output_tokens > self._max_tokens):
            raise OverHold(
                "The upstream kept generating past the request's output limit; the stream was cut and not billed."
            )


class OverHold(UpstreamProtocolError):
    """The upstream ignored the output limit the credit hold was sized for."""

    kind = "over_hold"


def _one(pieces: list[Any]) -> bytes:
    """One body chunk; a single piece (usually the upstream's own chunk object) is not copied."""
    if len(pieces) == 1 and not isinstance(pieces[0], memoryview):
        first: bytes = pieces[0]
        return first
    return b"".join(pieces)
