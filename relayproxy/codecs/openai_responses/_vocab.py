"""OpenAI Responses wire vocabulary: ids, usage, the error shape. The lowest module of this codec."""

from __future__ import annotations

import secrets
from typing import Any

from relayproxy import ir
from relayproxy.codecs.shared import openai_error as encode_error

__all__ = [
    "EFFORTS",
    "call_item",
    "encode_error",
    "encode_usage",
    "message_item",
    "new_id",
    "reasoning_item",
    "response_id",
    "response_object",
    "status_of",
    "text_part",
]

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def response_id(upstream_id: str) -> str:
    """The ``resp_`` id a Responses client sees for an upstream message id."""
    return upstream_id if upstream_id.startswith("resp_") else "resp_" + (upstream_id or secrets.token_hex(12))


def encode_usage(usage: ir.Usage) -> dict[str, Any]:
    """ResponseUsage; both details objects are always present (Codex reads reasoning_tokens)."""
    return {
        "input_tokens": usage.input_tokens,
        # cache writes are not in the canonical usage: 0 (the SDK's type requires the field)
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


# -- output items and the Response object ---------------------------------------------------------


def message_item(item_id: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    """An assistant message item; ``text`` None: the item as first announced, with no part yet."""
    content = [] if text is None else [text_part(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def reasoning_item(item_id: str, text: str | None, signature: str | None = None) -> dict[str, Any]:
    """A reasoning item; the upstream's thinking signature rides in ``encrypted_content`` (the
    field clients replay), so an Anthropic upstream gets it back on the next turn."""
    item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
    if text:
        item["summary"] = [{"type": "summary_text", "text": text}]
    if signature:
        item["encrypted_content"] = signature
    return item


def response_object(
    rid: str,
    model: str,
    req: ir.ChatRequest | None,
    output: list[dict[str, Any]],
    *,
    status: str,
    usage: ir.Usage | None = None,
    finish: ir.FinishReason | None = None,
) -> dict[str, Any]:
    """The Response object with every field the SDK types require. ``created_at`` is 0: codecs
    have no clock."""
    incomplete = None
    if status == "incomplete":
        reason = "content_filter" if finish is ir.FinishReason.CONTENT_FILTER else "max_output_tokens"
        incomplete = {"reason": reason}
    choice = req.tool_choice if req is not None else None
    return {
        "id": rid,
        "object": "response",
        "created_at": 0,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": None,
        "max_output_tokens": req.max_output_tokens if req is not None else None,
        "model": model,
        "output": output,
        "parallel_tool_calls": not (choice is not None and choice.parallel is False),
        "previous_response_id": None,
        "reasoning": {"effort": req.reasoning.effort if req and req.reasoning else None, "summary": None},
        "store": False,
        "temperature": req.temperature if req is not None else None,
        "text": {"format": {"type": "text"}},
        "tool_choice": _tool_choice(choice),
        "tools": [_tool(t) for t in req.tools] if req is not None else [],
        "top_p": req.top_p if req is not None else None,
        "truncation": "disabled",
        "usage": encode_usage(usage) if usage is not None else None,
        "metadata": {},
    }


def _tool_choice(choice: ir.ToolChoice | None) -> Any:
    if choice is None:
        return "auto"
    if choice.mode == "tool":
        return {"type": "function", "name": choice.name}
    return choice.mode


def _tool(tool: ir.Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": False,
    }


def status_of(finish: ir.FinishReason) -> str:
    """A Response's status for an IR finish reason."""
    return "incomplete" if finish in (ir.FinishReason.LENGTH, ir.FinishReason.CONTENT_FILTER) else "completed"
