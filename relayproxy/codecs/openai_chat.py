"""OpenAI Chat Completions: request checks, usage, errors and the passthrough stream tap.

Pure: dicts and SSE events in, dicts and bytes out. Provider quirks of OpenAI-compatible
upstreams (DeepSeek, Moonshot, MiniMax) are handled here, behind named functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from relayproxy.errors import InvalidRequest, RelayError, UpstreamStatusError
from relayproxy.ir import Usage
from relayproxy.sse import SSEEvent

__all__ = [
    "DONE",
    "RequestInfo",
    "StreamTap",
    "auth_headers",
    "check_request",
    "decode_error",
    "decode_usage",
    "encode_error",
    "encode_stream_error",
    "prepare_passthrough",
    "upstream_path",
]

DONE = b"[DONE]"
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(slots=True, frozen=True)
class RequestInfo:
    """What the gateway needs to know about a client request before routing it."""

    model: str
    stream: bool
    include_usage: bool  # the client itself asked for the trailing usage chunk
    max_output_tokens: int | None


def upstream_path(model: str, stream: bool) -> str:
    """Path appended to an openai provider's base URL (which ends in /v1)."""
    return "/chat/completions"


def auth_headers(api_key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + api_key.encode())]


# -- requests -----------------------------------------------------------------------------------


def check_request(body: Any) -> RequestInfo:
    """Validate the fields the gateway relies on; raise InvalidRequest naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("required, a model name string", "model")
    _check_messages(body.get("messages"))
    stream = _opt(body, "stream", bool, False)
    options = _opt(body, "stream_options", dict, None)
    include_usage = False
    if options is not None:
        include_usage = _opt(options, "include_usage", bool, False, "stream_options.include_usage")
    limits = [_opt_int(body, k) for k in ("max_completion_tokens", "max_tokens")]
    temperature = _opt(body, "temperature", (int, float), None)
    if temperature is not None and not 0 <= temperature <= 2:
        raise InvalidRequest(f"must be between 0 and 2, got {temperature}", "temperature")
    n = _opt_int(body, "n")
    if n is not None and n != 1:
        raise InvalidRequest("only n = 1 is supported", "n")
    return RequestInfo(model, stream, include_usage, next((v for v in limits if v is not None), None))


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("required, a non-empty array of messages", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidRequest("expected an object", f"messages[{i}]")
        role = msg.get("role")
        if role not in _ROLES:
            raise InvalidRequest(f"expected one of {', '.join(sorted(_ROLES))}, got {role!r}", f"messages[{i}].role")
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"expected a string or an array of parts, got {type(content).__name__}",
                f"messages[{i}].content",
            )


def _opt(body: dict[str, Any], key: str, typ: Any, default: Any, path: str | None = None) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        name = typ.__name__ if isinstance(typ, type) else "number"
        raise InvalidRequest(f"expected {name}, got {orjson.dumps(value).decode()[:40]}", path or key)
    return value


def _opt_int(body: dict[str, Any], key: str) -> int | None:
    value: int | None = _opt(body, key, int, None)
    if value is not None and value < 1:
        raise InvalidRequest(f"must be a positive integer, got {value}", key)
    return value


def prepare_passthrough(body: dict[str, Any], upstream_model: str, stream: bool) -> bytes:
    """The upstream body for an OpenAI-to-OpenAI call: the client's, with the upstream model name
    and, on streams, ``include_usage`` forced on (billing needs the trailing usage chunk)."""
    body["model"] = upstream_model
    if stream:
        options = body.get("stream_options") or {}
        body["stream_options"] = {**options, "include_usage": True}
    return orjson.dumps(body)


# -- usage --------------------------------------------------------------------------------------


def decode_usage(usage: Any) -> Usage | None:
    """OpenAI usage (and its DeepSeek/Moonshot variants) -> normalised Usage; None if absent."""
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    # Moonshot puts cached_tokens at the top level; DeepSeek reports prompt_cache_hit_tokens.
    cached = cached or _int(usage.get("cached_tokens")) or _int(usage.get("prompt_cache_hit_tokens"))
    out_details = usage.get("completion_tokens_details")
    reasoning = _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    return Usage(prompt, min(cached, prompt), _int(usage.get("completion_tokens")), reasoning)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def response_usage(body: Any) -> Usage | None:
    """Usage of a unary response: top level, or inside choices[0] (Moonshot)."""
    if not isinstance(body, dict):
        return None
    usage = decode_usage(body.get("usage"))
    if usage is None:
        choices = body.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            usage = decode_usage(choices[0].get("usage"))
    return usage


# -- errors -------------------------------------------------------------------------------------

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
_CODES = {
    401: "invalid_api_key",
    402: "insufficient_quota",
    404: "model_not_found",
    429: "rate_limit_exceeded",
}


def encode_error(err: RelayError) -> tuple[int, dict[str, Any]]:
    """An error in OpenAI's shape, so the openai SDK raises its matching class."""
    status = err.status
    if isinstance(err, UpstreamStatusError) and status < 500 and err.upstream_type:
        etype = err.upstream_type
    else:
        etype = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = _CODES.get(status) if err.status != 404 or err.kind == "model_not_found" else "not_found"
    param = getattr(err, "path", None)
    return status, {"error": {"message": err.message, "type": etype, "param": param, "code": code or err.kind}}


