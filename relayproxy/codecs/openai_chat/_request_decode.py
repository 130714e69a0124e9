"""OpenAI Chat Completions requests, client -> IR: ``check_request`` and ``decode_request``.

``decode_request`` validates what the gateway relies on and raises ``InvalidRequest`` naming the
field. System and developer messages become one system text (joined with a blank line; their
position is lost). Tool messages become ToolResults on a user turn; consecutive tool messages and a
following user message fold into one turn, results first, as Anthropic requires. The legacy
``function`` role and ``functions`` parameter are rejected (no call id to tie a result to), as are
audio and file parts. A call id carrying a Gemini thoughtSignature (``call_x~<sig>``) is split
again here (``unfold_call_id``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relayproxy import ir
from relayproxy.codecs.openai_chat._vocab import TOOL_CHOICES, reasoning_texts
from relayproxy.codecs.shared import arguments_object, req_str, unfold_call_id
from relayproxy.errors import InvalidRequest

__all__ = ["RequestInfo", "check_request", "decode_arguments", "decode_request"]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


@dataclass(slots=True, frozen=True)
class RequestInfo:
    """What the gateway needs to know about a client request before routing it."""

    model: str
    stream: bool
    include_usage: bool  # the client itself asked for the trailing usage chunk
    max_output_tokens: int | None


# -- request checks (shared by check_request and decode_request) --------------------------------


def check_request(body: Any) -> RequestInfo:
    """Validate the fields the gateway relies on; raise InvalidRequest naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("required, a model name string", "model")
    _check_messages(body.get("messages"))
    stream = _opt(body, "stream", bool, False)
    options = _opt(body, "stream_options", dict, None)
    include_usage = False
    if options is not None:
        include_usage = _opt(options, "include_usage", bool, False, "stream_options.include_usage")
    limits = [_opt_int(body, k) for k in ("max_completion_tokens", "max_tokens")]
    _opt_number(body, "temperature", 2)
    n = _opt_int(body, "n")
    if n is not None and n != 1:
        raise InvalidRequest("only n = 1 is supported", "n")
    return RequestInfo(model, stream, include_usage, next((v for v in limits if v is not None), None))


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("required, a non-empty array of messages", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidRequest("expected an object", f"messages[{i}]")
        role = msg.get("role")
        if not isinstance(role, str) or role not in _ROLES:  # a list here is unhashable: TypeError
            raise InvalidRequest(f"expected one of {', '.join(sorted(_ROLES))}, got {role!r}", f"messages[{i}].role")
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"expected a string or an array of parts, got {type(content).__name__}",
                f"messages[{i}].content",
            )


def _opt(body: dict[str, Any], key: str, typ: Any, default: Any, path: str | None = None) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        name = typ.__name__ if isinstance(typ, type) else "number"
        raise InvalidRequest(f"expected {name}, got {type(value).__name__} {str(value)[:40]}", path or key)
    return value


def _opt_int(body: dict[str, Any], key: str) -> int | None:
    value: int | None = _opt(body, key, int, None)
    if value is not None and value < 1:
        raise InvalidRequest(f"must be a positive integer, got {value}", key)
    return value


def _opt_number(body: dict[str, Any], key: str, high: float) -> float | None:
    value = _opt(body, key, (int, float), None)
    if value is not None and not 0 <= value <= high:
        raise InvalidRequest(f"must be between 0 and {high}, got {value}", key)
    return None if value is None else float(value)


# -- decode_request -------------------------------------------------------------------------------


def decode_request(body: Any, *, model: str | None = None, stream: bool | None = None) -> ir.ChatRequest:
    """An OpenAI request body -> IR. ``model``/``stream`` come from the body (the arguments are Gemini's)."""
    info = check_request(body)
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise InvalidRequest("the legacy functions parameters are not supported; use tools", legacy)
    system, messages = _decode_messages(body["messages"])
    choice, tools = _decode_tool_choice(body, _decode_tools(body.get("tools")))
    req = ir.ChatRequest(info.model, messages, system=system, tools=tools, tool_choice=choice)
    req.max_output_tokens = info.max_output_tokens
    req.stream, req.include_usage = info.stream, info.include_usage
    req.temperature, req.top_p = _opt_number(body, "temperature", 2), _opt_number(body, "top_p", 1)
    req.stop, req.seed = _decode_stop(body.get("stop")), _opt(body, "seed", int, None)
    req.user = _opt(body, "user", str, None) or _opt(body, "safety_identifier", str, None)
    req.prompt_cache_key = _opt(body, "prompt_cache_key", str, None)
    effort = _opt(body, "reasoning_effort", str, None)
    if effort is not None:
        if effort not in _EFFORTS:
            raise InvalidRequest(f"expected one of {', '.join(_EFFORTS)}, got {effort!r}", "reasoning_effort")
        req.reasoning = ir.Reasoning(effort=effort)
    _decode_response_format(body.get("response_format"), req)
    return req


