"""Gemini wire vocabulary: proto-JSON field access, tool-call ids, parts, usage, finish reasons, errors.

The unary codec (``gemini_generate`` and its request modules) and the streams
(``gemini_generate_stream``, ``gemini_generate_stream_encode``) all need these; this is the lowest
of the Gemini modules and imports none of them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import secrets
from dataclasses import dataclass
from typing import Any

from relayproxy import ir
from relayproxy.codecs.shared import count
from relayproxy.errors import RateLimited, RelayError, UpstreamStatusError

__all__ = [
    "SKIP_SIGNATURE",
    "CallRef",
    "blocked",
    "call_id",
    "call_part",
    "candidate_parts",
    "client_signature",
    "decode_finish",
    "decode_usage",
    "encode_finish",
    "encode_usage",
    "error_body",
    "error_message",
    "error_object",
    "error_status",
    "error_type",
    "get",
    "parse_call_id",
    "response_call",
    "response_id",
    "restore_signature",
    "signature",
    "status_name",
]

# -- proto-JSON field access -------------------------------------------------------------------


@functools.cache
def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", r"_\1", name).lower()


def get(obj: dict[str, Any], name: str) -> Any:
    """A protocol field by its lowerCamelCase name, or by its snake_case spelling (proto-JSON
    accepts both; google-genai 3.x mixes them). Never applied inside user data."""
    value = obj.get(name)
    return obj.get(_snake(name)) if value is None else value


# -- tool call ids ------------------------------------------------------------------------------
# The id a client sees for a Gemini call, using only [A-Za-z0-9_-] (Anthropic requires
# ^[a-zA-Z0-9_-]+$; OpenAI ids have no practical length limit):
#   gcall_<nonce>[_<sig>]              Gemini sent no id: requests to Gemini omit functionCall.id and
#                                      functionResponse.id. <nonce> is 12 hex digits, or a position
#                                      tag (c<content>p<part>) for calls decoded from a client history.
#   gcid_<hex of Gemini's id>[_<sig>]  Gemini sent an id: it goes back upstream unchanged.
# <sig> is the call's thoughtSignature, re-encoded from its bytes as unpadded base64url. Any other
# id (OpenAI call_..., Anthropic toolu_...) is foreign and goes upstream as functionCall.id as it is.
# Example failure prevented: Gemini 3 answering 400 "Function call is missing a thought_signature"
# on the second turn of an OpenAI client's tool loop, because the signature had been dropped.

SKIP_SIGNATURE = "skip_thought_signature_validator"  # Google's documented stand-in for a lost signature


@dataclass(slots=True, frozen=True)
class CallRef:
    upstream_id: str | None  # what goes in functionCall.id / functionResponse.id (None: omit it)
    signature: str | None  # the thoughtSignature folded into the id


def call_id(upstream_id: str | None, signature: str | None, nonce: str | None = None) -> str:
    head = f"gcid_{upstream_id.encode().hex()}" if upstream_id else f"gcall_{nonce or secrets.token_hex(6)}"
    sig = _signature_to_id(signature)
    return f"{head}_{sig}" if sig else head


def parse_call_id(value: str) -> CallRef:
    if value.startswith("gcall_"):
        return CallRef(None, _signature_from_id(value[6:].partition("_")[2]))
    if value.startswith("gcid_"):
        hex_id, _, sig = value[5:].partition("_")
        try:
            return CallRef(bytes.fromhex(hex_id).decode(), _signature_from_id(sig))
        except ValueError:
            pass
    return CallRef(value, None)


def _signature_to_id(sig: str | None) -> str | None:
    """A thoughtSignature (standard or url-safe base64) as unpadded base64url; None if not base64."""
    if not sig:
        return None
    alt = b"-_" if "-" in sig or "_" in sig else None
    try:
        raw = base64.b64decode(sig + "=" * (-len(sig) % 4), altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        return None  # not a signature Gemini could have made: the sentinel stands in on replay
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() or None


def _signature_from_id(text: str) -> str | None:
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(raw).decode()


# -- signatures handed to Gemini clients ---------------------------------------------------------------
# google-genai reads thoughtSignature as bytes (strict base64) and sends it back as url-safe base64. A
# signature that is not canonical standard base64 without "+" or "/" (an Anthropic signature, say)
# would fail the SDK's validation or come back altered, so it goes out as base64 of _WRAP + its UTF-8
# text, and `restore_signature` gives the original back when the client replays it.

_WRAP = b"relayproxy-sig:"


def _canonical(sig: str) -> bool:
    if "+" in sig or "/" in sig:
        return False
    try:
        return base64.b64encode(base64.b64decode(sig, validate=True)).decode() == sig
    except (binascii.Error, ValueError):
        return False


def client_signature(sig: str) -> str:
    """A signature as a Gemini client may hold it: unchanged when the SDK keeps it byte for byte."""
    return sig if _canonical(sig) else base64.b64encode(_WRAP + sig.encode()).decode()


def restore_signature(sig: str) -> str:
    """The signature `client_signature` wrapped (sent back in either base64 alphabet); others unchanged."""
    alt = b"-_" if "-" in sig or "_" in sig else None
    try:
        raw = base64.b64decode(sig + "=" * (-len(sig) % 4), altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        return sig
    if not raw.startswith(_WRAP):
        return sig
    try:
        return raw[len(_WRAP) :].decode()
    except UnicodeDecodeError:
        return sig


# -- parts, usage, finish reasons ---------------------------------------------------------------------


def candidate_parts(chunk: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The first candidate of a response (or None) and its part objects; odd shapes read as empty."""
    candidates = chunk.get("candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates else None
    candidate = first if isinstance(first, dict) else None
    content = candidate.get("content") if candidate else None
    parts = content.get("parts") if isinstance(content, dict) else None
    return candidate, [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def blocked(chunk: dict[str, Any]) -> bool:
    """A prompt Gemini refused: promptFeedback.blockReason and no candidates."""
    feedback = get(chunk, "promptFeedback")
    return not chunk.get("candidates") and isinstance(feedback, dict) and bool(get(feedback, "blockReason"))


def signature(part: dict[str, Any]) -> str | None:
    value = get(part, "thoughtSignature")
    return value if isinstance(value, str) and value else None


def response_call(part: dict[str, Any]) -> ir.ToolCall:
    """An upstream functionCall part -> ToolCall, its id in the format above."""
    call = get(part, "functionCall")
    name, args, given = call.get("name"), call.get("args"), call.get("id")
    sig = signature(part)
    return ir.ToolCall(
        call_id(given if isinstance(given, str) else None, sig),
        name if isinstance(name, str) else "",
        args if isinstance(args, dict) else {},
        sig,
    )


def call_part(cid: str, name: str, args: dict[str, Any], sig: str | None) -> dict[str, Any]:
    """A functionCall part for a Gemini client, ``id`` = the IR id: the client echoes it in
    functionResponse.id, so the result maps back to the upstream call without a name lookup."""
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args, "id": cid}}
    if sig:
        part["thoughtSignature"] = client_signature(sig)
    return part


