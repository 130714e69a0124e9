"""Anthropic Messages streams: upstream decoder, client encoder, passthrough tap, shared vocabulary.

Theory of operation
-------------------
An Anthropic stream is named events (``event:`` line + JSON whose ``type`` repeats the name):
``message_start`` (id, model, input usage), content blocks (``content_block_start`` fixes the kind,
``content_block_delta``s fill it, ``content_block_stop``), ``message_delta`` (stop reason plus
cumulative usage), ``message_stop``. ``ping`` may come anywhere, ``error`` ends the stream.

`AnthropicStreamDecoder` maps that onto IR events. Tool calls are numbered by their ordinal among
tool_use blocks, not by the block index (a text block usually comes first). Usage counters are
merged as the SDK merges them: ``message_delta`` repeats or omits the input numbers, so omitted
ones keep their ``message_start`` value.

`AnthropicStreamEncoder` goes the other way for an Anthropic client, whatever protocol the
upstream spoke: it opens a block when the kind of content changes, keeps indices 0-based and
contiguous (the SDK's stream helper indexes its content list with them), and holds stop reason and
usage until ``MessageStop`` because OpenAI upstreams send the finish before the usage. A block,
once stopped, cannot be reopened, so a tool call that starts while another call's JSON is still
incomplete (an upstream interleaving two calls) is queued: its fragments are buffered and flushed
when its block opens.

`AnthropicStreamTap` watches a passthrough stream for usage, ``message_stop`` and ``error``.

The wire vocabulary both halves of the codec need (usage counters, stop reasons, error types and
error envelopes, tool-call ids carrying Gemini thought signatures) lives here too, so that
``anthropic_messages`` imports this module and never the other way round.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs.shared import MINIMAX_STATUS, count
from relayproxy.errors import RelayError, UpstreamStatusError
from relayproxy.sse import SSEEvent

__all__ = [
    "ERROR_TYPES",
    "AnthropicStreamDecoder",
    "AnthropicStreamEncoder",
    "AnthropicStreamTap",
    "decode_error",
    "decode_usage",
    "embedded_error",
    "encode_error",
    "encode_usage",
    "error_status",
    "error_type",
    "finish_reason",
    "fold_call_id",
    "merge_usage",
    "message_id",
    "normalise_usage",
    "stop_reason",
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


def _text_of(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _synthetic_tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)


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
        message = _text_of(base, "status_msg") or f"upstream error {code}"
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


# -- upstream decoder ----------------------------------------------------------------------------


class AnthropicStreamDecoder:
    """Anthropic SSE events -> IR stream events (see the module docstring)."""

    def __init__(self) -> None:
        self._started = False  # MessageStart emitted
        self._ended = False  # message_stop, an error or malformed JSON seen: ignore the rest
        self._tool_of_block: dict[int, int] = {}  # tool_use block index -> tool-call ordinal
        self._tools = 0  # tool_use blocks seen so far
        self._usage: dict[str, int] = {}  # raw Anthropic counters, merged
        self._stop_reason: Any = None
        self._stop_sequence: str | None = None

    def feed(self, ev: SSEEvent) -> list[ir.StreamEvent]:
        if self._ended:
            return []
        data = ev.data  # orjson skips surrounding whitespace itself: no stripped copy
        if not data or data.isspace() or (data[0] != 0x7B and data.strip() == b"[DONE]"):
            return []  # compatible providers sometimes end OpenAI-style
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = None
        if type(payload) is not dict:
            self._ended = True
            shown = data.strip()[:80]
            return self._prefix([ir.StreamFailed(502, f"upstream sent a malformed stream event: {shown!r}")])
        kind = payload.get("type")
        if not isinstance(kind, str):
            kind = ev.event or ""
        handler = _DECODERS.get(kind)
        return [] if handler is None else self._prefix(handler(self, payload))

    def close(self) -> list[ir.StreamEvent]:
        return []  # MessageStop comes only from message_stop; a cut stream ends without one

    def _prefix(self, events: list[ir.StreamEvent]) -> list[ir.StreamEvent]:
        """Make MessageStart the first event even if the upstream skipped message_start."""
        if self._started or not events or isinstance(events[0], ir.MessageStart):
            self._started = self._started or bool(events)
            return events
        self._started = True
        return [ir.MessageStart("msg_" + secrets.token_hex(12), ""), *events]

    def _message_start(self, payload: dict[str, Any]) -> list[ir.StreamEvent]:
        if self._started:
            return []
        message = payload.get("message")
        message = message if isinstance(message, dict) else {}
        if not isinstance(message.get("usage"), dict):
            # Example failure prevented: a zero usage reported as if the upstream had counted,
            # which would turn "usage unknown, not billed" into a billed request.
            return [ir.MessageStart(_text_of(message, "id"), _text_of(message, "model"))]
        self._usage = merge_usage({}, message["usage"])
        usage = normalise_usage(self._usage)
        prompt = ir.Usage(usage.input_tokens, usage.cached_input_tokens)
        start = ir.MessageStart(_text_of(message, "id"), _text_of(message, "model"), prompt)
        return [start, ir.UsageUpdate(usage)]

    def _block_start(self, payload: dict[str, Any]) -> list[ir.StreamEvent]:
        block, index = payload.get("content_block"), payload.get("index")
        if not isinstance(block, dict):
            return []
        kind = block.get("type")
        if kind == "text" and _text_of(block, "text"):
            return [ir.TextDelta(block["text"])]
        if kind == "thinking" and _text_of(block, "thinking"):
            return [ir.ThinkingDelta(block["thinking"])]
        if kind != "tool_use" or not isinstance(index, int):
            return []  # redacted_thinking and server-tool blocks have no IR counterpart
        tool = self._tool_of_block[index] = self._tools
        self._tools += 1
        events: list[ir.StreamEvent] = [
            ir.ToolCallStart(tool, _text_of(block, "id") or _synthetic_tool_id(), _text_of(block, "name"))
        ]
        if isinstance(block.get("input"), dict) and block["input"]:  # a provider that sends it whole here
            events.append(ir.ToolCallDelta(tool, orjson.dumps(block["input"]).decode()))
        return events

    def _block_delta(self, payload: dict[str, Any]) -> list[ir.StreamEvent]:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta" and _text_of(delta, "text"):
            return [ir.TextDelta(delta["text"])]
        if kind == "thinking_delta" and _text_of(delta, "thinking"):
            return [ir.ThinkingDelta(delta["thinking"])]
        if kind == "signature_delta" and _text_of(delta, "signature"):
            return [ir.ThinkingSignature(delta["signature"])]
        index = payload.get("index")
        tool = self._tool_of_block.get(index) if isinstance(index, int) else None
        if kind == "input_json_delta" and tool is not None and _text_of(delta, "partial_json"):
            return [ir.ToolCallDelta(tool, delta["partial_json"])]
        return []  # citations_delta, empty fragments (the first partial_json is often "")

    def _message_delta(self, payload: dict[str, Any]) -> list[ir.StreamEvent]:
        delta = payload.get("delta")
        if isinstance(delta, dict):
            self._stop_reason = delta.get("stop_reason")
            sequence = delta.get("stop_sequence")
            self._stop_sequence = sequence if isinstance(sequence, str) else None
        if not isinstance(payload.get("usage"), dict):
            return []
        self._usage = merge_usage(self._usage, payload["usage"])
        return [ir.UsageUpdate(normalise_usage(self._usage))]

    def _message_stop(self, payload: dict[str, Any]) -> list[ir.StreamEvent]:
        self._ended = True
        return [ir.MessageStop(finish_reason(self._stop_reason), self._stop_sequence)]

    def _error(self, payload: dict[str, Any]) -> list[ir.StreamEvent]:
        self._ended = True
        err = payload.get("error")
        err = err if isinstance(err, dict) else {}
        etype = err.get("type") if isinstance(err.get("type"), str) else None
        message = _text_of(err, "message") or "upstream reported an error mid-stream"
        return [ir.StreamFailed(error_status(etype), message, etype)]


_DECODERS: dict[str, Callable[[AnthropicStreamDecoder, dict[str, Any]], list[ir.StreamEvent]]] = {
    "message_start": AnthropicStreamDecoder._message_start,
    "content_block_start": AnthropicStreamDecoder._block_start,
    "content_block_delta": AnthropicStreamDecoder._block_delta,
    "message_delta": AnthropicStreamDecoder._message_delta,
    "message_stop": AnthropicStreamDecoder._message_stop,
    "error": AnthropicStreamDecoder._error,
}


# -- client encoder ------------------------------------------------------------------------------


class _Block(Enum):
    """The kind of the content block currently open in the client's stream."""

    TEXT = "text"
    THINKING = "thinking"
    TOOL = "tool_use"


