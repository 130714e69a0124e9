"""The error tree. Each error says whose fault it is, its HTTP status and a stable ``kind``.

Foreign exceptions (OSError, ssl, h11, sqlite3) are translated into these once, at the edge of
the adapter that met them; nothing outside an adapter sees a foreign exception type.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "SERVER_ERRORS",
    "ClientError",
    "FramingError",
    "GatewayError",
    "HeaderFieldsTooLarge",
    "HttpVersionNotSupported",
    "InsufficientBalance",
    "InvalidRequest",
    "KeyExpired",
    "KeySpendLimit",
    "MethodNotAllowed",
    "ModelNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "ProviderUnavailable",
    "RateLimited",
    "RelayError",
    "RequestTimeout",
    "ShuttingDown",
    "StoreError",
    "StoreUnavailable",
    "Unauthorized",
    "UnknownModel",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeout",
    "UriTooLong",
    "server_error",
]


class RelayError(Exception):
    """Base: carries the HTTP status for the caller, a stable kind and a human message."""

    status: int = 500
    kind: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- the caller's fault (4xx) ---------------------------------------------------------------


class ClientError(RelayError):
    status = 400
    kind = "invalid_request"


class InvalidRequest(ClientError):
    """The request body or parameters are wrong; ``path`` names the offending field."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class Unauthorized(ClientError):
    """Missing, malformed, unknown or revoked API key: one message for all, by design."""

    status = 401
    kind = "unauthorized"

    def __init__(self, message: str = "Invalid API key. Pass a relayproxy key as the SDK's api_key.") -> None:
        super().__init__(message)


class KeyExpired(Unauthorized):
    """The key is past its expiry date: a 401 like an invalid key, saying so."""

    kind = "key_expired"


class InsufficientBalance(ClientError):
    status = 402
    kind = "insufficient_balance"


class KeySpendLimit(InsufficientBalance):
    """The request's hold would take the key past its own spend limit (the account may have credit)."""

    kind = "key_spend_limit"


class ModelNotAllowed(ClientError):
    """The model is outside the key's allow-list."""

    status = 403
    kind = "model_not_allowed"


class NotFound(ClientError):
    status = 404
    kind = "not_found"


class UnknownModel(NotFound):
    kind = "model_not_found"


class PayloadTooLarge(ClientError):
    status = 413
    kind = "payload_too_large"


# What the HTTP server refuses before a handler sees the request (framing, limits, timeouts).


class MethodNotAllowed(ClientError):
    status = 405
    kind = "method_not_allowed"


class RequestTimeout(ClientError):
    status = 408
    kind = "request_timeout"


class UriTooLong(ClientError):
    status = 414
    kind = "uri_too_long"


class HeaderFieldsTooLarge(ClientError):
    status = 431
    kind = "header_fields_too_large"


class HttpVersionNotSupported(ClientError):
    status = 505
    kind = "http_version_not_supported"


class RateLimited(ClientError):
    status = 429
    kind = "rate_limited"

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# -- failures on the upstream leg -------------------------------------------------------------


class UpstreamError(RelayError):
    status = 502
    kind = "upstream_error"


class UpstreamConnectError(UpstreamError):
    """The upstream could not be reached (refused, DNS, TLS) or broke before answering.

    ``before_send`` is True when no byte of the request reached the upstream (the connection
    was never established): only then is a retry certain not to run the request twice.
    """

    kind = "upstream_connect_error"

    def __init__(self, message: str, *, before_send: bool = False) -> None:
        super().__init__(message)
        self.before_send = before_send


class UpstreamTimeout(UpstreamError):
    status = 504
    kind = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    """The upstream answered with something that is not valid HTTP or not its protocol."""

    kind = "upstream_protocol_error"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status. 4xx passes through; 5xx becomes 502."""

    kind = "upstream_status"

    def __init__(
        self,
        upstream_status: int,
        message: str,
        *,
        upstream_type: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.upstream_type = upstream_type
        self.retry_after = retry_after
        self.status = upstream_status if 400 <= upstream_status < 500 else 502
        if upstream_status in (503, 529):
            self.status = 503


class ProviderUnavailable(RelayError):
    """The provider behind a model is not configured on this gateway (its key is missing)."""

    status = 503
    kind = "provider_unavailable"


# -- our own fault ----------------------------------------------------------------------------


class GatewayError(RelayError):
    status = 500
    kind = "gateway_error"


class ShuttingDown(GatewayError):
    """The drain deadline passed with the response still running: it is cut, never billed."""

    status = 503
    kind = "shutdown"


class StoreError(GatewayError):
    """The database failed; raised only by store.py."""

    kind = "store_error"


class StoreUnavailable(StoreError):
    """The database cannot be reached (down, restarting, network): retry later."""

    status = 503
    kind = "store_unavailable"
    retry_after_s = 1


class FramingError(Exception):
    """A sans-IO parser met input it cannot frame (e.g. an SSE line over the size cap)."""


#: The error for each status the HTTP server answers by itself (500: a bug while responding).
SERVER_ERRORS: Mapping[int, type[RelayError]] = MappingProxyType(
    {
        400: ClientError,
        405: MethodNotAllowed,
        408: RequestTimeout,
        413: PayloadTooLarge,
        414: UriTooLong,
        431: HeaderFieldsTooLarge,
        500: RelayError,
        505: HttpVersionNotSupported,
    }
)


def server_error(status: int, message: str) -> RelayError:
    """The error the HTTP server means by ``status`` (a 400 for a status it never sends)."""
    return SERVER_ERRORS.get(status, ClientError)(message)
