"""Anthropic Messages (``POST /v1/messages``): requests, responses, errors, token counts.

Theory of operation
-------------------
Requests are decoded (client -> IR) in ``anthropic_messages_request_decode`` and encoded (IR ->
upstream) in ``anthropic_messages_request_encode``; this module re-exports what the registry uses.

Responses and usage map field by field (protocols.md §3, §7). The stream classes live in
``anthropic_messages_stream`` (decoder, tap) and ``anthropic_messages_stream_encode`` (encoder); the
error envelopes (§6) and the vocabulary all these modules share in ``anthropic_messages_vocab``.
"""

from __future__ import annotations

from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs import UpstreamCall
from relayproxy.codecs.anthropic_messages._request_decode import decode_request
from relayproxy.codecs.anthropic_messages._request_encode import (
    DEFAULT_MAX_TOKENS,
    VERSION,
    encode_request,
    prepare_passthrough,
    request_body,
)
from relayproxy.codecs.anthropic_messages._stream_decode import AnthropicStreamDecoder, AnthropicStreamTap
from relayproxy.codecs.anthropic_messages._stream_encode import AnthropicStreamEncoder
from relayproxy.codecs.anthropic_messages._vocab import (
    decode_error,
    decode_usage,
    embedded_error,
    encode_error,
    encode_usage,
    finish_reason,
    fold_call_id,
    message_id,
    stop_reason,
)
from relayproxy.codecs.shared import is_int, str_or_empty
from relayproxy.errors import UpstreamProtocolError

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicStreamDecoder",
    "AnthropicStreamEncoder",
    "AnthropicStreamTap",
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

_CALLER_HEADERS = frozenset({b"anthropic-version", b"anthropic-beta"})
_COUNT_PATH = "/v1/messages/count_tokens"
_COUNT_KEYS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "output_config")


def auth_headers(api_key: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-api-key", api_key.encode())]


def caller_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The caller's ``anthropic-version`` and ``anthropic-beta`` (every value, in order): on a
    passthrough the upstream gets the client's own body, so it must read it under the same
    version and betas (Claude Code's context management, interleaved thinking, 1M context...)."""
    return [(k, v) for k, v in headers if k in _CALLER_HEADERS]


# -- responses -----------------------------------------------------------------------------------


def decode_response(body: Any) -> ir.ChatResponse:
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise UpstreamProtocolError("the Anthropic upstream answered without a message content array")
    parts = [p for block in body["content"] if (p := _response_part(block)) is not None]
    sequence = body.get("stop_sequence")
    return ir.ChatResponse(
        id=str_or_empty(body.get("id")),
        model=str_or_empty(body.get("model")),
        parts=parts,
        finish=finish_reason(body.get("stop_reason")),
        usage=decode_usage(body.get("usage")),
        stop_sequence=sequence if isinstance(sequence, str) else None,
    )


def _response_part(block: Any) -> ir.Part | None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        return ir.Text(str_or_empty(block.get("text")))
    if kind == "thinking":
        return ir.Thinking(str_or_empty(block.get("thinking")), str_or_empty(block.get("signature")) or None)
    if kind == "redacted_thinking":
        return ir.Thinking("", redacted=str_or_empty(block.get("data")))
    if kind == "tool_use":
        arguments = block.get("input")
        arguments = arguments if isinstance(arguments, dict) else {}
        return ir.ToolCall(str_or_empty(block.get("id")), str_or_empty(block.get("name")), arguments)
    return None  # server-tool blocks and future kinds


def encode_response(resp: ir.ChatResponse, model: str) -> dict[str, Any]:
    reason = stop_reason(resp.finish, resp.stop_sequence)
    return {
        "id": message_id(resp.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [b for part in resp.parts if (b := _response_block(part)) is not None],
        "stop_reason": reason,
        "stop_sequence": resp.stop_sequence if reason == "stop_sequence" else None,
        "usage": encode_usage(resp.usage),
    }


def _response_block(part: ir.Part) -> dict[str, Any] | None:
    if isinstance(part, ir.Text):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, ir.Thinking):
        if part.redacted:
            return {"type": "redacted_thinking", "data": part.redacted}
        return {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}
    if isinstance(part, ir.ToolCall):
        call_id = fold_call_id(part.id, part.signature)
        return {"type": "tool_use", "id": call_id, "name": part.name, "input": part.arguments}
    return None


def response_usage(body: Any) -> ir.Usage | None:
    return decode_usage(body.get("usage")) if isinstance(body, dict) else None


# -- streams -------------------------------------------------------------------------------------


def stream_decoder() -> AnthropicStreamDecoder:
    return AnthropicStreamDecoder()


def stream_encoder(req: ir.ChatRequest, model: str, *, sse: bool = True) -> AnthropicStreamEncoder:
    """Anthropic streams are always SSE. Reasoning from the upstream reaches the client as thinking
    blocks only if the client asked for thinking (it may not expect them otherwise)."""
    return AnthropicStreamEncoder(model, show_thinking=bool(req.reasoning and req.reasoning.include_thoughts))


def stream_tap(req: ir.ChatRequest) -> AnthropicStreamTap:
    return AnthropicStreamTap()


# -- token counting ------------------------------------------------------------------------------


def encode_count_request(req: ir.ChatRequest, upstream_model: str) -> UpstreamCall | None:
    """``/v1/messages/count_tokens`` takes the messages body without max_tokens, stream and the
    sampling fields (it rejects fields it does not define), so only its own keys are kept."""
    body = request_body(req, upstream_model)
    count = {key: body[key] for key in _COUNT_KEYS if key in body}
    return UpstreamCall(_COUNT_PATH, orjson.dumps(count), [VERSION])


def prepare_count_passthrough(body: dict[str, Any], upstream_model: str) -> UpstreamCall | None:
    """The caller's count_tokens body as it came (tools, thinking, cache_control and fields this
    codec does not model included), with the upstream's model name."""
    return UpstreamCall(_COUNT_PATH, orjson.dumps({**body, "model": upstream_model}), [VERSION])


def decode_count_response(body: Any) -> int:
    tokens = body.get("input_tokens") if isinstance(body, dict) else None
    if not is_int(tokens) or tokens < 0:
        raise UpstreamProtocolError("the Anthropic upstream's count_tokens answer has no input_tokens")
    return int(tokens)


def encode_count_response(tokens: int) -> dict[str, Any]:
    return {"input_tokens": tokens}
