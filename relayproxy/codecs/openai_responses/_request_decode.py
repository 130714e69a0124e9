"""OpenAI Responses request -> IR. Stateless: ``store`` is treated as false and
``previous_response_id`` is refused, since the gateway keeps no conversation.

``input`` items fold into IR turns: assistant-side items (assistant messages, ``function_call``,
``reasoning``) join one assistant turn, ``function_call_output`` items and user messages one user
turn, as consecutive items of one side are one turn upstream.
"""

from __future__ import annotations

from typing import Any

from relayproxy import ir
from relayproxy.codecs.openai_responses._vocab import EFFORTS
from relayproxy.codecs.shared import arguments_object, is_int, req_str, unfold_call_id
from relayproxy.errors import InvalidRequest

__all__ = ["decode_request"]

_BUILTIN = {
    "web_search",
    "web_search_preview",
    "file_search",
    "computer_use_preview",
    "computer_use",
    "code_interpreter",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
    "apply_patch",
    "custom",
}
_ASSISTANT_ITEMS = ("function_call", "reasoning")


#: Why an item_reference cannot be served: a streamed item's id is sent in output_item.added before
#: its content exists, so no id can carry the content, and the gateway keeps no state to look it up.
STORED_REFERENCE = (
    "item_reference needs the item stored server-side, and this gateway is stateless (store is treated "
    "as false): send the item itself by setting store: false in the request (Vercel AI SDK: "
    "providerOptions: {openai: {store: false}})"
)


