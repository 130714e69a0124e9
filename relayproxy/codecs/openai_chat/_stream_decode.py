"""OpenAI Chat Completions streams: the chunk decoder and the passthrough tap (the encoder is re-exported).

Theory of operation
-------------------
An OpenAI-protocol stream is a run of ``data: <chunk JSON>`` events closed by ``data: [DONE]``.
Each chunk carries at most one choice (we only ever ask for ``n = 1``) whose ``delta`` holds the new
fragment only, a ``finish_reason`` on a late chunk, and usage either in a trailing ``choices: []``
chunk (OpenAI, DeepSeek) or inside ``choices[0].usage`` (Moonshot).

``ChatStreamDecoder`` (upstream -> IR) is a three-phase machine (``_Phase``): OPEN until the answer
is complete (``answer_complete``: the finish chunk and the usage chunk, in either order; else
``[DONE]``), which is MessageStop, or an error chunk (StreamFailed); after either, everything is
ignored but ``[DONE]``, which sets ``done``. Tool-call fragments are keyed by their upstream
``index``; a fragment without one (Moonshot) continues the current call unless it brings a new id.
The finish reason is held until the usage came, because MessageStop must follow the last UsageUpdate.

``StreamTap`` reads a same-protocol stream that passes through untouched.

``ChatStreamEncoder`` (IR -> OpenAI client) lives in ``openai_chat_stream_encode``, and the wire
vocabulary both halves of the codec need (usage, finish reasons, ids, the error shape) in
``openai_chat_vocab``; both are re-exported here.
"""

from __future__ import annotations

import secrets
from enum import Enum
from typing import Any, Literal

import orjson

from relayproxy import ir
from relayproxy.codecs.openai_chat._vocab import (
    DONE,
    decode_finish,
    decode_usage,
    minimax_error,
    reasoning_texts,
    synth_call_id,
)
from relayproxy.codecs.shared import is_int, str_or_empty
from relayproxy.sse import SSEEvent, encode_event

__all__ = [
    "ChatStreamDecoder",
    "StreamTap",
]

_ERROR_STATUS = {
    "invalid_request_error": 400,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "requests": 429,
    "tokens": 429,
    "server_error": 500,
    "service_unavailable_error": 503,
    "overloaded_error": 503,
}


# -- decoder ------------------------------------------------------------------------------------


class _Phase(Enum):
    OPEN = "open"  # chunks may arrive
    DONE = "done"  # [DONE] seen and MessageStop emitted: anything after it is ignored
    FAILED = "failed"  # an error chunk became StreamFailed: anything after it is ignored


_OPEN = _Phase.OPEN  # looked up once per chunk: an Enum member lookup is not free


def answer_complete(finished: bool, usage_seen: bool) -> bool:
    """Whether an OpenAI chat stream holds its whole answer: the chunk with ``finish_reason`` and the
    usage chunk (the gateway asks every OpenAI upstream for usage; usage inside ``choices[0]`` is a
    quirk that a trailing usage chunk may still correct); ``data: [DONE]`` is framing."""
    return finished and usage_seen


