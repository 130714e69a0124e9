"""Planning an inference request, before any I/O: decode the client's request into IR, route the
model (and its fallbacks) and build each upstream call. Pure: raises RelayErrors, never waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from relayproxy.codecs import Codec, UpstreamCall
from relayproxy.codecs.registry import CODECS
from relayproxy.config.settings import Config
from relayproxy.errors import InvalidRequest, ProviderUnavailable
from relayproxy.ir import ChatRequest
from relayproxy.policy.router import Endpoint, Route, resolve_model

__all__ = [
    "Plan",
    "count_call",
    "decode",
    "fallback_routes",
    "output_limit",
    "parse_json",
    "plan",
    "plan_route",
    "upstream_protocol",
]


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
    dropped_tools: list[str] = field(default_factory=list)  # built-in tools left out (see _builtin_tools)


def parse_json(body: bytes) -> Any:
    if not body:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON ({exc})") from None


def decode(ep: Endpoint, body: Any) -> ChatRequest:
    """The client's request in the canonical model (raises InvalidRequest naming the bad field)."""
    client: Codec = CODECS[ep.protocol]
    return client.decode_request(body, model=ep.model, stream=ep.stream)


def plan(
    config: Config, ep: Endpoint, body: Any, req: ChatRequest, headers: Sequence[tuple[bytes, bytes]] = ()
) -> list[Plan]:
    """Route and build the upstream calls: the requested model's, then one per configured
    fallback whose provider is available. ``headers`` are the caller's (a passthrough forwards
    its protocol's own, see ``Codec.caller_headers``). Pure: raises RelayErrors, does no I/O."""
    client: Codec = CODECS[ep.protocol]
    primary = resolve_model(config, req.model)
    plans = [plan_route(ep, body, client, req, primary, headers)]
    for route in fallback_routes(config, primary):
        try:
            plans.append(plan_route(ep, body, client, req, route, headers))
        except InvalidRequest:
            continue  # a fallback that cannot take this request (a built-in tool it cannot run)
    return plans


def fallback_routes(config: Config, primary: Route) -> list[Route]:
    routes = []
    for name in primary.model.fallback:
        try:
            routes.append(resolve_model(config, name))
        except ProviderUnavailable:
            continue  # a fallback whose provider has no key is skipped, not an error
    return routes


def plan_route(
    ep: Endpoint, body: Any, client: Codec, req: ChatRequest, route: Route, headers: Sequence[tuple[bytes, bytes]] = ()
) -> Plan:
    upstream: Codec = CODECS[upstream_protocol(ep, route)]
    same = upstream_protocol(ep, route) == ep.protocol and route.provider.passthrough
    passthrough = same and (ep.sse or not req.stream)
    name = route.model.upstream_model
    if passthrough:
        call = upstream.prepare_passthrough(body, req, name)
        _forward_caller_headers(call, upstream, headers)
    else:
        dropped = _builtin_tools(req.builtin_tools)
        # The credit hold covers the model's output limit when the request sets none: send that
        # limit upstream too, so the upstream stops where the hold does.
        translated = replace(req, max_output_tokens=req.max_output_tokens or route.model.max_output_tokens)
        call = upstream.encode_request(translated, name)
        return Plan(req, route, client, upstream, call, passthrough, ep.sse, dropped)
    return Plan(req, route, client, upstream, call, passthrough, ep.sse)


def _forward_caller_headers(call: UpstreamCall, upstream: Codec, headers: Sequence[tuple[bytes, bytes]]) -> None:
    forwarded = upstream.caller_headers(list(headers))
    if forwarded:  # the caller's version and betas, in place of the codec's defaults
        names = {k for k, _ in forwarded}
        call.headers = [h for h in call.headers if h[0] not in names] + forwarded


def count_call(
    ep: Endpoint, body: Any, req: ChatRequest, route: Route, headers: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[Codec, UpstreamCall | None]:
    """A token-count request's upstream codec and call (None: the upstream cannot count, the gateway
    estimates). A Responses client on a provider serving Responses gets its body passed through to
    ``/responses/input_tokens``; on a same-protocol passthrough the caller's protocol headers go
    along as for inference (Anthropic's version and betas); otherwise the count is translated."""
    protocol = upstream_protocol(ep, route)
    upstream: Codec = CODECS[protocol]
    name = route.model.upstream_model
    same = protocol == ep.protocol and route.provider.passthrough and isinstance(body, dict)
    call = upstream.prepare_count_passthrough(body, name) if same else None
    if call is None:
        call = upstream.encode_count_request(req, name)
    if call is not None and same:
        _forward_caller_headers(call, upstream, headers)
    return upstream, call


def _builtin_tools(kinds: list[str]) -> list[str]:
    """A translated request's built-in tools (the upstream cannot run them): web search is left out,
    so Codex, which declares it by default, works on every upstream (the model answers without
    searching, as Anthropic server tools are skipped); any other is a 400 naming it, since the
    caller's request depends on it (a vector store, a computer, a container)."""
    refused = [k for k in kinds if not k.startswith("web_search")]
    if refused:
        raise InvalidRequest(
            f"the built-in tool {refused[0]!r} is not available on this model's upstream; only function tools "
            "are (an OpenAI provider with responses = true runs them itself)",
            "tools",
        )
    return kinds


def upstream_protocol(ep: Endpoint, route: Route) -> str:
    """The protocol the upstream is spoken to in: a Responses client reaches an OpenAI provider
    that serves Responses (``responses = true``, with ``passthrough``) on ``/responses`` itself."""
    provider = route.provider
    if ep.protocol == "openai_responses" and provider.responses and provider.passthrough:
        return "openai_responses"
    return provider.protocol


def output_limit(p: Plan) -> int:
    return p.req.max_output_tokens or p.route.model.max_output_tokens
