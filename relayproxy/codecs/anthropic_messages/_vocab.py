"""Anthropic Messages wire vocabulary: usage counters, stop reasons, error types and envelopes,
message ids, tool-call ids carrying Gemini thought signatures, the SSE event bytes, the PDF media
type and the empty tool schema.

The unary codec (``anthropic_messages`` and its request modules) and the streams
(``anthropic_messages_stream``, ``anthropic_messages_stream_encode``) all need these; this is the
lowest of the Anthropic modules and imports none of them.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs.shared import MINIMAX_STATUS, count
from relayproxy.errors import RelayError, UpstreamStatusError

__all__ = [
    "ERROR_TYPES",
    "PDF",
    "decode_error",
    "decode_usage",
    "embedded_error",
    "empty_schema",
    "encode_error",
    "encode_usage",
    "error_status",
    "error_type",
    "finish_reason",
    "fold_call_id",
    "merge_usage",
    "message_id",
    "normalise_usage",
    "sse_event",
    "stop_reason",
    "synthetic_tool_id",
    "text_of",
    "unfold_call_id",
]

# -- shared vocabulary ---------------------------------------------------------------------------

ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "conflict_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "timeout_error",
        "overloaded_error",
    }
)
_STATUS_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",  # the SDK picks its class by HTTP status; the type is informative
    504: "timeout_error",
    529: "overloaded_error",
}
_TYPE_STATUS = {
    "invalid_request_error": 400,
    "bad_request_error": 400,  # MiniMax's Anthropic endpoint
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 503,  # 529 on the wire; the gateway reports overload as 503 everywhere
}
_STOP_FINISH = {
    "end_turn": ir.FinishReason.STOP,
    "stop_sequence": ir.FinishReason.STOP,
    "pause_turn": ir.FinishReason.STOP,
    "max_tokens": ir.FinishReason.LENGTH,
    "model_context_window_exceeded": ir.FinishReason.LENGTH,
    "tool_use": ir.FinishReason.TOOL_CALLS,
    "refusal": ir.FinishReason.CONTENT_FILTER,
}
_FINISH_STOP = {
    ir.FinishReason.STOP: "end_turn",
    ir.FinishReason.LENGTH: "max_tokens",
    ir.FinishReason.TOOL_CALLS: "tool_use",
    ir.FinishReason.CONTENT_FILTER: "refusal",
}
_USAGE_KEYS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")
_SIGNATURE_MARK = "__gts_"  # between a tool-call id and the Gemini thought signature folded into it


def error_type(status: int, upstream_type: str | None = None) -> str:
    """The Anthropic ``error.type`` for an HTTP status (an unlisted 4xx keeps a known upstream type)."""
    if status in _STATUS_TYPE:
        return _STATUS_TYPE[status]
    if upstream_type in ERROR_TYPES:
        return upstream_type
    return "invalid_request_error" if status < 500 else "api_error"


def error_status(etype: Any) -> int:
    """The HTTP-like status of an Anthropic error type (unknown types: 500)."""
    return _TYPE_STATUS.get(etype, 500) if isinstance(etype, str) else 500


def finish_reason(stop: Any) -> ir.FinishReason:
    return _STOP_FINISH.get(stop, ir.FinishReason.STOP) if isinstance(stop, str) else ir.FinishReason.STOP


def stop_reason(finish: ir.FinishReason, stop_sequence: str | None) -> str:
    if finish is ir.FinishReason.STOP and stop_sequence is not None:
        return "stop_sequence"
    return _FINISH_STOP[finish]


def message_id(upstream_id: str) -> str:
    """A ``msg_`` id for the client: the upstream's own when it has one, else a random one."""
    if upstream_id.startswith("msg_"):
        return upstream_id
    return "msg_" + (upstream_id or secrets.token_hex(12))


def fold_call_id(call_id: str, signature: str | None) -> str:
    """Carry a Gemini thought signature inside a tool-use id, in the id alphabet [A-Za-z0-9_-].

    Anthropic has no field for it, and Gemini 3 rejects a replayed call without it; the client
    echoes the id back in ``tool_use`` and ``tool_result``, where `unfold_call_id` recovers it.
    """
    if not signature or signature.replace("+", "-").replace("/", "_").rstrip("=") in call_id:
        return call_id  # already inside (the Gemini codec's own ids carry it): folding twice only adds bytes
    return call_id + _SIGNATURE_MARK + base64.urlsafe_b64encode(signature.encode()).decode().rstrip("=")


