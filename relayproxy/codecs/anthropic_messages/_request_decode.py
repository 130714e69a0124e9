"""Anthropic Messages requests, client -> IR: ``decode_request`` and its validation helpers.

``decode_request`` validates an Anthropic client's body into IR: ``{"role": "system"}`` turns
(SDK 2.x, Claude Code's mid-conversation system turns) are hoisted into the system text, Claude
Code's ``x-anthropic-billing-header:`` system block is left out (an attribution line for Anthropic's
own API whose ``cc_version`` differs between conversations: first in the prompt, it would keep a
translated upstream's prefix cache from ever matching across conversations), consecutive
same-role turns are kept as they are, server tools and server-tool blocks (web search, code
execution, ...) are skipped because the IR cannot carry them (a same-protocol passthrough still
forwards them: it sends the client's own body), and tool-use ids made by `fold_call_id` give
back the Gemini thought signature they carry.

Errors are ``InvalidRequest`` naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

from relayproxy import ir
from relayproxy.codecs.anthropic_messages._vocab import PDF, empty_schema, unfold_call_id
from relayproxy.codecs.shared import is_int
from relayproxy.errors import InvalidRequest

__all__ = ["BILLING_LINE", "decode_request"]

BILLING_LINE = "x-anthropic-billing-header:"  # Claude Code's first system block (cc_version=...)

_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})
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
    system = _join([_system_text(body.get("system"), "system", top=True), *hoisted])
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


def _system_text(value: Any, path: str, *, top: bool = False) -> str | None:
    """``system`` (or a system turn's content): a string or an array of text blocks. In the
    top-level ``system``, a block that is Claude Code's billing attribution line is skipped."""
    if value is None or isinstance(value, str):
        return value or None
    if not isinstance(value, list):
        raise InvalidRequest(f"expected a string or an array of text blocks, got {_kind(value)}", path)
    texts = []
    for i, block in enumerate(value):
        block = _need_obj(block, f"{path}[{i}]", "a text block")
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest('expected {"type": "text", "text": "..."}', f"{path}[{i}]")
        if top and block["text"].startswith(BILLING_LINE):
            continue
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
        return ir.Image(mime_type=PDF, url=_need_str(source, "url", f"{path}.source.url"))
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
        tools.append(ir.Tool(_need_str(tool, "name", f"{path}.name"), description, schema or empty_schema()))
    return tools


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
