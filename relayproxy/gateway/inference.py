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
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import orjson

from relayproxy.billing.pricing import hold_microusd
from relayproxy.codecs import Codec, UpstreamCall
from relayproxy.codecs.registry import CODECS
from relayproxy.config.settings import Config
from relayproxy.errors import (
    InsufficientBalance,
    KeyExpired,
    KeySpendLimit,
    ModelNotAllowed,
    RelayError,
    UpstreamError,
    UpstreamProtocolError,
)
from relayproxy.gateway.exchange import Charge, Exchange, Recorder, TrackedBody
from relayproxy.gateway.opening import Answer, Opened, unwrap
from relayproxy.gateway.streaming import StreamBody
from relayproxy.http_types import HttpResponse, header
from relayproxy.policy.plan import Plan, count_call, decode, output_limit, parse_json, plan
from relayproxy.policy.retries import next_try, schedule
from relayproxy.policy.router import Endpoint, Route, resolve_model
from relayproxy.policy.tokens import estimate_input_tokens
from relayproxy.records import Principal
from relayproxy.telemetry.metrics import GatewayMetrics
from relayproxy.upstream import Pool, UpstreamResponse

__all__ = ["Inference", "Spawn", "insufficient", "refusal"]

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
Spawn = Callable[[Coroutine[Any, Any, Answer]], "asyncio.Task[Answer]"]


class Inference:
    """Runs planned inference requests against upstreams and relays the answers."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        recorder: Recorder,
        metrics: GatewayMetrics,
        spawn: Spawn | None = None,
    ) -> None:
        self._metrics = metrics
        self._streams: set[StreamBody] = set()  # in progress: end_streams() can cut them
        self._config = config
        self._pool = pool
        self._recorder = recorder
        self._spawn = spawn

    def prepare(self, ex: Exchange, ep: Endpoint) -> list[Plan]:
        """Decode, route and plan the request (no I/O; raises RelayErrors for bad requests)."""
        body = parse_json(ex.req.body)
        req = decode(ep, body)
        ex.record.model, ex.record.stream = req.model, req.stream
        plans = plan(self._config, ep, body, req, ex.req.headers)
        chose(ex, plans[0])
        return plans

    def hold_amount(self, plans: list[Plan]) -> int:
        """The request's maximum cost, to be held before any upstream call: the dearest of the
        models that may serve it (the requested one or a fallback)."""
        # Generous on purpose: an unused hold is released, a short one undercharges. Doubled, plus
        # a floor for the prompt tokens providers add unseen (tool-use system prompts, templates).
        estimate = 2 * estimate_input_tokens(plans[0].req) + HOLD_INPUT_FLOOR_TOKENS
        discount = self._config.billing.discount
        return max(hold_microusd(estimate, output_limit(c), c.route.model, discount) for c in plans)

    async def run(self, ex: Exchange, plans: list[Plan], held: int) -> HttpResponse:
        """Run a prepared request whose credit hold of ``held`` the caller has taken (``Store.admit``)."""
        p = plans[0]
        ex.charge = Charge(p.route.model, output_limit(p), held)
        if p.req.stream:
            return await self._stream(ex, plans)
        return await self._unary(ex, plans)

    def end_streams(self) -> None:
        for body in list(self._streams):
            body.cut()

    async def count_tokens(self, ex: Exchange, ep: Endpoint) -> HttpResponse:
        """Token count from the upstream where it can count, else the local estimate (tokens.py)."""
        body = parse_json(ex.req.body)
        if isinstance(body, dict):
            body = body.get("generateContentRequest", body)  # Gemini's wrapped form
        decodable = {**body, "max_tokens": 1} if isinstance(body, dict) and ep.protocol == "anthropic" else body
        client: Codec = CODECS[ep.protocol]
        req = client.decode_request(decodable, model=ep.model, stream=False)  # counts carry no output limit
        route = resolve_model(self._config, req.model)
        upstream, call = count_call(ep, body, req, route, ex.req.headers)
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
        return _loads(await self._read_body(resp))

    async def _read_body(self, resp: UpstreamResponse) -> bytes:
        try:
            return await resp.aread(MAX_UNARY_BYTES)
        finally:
            await resp.aclose()

    # -- unary ----------------------------------------------------------------------------------

    async def _unary(self, ex: Exchange, plans: list[Plan]) -> HttpResponse:
        p, resp = await self._open_any(ex, plans, stream=False)
        raw = await self._read_body(resp)
        data = _loads(raw)
        embedded = p.upstream.embedded_error(data)
        if embedded is not None:
            raise embedded
        usage = p.upstream.response_usage(data)
        if p.passthrough:
            out = raw  # the upstream's own bytes: it was valid JSON of the client's protocol
        else:
            out = orjson.dumps(p.client.encode_response(p.upstream.decode_response(data), p.req.model))
        # Whole bytes in one write; the record is settled when the server has handed them over.
        headers = [_JSON, ex.id_header, *_dropped_header(p)]
        return HttpResponse(200, headers, out, sent=self._recorder.sent(ex, usage))

    # -- streams --------------------------------------------------------------------------------

    async def _stream(self, ex: Exchange, plans: list[Plan]) -> HttpResponse:
        p = plans[0]
        encoder = p.client.stream_encoder(p.req, p.req.model, sse=p.sse)
        head = await self._first_answer(ex, plans)
        headers = [*(_SSE_HEADERS if p.sse else _ARRAY_HEADERS), ex.id_header, *_dropped_header(p)]
        body = StreamBody(
            self._recorder, self._metrics, self._streams, self._config.timeouts.keepalive_ping_s, ex, head, encoder
        )
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
        return unwrap(task.result()) if task.done() else task


def insufficient(amount: int, account: str) -> InsufficientBalance:
    """The 402 for a hold the account's available credit does not cover."""
    return InsufficientBalance(
        f"Insufficient credit: this request needs up to ${amount / 1e6:.6f} held while it runs "
        f"(unused credit is released when it ends). Top up, or ask the operator to run "
        f"`relayproxy credits add --account {account} --usd AMOUNT`."
    )


