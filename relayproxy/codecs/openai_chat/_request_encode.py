"""OpenAI Chat Completions requests, IR -> upstream: ``encode_request`` and ``prepare_passthrough``.

``encode_request`` writes a request for an OpenAI-protocol upstream (OpenAI, DeepSeek, Moonshot,
MiniMax), including DeepSeek/Kimi's ``reasoning_content`` on assistant turns, which their thinking
models require back in tool-call loops. ``encode_call`` also writes the calls of a response.
"""

from __future__ import annotations

from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs import UpstreamCall
from relayproxy.codecs.openai_chat._vocab import TOOL_CHOICES, fold_signature

__all__ = ["CHAT_PATH", "encode_call", "encode_request", "prepare_passthrough"]

CHAT_PATH = "/chat/completions"  # relative to an openai provider's base URL, which ends in /v1


# -- encode_request -------------------------------------------------------------------------------


def encode_request(req: ir.ChatRequest, upstream_model: str) -> UpstreamCall:
    """IR -> a request to an OpenAI-protocol upstream (OpenAI, DeepSeek, Moonshot, MiniMax).
    ``top_k`` has no OpenAI field and is dropped; ``stop`` is cut to OpenAI's four."""
    body: dict[str, Any] = {"model": upstream_model, "messages": _encode_messages(req)}
    body.update(_encode_tools(req))
    body.update(_encode_options(req))
    if req.stream:  # billing needs the trailing usage chunk, whatever the client asked for
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return UpstreamCall(CHAT_PATH, orjson.dumps(body))


def _encode_messages(req: ir.ChatRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": req.system}] if req.system else []
    for msg in req.messages:
        out += [_encode_assistant(msg)] if msg.role == "assistant" else _encode_user(msg)
    return out


def _encode_user(msg: ir.Message) -> list[dict[str, Any]]:
    """Each ToolResult becomes its own tool message, before the user's own content of that turn."""
    out: list[dict[str, Any]] = []
    content: list[dict[str, Any]] = []
    for part in msg.parts:
        if isinstance(part, ir.ToolResult):
            out.append({"role": "tool", "tool_call_id": part.call_id, "content": _tool_content(part)})
            if not isinstance(part.content, str):  # tool messages carry no images: the user turn does
                content += [_image_part(p) for p in part.content if isinstance(p, ir.Image)]
        elif isinstance(part, ir.Text):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, ir.Image):
            content.append(_image_part(part))
    if content:
        single = len(content) == 1 and content[0]["type"] == "text"
        out.append({"role": "user", "content": content[0]["text"] if single else content})
    return out


def _tool_content(result: ir.ToolResult) -> str | list[dict[str, Any]]:
    content = result.content
    texts = [content] if isinstance(content, str) else [p.text for p in content if isinstance(p, ir.Text)]
    if result.is_error:  # OpenAI has no error flag on tool messages
        texts = ["Error: " + (texts[0] if texts else ""), *texts[1:]]
    if len(texts) <= 1:
        return texts[0] if texts else ""
    return [{"type": "text", "text": text} for text in texts]


def _image_part(image: ir.Image) -> dict[str, Any]:
    url = image.url or f"data:{image.mime_type or 'image/png'};base64,{image.data or ''}"
    return {"type": "image_url", "image_url": {"url": url}}


def _encode_assistant(msg: ir.Message) -> dict[str, Any]:
    texts = [p.text for p in msg.parts if isinstance(p, ir.Text)]
    thinking = [p.text for p in msg.parts if isinstance(p, ir.Thinking) and p.text]
    calls = [encode_call(p, fold=False) for p in msg.parts if isinstance(p, ir.ToolCall)]
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        out["tool_calls"] = calls
    elif out["content"] is None:
        out["content"] = ""  # Example failure prevented: 400 for an assistant message with neither
    if thinking:  # DeepSeek/Kimi thinking mode 400s on a tool-call turn without its reasoning_content
        out["reasoning_content"] = "".join(thinking)
    return out


def encode_call(call: ir.ToolCall, *, fold: bool) -> dict[str, Any]:
    raw = call.arguments.get("_raw")
    args = raw if isinstance(raw, str) and len(call.arguments) == 1 else orjson.dumps(call.arguments).decode()
    call_id = fold_signature(call.id, call.signature) if fold else call.id
    return {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": args}}


def _encode_tools(req: ir.ChatRequest) -> dict[str, Any]:
    if not req.tools:  # OpenAI rejects tool_choice / parallel_tool_calls without tools
        return {}
    tools = [{"type": "function", "function": _encode_tool(tool)} for tool in req.tools]
    out: dict[str, Any] = {"tools": tools}
    choice = req.tool_choice
    if choice is not None:
        if choice.mode == "tool" and choice.name:
            out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            out["tool_choice"] = choice.mode if choice.mode in TOOL_CHOICES else "required"
        if choice.parallel is False:
            out["parallel_tool_calls"] = False
    return out


def _encode_tool(tool: ir.Tool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description is not None:
        fn["description"] = tool.description
    return fn


def _encode_options(req: ir.ChatRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if req.max_output_tokens is not None:
        out["max_completion_tokens"] = req.max_output_tokens  # max_tokens: rejected by o-series, MiniMax
    sampling = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "seed": req.seed,
        "user": req.user or None,
        "prompt_cache_key": req.prompt_cache_key or None,
    }
    out.update({key: value for key, value in sampling.items() if value is not None})
    if req.stop:
        out["stop"] = req.stop[:4]
    if effort := _effort(req.reasoning):
        out["reasoning_effort"] = effort
    if req.json_schema is not None:
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": req.json_schema}}
    elif req.json_mode:
        out["response_format"] = {"type": "json_object"}
    return out


def _effort(reasoning: ir.Reasoning | None) -> str | None:
    """An effort word; a budget alone maps by size. Budgets <= 0 (Gemini off / dynamic) send nothing."""
    if reasoning is None or reasoning.effort:
        return reasoning.effort if reasoning else None
    budget = reasoning.budget_tokens
    if budget is None or budget <= 0:
        return None
    return "low" if budget <= 1024 else "medium" if budget <= 8192 else "high"


def _passthrough_body(body: dict[str, Any], upstream_model: str, stream: bool) -> bytes:
    """The upstream body for an OpenAI-to-OpenAI call: the client's, with the upstream model name
    and, on streams, ``include_usage`` forced on (billing needs the trailing usage chunk)."""
    body["model"] = upstream_model
    if stream:
        options = body.get("stream_options") or {}
        body["stream_options"] = {**options, "include_usage": True}
    return orjson.dumps(body)


def prepare_passthrough(body: dict[str, Any], req: ir.ChatRequest, upstream_model: str) -> UpstreamCall:
    """Same-protocol call: the client's own body with the upstream model name and, on streams,
    ``include_usage`` forced on (billing needs the trailing usage chunk). The dict is not changed."""
    return UpstreamCall(CHAT_PATH, _passthrough_body(dict(body), upstream_model, req.stream))
