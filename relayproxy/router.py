"""Pure request routing: (method, path, headers) -> Endpoint, and model name -> Route."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .config import Config, ModelConfig, ProviderConfig
from .errors import ProviderUnavailable, UnknownModel
from .http_types import Headers, header

__all__ = ["Endpoint", "EndpointKind", "Route", "match_endpoint", "protocol_for_path", "resolve_model"]


class EndpointKind(Enum):
    CHAT = "chat"
    MODELS = "models"
    MODEL = "model"
    HEALTHZ = "healthz"
    READYZ = "readyz"


@dataclass(slots=True, frozen=True)
class Endpoint:
    kind: EndpointKind
    protocol: str  # the caller's protocol: openai | anthropic | gemini
    model: str | None = None


@dataclass(slots=True, frozen=True)
class Route:
    model: ModelConfig
    provider: ProviderConfig
    api_key: str


_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})


def protocol_for_path(path: str, headers: Headers) -> str:
    """The caller's protocol as far as the path and headers tell (used for error bodies)."""
    if path.startswith("/v1/messages") or path.startswith("/v1/v1/messages"):
        return "anthropic"
    if path.startswith("/v1beta/") or ":" in path.rpartition("/")[2]:
        return "gemini"
    if header(headers, b"x-goog-api-key") is not None:
        return "gemini"
    if header(headers, b"anthropic-version") is not None:
        return "anthropic"
    return "openai"


def match_endpoint(method: str, path: str, headers: Headers) -> Endpoint | None:
    """The endpoint for a request line, or None (404)."""
    if method == "POST" and path in _CHAT_PATHS:
        return Endpoint(EndpointKind.CHAT, "openai")
    if method == "GET":
        if path in ("/healthz", "/readyz"):
            return Endpoint(EndpointKind.HEALTHZ if path == "/healthz" else EndpointKind.READYZ, "openai")
        if path == "/v1/models":
            return Endpoint(EndpointKind.MODELS, protocol_for_path(path, headers))
        if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            return Endpoint(EndpointKind.MODEL, protocol_for_path(path, headers), path[len("/v1/models/") :])
    return None


def resolve_model(config: Config, name: str) -> Route:
    """The route for a model name; UnknownModel or ProviderUnavailable (naming the variable)."""
    model = config.models.get(name)
    if model is None:
        raise UnknownModel(f"The model '{name}' does not exist on this gateway. GET /v1/models lists them.")
    provider = config.providers[model.provider]
    key = provider.api_key()
    if key is None:
        raise ProviderUnavailable(
            f"The provider '{provider.name}' serving '{name}' is not configured: "
            f"the operator must set the environment variable {provider.api_key_env}."
        )
    return Route(model, provider, key)
