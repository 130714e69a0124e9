"""Gemini stream encoder: IR stream events -> GenerateContentResponse chunks for a Gemini client.

``GeminiStreamEncoder`` writes for google-genai's strict parser (protocols.md §4.4): ``data: `` with
the space, CRLF, never a comment, ``event:`` line or ``[DONE]``; keep-alive is a bare CRLF; an
in-band error is ``{"error": {...}}`` with ``error`` the first key. Tool calls are buffered and sent
complete in the final chunk, whatever order the upstream protocol produced them in. Without
``alt=sse`` a client gets the JSON-array framing of §4.5 instead: ``[`` object ``,\\r\\n`` object
... ``]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs.gemini_generate._vocab import (
    call_part,
    client_signature,
    encode_finish,
    encode_usage,
    error_body,
    error_status,
    status_name,
)
from relayproxy.codecs.shared import arguments_object
from relayproxy.errors import RelayError

__all__ = ["GeminiStreamEncoder"]

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
        self.answered = False  # the finishReason chunk (with usageMetadata) went out
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
            if not show:
                return b""
            return self._chunk([{"text": "", "thought": True, "thoughtSignature": client_signature(ev.signature)}])
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
            error = {"code": status, "message": ev.message, "status": status_name(status, ev.type)}
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
        self._stopped = self.answered = True
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