def _dropped_header(p: Plan) -> list[tuple[bytes, bytes]]:
    """``x-relayproxy-dropped-tools: web_search``: built-in tools the upstream could not run and
    the request went without (policy/plan.py)."""
    return [(b"x-relayproxy-dropped-tools", ",".join(p.dropped_tools).encode())] if p.dropped_tools else []


def refusal(kind: str, principal: Principal, amount: int, model: str | None) -> RelayError:
    """The error for a request the key's own options refuse (``Admission.refused``)."""
    if kind == "key_expired":
        return KeyExpired(f"This API key expired: it was valid through {principal.expires} (UTC). Create a new key.")
    if kind == "model_not_allowed":
        allowed = ", ".join(principal.models or ()) or "none"
        return ModelNotAllowed(f"This API key may not use the model '{model}'; it is limited to: {allowed}.")
    return KeySpendLimit(
        f"This API key's spend limit of ${_usd(principal.spend_limit_microusd or 0)} is reached: it has spent "
        f"${principal.spend_microusd / 1e6:.6f} and holds ${principal.held_microusd / 1e6:.6f} for requests "
        f"in flight, and this request needs up to ${amount / 1e6:.6f} held. Use another key or raise its limit."
    )


def _usd(microusd: int) -> str:
    """1_500_000 -> '1.50', 1 -> '0.000001': cents at least, micro-dollars where they matter."""
    whole, _, fraction = f"{microusd / 1e6:.6f}".rstrip("0").partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError("The upstream answered with a body that is not JSON.") from None


async def _captured(opening: Coroutine[Any, Any, Opened]) -> Answer:
    """Run an upstream opening in a TaskGroup child: its error becomes a value, not a group abort."""
    try:
        return await opening
    except Exception as exc:  # noqa: BLE001 - handed back to the request task, which raises it
        return exc


def chose(ex: Exchange, p: Plan) -> None:
    """Record which provider serves the request (a fallback's, if it came to that)."""
    ex.record.provider, ex.record.upstream_protocol = p.route.provider.name, p.route.provider.protocol
    if ex.charge is not None and ex.charge.model is not p.route.model:  # a fallback's model
        ex.charge = replace(ex.charge, model=p.route.model)