class ChatStreamDecoder:
    """OpenAI-protocol upstream SSE events -> IR stream events (see the module docstring)."""

    def __init__(self) -> None:
        self._phase = _Phase.OPEN
        self.done = False  # [DONE] or the end of the body seen: nothing more is owed
        self._started = False  # MessageStart emitted
        self._finish: ir.FinishReason | None = None  # held until the answer is complete
        self._usage_seen = False  # a usage chunk came (the gateway always asks for it upstream)
        self._usage_chunk = False  # ...at the chunk's top level (``answer_complete``)
        self._by_index: dict[int, int] = {}  # upstream tool-call index -> our ordinal
        self._call_ids: list[str] = []  # by ordinal; the last one is the current call

    def feed(self, ev: SSEEvent) -> list[ir.StreamEvent]:
        data = ev.data
        if self._phase is not _OPEN:
            if data.startswith(DONE):
                self.done = True
            return []
        if not data or data.isspace():
            return []
        if data.startswith(DONE):
            self.done = True
            return self._done()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._fail(502, "The upstream sent a stream event that is not JSON.", None)
        if type(chunk) is not dict:
            return self._fail(502, "The upstream sent a stream event that is not a JSON object.", None)
        if "error" in chunk or "base_resp" in chunk:
            failure = _chunk_error(chunk)
            if failure is not None:
                return self._fail(*failure)
        if self._started:
            return self._read(chunk)
        return self._start(chunk) + self._read(chunk)

    def close(self) -> list[ir.StreamEvent]:
        """A clean EOF after the finish chunk and the usage chunk ends the answer as ``[DONE]`` would
        (``answer_complete``); before them the stream is incomplete: no MessageStop."""
        self.done = True
        if self._phase is _OPEN and answer_complete(self._finish is not None, self._usage_seen):
            return self._done()
        return []

    def _start(self, chunk: dict[str, Any]) -> list[ir.StreamEvent]:
        if self._started:
            return []
        self._started = True
        rid, model = chunk.get("id"), chunk.get("model")
        rid = rid if isinstance(rid, str) and rid else "chatcmpl-" + secrets.token_hex(12)
        return [ir.MessageStart(rid, model if isinstance(model, str) else "")]

    def _done(self) -> list[ir.StreamEvent]:
        self._phase = _Phase.DONE
        finish = self._finish or ir.FinishReason.STOP
        if finish is ir.FinishReason.STOP and self._call_ids:
            # Example failure prevented: OpenAI reports "stop" for a forced tool_choice; an agent
            # loop on the client side (Anthropic stop_reason "tool_use") would not run the tools.
            finish = ir.FinishReason.TOOL_CALLS
        return [*self._start({}), ir.MessageStop(finish)]

    def _fail(self, status: int, message: str, etype: str | None) -> list[ir.StreamEvent]:
        self._phase = _Phase.FAILED
        return [*self._start({}), ir.StreamFailed(status, message, etype)]

    def _read(self, chunk: dict[str, Any]) -> list[ir.StreamEvent]:
        events: list[ir.StreamEvent] = []
        usage = chunk.get("usage")
        usage = None if usage is None else decode_usage(usage)
        self._usage_chunk = self._usage_chunk or usage is not None
        choices = chunk.get("choices")
        choice = choices[0] if type(choices) is list and choices else None
        if type(choice) is dict:
            delta = choice.get("delta")
            if type(delta) is dict:
                events += self._delta(delta)
            reason = choice.get("finish_reason")
            if reason is not None:
                self._finish = decode_finish(reason) or self._finish
            if usage is None and "usage" in choice:  # Moonshot: usage inside choices[0]
                usage = decode_usage(choice["usage"])
        if usage is not None:
            self._usage_seen = True
            events.append(ir.UsageUpdate(usage))
        if answer_complete(self._finish is not None, self._usage_chunk):
            events += self._done()
        return events

    def _delta(self, delta: dict[str, Any]) -> list[ir.StreamEvent]:
        events: list[ir.StreamEvent] = []
        if "reasoning_content" in delta or "reasoning" in delta or "reasoning_details" in delta:
            events += [ir.ThinkingDelta(t) for t in reasoning_texts(delta)]
        for key in ("content", "refusal"):  # a refusal is what the model said: text for every client
            text = delta.get(key)
            if isinstance(text, str) and text:
                events.append(ir.TextDelta(text))
        calls = delta.get("tool_calls")
        for fragment in calls if isinstance(calls, list) else ():
            if isinstance(fragment, dict):
                events += self._tool_fragment(fragment)
        return events

    def _tool_fragment(self, fragment: dict[str, Any]) -> list[ir.StreamEvent]:
        fn = fragment.get("function")
        fn = fn if isinstance(fn, dict) else {}
        call_id, name, args = (
            str_or_empty(fragment.get("id")),
            str_or_empty(fn.get("name")),
            str_or_empty(fn.get("arguments")),
        )
        index = fragment.get("index")
        ordinal, events = self._call_for(index if is_int(index) else None, call_id, name)
        if args:  # empty fragments carry nothing (and Anthropic clients would see a pointless delta)
            events.append(ir.ToolCallDelta(ordinal, args))
        return events

    def _call_for(self, index: int | None, call_id: str, name: str) -> tuple[int, list[ir.StreamEvent]]:
        """The ordinal of the call a fragment belongs to, opening a new call when needed."""
        # Moonshot: a fragment without an index continues the current call...
        current = len(self._call_ids) - 1 if self._call_ids else None
        known = current if index is None else self._by_index.get(index)
        if known is not None and (not call_id or call_id == self._call_ids[known]):
            return known, []
        # ...unless it brings a new id; likewise a provider that numbers every call 0 with new ids.
        ordinal = len(self._call_ids)
        if index is not None:
            self._by_index[index] = ordinal
        self._call_ids.append(call_id or synth_call_id())
        return ordinal, [ir.ToolCallStart(ordinal, self._call_ids[ordinal], name)]


def _chunk_error(chunk: dict[str, Any]) -> tuple[int, str, str | None] | None:
    """An in-band error: ``{"error": …}`` (as the openai SDK decides: a truthy ``error``) or MiniMax's
    ``base_resp``."""
    err = chunk.get("error")
    if err:
        if not isinstance(err, dict):
            return 502, str(err), None
        etype, message = (
            str_or_empty(err.get("type")) or None,
            str_or_empty(err.get("message")) or "upstream stream error",
        )
        return _error_status(err), message, etype
    found = minimax_error(chunk)
    return None if found is None else (found[0], found[1], None)


