"""Anthropic Messages (``POST /v1/messages``): requests, responses, errors, token counts.

Theory of operation
-------------------
``decode_request`` validates an Anthropic client's body into IR: ``{"role": "system"}`` turns
(SDK 2.x) are hoisted into the system text, consecutive same-role turns are kept as they are,
server tools and server-tool blocks (web search, code execution, ...) are skipped because the IR
cannot carry them (a same-protocol passthrough still forwards them: it sends the client's own
body), and tool-use ids made by `fold_call_id` give back the Gemini thought signature they carry.

``encode_request`` builds an Anthropic upstream body from IR and applies the rules the API
enforces that other protocols do not: tool results first in their user turn, alternating roles
starting with ``user``, no empty or whitespace-only text, no trailing whitespace in a final
assistant prefill, tool-use ids in ``[A-Za-z0-9_-]``, an object ``input_schema``, tools declared
whenever the history holds tool calls, ``max_tokens`` always present and above the thinking
budget, temperature within 0..1, and no sampling parameters next to thinking.

Responses and usage map field by field (protocols.md §3, §7). The stream classes, the error
envelopes (§6) and the vocabulary they share with this module live in ``anthropic_messages_stream``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any, TypeGuard

import orjson

from relayproxy import ir
from relayproxy.codecs import UpstreamCall
from relayproxy.codecs.anthropic_messages_stream import (
    AnthropicStreamDecoder,
    AnthropicStreamEncoder,
    AnthropicStreamTap,
    decode_error,
    decode_usage,
    embedded_error,
    encode_error,
    encode_usage,
    finish_reason,
    fold_call_id,
    message_id,
    stop_reason,
    unfold_call_id,
)
from relayproxy.codecs.shared import is_int, str_or_empty
from relayproxy.errors import InvalidRequest, UpstreamProtocolError

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicStreamDecoder",
    "AnthropicStreamEncoder",
    "AnthropicStreamTap",
    "auth_headers",
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
    "prepare_passthrough",
    "response_usage",
    "stream_decoder",
    "stream_encoder",
    "stream_tap",
]

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI and Gemini requests may have none
_VERSION = (b"anthropic-version", b"2023-06-01")
_MESSAGES_PATH = "/v1/messages"
_COUNT_PATH = "/v1/messages/count_tokens"
_COUNT_KEYS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "output_config")
_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})
# No official effort -> budget table exists (protocols.md §7.5); "none" turns thinking off.
_EFFORT_BUDGET = {"none": 0, "minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 24576, "max": 24576}
_MIN_BUDGET = 1024
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_PDF = "application/pdf"
_ID_OK = re.compile(r"[A-Za-z0-9_-]+")
_ID_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_SERVER_BLOCKS = frozenset({"server_tool_use", "mcp_tool_use", "mcp_tool_result", "container_upload"})
_CHOICES = {"auto": "auto", "any": "required", "tool": "tool", "none": "none"}
_JSON_KIND = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}


# -- validation helpers --------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_KIND.get(type(value), type(value).__name__)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _opt(obj: dict[str, Any], key: str, typ: type, path: str) -> Any:
    """``obj[key]`` if it has type ``typ``, None if absent or null; else InvalidRequest."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise InvalidRequest(f"expected {_JSON_KIND.get(typ, typ.__name__)}, got {_kind(value)}", path)
    return value


def _need_str(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"required, a non-empty string; got {_kind(value)}", path)
    return value


def _need_obj(value: Any, path: str, what: str = "an object") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"expected {what}, got {_kind(value)}", path)
    return value


def _positive_int(obj: dict[str, Any], key: str, path: str, *, required: bool = False) -> int | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not is_int(value) or value < 1:
        shown = value if is_int(value) else _kind(value)
        raise InvalidRequest(f"{'required: ' if required else ''}expected a positive integer, got {shown}", path)
    return int(value)