def response_id(chunk: dict[str, Any]) -> str:
    value = get(chunk, "responseId")
    return value if isinstance(value, str) and value else "gen-" + secrets.token_hex(12)


def decode_usage(meta: Any) -> ir.Usage | None:
    """usageMetadata -> Usage. candidatesTokenCount excludes thoughts (protocols.md §7.7)."""
    if not isinstance(meta, dict):
        return None
    prompt = count(get(meta, "promptTokenCount")) + count(get(meta, "toolUsePromptTokenCount"))
    thoughts = count(get(meta, "thoughtsTokenCount"))
    cached = min(count(get(meta, "cachedContentTokenCount")), prompt)
    return ir.Usage(prompt, cached, count(get(meta, "candidatesTokenCount")) + thoughts, thoughts)


def encode_usage(usage: ir.Usage) -> dict[str, int]:
    visible = max(usage.output_tokens - usage.reasoning_tokens, 0)
    return {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": visible,
        "thoughtsTokenCount": usage.reasoning_tokens,
        "totalTokenCount": usage.input_tokens + visible + usage.reasoning_tokens,
        "cachedContentTokenCount": usage.cached_input_tokens,
    }


# Gemini says STOP when a turn ends in calls; these also end a turn that produced valid calls (§7.6).
_CALL_FINISHES = frozenset(
    {"", "STOP", "FINISH_REASON_UNSPECIFIED", "MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"}
)
_FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "MODEL_ARMOR"})


def decode_finish(reason: Any, has_calls: bool) -> ir.FinishReason:
    name = reason.upper() if isinstance(reason, str) else ""
    if has_calls and name in _CALL_FINISHES:
        return ir.FinishReason.TOOL_CALLS
    if name == "MAX_TOKENS":
        return ir.FinishReason.LENGTH
    if name in _FILTERED or name.startswith("IMAGE_"):
        return ir.FinishReason.CONTENT_FILTER
    return ir.FinishReason.STOP


def encode_finish(finish: ir.FinishReason) -> str:
    """tool_calls and stop -> STOP (Gemini has no tool finish), length -> MAX_TOKENS, filter -> SAFETY."""
    return {ir.FinishReason.LENGTH: "MAX_TOKENS", ir.FinishReason.CONTENT_FILTER: "SAFETY"}.get(finish, "STOP")


# -- errors ---------------------------------------------------------------------------------------

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",  # INTERFACE.md: insufficient credit
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_CANONICAL = frozenset(_STATUS_NAMES.values()) | {"FAILED_PRECONDITION", "ALREADY_EXISTS", "OUT_OF_RANGE", "UNKNOWN"}


def status_name(code: int, upstream: str | None = None) -> str:
    if upstream in _CANONICAL and code < 500:
        return upstream  # e.g. a Gemini upstream's FAILED_PRECONDITION, kept
    return _STATUS_NAMES.get(code) or ("INTERNAL" if code >= 500 else "FAILED_PRECONDITION")


def error_body(err: RelayError) -> dict[str, Any]:
    """``{"error": {code, message, status, details}}``: google-genai raises ClientError for a 4xx
    ``code`` and ServerError for a 5xx one."""
    upstream = err.upstream_type if isinstance(err, UpstreamStatusError) else None
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": err.kind.upper(), "domain": "relayproxy"}
    ]
    if isinstance(err, RateLimited) and err.retry_after_s:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{err.retry_after_s}s"})
    status = status_name(err.status, upstream)
    return {"error": {"code": err.status, "message": err.message, "status": status, "details": details}}


def error_object(data: Any) -> dict[str, Any] | None:
    """The inner error of ``{"error": {...}}``, or of ``[{"error": {...}}]`` (the array framing)."""
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else None


def error_status(code: Any) -> int:
    """An error object's ``code`` as an HTTP status: 4xx/5xx kept, anything else is 502."""
    return code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 502


def error_message(error: dict[str, Any]) -> str:
    message = error.get("message")
    return message if isinstance(message, str) and message else "Gemini upstream reported an error"


def error_type(error: dict[str, Any]) -> str | None:
    """The canonical status name (``UNAVAILABLE``...), kept as the upstream error type."""
    status = error.get("status")
    return status if isinstance(status, str) else None
