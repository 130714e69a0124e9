"""Planning an inference request, before any I/O: decode the client's request into IR, route the
model (and its fallbacks) and build each upstream call. Pure: raises RelayErrors, never waits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson

from relayproxy.codecs import Codec, UpstreamCall
from relayproxy.codecs.registry import CODECS
from relayproxy.config.settings import Config
from relayproxy.errors import InvalidRequest, ProviderUnavailable
from relayproxy.gateway.exchange import Exchange
from relayproxy.ir import ChatRequest
from relayproxy.policy.router import Endpoint, Route, resolve_model
from relayproxy.upstream import UpstreamResponse

__all__ = [
    "Answer",
    "Opened",
    "Plan",
    "chose",
    "fallback_routes",
    "output_limit",
    "parse_json",
    "plan",
    "plan_route",
    "unwrap",
]

#: An upstream that answered 200: the plan that reached it (the requested model or a fallback).
Opened = tuple["Plan", UpstreamResponse]
#: What a spawned upstream opening ends with: the answer, or the error it raised (captured,
#: because an exception escaping a TaskGroup child would cancel the whole group).
Answer = Opened | Exception


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
    if ex.charge is not None and ex.charge.model is not p.route.model:  # a fallback's model
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


def unwrap(result: Answer) -> Opened:
    if isinstance(result, Exception):
        raise result
    return result