def _unit_number(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if not _is_number(value) or not 0 <= value <= 1:
        shown = value if _is_number(value) else _kind(value)
        raise InvalidRequest(f"expected a number between 0 and 1, got {shown}", key)
    return float(value)


# -- requests: decode ----------------------------------------------------------------------------


def decode_request(body: Any, *, model: str | None = None, stream: bool | None = None) -> ir.ChatRequest:
    """An Anthropic client's body -> IR. ``model``/``stream`` come from the body (the arguments are
    for Gemini, whose URL carries them)."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"expected the request body to be a JSON object, got {_kind(body)}")
    name = _need_str(body, "model", "model")
    max_tokens = _positive_int(body, "max_tokens", "max_tokens", required=True)
    messages, hoisted = _decode_messages(body.get("messages"))
    system = _join([_system_text(body.get("system"), "system"), *hoisted])
    req = ir.ChatRequest(model=name, messages=messages, system=system, max_output_tokens=max_tokens)
    req.tools = _decode_tools(body.get("tools"))
    req.tool_choice = _decode_tool_choice(body.get("tool_choice"))
    req.temperature, req.top_p = _unit_number(body, "temperature"), _unit_number(body, "top_p")
    req.top_k = _positive_int(body, "top_k", "top_k")
    req.stop = _decode_stops(body.get("stop_sequences"))
    output_config = _opt(body, "output_config", dict, "output_config") or {}
    req.reasoning = _decode_reasoning(body.get("thinking"), _decode_effort(output_config))
    req.json_schema = _decode_format(output_config.get("format"))
    metadata = _opt(body, "metadata", dict, "metadata") or {}
    req.user = _opt(metadata, "user_id", str, "metadata.user_id")
    req.stream = bool(_opt(body, "stream", bool, "stream"))
    return req


def _join(texts: list[str | None]) -> str | None:
    joined = "\n\n".join(t for t in texts if t)
    return joined or None


def _system_text(value: Any, path: str) -> str | None:
    """``system`` (or a system turn's content): a string or an array of text blocks."""
    if value is None or isinstance(value, str):
        return value or None
    if not isinstance(value, list):
        raise InvalidRequest(f"expected a string or an array of text blocks, got {_kind(value)}", path)
    texts = []
    for i, block in enumerate(value):
        block = _need_obj(block, f"{path}[{i}]", "a text block")
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest('expected {"type": "text", "text": "..."}', f"{path}[{i}]")
        texts.append(block["text"])
    return _join(texts)


def _decode_messages(raw: Any) -> tuple[list[ir.Message], list[str | None]]:
    """The turns, and the texts of ``{"role": "system"}`` turns to hoist into the system prompt."""
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest(f"required, a non-empty array of messages; got {_kind(raw)}", "messages")
    messages, system = [], []
    for i, msg in enumerate(raw):
        path = f"messages[{i}]"
        msg = _need_obj(msg, path, "a message object with role and content")
        role = msg.get("role")
        if role == "system":
            system.append(_system_text(msg.get("content"), f"{path}.content"))
        elif role in ("user", "assistant"):
            messages.append(ir.Message(role, _decode_content(role, msg.get("content"), f"{path}.content")))
        else:
            shown = repr(role[:40]) if isinstance(role, str) else _kind(role)
            raise InvalidRequest(f"expected user, assistant or system, got {shown}", f"{path}.role")
    if not messages:
        raise InvalidRequest("at least one user or assistant message is required", "messages")
    return messages, system


def _decode_content(role: str, content: Any, path: str) -> list[ir.Part]:
    if isinstance(content, str):
        return [ir.Text(content)] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"expected a string or an array of content blocks, got {_kind(content)}", path)
    parts = []
    for j, block in enumerate(content):
        part = _decode_block(role, block, f"{path}[{j}]")
        if part is not None:
            parts.append(part)
    return parts


def _decode_block(role: str, block: Any, path: str) -> ir.Part | None:
    block = _need_obj(block, path, "a content block object")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise InvalidRequest(f"expected a content block type string, got {_kind(kind)}", f"{path}.type")
    if kind in _SERVER_BLOCKS or kind.endswith("_tool_result"):
        return None  # server-tool history: only a passthrough (which forwards the raw body) can use it
    entry = _BLOCK_DECODERS.get(kind)
    if entry is None:
        raise InvalidRequest(f"content block type {kind[:40]!r} is not supported by this gateway", f"{path}.type")
    allowed_role, decode = entry
    if allowed_role is not None and role != allowed_role:
        raise InvalidRequest(
            f"expected {kind} blocks in {allowed_role} messages only, found one in a {role} message", path
        )
    return decode(block, path)


def _decode_text(block: dict[str, Any], path: str) -> ir.Part | None:
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"expected a string, got {_kind(text)}", f"{path}.text")
    return ir.Text(text) if text else None