def encode_stream_error(err: RelayError) -> bytes:
    """An in-band error event for a stream whose headers were already sent (no [DONE] follows)."""
    _, body = encode_error(err)
    body["error"]["type"] = "server_error" if err.status >= 500 else body["error"]["type"]
    return b"data: " + orjson.dumps(body) + b"\n\n"


def decode_error(status: int, body: bytes, retry_after: str | None) -> UpstreamStatusError:
    """An upstream error response -> UpstreamStatusError keeping the upstream's message and type."""
    message, etype = _error_fields(body)
    text = message or f"upstream returned HTTP {status}"
    return UpstreamStatusError(status, text, upstream_type=etype, retry_after=retry_after)


def _error_fields(body: bytes) -> tuple[str | None, str | None]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message, etype = err.get("message"), err.get("type")
        return (message if isinstance(message, str) else None, etype if isinstance(etype, str) else None)
    if isinstance(data, dict) and isinstance(data.get("base_resp"), dict):  # MiniMax
        msg = data["base_resp"].get("status_msg")
        return (msg if isinstance(msg, str) else None, None)
    return None, None


def embedded_error(body: Any) -> UpstreamStatusError | None:
    """An error carried in an HTTP 200 body (MiniMax ``base_resp``), or None."""
    if not isinstance(body, dict):
        return None
    base = body.get("base_resp")
    if isinstance(base, dict) and _int(base.get("status_code")) != 0:
        code = _int(base.get("status_code"))
        status = {1002: 429, 1004: 401, 1008: 402, 2013: 400, 1026: 400}.get(code, 502)
        return UpstreamStatusError(status, str(base.get("status_msg") or f"upstream error {code}"))
    err = body.get("error")
    if isinstance(err, dict) and "choices" not in body:
        return UpstreamStatusError(502, str(err.get("message") or "upstream error"), upstream_type=None)
    return None


# -- streams ------------------------------------------------------------------------------------


class StreamTap:
    """Reads an OpenAI stream that passes through untouched: usage, finish reason, terminator.

    ``feed`` returns False for an event the client must not see: the trailing usage-only chunk
    when the client did not ask for usage (the gateway forces ``include_usage`` upstream).
    """

    def __init__(self, *, client_wants_usage: bool) -> None:
        self.client_wants_usage = client_wants_usage
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.done = False  # saw data: [DONE]
        self.error: dict[str, Any] | None = None  # an in-band error from upstream

    def feed(self, ev: SSEEvent) -> bool:
        if ev.data.startswith(DONE):
            self.done = True
            return True
        if self.done or not ev.data:
            return True
        try:
            chunk = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(chunk, dict):
            return True
        if chunk.get("error"):
            err = chunk["error"]
            self.error = err if isinstance(err, dict) else {"message": str(err)}
            return True
        return self._read_chunk(chunk)

    def _read_chunk(self, chunk: dict[str, Any]) -> bool:
        choices = chunk.get("choices")
        usage = decode_usage(chunk.get("usage"))
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            if isinstance(reason, str):
                self.finish_reason = reason
            usage = usage or decode_usage(choices[0].get("usage"))  # Moonshot: usage inside choices[0]
        if usage is not None:
            self.usage = usage  # cumulative wherever it appears: the last one wins
            if choices == [] and not self.client_wants_usage:
                return False
        return True
