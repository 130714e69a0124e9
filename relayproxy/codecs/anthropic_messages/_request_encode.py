"""Anthropic Messages requests, IR -> upstream: ``encode_request``, ``prepare_passthrough``.

``encode_request`` builds an Anthropic upstream body from IR and applies the rules the API
enforces that other protocols do not: tool results first in their user turn, alternating roles
starting with ``user``, no empty or whitespace-only text, no trailing whitespace in a final
assistant prefill, tool-use ids in ``[A-Za-z0-9_-]``, an object ``input_schema``, tools declared
whenever the history holds tool calls, ``max_tokens`` always present and above the thinking
budget, temperature within 0..1, and no sampling parameters next to thinking.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs import UpstreamCall
from relayproxy.codecs.anthropic_messages._vocab import PDF, empty_schema
from relayproxy.errors import InvalidRequest

__all__ = ["DEFAULT_MAX_TOKENS", "VERSION", "encode_request", "prepare_passthrough", "request_body"]

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI and Gemini requests may have none
VERSION = (b"anthropic-version", b"2023-06-01")
_MESSAGES_PATH = "/v1/messages"
# No official effort -> budget table exists (protocols.md §7.5); "none" turns thinking off.
_EFFORT_BUDGET = {"none": 0, "minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 24576, "max": 24576}
_MIN_BUDGET = 1024
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_ID_OK = re.compile(r"[A-Za-z0-9_-]+")
_ID_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")


# -- requests: encode ----------------------------------------------------------------------------


def encode_request(req: ir.ChatRequest, upstream_model: str) -> UpstreamCall:
    body = request_body(req, upstream_model)
    if req.stream:
        body["stream"] = True
    return UpstreamCall(_MESSAGES_PATH, orjson.dumps(body), [VERSION])


def request_body(req: ir.ChatRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": req.max_output_tokens or DEFAULT_MAX_TOKENS,
        "messages": _encode_messages(req.messages),
    }
    if req.system:
        body["system"] = req.system
    _encode_tools(req, body)
    _encode_sampling(req, body)
    _encode_thinking(req.reasoning, body)  # last: it may drop sampling fields and raise max_tokens
    if req.json_schema is not None:
        body["output_config"] = {"format": {"type": "json_schema", "schema": req.json_schema}}
    if req.user:
        body["metadata"] = {"user_id": req.user}
    return body


def _encode_messages(messages: list[ir.Message]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for msg in messages:
        blocks = [b for part in msg.parts if (b := _encode_part(part)) is not None]
        if not blocks:
            continue  # Example failure prevented: 400 "all messages must have non-empty content"
        if turns and turns[-1]["role"] == msg.role:
            turns[-1]["content"] += blocks  # the API wants alternating roles
        else:
            turns.append({"role": msg.role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":  # tool results must come before any other block of their turn
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    _trim_prefill(turns)
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": "(continue)"}]})
    return turns


def _trim_prefill(turns: list[dict[str, Any]]) -> None:
    """Example failure prevented: 400 "final assistant content cannot end with trailing whitespace"."""
    if not turns or turns[-1]["role"] != "assistant":
        return
    content = turns[-1]["content"]
    if content[-1]["type"] == "text":
        content[-1]["text"] = content[-1]["text"].rstrip()
        if not content[-1]["text"]:
            content.pop()
    if not content:
        turns.pop()


def _encode_part(part: ir.Part) -> dict[str, Any] | None:
    if isinstance(part, ir.Text):
        # Example failure prevented: 400 "text content blocks must contain non-whitespace text".
        return {"type": "text", "text": part.text} if part.text.strip() else None
    if isinstance(part, ir.Image):
        return _encode_image(part)
    if isinstance(part, ir.Thinking):
        return _encode_thinking_part(part)
    if isinstance(part, ir.ToolCall):
        return {"type": "tool_use", "id": _safe_id(part.id), "name": part.name, "input": part.arguments}
    return _encode_tool_result(part)


def _encode_thinking_part(part: ir.Thinking) -> dict[str, Any] | None:
    if part.redacted:
        return {"type": "redacted_thinking", "data": part.redacted}
    if part.signature:
        return {"type": "thinking", "thinking": part.text, "signature": part.signature}
    # Anthropic rejects a thinking block without a valid signature (400), and reasoning from other
    # providers (DeepSeek reasoning_content, Gemini thoughts) never has one: drop it.
    return None


def _encode_tool_result(part: ir.ToolResult) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": _safe_id(part.call_id)}
    if isinstance(part.content, str):
        content: str | list[dict[str, Any]] = part.content
    else:
        content = [b for p in part.content if (b := _encode_part(p)) is not None]
    if content:
        block["content"] = content
    if part.is_error:
        block["is_error"] = True
    return block


def _encode_image(image: ir.Image) -> dict[str, Any]:
    if image.data is not None:
        mime, data = (image.mime_type or "").lower(), image.data
    elif image.url and image.url.startswith("data:"):
        mime, data = _split_data_url(image.url)
    elif image.url:
        kind = "document" if image.mime_type == PDF else "image"
        return {"type": kind, "source": {"type": "url", "url": image.url}}
    else:
        raise InvalidRequest("an image part has neither data nor a url")
    mime = "image/jpeg" if mime == "image/jpg" else mime
    if mime == PDF:
        return {"type": "document", "source": {"type": "base64", "media_type": mime, "data": data}}
    if mime not in _IMAGE_TYPES:
        raise InvalidRequest(f"image type {mime[:40]!r} is not accepted by Anthropic: use jpeg, png, gif or webp")
    return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}


def _split_data_url(url: str) -> tuple[str, str]:
    """``data:image/png;base64,AAAA`` -> ("image/png", "AAAA"): Anthropic takes no data: URLs."""
    header, comma, data = url[5:].partition(",")
    params = header.split(";")
    if not comma or "base64" not in params[1:]:
        raise InvalidRequest("an image data: URL must be base64-encoded (data:<mime>;base64,<data>)")
    return params[0].lower(), data


def _safe_id(call_id: str) -> str:
    """A tool-use id matching ^[a-zA-Z0-9_-]+$, the same for the same input (tool_use and
    tool_result must still agree); a digest keeps two cleaned-up ids from colliding."""
    if _ID_OK.fullmatch(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:16]
    return f"{_ID_BAD_CHARS.sub('_', call_id)[:48]}_{digest}"


def _encode_tools(req: ir.ChatRequest, body: dict[str, Any]) -> None:
    tools = [_encode_tool(t) for t in req.tools]
    choice = _encode_tool_choice(req.tool_choice)
    if not tools:
        # A history with tool blocks but no tool definitions (a client dropping its tools to get a
        # final answer, a summarising pass) is refused by Anthropic-protocol endpoints (Bedrock says
        # "The toolConfig field must be defined when using toolUse and toolResult content blocks"):
        # declare the names called, and forbid new calls.
        names = dict.fromkeys(p.name for m in req.messages for p in m.parts if isinstance(p, ir.ToolCall))
        tools = [{"name": n, "input_schema": empty_schema()} for n in names]
        choice = {"type": "none"}
    if tools:  # tool_choice without tools is a 400 too
        body["tools"] = tools
        if choice is not None:
            body["tool_choice"] = choice


def _encode_tool(tool: ir.Tool) -> dict[str, Any]:
    schema = tool.parameters
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        schema = empty_schema()  # Anthropic requires input_schema.type == "object"
    elif "type" not in schema:
        schema = {"type": "object", **schema}
    out: dict[str, Any] = {"name": tool.name, "input_schema": schema}
    if tool.description:
        out["description"] = tool.description
    return out


def _encode_tool_choice(choice: ir.ToolChoice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice.mode == "tool" and choice.name:
        out: dict[str, Any] = {"type": "tool", "name": choice.name}
    else:
        out = {"type": {"none": "none", "required": "any", "tool": "any"}.get(choice.mode, "auto")}
    if choice.parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _encode_sampling(req: ir.ChatRequest, body: dict[str, Any]) -> None:
    if req.temperature is not None:
        body["temperature"] = min(max(req.temperature, 0.0), 1.0)  # OpenAI and Gemini allow up to 2
    elif req.top_p is not None:
        # Example failure prevented: newer Claude models reject temperature and top_p together.
        body["top_p"] = req.top_p
    if req.top_k is not None:
        body["top_k"] = req.top_k
    stops = [s for s in req.stop if s.strip()]  # blank stop sequences are rejected
    if stops:
        body["stop_sequences"] = stops


def _thinking_budget(reasoning: ir.Reasoning | None) -> int | None:
    """The thinking budget asked for: None = not said, 0 = off."""
    if reasoning is None:
        return None
    if reasoning.budget_tokens is not None and reasoning.budget_tokens >= 0:
        return reasoning.budget_tokens
    if reasoning.effort is not None:
        return _EFFORT_BUDGET.get(reasoning.effort, _EFFORT_BUDGET["medium"])
    return _EFFORT_BUDGET["medium"] if reasoning.budget_tokens is not None else None  # -1: Gemini "dynamic"


def _encode_thinking(reasoning: ir.Reasoning | None, body: dict[str, Any]) -> None:
    budget = _thinking_budget(reasoning)
    if budget is None:
        return
    if budget == 0:
        body["thinking"] = {"type": "disabled"}
        return
    if body.get("tool_choice", {}).get("type") in ("any", "tool"):
        return  # Example failure prevented: 400 "Thinking may not be enabled when tool_choice forces tool use"
    budget = max(budget, _MIN_BUDGET)
    if body["max_tokens"] <= budget:  # budget_tokens must stay below max_tokens: keep room for the answer
        body["max_tokens"] += budget
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    # Thinking is incompatible with temperature and top_k, and allows top_p only in 0.95..1.
    body.pop("temperature", None)
    body.pop("top_k", None)
    if body.get("top_p", 1) < 0.95:
        del body["top_p"]


def prepare_passthrough(body: dict[str, Any], req: ir.ChatRequest, upstream_model: str) -> UpstreamCall:
    """The client's own body for an Anthropic upstream: the upstream model name, and SDK 2.x
    ``{"role": "system"}`` turns hoisted into ``system`` (Anthropic-compatible providers such as
    MiniMax reject them with "invalid message role: system")."""
    body["model"] = upstream_model
    messages = body.get("messages")
    if isinstance(messages, list) and any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
        _hoist_system(body, messages)
    return UpstreamCall(_MESSAGES_PATH, orjson.dumps(body), [VERSION])


def _hoist_system(body: dict[str, Any], messages: list[Any]) -> None:
    blocks = _as_text_blocks(body.get("system"))
    for msg in messages:
        if isinstance(msg, dict) and msg.get("role") == "system":
            blocks += _as_text_blocks(msg.get("content"))
    body["messages"] = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "system")]
    texts_only = all(set(b) == {"type", "text"} for b in blocks)  # no cache_control to keep
    if not blocks:
        body.pop("system", None)
    else:
        body["system"] = "\n\n".join(b["text"] for b in blocks) if texts_only else blocks


def _as_text_blocks(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "text", "text": value}] if value else []
    if isinstance(value, list):
        return [{"type": "text", **b} for b in value if isinstance(b, dict) and isinstance(b.get("text"), str)]
    return []