def _decode_image(block: dict[str, Any], path: str) -> ir.Image:
    source = _need_obj(block.get("source"), f"{path}.source", "an image source object")
    kind = source.get("type")
    if kind == "base64":
        mime = _need_str(source, "media_type", f"{path}.source.media_type")
        return ir.Image(mime_type=mime, data=_need_str(source, "data", f"{path}.source.data"))
    if kind == "url":
        return ir.Image(url=_need_str(source, "url", f"{path}.source.url"))
    raise InvalidRequest("expected a base64 or url source (file sources are not supported)", f"{path}.source.type")


def _decode_document(block: dict[str, Any], path: str) -> ir.Text | ir.Image:
    """PDFs travel as an Image with the PDF mime type (Gemini reads inline PDFs; Anthropic gets a
    document block back); plain-text documents become text. Other sources are refused."""
    source = _need_obj(block.get("source"), f"{path}.source", "a document source object")
    kind = source.get("type")
    if kind == "text":
        return ir.Text(_need_str(source, "data", f"{path}.source.data"))
    if kind == "base64":
        mime = _need_str(source, "media_type", f"{path}.source.media_type")
        return ir.Image(mime_type=mime, data=_need_str(source, "data", f"{path}.source.data"))
    if kind == "url":
        return ir.Image(mime_type=_PDF, url=_need_str(source, "url", f"{path}.source.url"))
    raise InvalidRequest("expected a text, base64 or url document source", f"{path}.source.type")


def _decode_tool_use(block: dict[str, Any], path: str) -> ir.Part:
    call_id, signature = unfold_call_id(_need_str(block, "id", f"{path}.id"))
    name = _need_str(block, "name", f"{path}.name")
    arguments = _need_obj(block.get("input"), f"{path}.input", "a JSON object")
    return ir.ToolCall(call_id, name, arguments, signature)


def _decode_tool_result(block: dict[str, Any], path: str) -> ir.Part:
    call_id, _ = unfold_call_id(_need_str(block, "tool_use_id", f"{path}.tool_use_id"))
    content = block.get("content")
    if content is None or isinstance(content, str):
        output: str | list[ir.Text | ir.Image] = content or ""
    elif isinstance(content, list):
        output = [_decode_result_block(b, f"{path}.content[{i}]") for i, b in enumerate(content)]
    else:
        raise InvalidRequest(f"expected a string or an array of blocks, got {_kind(content)}", f"{path}.content")
    is_error = bool(_opt(block, "is_error", bool, f"{path}.is_error"))
    return ir.ToolResult(call_id, output, is_error=is_error)


def _decode_result_block(block: Any, path: str) -> ir.Text | ir.Image:
    kind = _need_obj(block, path, "a content block object").get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return ir.Text(block["text"])
    if kind == "image":
        return _decode_image(block, path)
    if kind == "document":
        return _decode_document(block, path)
    raise InvalidRequest("expected a text (with a text string), image or document block in a tool result", path)


def _decode_thinking(block: dict[str, Any], path: str) -> ir.Part:
    text = block.get("thinking")
    if not isinstance(text, str):
        raise InvalidRequest(f"expected a string, got {_kind(text)}", f"{path}.thinking")
    signature = _opt(block, "signature", str, f"{path}.signature")
    return ir.Thinking(text, signature or None)  # "" = a thinking block we relayed from a non-Anthropic model


def _decode_redacted(block: dict[str, Any], path: str) -> ir.Part:
    return ir.Thinking("", redacted=_need_str(block, "data", f"{path}.data"))


_BLOCK_DECODERS: dict[str, tuple[str | None, Callable[[dict[str, Any], str], ir.Part | None]]] = {
    "text": (None, _decode_text),
    "image": ("user", _decode_image),
    "document": ("user", _decode_document),
    "tool_result": ("user", _decode_tool_result),
    "tool_use": ("assistant", _decode_tool_use),
    "thinking": ("assistant", _decode_thinking),
    "redacted_thinking": ("assistant", _decode_redacted),
}