def unfold_call_id(call_id: str) -> tuple[str, str | None]:
    """Split an id made by `fold_call_id` into (id, signature); other ids come back unchanged."""
    base, mark, tail = call_id.partition(_SIGNATURE_MARK)
    if not mark:
        return call_id, None
    try:
        return base, base64.b64decode(tail + "=" * (-len(tail) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):  # not ours after all (binascii.Error is a ValueError)
        return call_id, None


def merge_usage(raw: dict[str, int], usage: Any) -> dict[str, int]:
    """Overlay the counters present in an Anthropic usage object: totals are cumulative, so a
    present value replaces the old one and an absent (or null) one keeps it."""
    if not isinstance(usage, dict):
        return raw
    merged = dict(raw)
    for key in _USAGE_KEYS:
        if usage.get(key) is not None:
            merged[key] = count(usage[key])
    details = usage.get("output_tokens_details")
    if isinstance(details, dict) and details.get("thinking_tokens") is not None:
        merged["thinking_tokens"] = count(details["thinking_tokens"])
    return merged


def normalise_usage(raw: dict[str, int]) -> ir.Usage:
    """Anthropic counters -> IR meanings: ``input_tokens`` there excludes cache reads and writes."""
    cached = raw.get("cache_read_input_tokens", 0)
    prompt = raw.get("input_tokens", 0) + cached + raw.get("cache_creation_input_tokens", 0)
    output = raw.get("output_tokens", 0)
    return ir.Usage(prompt, cached, output, min(raw.get("thinking_tokens", 0), output))


def decode_usage(usage: Any) -> ir.Usage | None:
    """A unary body's ``usage`` -> normalised Usage, or None when there is none."""
    return normalise_usage(merge_usage({}, usage)) if isinstance(usage, dict) else None


def encode_usage(usage: ir.Usage | None) -> dict[str, int]:
    """IR usage -> Anthropic counters. Cache writes are unknown to the IR, so they are reported as 0."""
    usage = usage or ir.Usage()
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    return {
        "input_tokens": usage.input_tokens - cached,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
        "output_tokens": usage.output_tokens,
    }


def text_of(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def synthetic_tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    """`encode_event` of the payload's JSON, which orjson writes on one line (JSON escapes line
    breaks in strings), so the data needs no splitting."""
    return b"".join((b"event: ", name.encode(), b"\ndata: ", orjson.dumps(payload), b"\n\n"))


PDF = "application/pdf"  # a document that travels as an ir.Image (Gemini reads inline PDFs)


def empty_schema() -> dict[str, Any]:
    """The ``input_schema`` of a tool declared without parameters."""
    return {"type": "object", "properties": {}}


# -- error envelopes -------------------------------------------------------------------------------


def decode_error(status: int, body: bytes, retry_after: str | None) -> UpstreamStatusError:
    """Any upstream error body (Anthropic's shape, a compatible provider's variant, HTML, empty)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    message, etype = _error_fields(data)
    if message is None:
        text = body[:200].decode("utf-8", "replace").strip()
        readable = text and not text.startswith("<")
        message = f"upstream returned HTTP {status}" + (f": {text}" if readable else "")
    return UpstreamStatusError(status, message, upstream_type=etype, retry_after=retry_after)


def _error_fields(data: Any) -> tuple[str | None, str | None]:
    """(message, type) from ``{"type": "error", "error": {...}}`` or an OpenAI-shaped ``error``."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        etype = err.get("type") if isinstance(err.get("type"), str) else None
        if etype == "bad_request_error":  # MiniMax's name for it
            etype = "invalid_request_error"
        return (err["message"] if isinstance(err.get("message"), str) else None), etype
    if isinstance(err, str):
        return err, None
    return None, None


def embedded_error(body: Any) -> UpstreamStatusError | None:
    """An error inside an HTTP 200 body: Anthropic's error shape (MiniMax sends it with an
    ``http_code``), or MiniMax's ``base_resp`` with a non-zero status code."""
    if not isinstance(body, dict):
        return None
    if body.get("type") == "error" or (isinstance(body.get("error"), dict) and "content" not in body):
        message, etype = _error_fields(body)
        status = _http_code(body) or error_status(etype)
        return UpstreamStatusError(status, message or "upstream reported an error", upstream_type=etype)
    base = body.get("base_resp")
    code = base.get("status_code") if isinstance(base, dict) else None
    if isinstance(code, int) and code != 0 and isinstance(base, dict):
        message = text_of(base, "status_msg") or f"upstream error {code}"
        return UpstreamStatusError(MINIMAX_STATUS.get(code, 502), message)
    return None


def _http_code(body: dict[str, Any]) -> int | None:
    err = body.get("error")
    for value in (body.get("http_code"), err.get("http_code") if isinstance(err, dict) else None):
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
            return value
    return None


def encode_error(err: RelayError) -> tuple[int, dict[str, Any]]:
    """Any RelayError in Anthropic's shape; the SDK picks its exception class by the status."""
    upstream_type = err.upstream_type if isinstance(err, UpstreamStatusError) else None
    etype = error_type(err.status, upstream_type)
    if etype == "overloaded_error" and not isinstance(err, UpstreamStatusError):
        etype = "api_error"  # the gateway's own 503s (provider not configured, stopping) are not overload
    return err.status, {"type": "error", "error": {"type": etype, "message": err.message}}
