"""OpenAI Chat Completions codec: responses, errors, usage; requests and streams in sibling modules.

Theory of operation
-------------------
Pure: dicts and SSE events in, dicts and bytes out. The same code serves OpenAI itself and the
OpenAI-protocol providers (DeepSeek, Moonshot/Kimi, MiniMax); their quirks sit behind named
functions here and in the stream module (protocols.md §9).

Requests. Decoding (client -> IR) lives in ``openai_chat_request_decode``, encoding (IR -> upstream)
in ``openai_chat_request_encode``; streams in ``openai_chat_stream`` and ``openai_chat_stream_encode``;
the wire vocabulary all of them share in ``openai_chat_vocab``. This module re-exports the names the
registry (and the gateway) use, so a codec is still one module to its callers.

Ids. A Gemini ``thoughtSignature`` rides inside the call id (``call_x~<sig>``) towards an OpenAI
client and is split off again when the client replays it (``fold_signature`` in ``openai_chat_vocab``,
``_unfold`` in ``openai_chat_request_decode``).

Responses. A refusal is treated as text (it is what the model said; every client can show it).
MiniMax's inline ``<think>…</think>`` reasoning stays in the text: splitting it is guesswork that
would corrupt answers which merely mention the tag. ``created`` is 0: codecs have no clock.
"""

from __future__ import annotations

from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs import UpstreamCall
from relayproxy.codecs.openai_chat._request_decode import RequestInfo, check_request, decode_arguments, decode_request
from relayproxy.codecs.openai_chat._request_encode import CHAT_PATH as CHAT_PATH
from relayproxy.codecs.openai_chat._request_encode import encode_call, encode_request, prepare_passthrough
from relayproxy.codecs.openai_chat._stream_decode import ChatStreamDecoder, StreamTap
from relayproxy.codecs.openai_chat._stream_encode import ChatStreamEncoder
from relayproxy.codecs.openai_chat._vocab import (
    DONE,
    chat_id,
    decode_finish,
    decode_usage,
    encode_error,
    encode_usage,
    minimax_error,
    reasoning_texts,
    synth_call_id,
)
from relayproxy.errors import UpstreamProtocolError, UpstreamStatusError

__all__ = [
    "DONE",
    "RequestInfo",
    "StreamTap",
    "auth_headers",
    "caller_headers",
    "check_request",
    "decode_count_response",
    "decode_error",
    "decode_request",
    "decode_response",
    "decode_usage",
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


def caller_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return []  # no caller header changes what this protocol's upstream does


def auth_headers(api_key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + api_key.encode())]


# -- responses ------------------------------------------------------------------------------------


