"""OpenAI Chat Completions wire vocabulary: usage, finish reasons, ids, the error shape, ``[DONE]``.

The unary codec (``openai_chat`` and its request modules) and the streams (``openai_chat_stream``,
``openai_chat_stream_encode``) all need these; this is the lowest of the OpenAI modules and imports
none of them.
"""

from __future__ import annotations

import secrets
from typing import Any

from relayproxy import ir
from relayproxy.codecs.shared import MINIMAX_STATUS, count
from relayproxy.codecs.shared import openai_error as encode_error
from relayproxy.errors import RelayError

__all__ = [
    "DONE",
    "DONE_EVENT",
    "TOOL_CHOICES",
    "chat_id",
    "decode_finish",
    "decode_usage",
    "encode_error",
    "encode_usage",
    "fold_signature",
    "minimax_error",
    "reasoning_texts",
    "stream_error_body",
    "synth_call_id",
]

DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
TOOL_CHOICES = ("none", "auto", "required")  # the tool_choice words

_FINISH = {
    "stop": ir.FinishReason.STOP,
    "length": ir.FinishReason.LENGTH,
    "tool_calls": ir.FinishReason.TOOL_CALLS,
    "function_call": ir.FinishReason.TOOL_CALLS,  # legacy
    "content_filter": ir.FinishReason.CONTENT_FILTER,
    # DeepSeek: generation was cut off by the provider; the answer is truncated, as with "length".
    "insufficient_system_resource": ir.FinishReason.LENGTH,
}


# -- wire vocabulary shared with the unary side: usage, finish reasons, ids, errors ---------------


def decode_usage(usage: Any) -> ir.Usage | None:
    """OpenAI usage (and its DeepSeek/Moonshot variants) -> normalised Usage; None if absent."""
    if not isinstance(usage, dict):
        return None
    prompt = count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    # Moonshot puts cached_tokens at the top level; DeepSeek reports prompt_cache_hit_tokens.
    cached = cached or count(usage.get("cached_tokens")) or count(usage.get("prompt_cache_hit_tokens"))
    out_details = usage.get("completion_tokens_details")
    reasoning = count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    return ir.Usage(prompt, min(cached, prompt), count(usage.get("completion_tokens")), reasoning)


def encode_usage(usage: ir.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def decode_finish(reason: Any) -> ir.FinishReason | None:
    """An upstream ``finish_reason`` -> IR; None when absent. Unknown words count as STOP."""
    if not isinstance(reason, str) or not reason:
        return None
    return _FINISH.get(reason, ir.FinishReason.STOP)


def reasoning_texts(fields: dict[str, Any]) -> list[str]:
    """Reasoning text of a message or delta: DeepSeek/Kimi ``reasoning_content``, vLLM/OpenRouter
    ``reasoning``, MiniMax ``reasoning_details[].text`` (the first one present: OpenRouter sends
    ``reasoning`` and ``reasoning_details`` with the same text, which must not be doubled)."""
    for key in ("reasoning_content", "reasoning"):
        text = fields.get(key)
        if isinstance(text, str) and text:
            return [text]
    details = fields.get("reasoning_details")
    if not isinstance(details, list):
        return []
    return [d["text"] for d in details if isinstance(d, dict) and isinstance(d.get("text"), str) and d["text"]]


def minimax_error(body: dict[str, Any]) -> tuple[int, str] | None:
    """MiniMax reports errors as ``base_resp.status_code != 0`` inside an HTTP 200 body or chunk."""
    base = body.get("base_resp")
    code = base.get("status_code") if isinstance(base, dict) else None
    if not isinstance(code, int) or isinstance(code, bool) or code == 0 or not isinstance(base, dict):
        return None
    return MINIMAX_STATUS.get(code, 502), str(base.get("status_msg") or f"upstream error {code}")


def chat_id(upstream_id: str) -> str:
    """The ``chatcmpl-`` id an OpenAI client sees for an upstream message id."""
    if upstream_id.startswith("chatcmpl-"):
        return upstream_id
    return "chatcmpl-" + (upstream_id or secrets.token_hex(12))


def synth_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def fold_signature(call_id: str, signature: str | None) -> str:
    """Carry a Gemini thoughtSignature inside the call id, the only field an OpenAI client echoes.
    Example failure prevented: Gemini 3 rejects a replayed functionCall without its signature."""
    if not signature or signature.replace("+", "-").replace("/", "_").rstrip("=") in call_id:
        return call_id  # already inside (the Gemini codec's own ids carry it): folding twice only adds bytes
    return f"{call_id}~{signature}"


def stream_error_body(err: RelayError) -> dict[str, Any]:
    """The error object of an in-band stream error; 5xx read as ``server_error``, as OpenAI sends."""
    _, body = encode_error(err)
    body["error"]["type"] = "server_error" if err.status >= 500 else body["error"]["type"]
    return body