def decode_request(body: Any, *, model: str | None = None, stream: bool | None = None) -> ir.ChatRequest:
    """A Responses request body -> IR; InvalidRequest names the bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("required, a model name string", "model")
    if body.get("previous_response_id") is not None:
        raise InvalidRequest(
            "this gateway is stateless and keeps no responses; resend the whole conversation in input",
            "previous_response_id",
        )
    if body.get("conversation") is not None:
        raise InvalidRequest("this gateway is stateless; resend the whole conversation in input", "conversation")
    system, messages = _decode_input(body.get("input"))
    instructions = _opt(body, "instructions", str)
    tools, builtin = _decode_tools(body.get("tools"))
    req = ir.ChatRequest(name, messages, system=_join(instructions, system), tools=tools, builtin_tools=builtin)
    req.tool_choice = _decode_tool_choice(body, tools)
    req.max_output_tokens = _opt_count(body, "max_output_tokens")
    req.temperature, req.top_p = _opt_number(body, "temperature", 2), _opt_number(body, "top_p", 1)
    req.stream = _opt(body, "stream", bool) is True
    req.include_usage = True
    req.user = _opt(body, "safety_identifier", str) or _opt(body, "user", str)
    req.prompt_cache_key = _opt(body, "prompt_cache_key", str)
    req.reasoning = _decode_reasoning(body.get("reasoning"))
    _decode_text(body.get("text"), req)
    return req


def _join(*texts: str | None) -> str | None:
    return "\n\n".join(t for t in texts if t) or None


def _opt(body: dict[str, Any], key: str, typ: type) -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, typ):
        raise InvalidRequest(f"expected {typ.__name__}, got {type(value).__name__}", key)
    return value


def _opt_count(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and (not is_int(value) or value < 1):
        raise InvalidRequest(f"must be a positive integer, got {value!r}", key)
    return value


def _opt_number(body: dict[str, Any], key: str, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise InvalidRequest(f"must be a number between 0 and {high}, got {value!r}", key)
    return float(value)


# -- input ----------------------------------------------------------------------------------------


def _decode_input(raw: Any) -> tuple[str | None, list[ir.Message]]:
    if isinstance(raw, str):
        return None, [ir.Message("user", [ir.Text(raw)])]
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("required, a string or a non-empty array of input items", "input")
    system: list[str] = []
    turns: list[ir.Message] = []
    names: dict[str, str] = {}  # call id -> function name, for the ToolResults Gemini needs named
    for i, item in enumerate(raw):
        path = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest("expected an input item object", path)
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") in ("system", "developer"):
            system.append(_plain_text(item.get("content"), f"{path}.content"))
            continue
        role, parts = _decode_item(item, kind, path, names)
        if turns and turns[-1].role == role:
            turns[-1].parts.extend(parts)
        else:
            turns.append(ir.Message(role, parts))
    return _join(*system), turns


def _decode_item(item: dict[str, Any], kind: Any, path: str, names: dict[str, str]) -> tuple[str, list[ir.Part]]:
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"expected one of user, assistant, system, developer, got {role!r}", f"{path}.role")
        return role, _content(item.get("content"), f"{path}.content")
    if kind == "function_call":
        call_id, sig = unfold_call_id(req_str(item.get("call_id"), f"{path}.call_id"))
        name = req_str(item.get("name"), f"{path}.name")
        args = item.get("arguments")
        if not isinstance(args, str):
            raise InvalidRequest("expected a JSON string", f"{path}.arguments")
        names[call_id] = name
        return "assistant", [ir.ToolCall(call_id, name, arguments_object(args), signature=sig)]
    if kind == "function_call_output":
        call_id, _ = unfold_call_id(req_str(item.get("call_id"), f"{path}.call_id"))
        output = item.get("output")
        value = output if isinstance(output, str) else _user_parts(output, f"{path}.output")
        return "user", [ir.ToolResult(call_id, value, name=names.get(call_id))]
    if kind == "reasoning":
        return "assistant", [_reasoning(item, path)]
    if kind == "item_reference":
        raise InvalidRequest(STORED_REFERENCE, f"{path}.type")
    raise InvalidRequest(
        f"input items of type {kind!r} are not supported; send message, function_call, "
        "function_call_output or reasoning items",
        f"{path}.type",
    )


def _reasoning(item: dict[str, Any], path: str) -> ir.Thinking:
    summary = item.get("summary")
    if summary is not None and not isinstance(summary, list):
        raise InvalidRequest("expected an array of summary_text parts", f"{path}.summary")
    text = "".join(p["text"] for p in summary or () if isinstance(p, dict) and isinstance(p.get("text"), str))
    sig = item.get("encrypted_content")
    return ir.Thinking(text, signature=sig if isinstance(sig, str) and sig else None)


def _plain_text(content: Any, path: str) -> str:
    if isinstance(content, str):
        return content
    parts = _content(content, path)
    if any(not isinstance(p, ir.Text) for p in parts):
        raise InvalidRequest("system and developer messages take text parts only", path)
    return "".join(p.text for p in parts if isinstance(p, ir.Text))


def _content(content: Any, path: str) -> list[ir.Part]:
    if isinstance(content, str):
        return [ir.Text(content)]
    return [*_user_parts(content, path)]


def _user_parts(content: Any, path: str) -> list[ir.Text | ir.Image]:
    if not isinstance(content, list):
        raise InvalidRequest("expected a string or an array of content parts", path)
    return [_part(p, f"{path}[{j}]") for j, p in enumerate(content)]


def _part(part: Any, path: str) -> ir.Text | ir.Image:
    if not isinstance(part, dict):
        raise InvalidRequest("expected a content part object", path)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text", "refusal"):
        text = part.get("refusal") if kind == "refusal" else part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest("required, a string", f"{path}.text")
        return ir.Text(text)
    if kind == "input_image":
        return _image(part.get("image_url"), f"{path}.image_url")
    raise InvalidRequest(f"expected a part of type input_text, output_text or input_image, got {kind!r}", path)


def _image(url: Any, path: str) -> ir.Image:
    if not isinstance(url, str):
        raise InvalidRequest("required, an https:// URL or a base64 data: URL (file_id is not supported)", path)
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        if not sep or not head.endswith(";base64"):
            raise InvalidRequest("expected a base64 data URL: data:<mime>;base64,<data>", path)
        return ir.Image(mime_type=head.removesuffix(";base64"), data=data)
    if url.startswith(("https://", "http://")):
        return ir.Image(url=url)
    raise InvalidRequest("expected an https:// URL or a base64 data: URL", path)


# -- tools, reasoning, text format ----------------------------------------------------------------


def _decode_tools(raw: Any) -> tuple[list[ir.Tool], list[str]]:
    """The function tools, and the types of the built-in ones (kept out of the IR: see
    ``ChatRequest.builtin_tools``)."""
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        raise InvalidRequest("expected an array of tools", "tools")
    tools: list[ir.Tool] = []
    builtin: list[str] = []
    for i, tool in enumerate(raw):
        inner = tool.get("tools") if isinstance(tool, dict) and tool.get("type") == "namespace" else None
        if isinstance(inner, list):  # Codex groups function tools in a namespace: they are still functions
            tools += [_function(t, f"tools[{i}].tools[{j}]") for j, t in enumerate(inner)]
        elif isinstance(kind := tool.get("type") if isinstance(tool, dict) else None, str) and _is_builtin(kind):
            builtin.append(kind)
        else:
            tools.append(_function(tool, f"tools[{i}]"))
    return tools, builtin


def _is_builtin(kind: str) -> bool:
    return kind in _BUILTIN or kind.startswith(("web_search", "computer_use"))


def _function(tool: Any, path: str) -> ir.Tool:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or kind != "function":
        raise InvalidRequest(f"expected a tool of type function, got {kind!r}", f"{path}.type")
    name = req_str(tool.get("name"), f"{path}.name")
    description = _opt(tool, "description", str)
    params = _opt(tool, "parameters", dict)  # `strict` is dropped
    return ir.Tool(name, description) if params is None else ir.Tool(name, description, params)


def _decode_tool_choice(body: dict[str, Any], tools: list[ir.Tool]) -> ir.ToolChoice | None:
    raw = body.get("tool_choice")
    choice: ir.ToolChoice | None = None
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise InvalidRequest(f"expected one of none, auto, required, got {raw!r}", "tool_choice")
        choice = ir.ToolChoice(raw)
    elif isinstance(raw, dict):
        name = raw.get("name")
        if raw.get("type") != "function" or all(t.name != name for t in tools):
            raise InvalidRequest('expected {"type": "function", "name": <a function in tools>}', "tool_choice")
        choice = ir.ToolChoice("tool", name)
    elif raw is not None:
        raise InvalidRequest("expected a string or an object", "tool_choice")
    if _opt(body, "parallel_tool_calls", bool) is False:
        choice = choice or ir.ToolChoice()
        choice.parallel = False
    return choice


def _decode_reasoning(raw: Any) -> ir.Reasoning | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest('expected {"effort": …, "summary": …}', "reasoning")
    effort = raw.get("effort")
    if effort is not None and effort not in EFFORTS:
        raise InvalidRequest(f"expected one of {', '.join(EFFORTS)}, got {effort!r}", "reasoning.effort")
    summary = raw.get("summary") or raw.get("generate_summary")
    if effort is None and summary is None:
        return None
    return ir.Reasoning(effort=effort, include_thoughts=summary is not None and effort != "none")


def _decode_text(raw: Any, req: ir.ChatRequest) -> None:
    if raw is None:
        return
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or (fmt is not None and not isinstance(fmt, dict)):
        raise InvalidRequest('expected {"format": {"type": …}}', "text")
    kind = fmt.get("type") if fmt else "text"
    if kind == "text":
        return
    if kind == "json_object":
        req.json_mode = True
        return
    if kind != "json_schema" or fmt is None:
        raise InvalidRequest(f"expected type text, json_object or json_schema, got {kind!r}", "text.format.type")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest('expected {"type": "json_schema", "name": …, "schema": {…}}', "text.format.schema")
    req.json_schema = schema
