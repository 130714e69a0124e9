"""The composition module: the only place that knows routing, auth, inference, records and errors.

``Gateway.handle`` is the per-request boundary (one of the two catch-alls, with the server's
per-connection one): any RelayError becomes an error in the caller's own protocol, a bug becomes
a 500, and the request's usage record is written either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from relayproxy.billing.payments import Payments
from relayproxy.billing.pricing import price_list, render_price_table_html
from relayproxy.codecs.catalog import MODEL_ENTRY, MODEL_LIST
from relayproxy.codecs.registry import CODECS
from relayproxy.config.settings import Config
from relayproxy.errors import (
    ClientError,
    GatewayError,
    InvalidRequest,
    NotFound,
    ProviderUnavailable,
    RateLimited,
    RelayError,
    Unauthorized,
    UpstreamError,
    server_error,
)
from relayproxy.gateway.exchange import Exchange, Recorder, access, new_request_id
from relayproxy.gateway.inference import Inference, Spawn, insufficient, refusal
from relayproxy.http_types import HttpRequest, HttpResponse, header, query_params
from relayproxy.keys import hash_key, looks_like_key
from relayproxy.policy.plan import parse_json
from relayproxy.policy.router import Endpoint, EndpointKind, match_endpoint, protocol_for
from relayproxy.records import Outcome, Principal, key_expired
from relayproxy.store.facade import Store, utc_iso, utc_now
from relayproxy.store.key_limits import KeyCaps
from relayproxy.telemetry.accesslog import access_line
from relayproxy.telemetry.metrics import CONTENT_TYPE, GatewayMetrics
from relayproxy.upstream import Pool

__all__ = ["Gateway"]

log = logging.getLogger("relayproxy.gateway")

_JSON = (b"content-type", b"application/json")

Handler = Callable[[Exchange, Endpoint], Awaitable[HttpResponse]]


class Pages(Protocol):
    """The web pages served beside the API (the dashboard package; app.py plugs it in)."""

    def owns(self, path: str) -> bool: ...

    async def handle(self, req: HttpRequest) -> HttpResponse: ...

    def price_page(self, prices: dict[str, Any]) -> HttpResponse: ...


class Gateway:
    """Turns an HttpRequest into an HttpResponse."""

    def __init__(
        self, config: Config, store: Store, pool: Pool, *, spawn: Spawn | None = None, pages: Pages | None = None
    ) -> None:
        self._config = config
        self._pages = pages
        self._store = store
        self.metrics = GatewayMetrics()
        self._recorder = Recorder(store, config.billing.discount, self.metrics, frozenset(config.models))
        self._inference = Inference(config, pool, self._recorder, self.metrics, spawn)
        self._payments = Payments(config.billing, store)
        self._prices = price_list(config)
        self._caps = KeyCaps(config.limits.per_key_concurrency, config.limits.per_key_rpm)
        self._routes: dict[EndpointKind, Handler] = {
            EndpointKind.INFERENCE: self._infer,
            EndpointKind.COUNT_TOKENS: self._count_tokens,
            EndpointKind.MODELS: self._models,
            EndpointKind.MODEL: self._model,
            EndpointKind.HEALTHZ: self._healthz,
            EndpointKind.READYZ: self._readyz,
            EndpointKind.METRICS: self._metrics_text,
            EndpointKind.PRICES: self._price_list,
            EndpointKind.CHECKOUT: self._checkout,
            EndpointKind.STRIPE_WEBHOOK: self._stripe_webhook,
        }

    async def handle(self, req: HttpRequest) -> HttpResponse:
        ex = Exchange(req, protocol_for(req.path, req.headers, req.query))
        try:
            if self._pages is not None and self._pages.owns(req.path):
                response = await self._pages.handle(req)
                self._log_untracked(ex, response.status)
                return response
            endpoint = match_endpoint(req.method, req.path, req.headers, req.query)
            handler = self._routes.get(endpoint.kind) if endpoint is not None else None
            if endpoint is None or handler is None:
                raise NotFound(f"No route for {req.method} {req.path}.")
            ex.protocol = endpoint.protocol
            response = await handler(ex, endpoint)
            if not ex.tracked:
                self._log_untracked(ex, response.status)
            return response
        except RelayError as err:
            return self._fail(ex, err)
        except asyncio.CancelledError:
            self._recorder.finish(ex, Outcome.CLIENT_DISCONNECTED, 499, "client_disconnected")
            raise
        except Exception:  # the per-request boundary: a bug becomes a 500, never a crash
            log.exception("request %s failed", ex.request_id)
            return self._fail(ex, GatewayError("Internal gateway error; the request was not billed."))

    def _log_untracked(self, ex: Exchange, status: int) -> None:
        """Access log for requests without a usage record (inference ones log when they end)."""
        access.info(
            access_line(
                None,
                ts=ex.record.created_at,
                method=ex.req.method,
                path=ex.req.path,
                status=status,
                duration_ms=int((time.monotonic() - ex.started) * 1000),
                client=ex.req.client[0] if ex.req.client else None,
                request_id=ex.request_id,
                protocol=ex.protocol,
            ),
        )

    def end_streams(self) -> None:
        """Drain deadline: every stream still running ends now with an in-band error, unbilled."""
        self._inference.end_streams()

    def render_server_error(self, status: int, message: str, req: HttpRequest | None) -> HttpResponse:
        """Errors the HTTP server detects itself (framing, limits, timeouts), in the caller's dialect."""
        protocol = protocol_for(req.path, req.headers, req.query) if req is not None else "openai"
        return self._error_response(protocol, server_error(status, message), new_request_id())

    # -- endpoints ------------------------------------------------------------------------------

    async def _infer(self, ex: Exchange, ep: Endpoint) -> HttpResponse:
        """Key, abort cap, admission, then the request: the key lookup, the per-key caps
        (concurrency and requests per minute, counted in the database so they hold across
        workers and machines) and the credit hold share one database trip (``Store.admit``), so
        the request is planned first (no I/O) to know what to hold, but a planning error is
        answered only once the key is known to be good."""
        ex.tracked = True
        ex.record.client_protocol = ep.protocol
        key_hash = self._key_hash(ex)
        planning_error: RelayError | None = None
        try:
            plans = self._inference.prepare(ex, ep)
            amount: int | None = self._inference.hold_amount(plans)
        except RelayError as err:
            planning_error, amount = err, None
        cap = self._config.limits.free_aborts_per_hour
        since = utc_iso(datetime.now(UTC) - timedelta(hours=1)) if cap > 0 else None  # 0: no cap, no count
        admission = await self._store.admit(
            key_hash, ex.request_id, amount, aborts_since=since, abort_cap=cap, model=ex.record.model, caps=self._caps
        )
        principal = self._authenticated(ex, admission.principal, admission.refused == "key_expired")
        # From here on every way out settles the request, which releases a hold taken above.
        if cap > 0 and principal.recent_aborts >= cap:
            raise RateLimited(
                f"This key aborted {cap} or more streams in the last hour (aborted streams are not billed); "
                "wait before sending more requests.",
                retry_after_s=300,
            )
        if admission.refused in ("concurrency", "rpm"):
            what = "concurrent requests" if admission.refused == "concurrency" else "requests per minute"
            raise RateLimited(
                f"Too many {what} for this key; retry after {admission.retry_after_s} s.",
                retry_after_s=admission.retry_after_s,
            )
        if planning_error is not None:
            raise planning_error
        assert amount is not None
        if admission.refused is not None:
            raise refusal(admission.refused, principal, amount, ex.record.model)
        if not admission.held:
            raise insufficient(amount, principal.account)
        return await self._inference.run(ex, plans, held=amount)

    async def _count_tokens(self, ex: Exchange, ep: Endpoint) -> HttpResponse:
        await self._authenticate(ex)
        return await self._inference.count_tokens(ex, ep)

    async def _models(self, ex: Exchange, ep: Endpoint) -> HttpResponse:
        await self._authenticate(ex)
        return _json(200, MODEL_LIST[ep.protocol](list(self._config.models.values())), ex)

    async def _model(self, ex: Exchange, ep: Endpoint) -> HttpResponse:
        await self._authenticate(ex)
        model = self._config.models.get((ep.model or "").removeprefix("models/"))
        if model is None:
            raise NotFound(f"The model '{ep.model}' does not exist on this gateway.")
        return _json(200, MODEL_ENTRY[ep.protocol](model), ex)

    async def _healthz(self, ex: Exchange, ep: Endpoint) -> HttpResponse:
        return _json(200, {"status": "ok"}, ex)

    async def _readyz(self, ex: Exchange, ep: Endpoint) -> HttpResponse:
        ready = await self._store.ping()
        return _json(200 if ready else 503, {"status": "ready" if ready else "store_unavailable"}, ex)

    async def _metrics_text(self, ex: Exchange, ep: Endpoint) -> HttpResponse:
        return HttpResponse(200, [(b"content-type", CONTENT_TYPE)], self.metrics.render())

    async def _price_list(self, ex: Exchange, ep: Endpoint) -> HttpResponse:
        """The public price list: JSON, or an HTML table for a browser (Accept: text/html)."""
        if b"text/html" in (header(ex.req.headers, b"accept") or b""):
            if self._pages is not None:
                return self._pages.price_page(self._prices)
            html = render_price_table_html(self._prices).encode()
            return HttpResponse(200, [(b"content-type", b"text/html; charset=utf-8"), ex.id_header], html)
        return _json(200, self._prices, ex)

    async def _checkout(self, ex: Exchange, ep: Endpoint) -> HttpResponse:
        """A Stripe Checkout Session topping up the caller's own account; returns its URL."""
        principal = await self._authenticate(ex)
        body = parse_json(ex.req.body)
        amount = body.get("amount_usd") if isinstance(body, dict) else None
        if amount is None or isinstance(amount, bool) or not isinstance(amount, int | float | str):
            raise InvalidRequest('required: the top-up amount in USD, e.g. 20 or "12.50"', "amount_usd")
        url = await self._payments.create_checkout(principal.account_id, principal.account, amount)
        return _json(200, {"object": "checkout_session", "url": url}, ex)

    async def _stripe_webhook(self, ex: Exchange, ep: Endpoint) -> HttpResponse:
        """Stripe's events, verified on the raw body; the answer tells Stripe whether to retry."""
        signature = header(ex.req.headers, b"stripe-signature")
        outcome = await self._payments.handle_webhook(ex.req.body, signature.decode("latin-1") if signature else None)
        return _json(outcome.status, {"received": outcome.status < 300, "action": outcome.action}, ex)

    # -- auth -----------------------------------------------------------------------------------

    async def _authenticate(self, ex: Exchange) -> Principal:
        key_hash = self._key_hash(ex)
        return self._authenticated(ex, await self._store.authenticate(key_hash))

    def _key_hash(self, ex: Exchange) -> bytes:
        """The hash of the caller's key (401 when there is none, or it cannot be one of ours)."""
        key = _caller_key(ex.req, ex.protocol)
        if key is None or not looks_like_key(key):
            raise Unauthorized()
        return hash_key(key)

    def _authenticated(self, ex: Exchange, principal: Principal | None, expired: bool = False) -> Principal:
        """The caller; 401 when there is none or its key is past its expiry date (``expired``:
        the store found it so in the admission's own transaction)."""
        if principal is None:
            raise Unauthorized()
        ex.record.account, ex.record.key_id = principal.account, principal.key_id
        if expired or key_expired(principal.expires, utc_now()):
            raise refusal("key_expired", principal, 0, None)
        return principal

    # -- errors ---------------------------------------------------------------------------------

    def _fail(self, ex: Exchange, err: RelayError) -> HttpResponse:
        if isinstance(err, ClientError | ProviderUnavailable):
            outcome, reason = Outcome.REJECTED, err.kind
        elif isinstance(err, UpstreamError):
            outcome, reason = Outcome.UPSTREAM_ERROR, "upstream_error"
        else:
            outcome, reason = Outcome.GATEWAY_ERROR, "gateway_error"
        self._recorder.finish(ex, outcome, err.status, reason)
        if not ex.tracked:
            self._log_untracked(ex, err.status)
        return self._error_response(ex.protocol, err, ex.request_id)

    def _error_response(self, protocol: str, err: RelayError, request_id: str) -> HttpResponse:
        status, body = CODECS[protocol].encode_error(err)
        headers = [_JSON, (b"x-request-id", request_id.encode())]
        retry_after = getattr(err, "retry_after", None) or getattr(err, "retry_after_s", None)
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        if isinstance(err, ProviderUnavailable):
            headers.append((b"x-should-retry", b"false"))
        return HttpResponse(status, headers, orjson.dumps(body))


def _json(status: int, body: Any, ex: Exchange) -> HttpResponse:
    return HttpResponse(status, [_JSON, ex.id_header], orjson.dumps(body))


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