def _decode_messages(raw: list[Any]) -> tuple[str | None, list[ir.Message]]:
    system: list[str] = []
    turns: list[ir.Message] = []
    names: dict[str, str] = {}  # call id -> function name, so ToolResults carry the name Gemini needs
    folding = False  # the last turn came from tool messages: more results and one user message join it
    for i, msg in enumerate(raw):
        path, role = f"messages[{i}]", msg["role"]
        if role in ("system", "developer"):
            if text := _plain_text(msg.get("content"), f"{path}.content"):
                system.append(text)
        elif role == "tool":
            result = _decode_tool_message(msg, path, names)
            if not folding:
                turns.append(ir.Message("user", []))
            turns[-1].parts.append(result)
            folding = True
        elif role == "user":
            parts: list[ir.Part] = [*_user_parts(msg.get("content"), f"{path}.content")]
            if folding:
                turns[-1].parts.extend(parts)
            else:
                turns.append(ir.Message("user", parts))
            folding = False
        elif role == "assistant":
            turns.append(_decode_assistant(msg, path, names))
            folding = False
        else:
            raise InvalidRequest("the legacy function role is not supported; send tool messages", f"{path}.role")
    return "\n\n".join(system) or None, turns


def _plain_text(content: Any, path: str) -> str:
    """System/developer content: a string or text parts (joined by newlines so words never fuse)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise InvalidRequest("expected a text part", f"{path}[{j}]")
        texts.append(_text_of(part, f"{path}[{j}].text"))
    return "\n".join(texts)


def _text_of(part: dict[str, Any], path: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise InvalidRequest("required, a string", path)
    return text


def _user_parts(content: Any, path: str) -> list[ir.Text | ir.Image]:
    if content is None or isinstance(content, str):
        return [ir.Text(content)] if content else []
    return [_content_part(part, f"{path}[{j}]") for j, part in enumerate(content)]


def _content_part(part: Any, path: str) -> ir.Text | ir.Image:
    if not isinstance(part, dict):
        raise InvalidRequest("expected a content part object", path)
    kind = part.get("type")
    if kind == "text":
        return ir.Text(_text_of(part, f"{path}.text"))
    if kind == "image_url":
        return _image(part.get("image_url"), f"{path}.image_url")
    if kind in ("input_audio", "file"):
        raise InvalidRequest(f"{kind} parts are not supported by this gateway; send text or image_url parts", path)
    raise InvalidRequest(f"expected a part of type text or image_url, got {kind!r}", f"{path}.type")


def _image(value: Any, path: str) -> ir.Image:
    url = value.get("url") if isinstance(value, dict) else None
    if not isinstance(url, str):
        raise InvalidRequest('expected {"url": "https://…" or "data:<mime>;base64,…"}', path)
    if url.startswith("data:"):
        head, comma, data = url[5:].partition(",")
        if comma and head.endswith(";base64") and head != ";base64":
            return ir.Image(mime_type=head[:-7].split(";")[0], data=data)
        raise InvalidRequest("expected a base64 data URL: data:<mime>;base64,<data>", f"{path}.url")
    if url.startswith(("https://", "http://")):
        return ir.Image(url=url)
    raise InvalidRequest("expected an https:// URL or a base64 data: URL", f"{path}.url")


def _decode_tool_message(msg: dict[str, Any], path: str, names: dict[str, str]) -> ir.ToolResult:
    call_id, _ = unfold_call_id(req_str(msg.get("tool_call_id"), f"{path}.tool_call_id"))
    content = msg.get("content")
    value: str | list[ir.Text | ir.Image] = (
        content if isinstance(content, str) else _user_parts(content, f"{path}.content")
    )
    return ir.ToolResult(call_id, value, name=names.get(call_id))


def _decode_assistant(msg: dict[str, Any], path: str, names: dict[str, str]) -> ir.Message:
    # DeepSeek/Kimi reasoning first: it preceded the answer and the calls.
    parts: list[ir.Part] = [ir.Thinking(t) for t in reasoning_texts(msg)]
    content = msg.get("content")
    if isinstance(content, str) and content:
        parts.append(ir.Text(content))
    elif isinstance(content, list):
        parts += [_assistant_part(p, f"{path}.content[{j}]") for j, p in enumerate(content)]
    refusal = msg.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append(ir.Text(refusal))
    calls = msg.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise InvalidRequest("expected an array of tool calls", f"{path}.tool_calls")
    for k, raw in enumerate(calls or ()):
        call = _decode_tool_call(raw, f"{path}.tool_calls[{k}]")
        names[call.id] = call.name
        parts.append(call)
    return ir.Message("assistant", parts)


def _assistant_part(part: Any, path: str) -> ir.Text:
    if isinstance(part, dict) and part.get("type") == "refusal":
        return ir.Text(req_str(part.get("refusal"), f"{path}.refusal"))
    if isinstance(part, dict) and part.get("type") == "text":
        return ir.Text(_text_of(part, f"{path}.text"))
    raise InvalidRequest("expected a text or refusal part", path)


def _decode_tool_call(call: Any, path: str) -> ir.ToolCall:
    if not isinstance(call, dict):
        raise InvalidRequest("expected a tool call object", path)
    if call.get("type", "function") != "function":
        raise InvalidRequest("only function tool calls are supported", f"{path}.type")
    fn = call.get("function")
    if not isinstance(fn, dict):
        raise InvalidRequest('expected {"name": …, "arguments": "<JSON>"}', f"{path}.function")
    call_id, signature = unfold_call_id(req_str(call.get("id"), f"{path}.id"))
    name = req_str(fn.get("name"), f"{path}.function.name")
    return ir.ToolCall(call_id, name, decode_arguments(fn.get("arguments"), f"{path}.function.arguments"), signature)


def decode_arguments(value: Any, path: str) -> dict[str, Any]:
    """``arguments`` is a JSON string. Models do write invalid JSON; keep it rather than fail."""
    if value is None or isinstance(value, dict):
        return value or {}
    if not isinstance(value, str):
        raise InvalidRequest("expected a JSON string", path)
    return arguments_object(value)


def _decode_tools(raw: Any) -> list[ir.Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("expected an array of tools", "tools")
    return [_decode_tool(tool, f"tools[{i}]") for i, tool in enumerate(raw)]


def _decode_tool(tool: Any, path: str) -> ir.Tool:
    if not isinstance(tool, dict):
        raise InvalidRequest("expected a tool object", path)
    kind = tool.get("type", "function")
    if kind != "function":
        raise InvalidRequest(f"only function tools are supported, got {kind!r}", f"{path}.type")
    fn = tool.get("function")
    if not isinstance(fn, dict):
        raise InvalidRequest('expected {"name", "description", "parameters"}', f"{path}.function")
    name = req_str(fn.get("name"), f"{path}.function.name")
    description = _opt(fn, "description", str, None, f"{path}.function.description")
    params = _opt(fn, "parameters", dict, None, f"{path}.function.parameters")  # `strict` is dropped
    return ir.Tool(name, description) if params is None else ir.Tool(name, description, params)


def _decode_tool_choice(body: dict[str, Any], tools: list[ir.Tool]) -> tuple[ir.ToolChoice | None, list[ir.Tool]]:
    raw = body.get("tool_choice")
    choice: ir.ToolChoice | None = None
    if isinstance(raw, str):
        if raw not in TOOL_CHOICES:
            raise InvalidRequest(f"expected one of none, auto, required, got {raw!r}", "tool_choice")
        choice = ir.ToolChoice(raw)
    elif isinstance(raw, dict):
        choice, tools = _tool_choice_object(raw, tools)
    elif raw is not None:
        raise InvalidRequest("expected a string or an object", "tool_choice")
    if _opt(body, "parallel_tool_calls", bool, None) is False:
        choice = choice or ir.ToolChoice()
        choice.parallel = False
    return choice, tools


def _tool_choice_object(raw: dict[str, Any], tools: list[ir.Tool]) -> tuple[ir.ToolChoice, list[ir.Tool]]:
    kind = raw.get("type")
    if kind == "function":
        fn = raw.get("function")
        name = _known_tool(fn.get("name") if isinstance(fn, dict) else None, tools, "tool_choice.function.name")
        return ir.ToolChoice("tool", name), tools
    if kind != "allowed_tools":
        raise InvalidRequest(f"expected type function or allowed_tools, got {kind!r}", "tool_choice.type")
    spec = raw.get("allowed_tools")
    path = "tool_choice.allowed_tools"
    if not isinstance(spec, dict) or spec.get("mode") not in ("auto", "required"):
        raise InvalidRequest('expected {"mode": "auto" | "required", "tools": [...]}', path)
    listed = spec.get("tools")
    if not isinstance(listed, list):
        raise InvalidRequest("expected an array of tools", f"{path}.tools")
    allowed = {_known_tool(_choice_name(t), tools, f"{path}.tools[{i}]") for i, t in enumerate(listed)}
    return ir.ToolChoice(spec["mode"]), [tool for tool in tools if tool.name in allowed]


def _choice_name(entry: Any) -> Any:
    fn = entry.get("function") if isinstance(entry, dict) else None
    return fn.get("name") if isinstance(fn, dict) else None


def _known_tool(name: Any, tools: list[ir.Tool], path: str) -> str:
    if not isinstance(name, str) or all(tool.name != name for tool in tools):
        raise InvalidRequest(f"expected the name of a function in tools, got {name!r}", path)
    return name


def _decode_stop(raw: Any) -> list[str]:
    if raw is None:
        return []
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise InvalidRequest("expected a string or an array of at most 4 strings", "stop")
    return stops


def _decode_response_format(raw: Any, req: ir.ChatRequest) -> None:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if raw is None or kind == "text":
        return
    if kind == "json_object":
        req.json_mode = True
        return
    if kind != "json_schema" or not isinstance(raw, dict):
        raise InvalidRequest("expected type text, json_object or json_schema", "response_format.type")
    spec = raw.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidRequest('expected {"name": …, "schema": {…}}', "response_format.json_schema.schema")
    req.json_schema = schema
