"""Per-protocol codecs: pure functions over dicts and SSE events. One codec module per wire API.

Every codec module has the same public names, checked against ``Codec`` below (mypy checks the
registry). Direction is in the verb: ``decode_*`` is wire -> IR, ``encode_*`` is IR -> wire.
A codec is a package (``openai_chat``, ``anthropic_messages``, ``gemini_generate``) whose
``__init__`` holds responses and the entry points and re-exports the rest from its private
modules: ``_request_decode`` and ``_request_encode`` (requests), ``_stream_decode`` (upstream
stream decoder, passthrough tap), ``_stream_encode`` (client stream encoder) and ``_vocab`` (the
wire vocabulary all of them share). Codecs never import each other; they share only ``ir``, ``sse``, ``errors``
and ``codecs.shared``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from relayproxy import ir
from relayproxy.errors import RelayError, UpstreamStatusError
from relayproxy.sse import SSEEvent

__all__ = ["PROTOCOLS", "Codec", "StreamDecoder", "StreamEncoder", "StreamTap", "UpstreamCall"]

PROTOCOLS = ("openai", "anthropic", "gemini")


@dataclass(slots=True)
class UpstreamCall:
    """What to send upstream, minus the auth header: a path relative to the provider's
    ``base_url``, a JSON body, and protocol headers (e.g. ``anthropic-version``)."""

    path: str
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class StreamDecoder(Protocol):
    """Upstream SSE events -> IR stream events. Per-stream state lives in its fields.

    ``MessageStop`` comes at the point where the protocol's answer is complete (the codec's
    ``answer_complete``), which may be before the stream's closing framing; ``done`` turns true when
    nothing more is owed (that framing was seen, or the protocol has none, or ``close``)."""

    done: bool

    def feed(self, ev: SSEEvent) -> list[ir.StreamEvent]: ...

    def close(self) -> list[ir.StreamEvent]:
        """The upstream body ended: events that only the end completes (Gemini's MessageStop)."""
        ...


class StreamEncoder(Protocol):
    """IR stream events -> bytes for the client, in the client's protocol and framing."""

    #: The bytes returned so far hold the client's whole answer (written with MessageStop: OpenAI's
    #: finish and usage chunks, Anthropic's ``message_delta``, Gemini's finishReason chunk with its
    #: usageMetadata, ``response.completed``); any framing after it is not part of the answer.
    answered: bool

    def encode(self, ev: ir.StreamEvent) -> bytes: ...

    def error(self, err: RelayError) -> bytes:
        """An in-band error for a stream whose headers went out; nothing may follow it."""
        ...

    def ping(self) -> bytes:
        """A keep-alive that this protocol's SDK ignores safely."""
        ...

    def finish(self) -> bytes:
        """Bytes that close the framing after the last event (Gemini's JSON-array ``]``), else b""."""
        ...


class StreamTap(Protocol):
    """Reads a same-protocol stream that passes through untouched (usage, terminator, error)."""

    usage: ir.Usage | None
    done: bool  # the stream's closing framing (or, without one, its end) was seen
    answered: bool  # the events passed on so far hold the whole answer (the codec's answer_complete)
    error: dict[str, Any] | None

    def feed(self, ev: SSEEvent) -> bool | bytes:
        """Look at one event: True passes it on as it is, False keeps it from the client, and
        bytes (a whole event, blank line included) go to the client in its place."""
        ...

    def close(self) -> bytes:
        """The upstream body ended cleanly: when the answer is complete without its closing framing
        (OpenAI's EOF after the finish and usage chunks, no ``[DONE]``), set ``done`` and return the
        terminator owed to the client; else b"" (the stream stays incomplete)."""
        ...


class Codec(Protocol):
    """The shape of a codec module (``relayproxy.codecs.openai_chat``, ``anthropic_messages``, ``gemini_generate``)."""

    def decode_request(self, body: Any, *, model: str | None = ..., stream: bool | None = ...) -> ir.ChatRequest: ...

    def encode_request(self, req: ir.ChatRequest, upstream_model: str) -> UpstreamCall: ...

    def prepare_passthrough(self, body: dict[str, Any], req: ir.ChatRequest, upstream_model: str) -> UpstreamCall: ...

    def auth_headers(self, api_key: str) -> list[tuple[bytes, bytes]]: ...

    def caller_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The caller's protocol headers a same-protocol passthrough forwards (Anthropic's
        ``anthropic-version`` and ``anthropic-beta``), replacing the call's own of the same name."""
        ...

    def decode_response(self, body: Any) -> ir.ChatResponse: ...

    def encode_response(self, resp: ir.ChatResponse, model: str) -> dict[str, Any]: ...

    def response_usage(self, body: Any) -> ir.Usage | None: ...

    def decode_error(self, status: int, body: bytes, retry_after: str | None) -> UpstreamStatusError: ...

    def embedded_error(self, body: Any) -> UpstreamStatusError | None: ...

    def encode_error(self, err: RelayError) -> tuple[int, dict[str, Any]]: ...

    def stream_decoder(self) -> StreamDecoder: ...

    def stream_encoder(self, req: ir.ChatRequest, model: str, *, sse: bool = ...) -> StreamEncoder: ...

    def stream_tap(self, req: ir.ChatRequest) -> StreamTap: ...

    def encode_count_request(self, req: ir.ChatRequest, upstream_model: str) -> UpstreamCall | None:
        """The upstream token-count call, or None when this protocol cannot count (OpenAI)."""
        ...

    def prepare_count_passthrough(self, body: dict[str, Any], upstream_model: str) -> UpstreamCall | None:
        """A same-protocol token count: the caller's own body (the upstream model named), or None
        when this protocol has no count endpoint of its own to pass it to (then it is translated)."""
        ...

    def decode_count_response(self, body: Any) -> int: ...

    def encode_count_response(self, tokens: int) -> dict[str, Any]: ...