def _error_status(err: dict[str, Any]) -> int:
    code = err.get("code")
    if is_int(code) and 400 <= code <= 599:  # some compatible providers put the HTTP status here
        return code
    for key in (err.get("type"), code):
        if isinstance(key, str) and key in _ERROR_STATUS:
            return _ERROR_STATUS[key]
    return 502


# -- passthrough tap ----------------------------------------------------------------------------


class StreamTap:
    """Reads an OpenAI stream that passes through: usage, finish reason, terminator.

    ``feed`` returns False for an event the client must not see: the trailing usage-only chunk
    when the client did not ask for usage (the gateway forces ``include_usage`` upstream). It
    returns the chunk re-serialised when it fixes one of the quirks of protocols.md §8.8 that the
    OpenAI SDK's stream helper trips on: usage inside ``choices[0]`` (Moonshot) goes to the top
    level, a tool-call delta without ``index`` gets the current call's, and a ``role`` repeated
    after a choice's first delta is dropped. Chunks without a quirk pass as they came.
    """

    def __init__(self, *, client_wants_usage: bool) -> None:
        self.client_wants_usage = client_wants_usage
        self.usage: ir.Usage | None = None
        self.finish_reason: str | None = None
        self.done = False  # saw data: [DONE]
        self.answered = False  # the finish and usage chunks came (``answer_complete``)
        self._usage_chunk = False
        self.error: dict[str, Any] | None = None  # an in-band error from upstream
        self._roles: set[Any] = set()  # choice indexes whose role has been sent
        self._calls: dict[Any, int] = {}  # choice index -> index of its current tool call

    def close(self) -> bytes:
        """A clean EOF after the answer (``answer_complete``) without ``[DONE]``: the stream is
        done, and the client gets the terminator it expects; else nothing."""
        if (
            self.done
            or self.error is not None
            or not answer_complete(self.finish_reason is not None, self.usage is not None)
        ):
            return b""
        self.done = True
        return b"data: [DONE]\n\n"

    def feed(self, ev: SSEEvent) -> bool | bytes:
        data = ev.data
        if data.startswith(DONE):
            self.done = True
            return True
        if self.done or not data:
            return True
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True
        if type(chunk) is not dict:
            return True
        # Most chunks are a content delta with ``"usage": null`` and ``"finish_reason": null``:
        # each check below is one dict lookup before any of the slower readers run.
        if chunk.get("error"):
            err = chunk["error"]
            self.error = err if isinstance(err, dict) else {"message": str(err)}
            return True
        if "base_resp" in chunk and (found := minimax_error(chunk)) is not None:
            self.error = {"message": found[1], "code": found[0]}
            return True
        verdict = self._read_chunk(chunk)
        if verdict == "fixed":
            return encode_event(orjson.dumps(chunk), ev.event)
        return verdict == "keep"

    def _read_chunk(self, chunk: dict[str, Any]) -> Literal["keep", "drop", "fixed"]:
        """Read usage and the finish reason, and fix the chunk's quirks in place."""
        choices = chunk.get("choices")
        usage = chunk.get("usage")
        usage = None if usage is None else decode_usage(usage)
        top_level = usage is not None  # the usage chunk, not the quirk inside choices[0]
        fixed = False
        if type(choices) is list and choices:
            for choice in choices:
                if type(choice) is dict and type(delta := choice.get("delta")) is dict:
                    fixed = self._fix_delta(choice.get("index", 0), delta) or fixed
            if type(first := choices[0]) is dict:
                reason = first.get("finish_reason")
                if reason is not None and isinstance(reason, str):
                    self.finish_reason = reason
                if usage is None and "usage" in first:  # Moonshot: usage inside choices[0]
                    usage = decode_usage(first["usage"])
                    if self.client_wants_usage and usage is not None:  # where the SDK reads it
                        chunk["usage"] = first.pop("usage")
                        fixed = True
        if self.finish_reason is not None:
            self.answered = answer_complete(True, self._usage_chunk or top_level)
        if usage is not None:
            self.usage = usage  # cumulative wherever it appears: the last one wins
            self._usage_chunk = self._usage_chunk or top_level
            if choices == [] and not self.client_wants_usage:
                return "drop"
        return "fixed" if fixed else "keep"

    def _fix_delta(self, choice: Any, delta: dict[str, Any]) -> bool:
        """Fix a delta in place (a repeated role, index-less tool calls); True when changed."""
        fixed = False
        if "role" in delta:
            if choice in self._roles:
                del delta["role"]  # the SDK's helper would append it to the role again
                fixed = True
            elif delta["role"] is not None:
                self._roles.add(choice)
        calls = delta.get("tool_calls")
        if type(calls) is list:
            for call in calls:
                if type(call) is not dict:
                    continue
                index = call.get("index")
                if type(index) is not int:  # seen from Moonshot: the current call, or a new one
                    current = self._calls.get(choice, -1)
                    index = current + 1 if call.get("id") or current < 0 else current
                    call["index"] = index
                    fixed = True
                self._calls[choice] = index
        return fixed
