"""Helpers that more than one codec needs, with the same behaviour for each: JSON value checks,
token counts, tool-call argument text, MiniMax's status codes, OpenAI's error shape (both OpenAI
client protocols answer in it) and the Gemini signature folded into a call id.

Request validation stays in each codec: its error messages are worded per protocol.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import orjson

from relayproxy.errors import InvalidRequest, RelayError, UpstreamStatusError

__all__ = [
    "MINIMAX_STATUS",
    "arguments_object",
    "count",
    "is_int",
    "openai_error",
    "req_str",
    "str_or_empty",
    "unfold_call_id",
]

MINIMAX_STATUS = {1002: 429, 1004: 401, 1008: 402, 2013: 400, 1026: 400}  # base_resp.status_code -> HTTP


def is_int(value: Any) -> TypeGuard[int]:
    """A JSON integer: an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def count(value: Any) -> int:
    """A token count; anything but a non-negative integer counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def str_or_empty(value: Any) -> str:
    """The value if it is a string, else ""."""
    return value if isinstance(value, str) else ""


def arguments_object(text: str) -> dict[str, Any]:
    """Tool-call argument JSON -> an object. Models do write invalid JSON: text that is not a JSON
    object is kept as ``{"_raw": text}`` rather than refused; blank text is ``{}``."""
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}


_OPENAI_TYPES = {
    402: "insufficient_quota",
    403: "permission_denied",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
_OPENAI_CODES = {401: "invalid_api_key", 402: "insufficient_quota", 404: "model_not_found", 429: "rate_limit_exceeded"}


def openai_error(err: RelayError) -> tuple[int, dict[str, Any]]:
    """An error in OpenAI's shape, so the openai SDK raises its matching class."""
    status = err.status
    if isinstance(err, UpstreamStatusError) and status < 500 and err.upstream_type:
        etype = err.upstream_type
    else:
        etype = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = _OPENAI_CODES.get(status) if status != 404 or err.kind == "model_not_found" else "not_found"
    param = getattr(err, "path", None)
    return status, {"error": {"message": err.message, "type": etype, "param": param, "code": code or err.kind}}


def req_str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("required, a non-empty string", path)
    return value


def unfold_call_id(call_id: str) -> tuple[str, str | None]:
    """Split a Gemini thoughtSignature off a call id folded as ``<id>~<sig>`` by the OpenAI encoders."""
    head, sep, signature = call_id.partition("~")
    return (head, signature) if sep and head and signature else (call_id, None)
