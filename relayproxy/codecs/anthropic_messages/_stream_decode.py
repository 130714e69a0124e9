"""Anthropic Messages streams: the upstream decoder and the passthrough tap (encoder re-exported).

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

The answer is complete at ``message_delta`` with a ``stop_reason`` (``answer_complete``; it carries
the final usage): the decoder emits MessageStop there, the tap sets ``answered``; ``message_stop``
is framing (it sets ``done``), and a stream that ends cleanly without it after the answer is done.

`AnthropicStreamTap` watches a passthrough stream for usage, ``message_stop`` and ``error``.

`AnthropicStreamEncoder` (IR -> an Anthropic client) lives in ``anthropic_messages_stream_encode``,
and the wire vocabulary all the Anthropic modules need (usage counters, stop reasons, error types and
error envelopes, tool-call ids carrying Gemini thought signatures) in ``anthropic_messages_vocab``;
both are re-exported here.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs.anthropic_messages._vocab import (
    error_status,
    finish_reason,
    merge_usage,
    normalise_usage,
    sse_event,
    synthetic_tool_id,
    text_of,
)
from relayproxy.sse import SSEEvent

__all__ = [
    "AnthropicStreamDecoder",
    "AnthropicStreamTap",
]

# -- upstream decoder ----------------------------------------------------------------------------


def answer_complete(kind: Any, payload: dict[str, Any]) -> bool:
    """Whether this event completes an Anthropic stream's answer: ``message_delta`` with a
    ``stop_reason`` (and its usage); ``message_stop`` after it is framing."""
    if kind != "message_delta":
        return False
    delta = payload.get("delta")
    return isinstance(delta, dict) and delta.get("stop_reason") is not None


class AnthropicStreamDecoder:
    """Anthropic SSE events -> IR stream events (see the module docstring)."""

    def __init__(self) -> None:
        self._started = False  # MessageStart emitted
        self._ended = False  # the answer, an error or malformed JSON seen: ignore the rest
        self.done = False  # message_stop (or the end of the body) seen: nothing more is owed
        self._tool_of_block: dict[int, int] = {}  # tool_use block index -> tool-call ordinal
        self._tools = 0  # tool_use blocks seen so far
        self._usage: dict[str, int] = {}  # raw Anthropic counters, merged
        self._stop_reason: Any = None
        self._stop_sequence: str | None = None

    def feed(self, ev: SSEEvent) -> list[ir.StreamEvent]:
        if self._ended:
            if ev.event == "message_stop" or b'"message_stop"' in ev.data:
                self.done = True
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
        self.done = True
        return []  # MessageStop comes only from the answer's end; a cut stream ends without one

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
            return [ir.MessageStart(text_of(message, "id"), text_of(message, "model"))]
        self._usage = merge_usage({}, message["usage"])
        usage = normalise_usage(self._usage)
        prompt = ir.Usage(usage.input_tokens, usage.cached_input_tokens)
        start = ir.MessageStart(text_of(message, "id"), text_of(message, "model"), prompt)
        return [start, ir.UsageUpdate(usage)]

    def _block_start(self, payload: dict[str, Any]) -> list[ir.StreamEvent]:
        block, index = payload.get("content_block"), payload.get("index")
        if not isinstance(block, dict):
            return []
        kind = block.get("type")
        if kind == "text" and text_of(block, "text"):
            return [ir.TextDelta(block["text"])]
        if kind == "thinking" and text_of(block, "thinking"):
            return [ir.ThinkingDelta(block["thinking"])]
        if kind != "tool_use" or not isinstance(index, int):
            return []  # redacted_thinking and server-tool blocks have no IR counterpart
        tool = self._tool_of_block[index] = self._tools
        self._tools += 1
        events: list[ir.StreamEvent] = [
            ir.ToolCallStart(tool, text_of(block, "id") or synthetic_tool_id(), text_of(block, "name"))
        ]
        if isinstance(block.get("input"), dict) and block["input"]:  # a provider that sends it whole here
            events.append(ir.ToolCallDelta(tool, orjson.dumps(block["input"]).decode()))
        return events

    def _block_delta(self, payload: dict[str, Any]) -> list[ir.StreamEvent]:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta" and text_of(delta, "text"):
            return [ir.TextDelta(delta["text"])]
        if kind == "thinking_delta" and text_of(delta, "thinking"):
            return [ir.ThinkingDelta(delta["thinking"])]
        if kind == "signature_delta" and text_of(delta, "signature"):
            return [ir.ThinkingSignature(delta["signature"])]
        index = payload.get("index")
        tool = self._tool_of_block.get(index) if isinstance(index, int) else None
        if kind == "input_json_delta" and tool is not None and text_of(delta, "partial_json"):
            return [ir.ToolCallDelta(tool, delta["partial_json"])]
        return []  # citations_delta, empty fragments (the first partial_json is often "")

    def _message_delta(self, payload: dict[str, Any]) -> list[ir.StreamEvent]:
        delta = payload.get("delta")
        if isinstance(delta, dict):
            self._stop_reason = delta.get("stop_reason")
            sequence = delta.get("stop_sequence")
            self._stop_sequence = sequence if isinstance(sequence, str) else None
        events: list[ir.StreamEvent] = []
        if isinstance(payload.get("usage"), dict):
            self._usage = merge_usage(self._usage, payload["usage"])
            events.append(ir.UsageUpdate(normalise_usage(self._usage)))
        if answer_complete("message_delta", payload):
            events += self._stop()
        return events

    def _message_stop(self, payload: dict[str, Any]) -> list[ir.StreamEvent]:
        self.done = True  # a message_delta without stop_reason: the answer ends here
        return self._stop()

    def _stop(self) -> list[ir.StreamEvent]:
        self._ended = True
        return [ir.MessageStop(finish_reason(self._stop_reason), self._stop_sequence)]

    def _error(self, payload: dict[str, Any]) -> list[ir.StreamEvent]:
        self._ended = True
        err = payload.get("error")
        err = err if isinstance(err, dict) else {}
        etype = err.get("type") if isinstance(err.get("type"), str) else None
        message = text_of(err, "message") or "upstream reported an error mid-stream"
        return [ir.StreamFailed(error_status(etype), message, etype)]


_DECODERS: dict[str, Callable[[AnthropicStreamDecoder, dict[str, Any]], list[ir.StreamEvent]]] = {
    "message_start": AnthropicStreamDecoder._message_start,
    "content_block_start": AnthropicStreamDecoder._block_start,
    "content_block_delta": AnthropicStreamDecoder._block_delta,
    "message_delta": AnthropicStreamDecoder._message_delta,
    "message_stop": AnthropicStreamDecoder._message_stop,
    "error": AnthropicStreamDecoder._error,
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
        self.answered = False  # message_delta with stop_reason seen (``answer_complete``)
        self.error: dict[str, Any] | None = None  # the ``error`` object of an in-band error event
        self._raw: dict[str, int] = {}

    def close(self) -> bytes:
        """The upstream body ended cleanly: after the answer (``answer_complete``) without its
        ``message_stop``, the stream is done and the client gets the ``message_stop`` it expects."""
        if self.done or self.error is not None or not self.answered:
            return b""
        self.done = True
        return sse_event("message_stop", {"type": "message_stop"})

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
        return sse_event(str(kind), payload)

    def _read(self, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            usage = payload["message"].get("usage")
            if isinstance(usage, dict):  # absent: unknown, never a zero that looks counted
                self._raw = merge_usage({}, usage)
                self.usage = normalise_usage(self._raw)
        elif kind == "message_delta":
            if isinstance(payload.get("usage"), dict):
                self._raw = merge_usage(self._raw, payload["usage"])
                self.usage = normalise_usage(self._raw)
            self.answered = self.answered or answer_complete(kind, payload)
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            err = payload.get("error")
            self.error = err if isinstance(err, dict) else {"type": "api_error", "message": str(err)}
