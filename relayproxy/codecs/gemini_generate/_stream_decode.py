"""Gemini streams: the upstream decoder and the passthrough tap (encoder and vocabulary re-exported).

Theory of operation
-------------------
``streamGenerateContent?alt=sse`` sends ``data: <GenerateContentResponse>`` events, CRLF framed,
with no event names and no terminator: each chunk holds only the new parts, usage is cumulative on
(nearly) every chunk, and ``finishReason`` rides on the last candidate chunk. The answer is complete
at the chunk carrying finishReason together with usageMetadata (``answer_complete``; the end of the
body after it is framing): the decoder emits ``MessageStop`` there, and the tap sets ``answered`` and
``done``. A finishReason without usage ends the stream at ``close()``; a body that just stops
before any finishReason is a truncation, and the gateway reports it. Function calls arrive
complete: one ``ToolCallStart`` and one ``ToolCallDelta`` holding the whole JSON each.

``GeminiStreamEncoder`` (IR -> a Gemini client) lives in ``gemini_generate_stream_encode``, the
wire vocabulary (ids, parts, usage, finish reasons, errors) in ``gemini_generate_vocab``; both are
re-exported here.
"""

from __future__ import annotations

from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs.gemini_generate._vocab import (
    blocked,
    candidate_parts,
    decode_finish,
    decode_usage,
    error_message,
    error_object,
    error_status,
    error_type,
    get,
    response_call,
    response_id,
    signature,
)
from relayproxy.sse import SSEEvent

__all__ = [
    "GeminiStreamDecoder",
    "GeminiStreamTap",
]

# -- stream decoder (Gemini upstream) ---------------------------------------------------------------


def answer_complete(finished: bool, chunk: dict[str, Any]) -> bool:
    """Whether a Gemini stream holds its whole answer: a finishReason seen (on this chunk or before)
    and usageMetadata on this chunk; the end of the body after it is framing."""
    return finished and "usageMetadata" in chunk


class GeminiStreamDecoder:
    """``alt=sse`` chunks -> IR events. State: started, tool calls so far, finish, last usage."""

    def __init__(self) -> None:
        self._started = False
        self._ended = False  # failed, answered or closed: nothing more comes out
        self.done = False  # the answer or the end of the body seen: nothing more is owed (no framing)
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
        out += self._usage_update(chunk)
        if answer_complete(self._finish is not None, chunk):
            self.done = True
            out += self.close()
        return out

    def close(self) -> list[ir.StreamEvent]:
        """The answer or the body ended: MessageStop only if a finishReason came (else the stream
        was cut short)."""
        self.done = True
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


# -- passthrough tap --------------------------------------------------------------------------------


class GeminiStreamTap:
    """Reads a Gemini stream passing through untouched: last usage, finishReason seen, in-band error."""

    def __init__(self) -> None:
        self.usage: ir.Usage | None = None
        self.done = False  # Gemini has no terminator: the answer's last chunk (or EOF after a finish)
        self.answered = False  # finishReason with usageMetadata seen (``answer_complete``)
        self.error: dict[str, Any] | None = None
        self._finished = False  # a finishReason (or a block) seen

    def close(self) -> bytes:
        """The upstream body ended cleanly: done if a finishReason came (usage unknown, then)."""
        self.done = self.done or self._finished
        return b""

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
            self._finished = True
        if answer_complete(self._finished, chunk):
            self.answered = self.done = True
        return True