_TEXT = _Block.TEXT  # the per-chunk check, without an Enum member lookup


@dataclass(slots=True)
class _Call:
    """One tool call of the message, as the encoder tracks it."""

    id: str | None = None  # None until its ToolCallStart
    name: str = ""
    block: int | None = None  # its content block index, once opened
    buffered: list[str] = field(default_factory=list)  # fragments that arrived before its block opened
    sent: list[str] = field(default_factory=list)  # fragments emitted while its block is open


def _event(name: str, payload: dict[str, Any]) -> bytes:
    """`encode_event` of the payload's JSON, which orjson writes on one line (JSON escapes line
    breaks in strings), so the data needs no splitting."""
    return b"".join((b"event: ", name.encode(), b"\ndata: ", orjson.dumps(payload), b"\n\n"))


def _error_event(etype: str, message: str) -> bytes:
    return _event("error", {"type": "error", "error": {"type": etype, "message": message}})


class AnthropicStreamEncoder:
    """IR stream events -> an Anthropic SSE stream that the official SDK and its helper accept."""

    def __init__(self, model: str, *, show_thinking: bool = True) -> None:
        self._model = model
        self._show_thinking = show_thinking  # the client asked for thinking (protocols.md §8.2, §8.7)
        self._started = False  # message_start sent
        self._ended = False  # message_stop or an error sent: nothing may follow
        self._open: _Block | None = None  # the open block's kind
        self._open_call: int | None = None  # the open block's tool call, when it is one
        self._index = -1  # the open (or last) block's index; the next block gets _index + 1
        self._calls: dict[int, _Call] = {}
        self._queue: list[int] = []  # calls started while another call's JSON was incomplete
        self._usage: ir.Usage | None = None

    def encode(self, ev: ir.StreamEvent) -> bytes:
        if self._ended:
            return b""
        out = [] if self._started or isinstance(ev, ir.MessageStart) else [self._message_start(None)]
        out += _ENCODERS[type(ev)](self, ev)
        return b"".join(out)

    def error(self, err: RelayError) -> bytes:
        """In-band, the HTTP status is already 200, so the type is all the client learns: keep an
        upstream Anthropic type (timeout_error would otherwise become api_error with status 502)."""
        self._ended = True
        upstream_type = getattr(err, "upstream_type", None)
        etype = upstream_type if upstream_type in ERROR_TYPES else error_type(err.status)
        return _error_event(etype, err.message)

    def ping(self) -> bytes:
        return b'event: ping\ndata: {"type": "ping"}\n\n'

    def finish(self) -> bytes:
        return b""

    # -- message level --

    def _message_start(self, ev: ir.MessageStart | None) -> bytes:
        self._started = True
        usage = encode_usage(ev.usage if ev else None)
        message: dict[str, Any] = {
            "id": message_id(ev.id if ev else ""),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        self._usage = ev.usage if ev else None
        return _event("message_start", {"type": "message_start", "message": message})

    def _on_start(self, ev: ir.MessageStart) -> list[bytes]:
        return [] if self._started else [self._message_start(ev)]

    def _on_usage(self, ev: ir.UsageUpdate) -> list[bytes]:
        self._usage = ev.usage  # held: message_delta carries it, after the finish (OpenAI sends usage last)
        return []

    def _on_stop(self, ev: ir.MessageStop) -> list[bytes]:
        out = self._close_all()
        reason = stop_reason(ev.finish, ev.stop_sequence)
        usage = encode_usage(self._usage)
        del usage["cache_creation_input_tokens"]
        delta = {"stop_reason": reason, "stop_sequence": ev.stop_sequence if reason == "stop_sequence" else None}
        out.append(_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(_event("message_stop", {"type": "message_stop"}))
        self._ended = True
        return out

    def _on_failed(self, ev: ir.StreamFailed) -> list[bytes]:
        self._ended = True
        etype = ev.type if ev.type in ERROR_TYPES else error_type(ev.status)
        return [_error_event(etype, ev.message)]

    # -- text and thinking blocks --

    def _on_text(self, ev: ir.TextDelta) -> list[bytes]:
        if not ev.text:
            return []
        out = [] if self._open is _TEXT else self._switch(_TEXT, {"type": "text", "text": ""})
        out.append(self._delta({"type": "text_delta", "text": ev.text}))
        return out

    def _on_thinking(self, ev: ir.ThinkingDelta) -> list[bytes]:
        if not ev.text or not self._show_thinking:
            return []
        out = self._switch(_Block.THINKING, {"type": "thinking", "thinking": "", "signature": ""})
        out.append(self._delta({"type": "thinking_delta", "thinking": ev.text}))
        return out

    def _on_signature(self, ev: ir.ThinkingSignature) -> list[bytes]:
        """The signature ends its thinking block: later thinking text starts a new block."""
        if not self._show_thinking:
            return []
        out = self._switch(_Block.THINKING, {"type": "thinking", "thinking": "", "signature": ""})
        out.append(self._delta({"type": "signature_delta", "signature": ev.signature}))
        out += self._close_open()
        return out

    def _switch(self, kind: _Block, content_block: dict[str, Any]) -> list[bytes]:
        """Keep the open block if it has this kind; otherwise close everything and open one."""
        if self._open is kind:
            return []
        out = self._close_all()
        out.append(self._open_block(kind, content_block))
        return out

    # -- tool_use blocks --

    def _on_tool_start(self, ev: ir.ToolCallStart) -> list[bytes]:
        call = self._calls.setdefault(ev.index, _Call())
        if call.id is not None:
            return []  # a repeated start for the same call
        call.id, call.name = fold_call_id(ev.id, ev.signature), ev.name
        out = self._settle()
        if self._open is _Block.TOOL and not self._open_call_complete():
            self._queue.append(ev.index)  # the open call may still get fragments: it cannot close yet
            return out
        out += self._close_all()
        out += self._open_tool(ev.index)
        return out

    def _on_tool_delta(self, ev: ir.ToolCallDelta) -> list[bytes]:
        if not ev.arguments:
            return []
        call = self._calls.setdefault(ev.index, _Call())
        if ev.index == self._open_call:
            call.sent.append(ev.arguments)
            return [self._delta(_json_delta(ev.arguments)), *self._settle()]
        if call.block is not None:
            # A fragment for a call whose block already stopped (the upstream went back to it after
            # its JSON looked complete). The SDK accumulates deltas by index regardless of stops.
            return [self._delta(_json_delta(ev.arguments), call.block)]
        call.buffered.append(ev.arguments)
        return self._settle()

    def _settle(self) -> list[bytes]:
        """While calls are queued and the open call's JSON is complete, move on to the next one."""
        out: list[bytes] = []
        while self._queue and self._open_call_complete():
            out += self._close_open()
            out += self._open_tool(self._queue.pop(0))
        return out

    def _open_call_complete(self) -> bool:
        if self._open_call is None:
            return True
        try:
            orjson.loads("".join(self._calls[self._open_call].sent))
        except orjson.JSONDecodeError:
            return False
        return True

    def _open_tool(self, index: int) -> list[bytes]:
        call = self._calls[index]
        block = {"type": "tool_use", "id": call.id or _synthetic_tool_id(), "name": call.name, "input": {}}
        out = [self._open_block(_Block.TOOL, block)]
        call.block, self._open_call = self._index, index
        if call.buffered:
            call.sent, call.buffered = call.buffered, []
            out.append(self._delta(_json_delta("".join(call.sent))))
        return out

    # -- block bookkeeping --

    def _open_block(self, kind: _Block, content_block: dict[str, Any]) -> bytes:
        self._index += 1
        self._open = kind
        payload = {"type": "content_block_start", "index": self._index, "content_block": content_block}
        return _event("content_block_start", payload)

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        payload = {"type": "content_block_delta", "index": self._index if index is None else index, "delta": delta}
        return _event("content_block_delta", payload)

    def _close_open(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open, self._open_call = None, None
        return [_event("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _close_all(self) -> list[bytes]:
        """Close the open block, then give every queued call its block (buffered JSON flushed)."""
        out = self._close_open()
        while self._queue:
            out += self._open_tool(self._queue.pop(0))
            out += self._close_open()
        return out


def _json_delta(fragment: str) -> dict[str, Any]:
    return {"type": "input_json_delta", "partial_json": fragment}


_ENCODERS: dict[type, Callable[[AnthropicStreamEncoder, Any], list[bytes]]] = {
    ir.MessageStart: AnthropicStreamEncoder._on_start,
    ir.TextDelta: AnthropicStreamEncoder._on_text,
    ir.ThinkingDelta: AnthropicStreamEncoder._on_thinking,
    ir.ThinkingSignature: AnthropicStreamEncoder._on_signature,
    ir.ToolCallStart: AnthropicStreamEncoder._on_tool_start,
    ir.ToolCallDelta: AnthropicStreamEncoder._on_tool_delta,
    ir.UsageUpdate: AnthropicStreamEncoder._on_usage,
    ir.MessageStop: AnthropicStreamEncoder._on_stop,
    ir.StreamFailed: AnthropicStreamEncoder._on_failed,
}


# -- passthrough tap -----------------------------------------------------------------------------

_NO_USAGE_EVENTS = frozenset({"content_block_start", "content_block_delta", "content_block_stop", "ping"})


class AnthropicStreamTap:
    """Reads an Anthropic stream passing through: usage, ``message_stop``, ``error``.

    One repair (protocols.md, the SDK table): a ``message_start`` or ``message_delta`` without
    ``usage`` makes the SDK's stream helper raise AttributeError, so that event is rewritten with
    usage (zeros, or the last output count the upstream gave); the record still says unknown.
    """

    def __init__(self) -> None:
        self.usage: ir.Usage | None = None  # normalised, cumulative: the last one wins
        self.done = False  # message_stop seen
        self.error: dict[str, Any] | None = None  # the ``error`` object of an in-band error event
        self._raw: dict[str, int] = {}

    def feed(self, ev: SSEEvent) -> bool | bytes:
        if ev.event in _NO_USAGE_EVENTS:  # the bulk of a stream: skip parsing it
            return True
        try:
            payload = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            return True
        if isinstance(payload, dict):
            self._read(payload)
            return self._repair(payload)
        return True

    def _repair(self, payload: dict[str, Any]) -> bool | bytes:
        """Usage where the SDK's helper needs it: in ``message_start`` and in ``message_delta``."""
        kind = payload.get("type")
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            holder, usage = payload["message"], {"input_tokens": 0, "output_tokens": 0}
        elif kind == "message_delta":
            holder, usage = payload, {"output_tokens": self._raw.get("output_tokens", 0)}
        else:
            return True
        if isinstance(holder.get("usage"), dict):
            return True
        holder["usage"] = usage
        return _event(str(kind), payload)

    def _read(self, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            usage = payload["message"].get("usage")
            if isinstance(usage, dict):  # absent: unknown, never a zero that looks counted
                self._raw = merge_usage({}, usage)
                self.usage = normalise_usage(self._raw)
        elif kind == "message_delta" and isinstance(payload.get("usage"), dict):
            self._raw = merge_usage(self._raw, payload["usage"])
            self.usage = normalise_usage(self._raw)
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            err = payload.get("error")
            self.error = err if isinstance(err, dict) else {"type": "api_error", "message": str(err)}
