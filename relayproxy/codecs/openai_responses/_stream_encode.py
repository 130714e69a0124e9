"""OpenAI Responses stream encoder: IR stream events -> Responses SSE events.

The sequence is the one the openai SDKs' stream helpers and Codex accumulate: ``response.created``,
``response.in_progress``; per output item ``output_item.added``, its part/summary ``added``, deltas,
``done`` events and ``output_item.done``; then ``response.completed`` (or ``response.incomplete``)
with the whole Response and full usage. Every event carries ``sequence_number``; frames are
``event: <type>`` plus ``data: {...}``. OpenAI sends no ``[DONE]`` on this API (the SDK stops at
the end of the body). A failure after the headers is ``response.failed``, the last event.

A text or reasoning item is closed when anything else starts; function calls stay open (upstreams
may interleave calls by index) and close at the end, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs.openai_responses._vocab import (
    call_item,
    encode_error,
    message_item,
    new_id,
    reasoning_item,
    response_id,
    response_object,
    status_of,
    text_part,
)
from relayproxy.errors import RelayError, UpstreamStatusError

__all__ = ["ResponsesStreamEncoder"]


@dataclass(slots=True)
class _Item:
    kind: str  # message | reasoning | function_call
    id: str
    index: int  # output_index
    text: list[str] = field(default_factory=list)  # text, summary or arguments so far
    call_id: str = ""
    name: str = ""
    signature: str | None = None
    done: dict[str, Any] | None = None  # the finished item, once closed


class ResponsesStreamEncoder:
    """IR stream events -> Responses SSE bytes for an OpenAI Responses client."""

    def __init__(self, req: ir.ChatRequest, model: str) -> None:
        self._req = req
        self._model = model
        self._id = ""  # set when response.created goes out
        self._seq = 0
        self._items: list[_Item] = []
        self._open: _Item | None = None  # the text or reasoning item being written
        self._calls: dict[int, _Item] = {}  # IR tool index -> open function_call item
        self._usage: ir.Usage | None = None
        self._closed = False
        self.answered = False  # response.completed (or .incomplete) went out

    def encode(self, ev: ir.StreamEvent) -> bytes:
        if self._closed:
            return b""
        if isinstance(ev, ir.MessageStart):
            self._usage = ev.usage or self._usage
            return self._start(ev.id)
        out = self._start("")
        match ev:
            case ir.TextDelta(text=text) if text:
                out += self._text("message", text)
            case ir.ThinkingDelta(text=text) if text:
                out += self._text("reasoning", text)
            case ir.ThinkingSignature(signature=sig):
                out += self._signature(sig)
            case ir.ToolCallStart():
                out += self._call_start(ev)
            case ir.ToolCallDelta(index=index, arguments=fragment) if fragment:
                out += self._call_delta(index, fragment)
            case ir.UsageUpdate(usage=usage):
                self._usage = usage
            case ir.MessageStop(finish=finish):
                out += self._stop(finish)
            case ir.StreamFailed(status=status, message=message, type=etype):
                out += self.error(UpstreamStatusError(status, message, upstream_type=etype))
        return out

    def error(self, err: RelayError) -> bytes:
        if self._closed:
            return b""
        out = self._start("")
        self._closed = True
        _, body = encode_error(err)
        resp = self._response("failed")
        resp["error"] = {"code": "server_error" if err.status >= 500 else body["error"]["code"], "message": err.message}
        return out + self._event("response.failed", {"response": resp})

    def ping(self) -> bytes:
        return b": ping\n\n"

    def finish(self) -> bytes:
        return b""

    # -- events ---------------------------------------------------------------------------------

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        data = {"type": kind, **fields, "sequence_number": self._seq}
        self._seq += 1
        return b"event: %b\ndata: %b\n\n" % (kind.encode(), orjson.dumps(data))

    def _response(self, status: str, finish: ir.FinishReason | None = None) -> dict[str, Any]:
        output = [item.done for item in self._items if item.done is not None]
        usage = self._usage or ir.Usage() if status != "in_progress" else None
        return response_object(self._id, self._model, self._req, output, status=status, usage=usage, finish=finish)

    def _start(self, upstream_id: str) -> bytes:
        if self._id:
            return b""
        self._id = response_id(upstream_id)
        resp = self._response("in_progress")
        return self._event("response.created", {"response": resp}) + self._event(
            "response.in_progress", {"response": resp}
        )

    def _text(self, kind: str, text: str) -> bytes:
        out = b""
        item = self._open
        if item is None or item.kind != kind:
            out += self._close_open()
            item = self._open = _Item(kind, new_id("msg" if kind == "message" else "rs"), len(self._items))
            self._items.append(item)
            out += self._open_text(item)
        item.text.append(text)
        where = {"item_id": item.id, "output_index": item.index}
        if kind == "message":
            return out + self._event(
                "response.output_text.delta", {**where, "content_index": 0, "delta": text, "logprobs": []}
            )
        return out + self._event("response.reasoning_summary_text.delta", {**where, "summary_index": 0, "delta": text})

    def _open_text(self, item: _Item) -> bytes:
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            added = message_item(item.id, None, "in_progress")
            part = {**where, "content_index": 0, "part": text_part("")}
            return self._event("response.output_item.added", {"output_index": item.index, "item": added}) + (
                self._event("response.content_part.added", part)
            )
        added = reasoning_item(item.id, None)
        part = {**where, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}
        return self._event("response.output_item.added", {"output_index": item.index, "item": added}) + (
            self._event("response.reasoning_summary_part.added", part)
        )

    def _signature(self, sig: str) -> bytes:
        if self._open is not None and self._open.kind == "reasoning":
            self._open.signature = sig
            return b""
        out = self._close_open()  # a signature with no thinking text (redacted or hidden reasoning)
        item = _Item("reasoning", new_id("rs"), len(self._items), signature=sig)
        self._items.append(item)
        item.done = reasoning_item(item.id, None, sig)
        out += self._event(
            "response.output_item.added", {"output_index": item.index, "item": reasoning_item(item.id, None)}
        )
        return out + self._event("response.output_item.done", {"output_index": item.index, "item": item.done})

    def _close_open(self) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        text = "".join(item.text)
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            item.done = message_item(item.id, text)
            out = self._event("response.output_text.done", {**where, "content_index": 0, "text": text, "logprobs": []})
            out += self._event("response.content_part.done", {**where, "content_index": 0, "part": text_part(text)})
        else:
            item.done = reasoning_item(item.id, text, item.signature)
            part = {"type": "summary_text", "text": text}
            out = self._event("response.reasoning_summary_text.done", {**where, "summary_index": 0, "text": text})
            out += self._event("response.reasoning_summary_part.done", {**where, "summary_index": 0, "part": part})
        return out + self._event("response.output_item.done", {"output_index": item.index, "item": item.done})

    def _call_start(self, ev: ir.ToolCallStart) -> bytes:
        out = self._close_open()
        out += self._close_call(ev.index)  # a reused index starts a new call
        item = _Item("function_call", new_id("fc"), len(self._items), call_id=ev.id, name=ev.name)
        item.signature = ev.signature
        self._items.append(item)
        self._calls[ev.index] = item
        added = call_item(item.id, _fold(ev.id, ev.signature), ev.name, "", "in_progress")
        return out + self._event("response.output_item.added", {"output_index": item.index, "item": added})

    def _call_delta(self, index: int, fragment: str) -> bytes:
        item = self._calls.get(index)
        if item is None:
            return b""  # arguments for a call that never started: nothing a client could place them in
        item.text.append(fragment)
        fields = {"item_id": item.id, "output_index": item.index, "delta": fragment}
        return self._event("response.function_call_arguments.delta", fields)

    def _close_call(self, index: int) -> bytes:
        item = self._calls.pop(index, None)
        if item is None:
            return b""
        args = "".join(item.text)
        item.done = call_item(item.id, _fold(item.call_id, item.signature), item.name, args)
        fields = {"item_id": item.id, "output_index": item.index, "name": item.name, "arguments": args}
        out = self._event("response.function_call_arguments.done", fields)
        return out + self._event("response.output_item.done", {"output_index": item.index, "item": item.done})

    def _stop(self, finish: ir.FinishReason) -> bytes:
        out = self._close_open()
        for index in sorted(self._calls, key=lambda i: self._calls[i].index):
            out += self._close_call(index)
        self._closed = self.answered = True
        status = status_of(finish)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, {"response": self._response(status, finish)})


def _fold(call_id: str, signature: str | None) -> str:
    """A Gemini thoughtSignature rides in the call id, the field a client echoes back."""
    if not signature or signature.replace("+", "-").replace("/", "_").rstrip("=") in call_id:
        return call_id
    return f"{call_id}~{signature}"
