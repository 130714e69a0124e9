"""OpenAI Responses codec (``POST /v1/responses``): a client protocol only.

Theory of operation
-------------------
Pure: dicts and SSE events in, dicts and bytes out. Requests decode to the canonical model
(``_request_decode``), responses and streams encode from it (here and in ``_stream_encode``); the
wire vocabulary (ids, usage, output items, the Response object, errors) is in ``_vocab``.
Stateless: nothing is stored, ``previous_response_id`` gets a 400.

Upstream, this protocol is only a passthrough: a Responses client whose model is served by an
OpenAI provider with ``responses = true`` is sent to its ``/responses`` as it came (``_upstream``:
the call, the tap reading ``response.completed``, usage, errors; and a token count, passed to its
``/responses/input_tokens``). Nothing is ever translated *to* Responses, so ``encode_request``,
``decode_response``, the stream decoder and ``encode_count_request`` are never planned; they raise
``UpstreamProtocolError`` naming the cause, should a future router reach them.

Ids. A Gemini ``thoughtSignature`` rides inside ``call_id`` (``call_x~<sig>``) and is split off when
the client replays the function_call; an Anthropic thinking signature rides in a reasoning item's
``encrypted_content``.
"""

from __future__ import annotations

from typing import Any, NoReturn

import orjson

from relayproxy import ir
from relayproxy.codecs import UpstreamCall
from relayproxy.codecs.openai_responses._request_decode import decode_request
from relayproxy.codecs.openai_responses._stream_encode import ResponsesStreamEncoder
from relayproxy.codecs.openai_responses._upstream import (
    ResponsesTap,
    decode_count_response,
    decode_error,
    decode_usage,
    embedded_error,
    prepare_count_passthrough,
)
from relayproxy.codecs.openai_responses._upstream import prepare_passthrough as _prepare_passthrough
from relayproxy.codecs.openai_responses._vocab import (
    call_item,
    encode_error,
    message_item,
    new_id,
    reasoning_item,
    response_id,
    response_object,
    status_of,
)
from relayproxy.errors import UpstreamProtocolError
from relayproxy.sse import SSEEvent

__all__ = [
    "auth_headers",
    "caller_headers",
    "decode_count_response",
    "decode_error",
    "decode_request",
    "decode_response",
    "embedded_error",
    "encode_count_request",
    "encode_count_response",
    "encode_error",
    "encode_request",
    "encode_response",
    "prepare_count_passthrough",
    "prepare_passthrough",
    "response_usage",
    "stream_decoder",
    "stream_encoder",
    "stream_tap",
]


def encode_response(resp: ir.ChatResponse, model: str) -> dict[str, Any]:
    """IR -> a Response object. Unknown usage is written as zeros (clients read it blindly). The
    request is not known here, so ``tools`` is written as [] and ``tool_choice`` as "auto"."""
    output: list[dict[str, Any]] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            output.append(message_item(new_id("msg"), "".join(text)))
            text.clear()

    for part in resp.parts:
        if isinstance(part, ir.Text):
            text.append(part.text)
            continue
        flush()
        if isinstance(part, ir.Thinking):
            output.append(reasoning_item(new_id("rs"), part.text, part.signature))
        elif isinstance(part, ir.ToolCall):
            args = _arguments(part.arguments)
            output.append(call_item(new_id("fc"), _fold(part.id, part.signature), part.name, args))
    flush()
    status = status_of(resp.finish)
    usage = resp.usage or ir.Usage()
    return response_object(response_id(resp.id), model, None, output, status=status, usage=usage, finish=resp.finish)


def _arguments(arguments: dict[str, Any]) -> str:
    raw = arguments.get("_raw") if len(arguments) == 1 else None
    return raw if isinstance(raw, str) else orjson.dumps(arguments).decode()


def _fold(call_id: str, signature: str | None) -> str:
    if not signature or signature.replace("+", "-").replace("/", "_").rstrip("=") in call_id:
        return call_id
    return f"{call_id}~{signature}"


def stream_encoder(req: ir.ChatRequest, model: str, *, sse: bool = True) -> ResponsesStreamEncoder:
    """Responses streams are always SSE; ``sse`` exists for Gemini's JSON-array framing and is ignored."""
    return ResponsesStreamEncoder(req, model)


def encode_count_response(tokens: int) -> dict[str, Any]:
    """OpenAI's ``/v1/responses/input_tokens`` answer shape."""
    return {"object": "response.input_tokens", "input_tokens": tokens}


# -- the upstream half: a passthrough only --------------------------------------------------------


def _not_upstream() -> NoReturn:
    raise UpstreamProtocolError("openai_responses is a client protocol only; no provider is reached with it.")


def caller_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return []  # no caller header changes what this protocol's upstream does


def auth_headers(api_key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + api_key.encode())]


def encode_request(req: ir.ChatRequest, upstream_model: str) -> UpstreamCall:
    _not_upstream()


def prepare_passthrough(body: dict[str, Any], req: ir.ChatRequest, upstream_model: str) -> UpstreamCall:
    return _prepare_passthrough(body, upstream_model)


def decode_response(body: Any) -> ir.ChatResponse:
    _not_upstream()


def response_usage(body: Any) -> ir.Usage | None:
    return decode_usage(body.get("usage")) if isinstance(body, dict) else None


def encode_count_request(req: ir.ChatRequest, upstream_model: str) -> UpstreamCall | None:
    _not_upstream()


class _NoDecoder:
    done: bool = False

    def feed(self, ev: SSEEvent) -> list[ir.StreamEvent]:
        _not_upstream()

    def close(self) -> list[ir.StreamEvent]:
        _not_upstream()


def stream_decoder() -> _NoDecoder:
    _not_upstream()


def stream_tap(req: ir.ChatRequest) -> ResponsesTap:
    return ResponsesTap()