def _decode_tools(raw: Any) -> list[ir.Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest(f"expected an array of tools, got {_kind(raw)}", "tools")
    tools = []
    for i, tool in enumerate(raw):
        path = f"tools[{i}]"
        tool = _need_obj(tool, path, "a tool object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            if not isinstance(kind, str):
                raise InvalidRequest(f"expected a tool type string, got {_kind(kind)}", f"{path}.type")
            continue  # a server tool (web_search_..., bash_..., ...): see the module docstring
        schema = _opt(tool, "input_schema", dict, f"{path}.input_schema")
        description = _opt(tool, "description", str, f"{path}.description")
        tools.append(ir.Tool(_need_str(tool, "name", f"{path}.name"), description, schema or _empty_schema()))
    return tools


def _empty_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


def _decode_tool_choice(raw: Any) -> ir.ToolChoice | None:
    if raw is None:
        return None
    raw = _need_obj(raw, "tool_choice")
    mode = _CHOICES.get(raw.get("type")) if isinstance(raw.get("type"), str) else None
    if mode is None:
        raise InvalidRequest("expected type auto, any, tool or none", "tool_choice.type")
    name = _need_str(raw, "name", "tool_choice.name") if mode == "tool" else None
    disable = _opt(raw, "disable_parallel_tool_use", bool, "tool_choice.disable_parallel_tool_use")
    return ir.ToolChoice(mode, name, None if disable is None else not disable)


def _decode_stops(raw: Any) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise InvalidRequest("expected an array of strings", "stop_sequences")
    return list(raw)


def _decode_effort(output_config: dict[str, Any]) -> str | None:
    effort = output_config.get("effort")
    if effort is not None and not (isinstance(effort, str) and effort in _EFFORTS):
        raise InvalidRequest(f"expected one of {', '.join(sorted(_EFFORTS))}", "output_config.effort")
    return effort


def _decode_reasoning(raw: Any, effort: str | None) -> ir.Reasoning | None:
    """``thinking`` (enabled / adaptive / disabled) plus ``output_config.effort``."""
    if raw is None:
        return ir.Reasoning(effort=effort) if effort else None
    raw = _need_obj(raw, "thinking")
    shown = raw.get("display") != "omitted"  # "omitted": signatures only, no thinking text
    kind = raw.get("type")
    if kind == "enabled":
        budget = _positive_int(raw, "budget_tokens", "thinking.budget_tokens", required=True)
        return ir.Reasoning(effort, budget, include_thoughts=shown)
    if kind in ("adaptive", "between_tools"):
        return ir.Reasoning(effort, include_thoughts=shown)
    if kind == "disabled":
        return ir.Reasoning(effort="none")
    raise InvalidRequest("expected type enabled, adaptive or disabled", "thinking.type")


def _decode_format(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    raw = _need_obj(raw, "output_config.format")
    if raw.get("type") != "json_schema":
        raise InvalidRequest('expected type "json_schema"', "output_config.format.type")
    schema: dict[str, Any] = _need_obj(raw.get("schema"), "output_config.format.schema", "a JSON Schema object")
    return schema


# -- requests: encode ----------------------------------------------------------------------------


def encode_request(req: ir.ChatRequest, upstream_model: str) -> UpstreamCall:
    body = _request_body(req, upstream_model)
    if req.stream:
        body["stream"] = True
    return UpstreamCall(_MESSAGES_PATH, orjson.dumps(body), [_VERSION])


def _request_body(req: ir.ChatRequest, model: str) -> dict[str, Any]:
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
        kind = "document" if image.mime_type == _PDF else "image"
        return {"type": kind, "source": {"type": "url", "url": image.url}}
    else:
        raise InvalidRequest("an image part has neither data nor a url")
    mime = "image/jpeg" if mime == "image/jpg" else mime
    if mime == _PDF:
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
        tools = [{"name": n, "input_schema": _empty_schema()} for n in names]
        choice = {"type": "none"}
    if tools:  # tool_choice without tools is a 400 too
        body["tools"] = tools
        if choice is not None:
            body["tool_choice"] = choice


def _encode_tool(tool: ir.Tool) -> dict[str, Any]:
    schema = tool.parameters
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        schema = _empty_schema()  # Anthropic requires input_schema.type == "object"
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
    return UpstreamCall(_MESSAGES_PATH, orjson.dumps(body), [_VERSION])


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


def auth_headers(api_key: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-api-key", api_key.encode())]


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
    body = _request_body(req, upstream_model)
    count = {key: body[key] for key in _COUNT_KEYS if key in body}
    return UpstreamCall(_COUNT_PATH, orjson.dumps(count), [_VERSION])


def decode_count_response(body: Any) -> int:
    tokens = body.get("input_tokens") if isinstance(body, dict) else None
    if not is_int(tokens) or tokens < 0:
        raise UpstreamProtocolError("the Anthropic upstream's count_tokens answer has no input_tokens")
    return int(tokens)


def encode_count_response(tokens: int) -> dict[str, Any]:
    return {"input_tokens": tokens}