def decode_response(body: Any) -> ir.ChatResponse:
    """An upstream chat.completion body -> IR; UpstreamProtocolError if it is not one."""
    choices = body.get("choices") if isinstance(body, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(body, dict) or not isinstance(choice, dict) or not isinstance(message, dict):
        raise UpstreamProtocolError("The upstream answered with a body that is not a chat completion.")
    parts = _response_parts(message)
    finish = decode_finish(choice.get("finish_reason")) or ir.FinishReason.STOP
    if finish is ir.FinishReason.STOP and any(isinstance(p, ir.ToolCall) for p in parts):
        finish = ir.FinishReason.TOOL_CALLS  # OpenAI says "stop" when tool_choice forced the call
    rid, model = body.get("id"), body.get("model")
    rid = rid if isinstance(rid, str) and rid else chat_id("")
    return ir.ChatResponse(rid, model if isinstance(model, str) else "", parts, finish, response_usage(body))


def _response_parts(message: dict[str, Any]) -> list[ir.Part]:
    parts: list[ir.Part] = [ir.Thinking(t) for t in reasoning_texts(message)]
    content = message.get("content")
    if isinstance(content, list):  # some compatible providers answer with text parts
        content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    parts += [ir.Text(t) for t in (content, message.get("refusal")) if isinstance(t, str) and t]
    calls = message.get("tool_calls")
    legacy = message.get("function_call")
    raw_calls = [*(calls if isinstance(calls, list) else ()), *([legacy] if isinstance(legacy, dict) else ())]
    parts += [_response_call(call) for call in raw_calls if isinstance(call, dict)]
    return parts


def _response_call(call: dict[str, Any]) -> ir.ToolCall:
    """A call from an upstream (lenient: an upstream's mistakes are not the client's fault)."""
    fn = call.get("function", call)  # a legacy function_call is the function object itself
    fn = fn if isinstance(fn, dict) else {}
    call_id, name, args = call.get("id"), fn.get("name"), fn.get("arguments")
    if not isinstance(args, str | dict | None):
        args = orjson.dumps(args).decode()
    return ir.ToolCall(
        call_id if isinstance(call_id, str) and call_id else synth_call_id(),
        name if isinstance(name, str) else "",
        decode_arguments(args, "arguments"),
    )


def encode_response(resp: ir.ChatResponse, model: str) -> dict[str, Any]:
    """IR -> a chat.completion object. Unknown usage is written as zeros (clients read it blindly)."""
    texts = [p.text for p in resp.parts if isinstance(p, ir.Text)]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    calls = [encode_call(p, fold=True) for p in resp.parts if isinstance(p, ir.ToolCall)]
    if calls:
        message["tool_calls"] = calls
    thinking = [p.text for p in resp.parts if isinstance(p, ir.Thinking) and p.text]
    if thinking:
        message["reasoning_content"] = "".join(thinking)  # non-standard; the SDK keeps it as an extra
    return {
        "id": chat_id(resp.id),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": resp.finish.value}],
        "usage": encode_usage(resp.usage or ir.Usage()),
    }


def response_usage(body: Any) -> ir.Usage | None:
    """Usage of a unary response: top level, or inside choices[0] (Moonshot)."""
    if not isinstance(body, dict):
        return None
    usage = decode_usage(body.get("usage"))
    if usage is None:
        choices = body.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            usage = decode_usage(choices[0].get("usage"))
    return usage


# -- errors ---------------------------------------------------------------------------------------


def decode_error(status: int, body: bytes, retry_after: str | None) -> UpstreamStatusError:
    """An upstream error response -> UpstreamStatusError keeping the upstream's message and type."""
    message, etype = _error_fields(body)
    text = message or f"upstream returned HTTP {status}"
    return UpstreamStatusError(status, text, upstream_type=etype, retry_after=retry_after)


def _error_fields(body: bytes) -> tuple[str | None, str | None]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message, etype = err.get("message"), err.get("type")
        return (message if isinstance(message, str) else None, etype if isinstance(etype, str) else None)
    if isinstance(data, dict) and isinstance(data.get("base_resp"), dict):  # MiniMax
        msg = data["base_resp"].get("status_msg")
        return (msg if isinstance(msg, str) else None, None)
    return None, None


def embedded_error(body: Any) -> UpstreamStatusError | None:
    """An error carried in an HTTP 200 body (MiniMax ``base_resp``, a bare ``error``), or None."""
    if not isinstance(body, dict):
        return None
    found = minimax_error(body)
    if found is not None:
        return UpstreamStatusError(found[0], found[1])
    err = body.get("error")
    if isinstance(err, dict) and "choices" not in body:
        return UpstreamStatusError(502, str(err.get("message") or "upstream error"), upstream_type=None)
    return None


# -- streams and token counting ------------------------------------------------------------------


def stream_decoder() -> ChatStreamDecoder:
    return ChatStreamDecoder()


def stream_encoder(req: ir.ChatRequest, model: str, *, sse: bool = True) -> ChatStreamEncoder:
    """OpenAI streams are always SSE; ``sse`` exists for Gemini's JSON-array framing and is ignored."""
    return ChatStreamEncoder(req, model)


def stream_tap(req: ir.ChatRequest) -> StreamTap:
    return StreamTap(client_wants_usage=req.include_usage)


def prepare_count_passthrough(body: dict[str, Any], upstream_model: str) -> UpstreamCall | None:
    """None: OpenAI Chat has no count endpoint."""
    return None


def encode_count_request(req: ir.ChatRequest, upstream_model: str) -> UpstreamCall | None:
    """OpenAI has no token-count endpoint: the gateway must count (or refuse) itself."""
    return None


def decode_count_response(body: Any) -> int:
    raise UpstreamProtocolError("OpenAI-protocol upstreams have no token-count endpoint.")


def encode_count_response(tokens: int) -> dict[str, Any]:
    """Nothing standard exists in OpenAI's protocol; this mirrors Anthropic's count_tokens answer."""
    return {"object": "count", "input_tokens": tokens}
