"""OpenAI Chat Completions stream encoder: IR stream events -> ``chat.completion.chunk`` SSE bytes.

``ChatStreamEncoder`` (IR -> OpenAI client) writes what the openai SDK's ``.stream()`` helper can
accumulate: the helper concatenates every string field it sees twice, so ``role`` goes only in the
first chunk and a call's ``id``/``type``/``name`` only in its first fragment, and every tool delta
carries ``index``. Finish and the optional usage chunk are written at MessageStop, whatever order
the upstream protocol produced them in.
"""

from __future__ import annotations

from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs.openai_chat._vocab import DONE_EVENT, chat_id, encode_usage, fold_signature, stream_error_body
from relayproxy.errors import RelayError, UpstreamStatusError

__all__ = ["ChatStreamEncoder"]


class ChatStreamEncoder:
    """IR stream events -> ``chat.completion.chunk`` SSE bytes for an OpenAI client."""

    def __init__(self, req: ir.ChatRequest, model: str) -> None:
        self._model = model
        self._include_usage = req.include_usage  # the client asked for the trailing usage chunk
        self._id = ""  # set by the role chunk, which must be the first chunk
        self._usage: ir.Usage | None = None  # last snapshot, written at MessageStop
        self._closed = False  # [DONE] or an error went out: nothing may follow
        self.answered = False  # the finish chunk (and the usage chunk, if asked for) went out

    def encode(self, ev: ir.StreamEvent) -> bytes:
        if self._closed:
            return b""
        if isinstance(ev, ir.MessageStart):
            self._usage = ev.usage or self._usage
            return self._open(ev.id)
        if type(ev) is ir.TextDelta and self._id:  # the bulk of a stream, without the match below
            return self._delta({"content": ev.text}) if ev.text else b""
        return self._open("") + self._body(ev)

    def error(self, err: RelayError) -> bytes:
        if self._closed:
            return b""
        self._closed = True  # the SDK raises APIError on this event; no [DONE] may follow
        return b"data: " + orjson.dumps(stream_error_body(err)) + b"\n\n"

    def ping(self) -> bytes:
        return b": ping\n\n"

    def finish(self) -> bytes:
        return b""

    def _body(self, ev: ir.StreamEvent) -> bytes:
        match ev:
            case ir.TextDelta(text=text) if text:
                return self._delta({"content": text})
            case ir.ThinkingDelta(text=text) if text:
                return self._delta({"reasoning_content": text})  # non-standard; the SDK keeps extras
            case ir.ToolCallStart():
                return self._delta({"tool_calls": [_tool_head(ev)]})
            case ir.ToolCallDelta(index=index, arguments=fragment) if fragment:
                return self._delta({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
            case ir.UsageUpdate(usage=usage):
                self._usage = usage
            case ir.MessageStop(finish=finish):
                return self._stop(finish)
            case ir.StreamFailed(status=status, message=message, type=etype):
                return self.error(UpstreamStatusError(status, message, upstream_type=etype))
        return b""  # ThinkingSignature and empty fragments have nothing to say to an OpenAI client

    def _open(self, upstream_id: str) -> bytes:
        """The role chunk, once. Example failure prevented: ``role`` repeated later reads as
        "assistantassistant" in the SDK's stream helper."""
        if self._id:
            return b""
        self._id = chat_id(upstream_id)
        return self._delta({"role": "assistant", "content": ""})

    def _stop(self, finish: ir.FinishReason) -> bytes:
        self._closed = self.answered = True  # the answer ends with the usage chunk: [DONE] is framing
        out = self._delta({}, finish.value)
        if self._include_usage:
            out += self._chunk([], encode_usage(self._usage or ir.Usage()))
        return out + DONE_EVENT

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": 0,  # codecs have no clock; the SDK does not care
            "model": self._model,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = usage  # null on every chunk but the last, as OpenAI does
        return b"data: %b\n\n" % orjson.dumps(chunk)


def _tool_head(ev: ir.ToolCallStart) -> dict[str, Any]:
    """A call's first fragment: the only one with id, type and name (the helper concatenates them)."""
    call_id = fold_signature(ev.id, ev.signature)
    return {"index": ev.index, "id": call_id, "type": "function", "function": {"name": ev.name, "arguments": ""}}
