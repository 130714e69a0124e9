"""Pure request routing: (method, path, headers, query) -> Endpoint, and model name -> Route."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote

from relayproxy.config.settings import Config, ModelConfig, ProviderConfig
from relayproxy.errors import ProviderUnavailable, UnknownModel
from relayproxy.http_types import Headers, header

__all__ = ["Endpoint", "EndpointKind", "Route", "match_endpoint", "protocol_for", "resolve_model"]


class EndpointKind(Enum):
    INFERENCE = "inference"
    COUNT_TOKENS = "count_tokens"
    MODELS = "models"
    MODEL = "model"
    PRICES = "prices"
    HEALTHZ = "healthz"
    READYZ = "readyz"
    METRICS = "metrics"
    CHECKOUT = "checkout"
    STRIPE_WEBHOOK = "stripe_webhook"


@dataclass(slots=True, frozen=True)
class Endpoint:
    kind: EndpointKind
    protocol: str  # the caller's protocol: openai | openai_responses | anthropic | gemini
    model: str | None = None  # Gemini paths and model retrieval carry the model
    stream: bool | None = None  # Gemini: from the method name
    sse: bool = True  # Gemini streams without alt=sse use JSON-array framing


@dataclass(slots=True, frozen=True)
class Route:
    model: ModelConfig
    provider: ProviderConfig
    api_key: str


_GEMINI = re.compile(r"^/(?:v1beta|v1|v1alpha)/models/([^/:]+):([A-Za-z]+)$")
_GEMINI_METHODS = {"generateContent": False, "streamGenerateContent": True}
_FIXED: dict[tuple[str, str], EndpointKind] = {
    ("GET", "/healthz"): EndpointKind.HEALTHZ,
    ("GET", "/readyz"): EndpointKind.READYZ,
    ("GET", "/metrics"): EndpointKind.METRICS,
    ("GET", "/models"): EndpointKind.PRICES,
    ("POST", "/v1/billing/checkout"): EndpointKind.CHECKOUT,
    ("POST", "/billing/stripe/webhook"): EndpointKind.STRIPE_WEBHOOK,
}
_POSTS: dict[str, tuple[EndpointKind, str]] = {
    "/v1/chat/completions": (EndpointKind.INFERENCE, "openai"),
    "/chat/completions": (EndpointKind.INFERENCE, "openai"),
    "/v1/responses": (EndpointKind.INFERENCE, "openai_responses"),
    "/responses": (EndpointKind.INFERENCE, "openai_responses"),
    "/v1/messages": (EndpointKind.INFERENCE, "anthropic"),
    "/v1/v1/messages": (EndpointKind.INFERENCE, "anthropic"),  # an Anthropic base URL set with /v1
    "/v1/messages/count_tokens": (EndpointKind.COUNT_TOKENS, "anthropic"),
    "/v1/responses/input_tokens": (EndpointKind.COUNT_TOKENS, "openai_responses"),
    "/responses/input_tokens": (EndpointKind.COUNT_TOKENS, "openai_responses"),
    "/v1/v1/messages/count_tokens": (EndpointKind.COUNT_TOKENS, "anthropic"),
}


def protocol_for(path: str, headers: Headers, query: str = "") -> str:
    """The caller's protocol as far as path, headers and query tell (also used for error bodies).

    ``GET /v1/models`` is shared by all three SDKs: ``x-goog-api-key`` or ``?key=`` means Gemini,
    ``anthropic-version`` means Anthropic, anything else OpenAI (the headers each SDK sends on
    its model-list call).
    """
    if path.startswith(("/v1/messages", "/v1/v1/messages")):
        return "anthropic"
    if path in ("/v1/responses", "/responses", "/v1/responses/input_tokens", "/responses/input_tokens"):
        return "openai_responses"
    if path.startswith(("/v1beta/", "/v1alpha/")) or _GEMINI.match(path):
        return "gemini"
    if header(headers, b"x-goog-api-key") is not None or _has_key_param(query):
        return "gemini"
    if header(headers, b"anthropic-version") is not None:
        return "anthropic"
    return "openai"


def _has_key_param(query: str) -> bool:
    return query.startswith("key=") or "&key=" in query


def match_endpoint(method: str, path: str, headers: Headers, query: str = "") -> Endpoint | None:
    """The endpoint for a request, or None (404)."""
    fixed = _FIXED.get((method, path))
    if fixed is not None:
        return Endpoint(fixed, protocol_for(path, headers, query))
    if method == "POST":
        return _match_post(path, query)
    if method == "GET":
        return _match_get(path, headers, query)
    return None


def _match_post(path: str, query: str) -> Endpoint | None:
    known = _POSTS.get(path)
    if known is not None:
        return Endpoint(known[0], known[1])
    found = _GEMINI.match(path)
    if found is None:
        return None
    model, method = unquote(found.group(1)), found.group(2)
    if method == "countTokens":
        return Endpoint(EndpointKind.COUNT_TOKENS, "gemini", model)
    if method not in _GEMINI_METHODS:
        return None
    sse = not _GEMINI_METHODS[method] or "alt=sse" in query.split("&")
    return Endpoint(EndpointKind.INFERENCE, "gemini", model, _GEMINI_METHODS[method], sse)


def _match_get(path: str, headers: Headers, query: str) -> Endpoint | None:
    protocol = protocol_for(path, headers, query)
    for prefix in ("/v1/models", "/v1beta/models", "/v1alpha/models"):
        if path == prefix:
            return Endpoint(EndpointKind.MODELS, protocol)
        if path.startswith(prefix + "/") and len(path) > len(prefix) + 1:
            return Endpoint(EndpointKind.MODEL, protocol, unquote(path[len(prefix) + 1 :]))
    return None


def resolve_model(config: Config, name: str) -> Route:
    """The route for a model name; UnknownModel or ProviderUnavailable (naming the variable)."""
    model = config.models.get(name.removeprefix("models/"))
    if model is None:
        raise UnknownModel(f"The model '{name}' does not exist on this gateway. GET /v1/models lists them.")
    provider = config.providers[model.provider]
    key = provider.api_key
    if key is None:
        raise ProviderUnavailable(
            f"The provider '{provider.name}' serving '{model.name}' is not configured: "
            f"the operator must set the environment variable {provider.api_key_env}."
        )
    return Route(model, provider, key)
