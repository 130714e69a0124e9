"""Gemini streams, and the Gemini wire vocabulary the unary codec (gemini_generate) shares with them.

Theory of operation
-------------------
``streamGenerateContent?alt=sse`` sends ``data: <GenerateContentResponse>`` events, CRLF framed,
with no event names and no terminator: each chunk holds only the new parts, usage is cumulative on
(nearly) every chunk, and ``finishReason`` rides on the last candidate chunk. So the decoder emits
``MessageStop`` from ``close()``, only when a finishReason was seen; a body that just stops is a
truncation, and the gateway reports it. Function calls arrive complete: one ``ToolCallStart`` and
one ``ToolCallDelta`` holding the whole JSON each.

The encoder writes for google-genai's strict parser (protocols.md §4.4): ``data: `` with the space,
CRLF, never a comment, ``event:`` line or ``[DONE]``; keep-alive is a bare CRLF; an in-band error is
``{"error": {...}}`` with ``error`` the first key. Tool calls are buffered and sent complete in the
final chunk, whatever order the upstream protocol produced them in. Without ``alt=sse`` a client
gets the JSON-array framing of §4.5 instead: ``[`` object ``,\\r\\n`` object ... ``]``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs.shared import arguments_object, count
from relayproxy.errors import RateLimited, RelayError, UpstreamStatusError
from relayproxy.sse import SSEEvent

__all__ = [
    "SKIP_SIGNATURE",
    "CallRef",
    "GeminiStreamDecoder",
    "GeminiStreamEncoder",
    "GeminiStreamTap",
    "blocked",
    "call_id",
    "call_part",
    "candidate_parts",
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
    "signature",
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
        part["thoughtSignature"] = sig
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


def _status_name(code: int, upstream: str | None = None) -> str:
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
    status = _status_name(err.status, upstream)
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


# -- stream decoder (Gemini upstream) ---------------------------------------------------------------


class GeminiStreamDecoder:
    """``alt=sse`` chunks -> IR events. State: started, tool calls so far, finish, last usage."""

    def __init__(self) -> None:
        self._started = False
        self._ended = False  # failed or closed: nothing more comes out
        self._calls = 0
        self._finish: ir.FinishReason | None = None
        self._usage: ir.Usage | None = None

    def feed(self, ev: SSEEvent) -> list[ir.StreamEvent]:
        if self._ended or not ev.data.strip():
            return []
        try:
            chunk = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            return self._fail(502, "Gemini upstream sent a stream event that is not JSON", None)
        if not isinstance(chunk, dict):
            return self._fail(502, "Gemini upstream sent a stream event that is not a JSON object", None)
        if (error := error_object(chunk)) is not None:
            return self._fail(error_status(error.get("code")), error_message(error), error_type(error))
        out = self._start(chunk)
        candidate, parts = candidate_parts(chunk)
        for part in parts:
            out += self._part(part)
        reason = get(candidate, "finishReason") if candidate else None
        if reason is not None:
            self._finish = decode_finish(reason, self._calls > 0)
        elif blocked(chunk):
            self._finish = ir.FinishReason.CONTENT_FILTER
        return out + self._usage_update(chunk)

    def close(self) -> list[ir.StreamEvent]:
        """The body ended: MessageStop only if a finishReason came (else the stream was cut short)."""
        finish, self._finish = self._finish, None
        if self._ended or finish is None:
            return []
        self._ended = True
        return [ir.MessageStop(finish)]

    def _fail(self, status: int, message: str, etype: str | None) -> list[ir.StreamEvent]:
        out = self._start({})
        self._ended = True
        return [*out, ir.StreamFailed(status, message, etype)]

    def _start(self, chunk: dict[str, Any]) -> list[ir.StreamEvent]:
        if self._started:
            return []
        self._started = True
        model = get(chunk, "modelVersion")
        usage = decode_usage(get(chunk, "usageMetadata"))
        prompt = ir.Usage(usage.input_tokens, usage.cached_input_tokens) if usage else None
        return [ir.MessageStart(response_id(chunk), model if isinstance(model, str) else "", prompt)]

    def _part(self, part: dict[str, Any]) -> list[ir.StreamEvent]:
        if isinstance(get(part, "functionCall"), dict):
            call = response_call(part)
            index, self._calls = self._calls, self._calls + 1
            args = orjson.dumps(call.arguments).decode()
            return [ir.ToolCallStart(index, call.id, call.name, call.signature), ir.ToolCallDelta(index, args)]
        text = part.get("text")
        if not isinstance(text, str):
            return []  # inlineData output, executableCode...: no IR stream event for them
        if part.get("thought") is not True:
            return [ir.TextDelta(text)] if text else []  # a signature on a text part is not needed back
        out: list[ir.StreamEvent] = [ir.ThinkingDelta(text)] if text else []
        if (sig := signature(part)) is not None:
            out.append(ir.ThinkingSignature(sig))
        return out

    def _usage_update(self, chunk: dict[str, Any]) -> list[ir.StreamEvent]:
        usage = decode_usage(get(chunk, "usageMetadata"))
        if usage is None or usage == self._usage:
            return []
        self._usage = usage  # cumulative: a snapshot, never a sum
        return [ir.UsageUpdate(usage)]


# -- stream encoder (Gemini client) -----------------------------------------------------------------


@dataclass(slots=True)
class _PendingCall:
    id: str
    name: str
    signature: str | None
    arguments: list[str]


class GeminiStreamEncoder:
    """IR events -> GenerateContentResponse chunks, ``alt=sse`` (``sse=True``) or JSON-array framed."""

    def __init__(self, req: ir.ChatRequest, model: str, *, sse: bool = True) -> None:
        self._model = model
        self._sse = sse
        self._thoughts = bool(req.reasoning and req.reasoning.include_thoughts)
        self._id = ""
        self._usage: ir.Usage | None = None
        self._calls: dict[int, _PendingCall] = {}
        self._opened = False  # array framing: "[" is out
        self._stopped = False  # MessageStop or an error went out: no more chunks
        self._closed = False  # array framing: "]" is out

    def encode(self, ev: ir.StreamEvent) -> bytes:
        if self._stopped:
            return b""
        if isinstance(ev, ir.TextDelta):
            return self._chunk([{"text": ev.text}]) if ev.text else b""
        if isinstance(ev, ir.ThinkingDelta):
            show = self._thoughts and ev.text
            return self._chunk([{"text": ev.text, "thought": True}]) if show else b""
        if isinstance(ev, ir.ThinkingSignature):  # an empty thought part carries it, for the replay
            show = self._thoughts and ev.signature
            return self._chunk([{"text": "", "thought": True, "thoughtSignature": ev.signature}]) if show else b""
        if isinstance(ev, ir.ToolCallStart):
            self._calls[ev.index] = _PendingCall(ev.id, ev.name, ev.signature, [])
        elif isinstance(ev, ir.ToolCallDelta) and ev.index in self._calls:
            self._calls[ev.index].arguments.append(ev.arguments)
        elif isinstance(ev, ir.MessageStart):
            self._id, self._usage = ev.id, ev.usage or self._usage
        elif isinstance(ev, ir.UsageUpdate):
            self._usage = ev.usage
        elif isinstance(ev, ir.MessageStop):
            return self._final(ev.finish)
        elif isinstance(ev, ir.StreamFailed):
            status = error_status(ev.status)
            error = {"code": status, "message": ev.message, "status": _status_name(status, ev.type)}
            return self._error_frame({"error": error})
        return b""

    def error(self, err: RelayError) -> bytes:
        return b"" if self._stopped else self._error_frame(error_body(err))

    def ping(self) -> bytes:
        """A bare CRLF: the only keep-alive google-genai ignores (a comment line makes it raise), and
        whitespace between array elements is valid JSON, so the array framing takes it too."""
        return b"\r\n"

    def finish(self) -> bytes:
        if self._sse or self._closed:
            return b""
        self._closed = True
        return b"]" if self._opened else b"[]"

    def _final(self, finish: ir.FinishReason) -> bytes:
        parts = [
            call_part(c.id, c.name, arguments_object("".join(c.arguments)), c.signature)
            for _, c in sorted(self._calls.items())
        ]
        data = self._chunk(parts, encode_finish(finish))
        self._stopped = True
        return data

    def _chunk(self, parts: list[dict[str, Any]], finish: str | None = None) -> bytes:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
        if finish is not None:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        body: dict[str, Any] = {"candidates": [candidate]}
        if self._usage is not None:
            body["usageMetadata"] = encode_usage(self._usage)
        body["modelVersion"] = self._model
        body["responseId"] = self._id
        return self._frame(orjson.dumps(body))

    def _frame(self, data: bytes) -> bytes:
        if self._sse:
            return b"data: " + data + b"\r\n\r\n"
        head = b",\r\n" if self._opened else b"["
        self._opened = True
        return head + data

    def _error_frame(self, body: dict[str, Any]) -> bytes:
        """The error (``error`` the first key: google-genai tests the dump's prefix), then the end."""
        data = self._frame(orjson.dumps(body))
        self._stopped = True
        if not self._sse and not self._closed:
            self._closed = True
            data += b"]"
        return data


# -- passthrough tap --------------------------------------------------------------------------------


class GeminiStreamTap:
    """Reads a Gemini stream passing through untouched: last usage, finishReason seen, in-band error."""

    def __init__(self) -> None:
        self.usage: ir.Usage | None = None
        self.done = False  # Gemini has no terminator: a finishReason chunk is the nearest thing
        self.error: dict[str, Any] | None = None

    def feed(self, ev: SSEEvent) -> bool:
        try:
            chunk = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(chunk, dict):
            return True
        if (error := error_object(chunk)) is not None:
            self.error = error
            return True
        if (usage := decode_usage(get(chunk, "usageMetadata"))) is not None:
            self.usage = usage
        candidate, _ = candidate_parts(chunk)
        if (candidate is not None and get(candidate, "finishReason") is not None) or blocked(chunk):
            self.done = True
        return True
