"""The composition module: the only place that knows routing, auth, upstreams, relays and records.

``Gateway.handle`` is the per-request boundary (one of the two catch-alls, with the server's
per-connection one). Every inference request leaves exactly one usage record, whatever happens:
errors are recorded before the error response is returned; responses with a body are recorded
when the body has been handed to the client's socket, or when the client went away.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import __version__
from .codecs import openai_chat
from .config import Config
from .errors import (
    ClientError,
    GatewayError,
    InvalidRequest,
    NotFound,
    ProviderUnavailable,
    RelayError,
    Unauthorized,
    UpstreamError,
    UpstreamProtocolError,
)
from .http_types import Headers, HttpRequest, HttpResponse, header, query_params
from .ir import Usage
from .keys import hash_key, looks_like_key
from .records import Outcome, Principal, UsageRecord
from .relay import Passthrough
from .router import Endpoint, EndpointKind, Route, match_endpoint, protocol_for_path, resolve_model
from .store import Store, utc_now
from .upstream import Pool, UpstreamResponse

__all__ = ["Gateway"]

log = logging.getLogger("relayproxy.gateway")

MAX_UNARY_BYTES = 16 * 1024 * 1024
MAX_ERROR_BYTES = 256 * 1024
_JSON = (b"content-type", b"application/json")
_SSE = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_USER_AGENT = f"relayproxy/{__version__}".encode()
_CODECS: dict[str, Any] = {"openai": openai_chat}


@dataclass(slots=True)
class Exchange:
    """Per-request state: the request, its id, and the usage record being filled."""

    req: HttpRequest
    protocol: str
    record: UsageRecord
    started: float = field(default_factory=time.monotonic)
    tracked: bool = False  # an inference request: it must leave a usage record
    recorded: bool = False

    @property
    def request_id(self) -> str:
        return self.record.request_id


class Gateway:
    """Turns an HttpRequest into an HttpResponse."""

    def __init__(self, config: Config, store: Store, pool: Pool) -> None:
        self._config = config
        self._store = store
        self._pool = pool
        self._routes: dict[EndpointKind, Callable[[Exchange, Endpoint], Awaitable[HttpResponse]]] = {
            EndpointKind.CHAT: self._chat,
            EndpointKind.MODELS: self._models,
            EndpointKind.MODEL: self._model,
            EndpointKind.HEALTHZ: self._healthz,
            EndpointKind.READYZ: self._readyz,
        }

    async def handle(self, req: HttpRequest) -> HttpResponse:
        ex = Exchange(req, protocol_for_path(req.path, req.headers), UsageRecord(_request_id(), utc_now()))
        try:
            endpoint = match_endpoint(req.method, req.path, req.headers)
            if endpoint is None:
                raise NotFound(f"No route for {req.method} {req.path}.")
            ex.protocol = endpoint.protocol
            return await self._routes[endpoint.kind](ex, endpoint)
        except RelayError as err:
            return await self._fail(ex, err)
        except asyncio.CancelledError:
            await self._finish(ex, Outcome.CLIENT_DISCONNECTED, 499, "client_disconnected")
            raise
        except Exception:  # the per-request boundary: a bug becomes a 500, never a crash
            log.exception("request %s failed", ex.request_id)
            return await self._fail(ex, GatewayError("Internal gateway error; the request was not billed."))

    def render_server_error(self, status: int, message: str, req: HttpRequest | None) -> HttpResponse:
        """Errors the HTTP server detects itself (framing, limits, timeouts), in the caller's dialect."""
        protocol = protocol_for_path(req.path, req.headers) if req is not None else "openai"
        err = ClientError(message)
        err.status = status
        err.kind = _SERVER_ERROR_KINDS.get(status, "invalid_request")
        return self._error_response(protocol, err, _request_id())

    # -- endpoints --------------------------------------------------------------------------------

    async def _chat(self, ex: Exchange, endpoint: Endpoint) -> HttpResponse:
        ex.tracked = True
        ex.record.client_protocol = "openai"
        await self._authenticate(ex)
        body = _parse_json(ex.req.body)
        info = openai_chat.check_request(body)
        ex.record.model, ex.record.stream = info.model, info.stream
        route = resolve_model(self._config, info.model)
        ex.record.provider, ex.record.upstream_protocol = route.provider.name, route.provider.protocol
        if route.provider.protocol != "openai":
            raise ProviderUnavailable(
                f"The model '{info.model}' is served over the {route.provider.protocol} protocol; "
                "translation from the OpenAI protocol to it is not available in this build."
            )
        payload = openai_chat.prepare_passthrough(body, route.model.upstream_model, info.stream)
        path = openai_chat.upstream_path(route.model.upstream_model, info.stream)
        resp = await self._open_upstream(route, path, payload, info.stream)
        if info.stream:
            tap = openai_chat.StreamTap(client_wants_usage=info.include_usage)
            stream = self._relay_stream(ex, resp, Passthrough(tap), tap)
            return HttpResponse(200, [*_SSE, _rid(ex)], _Tracked(stream, self._abandon(ex)))
        return await self._unary(ex, resp)

    async def _models(self, ex: Exchange, endpoint: Endpoint) -> HttpResponse:
        await self._authenticate(ex)
        data = [_model_entry(name, m.provider) for name, m in self._config.models.items()]
        return _json(200, {"object": "list", "data": data}, ex.request_id)

    async def _model(self, ex: Exchange, endpoint: Endpoint) -> HttpResponse:
        await self._authenticate(ex)
        model = self._config.models.get(endpoint.model or "")
        if model is None:
            raise NotFound(f"The model '{endpoint.model}' does not exist on this gateway.")
        return _json(200, _model_entry(model.name, model.provider), ex.request_id)

    async def _healthz(self, ex: Exchange, endpoint: Endpoint) -> HttpResponse:
        return _json(200, {"status": "ok"}, ex.request_id)

    async def _readyz(self, ex: Exchange, endpoint: Endpoint) -> HttpResponse:
        ready = await self._store.ping()
        return _json(200 if ready else 503, {"status": "ready" if ready else "store_unavailable"}, ex.request_id)

    # -- auth -------------------------------------------------------------------------------------

    async def _authenticate(self, ex: Exchange) -> Principal:
        key = _caller_key(ex.req, ex.protocol)
        principal = await self._store.authenticate(hash_key(key)) if key and looks_like_key(key) else None
        if principal is None:
            raise Unauthorized()
        ex.record.account, ex.record.key_id = principal.account, principal.key_id
        return principal

    # -- upstream ---------------------------------------------------------------------------------

    async def _open_upstream(self, route: Route, path: str, payload: bytes, stream: bool) -> UpstreamResponse:
        """Send the request; an error status becomes UpstreamStatusError before any client byte."""
        codec = _CODECS[route.provider.protocol]
        headers: Headers = [
            _JSON,
            (b"accept", b"text/event-stream" if stream else b"application/json"),
            (b"accept-encoding", b"identity"),
            (b"user-agent", _USER_AGENT),
            *codec.auth_headers(route.api_key),
        ]
        t = self._config.timeouts
        resp = await self._pool.request(
            "POST",
            route.provider.base_url + path,
            headers,
            payload,
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
        raise codec.decode_error(resp.status, body, _text(header(resp.headers, b"retry-after")))

    async def _unary(self, ex: Exchange, resp: UpstreamResponse) -> HttpResponse:
        try:
            raw = await resp.aread(MAX_UNARY_BYTES)
        finally:
            await resp.aclose()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("The upstream answered with a body that is not JSON.") from None
        embedded = openai_chat.embedded_error(data)
        if embedded is not None:
            raise embedded
        headers = [_JSON, (b"content-length", str(len(raw)).encode()), _rid(ex)]
        body = self._deliver_unary(ex, raw, openai_chat.response_usage(data))
        return HttpResponse(200, headers, _Tracked(body, self._abandon(ex)))

    async def _deliver_unary(self, ex: Exchange, raw: bytes, usage: Usage | None) -> AsyncIterator[bytes]:
        delivered = False
        try:
            yield raw
            delivered = True
        finally:
            if delivered:
                await self._complete(ex, usage)
            else:
                await self._finish(ex, Outcome.CLIENT_DISCONNECTED, 200, "client_disconnected")

    async def _relay_stream(
        self, ex: Exchange, resp: UpstreamResponse, relay: Passthrough, tap: openai_chat.StreamTap
    ) -> AsyncIterator[bytes]:
        """Relay the upstream stream; decide the outcome only from what reached the client."""
        outcome, reason = Outcome.CLIENT_DISCONNECTED, "client_disconnected"
        delivered = False
        try:
            try:
                async for chunk in resp.aiter_body():
                    out = relay.feed(chunk)
                    if out:
                        yield _one(out)
                    if tap.done and not delivered:
                        delivered = True  # the terminator was handed to the client's socket
                tail = relay.close()
                if tail:
                    yield _one(tail)
                delivered = delivered or tap.done
            except UpstreamError as err:
                if not delivered:
                    outcome, reason = Outcome.UPSTREAM_DROPPED, "upstream_dropped"
                    yield openai_chat.encode_stream_error(err)
            if delivered:
                outcome = Outcome.COMPLETED
            elif tap.error is not None:
                outcome, reason = Outcome.UPSTREAM_ERROR, "upstream_error"
            elif outcome is not Outcome.UPSTREAM_DROPPED:
                outcome, reason = Outcome.UPSTREAM_DROPPED, "upstream_dropped"
                msg = "The upstream stream ended before it was complete; this request was not billed."
                yield openai_chat.encode_stream_error(UpstreamProtocolError(msg))
        finally:
            # Shielded as one unit: the server may cancel this task again (the client's socket
            # closing) while we are already cleaning up after GeneratorExit.
            settle = self._complete(ex, tap.usage) if delivered else self._finish(ex, outcome, 200, reason, tap.usage)
            await asyncio.shield(_close_then(resp, settle))

    # -- records ----------------------------------------------------------------------------------

    def _abandon(self, ex: Exchange) -> Callable[[], Awaitable[None]]:
        async def abandon() -> None:
            await self._finish(ex, Outcome.CLIENT_DISCONNECTED, 200, "client_disconnected")

        return abandon

    async def _complete(self, ex: Exchange, usage: Usage | None) -> None:
        reason = "billing_disabled" if usage is not None else "usage_unknown"
        await self._finish(ex, Outcome.COMPLETED, 200, reason, usage)

    async def _finish(
        self, ex: Exchange, outcome: Outcome, status: int, reason: str, usage: Usage | None = None
    ) -> None:
        """Write the request's usage record once (shielded: a second cancel must not lose it)."""
        if not ex.tracked or ex.recorded:
            return
        ex.recorded = True
        rec = ex.record
        rec.outcome, rec.http_status, rec.reason = outcome.value, status, reason
        rec.duration_ms = int((time.monotonic() - ex.started) * 1000)
        if usage is not None:
            rec.input_tokens, rec.cached_input_tokens = usage.input_tokens, usage.cached_input_tokens
            rec.output_tokens, rec.reasoning_tokens = usage.output_tokens, usage.reasoning_tokens
        rec.cost_microusd, rec.billed = 0, False
        await asyncio.shield(self._store.record_usage(rec))

    async def _fail(self, ex: Exchange, err: RelayError) -> HttpResponse:
        if isinstance(err, ClientError | ProviderUnavailable):
            outcome, reason = Outcome.REJECTED, err.kind
        elif isinstance(err, UpstreamError):
            outcome, reason = Outcome.UPSTREAM_ERROR, "upstream_error"
        else:
            outcome, reason = Outcome.GATEWAY_ERROR, "gateway_error"
        await self._finish(ex, outcome, err.status, reason)
        return self._error_response(ex.protocol, err, ex.request_id)

    def _error_response(self, protocol: str, err: RelayError, request_id: str) -> HttpResponse:
        status, body = _CODECS.get(protocol, openai_chat).encode_error(err)
        headers = [_JSON, (b"x-request-id", request_id.encode())]
        retry_after = getattr(err, "retry_after", None) or getattr(err, "retry_after_s", None)
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        if isinstance(err, ProviderUnavailable):
            headers.append((b"x-should-retry", b"false"))
        return HttpResponse(status, headers, orjson.dumps(body))


async def _close_then(resp: UpstreamResponse, then: Awaitable[None]) -> None:
    """Close the upstream response (cancelling the upstream request if unfinished), then record."""
    try:
        await resp.aclose()
    finally:
        await then


class _Tracked:
    """A response body that still records the request if the server closes it before starting it."""

    def __init__(self, gen: AsyncIterator[bytes], on_abandon: Callable[[], Awaitable[None]]) -> None:
        self._gen = gen
        self._on_abandon = on_abandon
        self._started = False

    def __aiter__(self) -> _Tracked:
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


_SERVER_ERROR_KINDS = {
    400: "invalid_request",
    408: "request_timeout",
    413: "payload_too_large",
    414: "uri_too_long",
    431: "header_fields_too_large",
    505: "http_version_not_supported",
}


def _request_id() -> str:
    return "req_" + secrets.token_hex(12)


def _rid(ex: Exchange) -> tuple[bytes, bytes]:
    return (b"x-request-id", ex.request_id.encode())


def _one(pieces: list[bytes | memoryview]) -> bytes:
    """One body chunk; a single piece (usually the upstream's own chunk object) is not copied."""
    if len(pieces) == 1 and not isinstance(pieces[0], memoryview):
        return pieces[0]
    return b"".join(pieces)


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _json(status: int, body: Any, request_id: str) -> HttpResponse:
    return HttpResponse(status, [_JSON, (b"x-request-id", request_id.encode())], orjson.dumps(body))


def _parse_json(body: bytes) -> Any:
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON ({exc})") from None


def _model_entry(name: str, provider: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": provider}


def _caller_key(req: HttpRequest, protocol: str) -> str | None:
    """The caller's key from any accepted place; two different keys are an error, not a choice."""
    found: set[str] = set()
    for name, value in req.headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token:
                found.add(token)
        elif name in (b"x-api-key", b"x-goog-api-key") and value:
            found.add(value.decode("latin-1"))
    if protocol == "gemini" and req.query:
        key = query_params(req.query).get("key")
        if key:
            found.add(key)
    if len(found) > 1:
        raise InvalidRequest("the request carries two different API keys; send exactly one")
    return found.pop() if found else None
