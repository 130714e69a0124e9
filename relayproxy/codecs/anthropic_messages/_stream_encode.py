"""Anthropic Messages stream encoder: IR stream events -> an Anthropic SSE stream.

`AnthropicStreamEncoder` writes for an Anthropic client, whatever protocol the upstream spoke: it
opens a block when the kind of content changes, keeps indices 0-based and contiguous (the SDK's
stream helper indexes its content list with them), and holds stop reason and usage until
``MessageStop`` because OpenAI upstreams send the finish before the usage. A block, once stopped,
cannot be reopened, so a tool call that starts while another call's JSON is still incomplete (an
upstream interleaving two calls) is queued: its fragments are buffered and flushed when its block
opens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs.anthropic_messages._vocab import (
    ERROR_TYPES,
    encode_usage,
    error_type,
    fold_call_id,
    message_id,
    sse_event,
    stop_reason,
    synthetic_tool_id,
)
from relayproxy.errors import RelayError

__all__ = ["AnthropicStreamEncoder"]

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


def _error_event(etype: str, message: str) -> bytes:
    return sse_event("error", {"type": "error", "error": {"type": etype, "message": message}})


class AnthropicStreamEncoder:
    """IR stream events -> an Anthropic SSE stream that the official SDK and its helper accept."""

    def __init__(self, model: str, *, show_thinking: bool = True) -> None:
        self._model = model
        self._show_thinking = show_thinking  # the client asked for thinking (protocols.md §8.2, §8.7)
        self._started = False  # message_start sent
        self._ended = False  # message_stop or an error sent: nothing may follow
        self.answered = False  # message_delta (stop_reason, usage) went out: message_stop is framing
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
        return sse_event("message_start", {"type": "message_start", "message": message})

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
        out.append(sse_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        self._ended = self.answered = True
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
        block = {"type": "tool_use", "id": call.id or synthetic_tool_id(), "name": call.name, "input": {}}
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
        return sse_event("content_block_start", payload)

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        payload = {"type": "content_block_delta", "index": self._index if index is None else index, "delta": delta}
        return sse_event("content_block_delta", payload)

    def _close_open(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open, self._open_call = None, None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": self._index})]

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
