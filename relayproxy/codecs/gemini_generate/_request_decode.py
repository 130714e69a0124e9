"""Gemini generateContent requests, client -> IR: ``decode_request`` and the proto-JSON readers it
validates with.

Every protocol field is read through ``_get`` (lowerCamelCase or snake_case, see ``gemini_generate``);
user data is copied as it is. Errors are ``InvalidRequest`` naming the field. Calls without an id get
one from their position in the history (``_position_tag``), so the same history yields the same
ids on every turn; a ``functionResponse`` without an id answers the oldest open call of its name.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs.gemini_generate._vocab import call_id, parse_call_id, restore_signature
from relayproxy.codecs.gemini_generate._vocab import get as _get
from relayproxy.errors import InvalidRequest

__all__ = ["append_part", "decode_request"]

# -- proto-JSON field access -------------------------------------------------------------------


def _typed(obj: dict[str, Any], name: str, path: str, kind: type | tuple[type, ...], label: str) -> Any:
    value = _get(obj, name)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidRequest(f"expected {label}, got {_preview(value)}", path)
    return value


def _preview(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()[:40]
    except orjson.JSONEncodeError:
        return repr(value)[:40]


def _opt_dict(obj: dict[str, Any], name: str, path: str) -> dict[str, Any] | None:
    value: dict[str, Any] | None = _typed(obj, name, path, dict, "an object")
    return value


def _opt_str(obj: dict[str, Any], name: str, path: str) -> str | None:
    value: str | None = _typed(obj, name, path, str, "a string")
    return value


def _opt_num(obj: dict[str, Any], name: str, path: str) -> float | None:
    value: float | None = _typed(obj, name, path, (int, float), "a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"expected a finite number, got {value}", path)
    return value


def _opt_int(obj: dict[str, Any], name: str, path: str) -> int | None:
    """An integer; an integral float (google-genai sends ``topK: 40.0``) counts as one."""
    value = _opt_num(obj, name, path)
    if value is None:
        return None
    if value != int(value):
        raise InvalidRequest(f"expected an integer, got {value}", path)
    return int(value)


def _opt_str_list(obj: dict[str, Any], name: str, path: str) -> list[str] | None:
    value = _get(obj, name)
    if isinstance(value, str):
        return [value]
    if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise InvalidRequest(f"expected an array of strings, got {_preview(value)}", path)
    return value


def _json_text(value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits from a non-orjson parser
        raise InvalidRequest(f"not representable as JSON: {exc}", path) from None


# -- requests: Gemini client -> IR ------------------------------------------------------------------


def decode_request(body: Any, *, model: str | None = None, stream: bool | None = None) -> ir.ChatRequest:
    """A Gemini request body -> ChatRequest. ``model``/``stream`` come from the URL path."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    inner = _get(body, "generateContentRequest")  # countTokens' wrapped form
    if isinstance(inner, dict) and _get(body, "contents") is None:
        body = inner
    tools, choice = _decode_tools(body)
    req = ir.ChatRequest(
        model=_model_name(model, body),
        messages=_decode_contents(body),
        system=_decode_system(body),
        tools=tools,
        tool_choice=choice,
        stream=bool(stream),
    )
    _decode_generation(_opt_dict(body, "generationConfig", "generationConfig") or {}, req)
    return req


def _model_name(model: str | None, body: dict[str, Any]) -> str:
    name = model if model is not None else body.get("model")
    if not isinstance(name, str) or not name.removeprefix("models/"):
        raise InvalidRequest("required: the model name, from the path /v1beta/models/{model}:generateContent", "model")
    return name.removeprefix("models/")


class _OpenCalls:
    """Calls of the history not yet answered, so a functionResponse without id finds its call by name."""

    def __init__(self) -> None:
        self._open: list[tuple[str, str]] = []  # (name, call id), oldest first

    def add(self, name: str, call_id: str) -> None:
        self._open.append((name, call_id))

    def answer(self, name: str, call_id: str | None) -> str | None:
        for k, (open_name, open_id) in enumerate(self._open):
            if open_id == call_id or (call_id is None and open_name == name):
                del self._open[k]
                return open_id
        return call_id


def _decode_contents(body: dict[str, Any]) -> list[ir.Message]:
    contents = _get(body, "contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidRequest("required, a non-empty array of {role, parts} contents", "contents")
    calls = _OpenCalls()
    return [_decode_content(content, i, calls) for i, content in enumerate(contents)]


def _decode_content(content: Any, i: int, calls: _OpenCalls) -> ir.Message:
    path = f"contents[{i}]"
    if not isinstance(content, dict):
        raise InvalidRequest("expected a content object {role, parts}", path)
    role = (_opt_str(content, "role", path + ".role") or "user").lower()
    if role not in ("user", "model", "function"):  # "function": the legacy role of functionResponse turns
        raise InvalidRequest(f"expected role user or model, got {role!r}", path + ".role")
    parts = _get(content, "parts")
    if not isinstance(parts, list):
        raise InvalidRequest("required, an array of parts", path + ".parts")
    out: list[ir.Part] = []
    for j, part in enumerate(parts):
        decoded = _decode_part(part, f"{path}.parts[{j}]", role == "model", calls)
        if decoded is not None:
            append_part(out, decoded)
    return ir.Message("assistant" if role == "model" else "user", out)


def append_part(parts: list[ir.Part], part: ir.Part) -> None:
    """Join a streamed answer's fragments back up: adjacent texts, adjacent thoughts (the signature
    closes a thought, so nothing joins onto a signed one)."""
    last = parts[-1] if parts else None
    if isinstance(last, ir.Text) and isinstance(part, ir.Text):
        last.text += part.text
    elif isinstance(last, ir.Thinking) and isinstance(part, ir.Thinking) and last.signature is None:
        last.text, last.signature = last.text + part.text, part.signature
    else:
        parts.append(part)


# Gemini server-side features with no IR equivalent: skipped, so that a Gemini-to-Gemini
# passthrough (which forwards the client's own body) keeps working with them.
_SKIPPED_PARTS = ("executableCode", "codeExecutionResult", "toolCall", "toolResponse")


def _decode_part(part: Any, path: str, assistant: bool, calls: _OpenCalls) -> ir.Part | None:
    if not isinstance(part, dict):
        raise InvalidRequest("expected a part object", path)
    if (text := _opt_str(part, "text", path + ".text")) is not None:
        if assistant and part.get("thought") is True:
            return ir.Thinking(text, signature=_replayed_signature(part, path))
        return ir.Text(text)
    if (data := _opt_dict(part, "inlineData", path + ".inlineData")) is not None:
        mime = _required_str(data, "mimeType", path + ".inlineData.mimeType")
        return ir.Image(mime_type=mime, data=_required_str(data, "data", path + ".inlineData.data"))
    if (file := _opt_dict(part, "fileData", path + ".fileData")) is not None:
        uri = _required_str(file, "fileUri", path + ".fileData.fileUri")
        return ir.Image(mime_type=_opt_str(file, "mimeType", path + ".fileData.mimeType"), url=uri)
    if (call := _opt_dict(part, "functionCall", path + ".functionCall")) is not None:
        if not assistant:
            raise InvalidRequest("a functionCall belongs in a model turn", path)
        return _decode_call(call, part, path, calls)
    if (result := _opt_dict(part, "functionResponse", path + ".functionResponse")) is not None:
        if assistant:
            raise InvalidRequest("a functionResponse belongs in a user turn", path)
        return _decode_result(result, path, calls)
    if any(_get(part, kind) is not None for kind in _SKIPPED_PARTS):
        return None
    raise InvalidRequest("expected a part with text, inlineData, fileData, functionCall or functionResponse", path)


def _required_str(obj: dict[str, Any], name: str, path: str) -> str:
    value = _opt_str(obj, name, path)
    if not value:
        raise InvalidRequest("required, a non-empty string", path)
    return value


def _replayed_signature(part: dict[str, Any], path: str) -> str | None:
    sig = _opt_str(part, "thoughtSignature", path + ".thoughtSignature")
    return restore_signature(sig) if sig else sig


def _decode_call(call: dict[str, Any], part: dict[str, Any], path: str, calls: _OpenCalls) -> ir.ToolCall:
    name = _required_str(call, "name", path + ".functionCall.name")
    args = call.get("args")
    if args is not None and not isinstance(args, dict):
        raise InvalidRequest(f"expected an object, got {_preview(args)}", path + ".functionCall.args")
    given = _opt_str(call, "id", path + ".functionCall.id")
    sig = _replayed_signature(part, path)
    if given and sig is None:
        sig = parse_call_id(given).signature
    cid = given or call_id(None, sig, nonce=_position_tag(path))
    calls.add(name, cid)
    return ir.ToolCall(cid, name, args or {}, signature=sig)


def _position_tag(path: str) -> str:
    """A stable id nonce from the part's position: the same history yields the same ids on every turn,
    so upstream prompt caches keyed on the prefix keep hitting."""
    content, part = re.findall(r"\d+", path)[:2]
    return f"c{content}p{part}"


def _decode_result(result: dict[str, Any], path: str, calls: _OpenCalls) -> ir.ToolResult:
    path += ".functionResponse"
    name = _required_str(result, "name", path + ".name")
    cid = calls.answer(name, _opt_str(result, "id", path + ".id")) or call_id(None, None, _position_tag(path))
    response = result.get("response")
    if isinstance(response, dict) and "output" in response:
        return ir.ToolResult(cid, _json_text(response["output"], path + ".response.output"), name)
    if isinstance(response, dict) and "error" in response:
        return ir.ToolResult(cid, _json_text(response["error"], path + ".response.error"), name, is_error=True)
    return ir.ToolResult(cid, _json_text(response if response is not None else {}, path + ".response"), name)


def _decode_system(body: dict[str, Any]) -> str | None:
    value = _get(body, "systemInstruction")
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, dict) or not isinstance(parts := _get(value, "parts"), list):
        raise InvalidRequest("expected a content object {parts: [{text}]} or a string", "systemInstruction")
    texts: list[str] = []
    for j, part in enumerate(parts):
        text = _get(part, "text") if isinstance(part, dict) else None
        if not isinstance(text, str):
            raise InvalidRequest("expected a text part", f"systemInstruction.parts[{j}]")
        texts.append(text)
    return "\n".join(texts) or None


def _decode_tools(body: dict[str, Any]) -> tuple[list[ir.Tool], ir.ToolChoice | None]:
    tools: list[ir.Tool] = []
    raw = _typed(body, "tools", "tools", list, "an array of tools") or []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise InvalidRequest("expected a tool object", f"tools[{i}]")
        path = f"tools[{i}].functionDeclarations"
        # Other kinds (googleSearch, codeExecution, urlContext, ...) run on Google's side and have no
        # IR form: skipped, like _SKIPPED_PARTS, so a Gemini-to-Gemini passthrough keeps them.
        for j, decl in enumerate(_typed(tool, "functionDeclarations", path, list, "an array") or []):
            tools.append(_decode_declaration(decl, f"{path}[{j}]"))
    choice, allowed = _decode_tool_config(body)
    if allowed:  # ANY/VALIDATED restricted to several names: the IR's way is a shorter tool list
        tools = [tool for tool in tools if tool.name in allowed]
    return tools, choice


def _decode_declaration(decl: Any, path: str) -> ir.Tool:
    if not isinstance(decl, dict):
        raise InvalidRequest("expected a function declaration object", path)
    tool = ir.Tool(_required_str(decl, "name", path + ".name"), _opt_str(decl, "description", path + ".description"))
    schema = _opt_dict(decl, "parametersJsonSchema", path + ".parametersJsonSchema")
    if schema is None and (openapi := _opt_dict(decl, "parameters", path + ".parameters")) is not None:
        schema = _json_schema(openapi, path + ".parameters")
    if schema is not None:
        tool.parameters = schema
    return tool


def _json_schema(schema: dict[str, Any], path: str) -> dict[str, Any]:
    try:
        converted: dict[str, Any] = _openapi_node(schema)
    except RecursionError:
        raise InvalidRequest("schema nested too deeply", path) from None
    return converted


def _openapi_node(node: Any) -> Any:
    """Gemini's OpenAPI-subset Schema -> JSON Schema: lower-case type names, ``nullable`` -> a "null"
    type. Walks schema positions only (properties' values, items, anyOf), never property names."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = kind.lower()
        if out["type"] == "type_unspecified":
            del out["type"]
    if out.pop("nullable", None) is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if isinstance(props := out.get("properties"), dict):
        out["properties"] = {name: _openapi_node(sub) for name, sub in props.items()}
    if "items" in out:
        out["items"] = _openapi_node(out["items"])
    if isinstance(any_of := out.get("anyOf"), list):
        out["anyOf"] = [_openapi_node(sub) for sub in any_of]
    return out


_MODES = {"AUTO": "auto", "ANY": "required", "NONE": "none", "VALIDATED": "auto", "MODE_UNSPECIFIED": "auto"}


def _decode_tool_config(body: dict[str, Any]) -> tuple[ir.ToolChoice | None, set[str]]:
    """toolConfig -> (ToolChoice, names the tool list must be cut down to, or an empty set)."""
    path = "toolConfig.functionCallingConfig"
    config = _opt_dict(_opt_dict(body, "toolConfig", "toolConfig") or {}, "functionCallingConfig", path)
    if config is None:
        return None, set()
    mode = (_opt_str(config, "mode", path + ".mode") or "AUTO").upper()
    if mode not in _MODES:
        raise InvalidRequest(f"expected AUTO, ANY, NONE or VALIDATED, got {mode!r}", path + ".mode")
    names = _opt_str_list(config, "allowedFunctionNames", path + ".allowedFunctionNames") or []
    if mode == "ANY" and len(names) == 1:
        return ir.ToolChoice("tool", names[0]), set()
    return ir.ToolChoice(_MODES[mode]), set(names) if mode in ("ANY", "VALIDATED") else set()


def _decode_generation(gen: dict[str, Any], req: ir.ChatRequest) -> None:
    p = "generationConfig."
    req.temperature = _opt_num(gen, "temperature", p + "temperature")
    if req.temperature is not None and not 0 <= req.temperature <= 2:
        raise InvalidRequest(f"must be between 0 and 2, got {req.temperature}", p + "temperature")
    req.top_p = _opt_num(gen, "topP", p + "topP")
    top_k = _opt_num(gen, "topK", p + "topK")  # google-genai sends 40.0
    req.top_k = int(top_k) if top_k is not None else None
    count = _opt_num(gen, "candidateCount", p + "candidateCount")
    if count is not None and count > 1:
        raise InvalidRequest(f"only candidateCount = 1 is supported, got {count}", p + "candidateCount")
    req.max_output_tokens = _opt_int(gen, "maxOutputTokens", p + "maxOutputTokens")
    if req.max_output_tokens is not None and req.max_output_tokens < 1:
        raise InvalidRequest(f"must be a positive integer, got {req.max_output_tokens}", p + "maxOutputTokens")
    req.stop = _opt_str_list(gen, "stopSequences", p + "stopSequences") or []
    req.seed = _opt_int(gen, "seed", p + "seed")
    _decode_output_format(gen, req)
    req.reasoning = _decode_thinking(gen)


def _decode_output_format(gen: dict[str, Any], req: ir.ChatRequest) -> None:
    p = "generationConfig."
    mime = _opt_str(gen, "responseMimeType", p + "responseMimeType")
    if mime is None or mime.lower() != "application/json":
        return  # text/plain, or text/x.enum (no IR equivalent)
    schema = _opt_dict(gen, "responseJsonSchema", p + "responseJsonSchema")
    if schema is None and (openapi := _opt_dict(gen, "responseSchema", p + "responseSchema")) is not None:
        schema = _json_schema(openapi, p + "responseSchema")
    req.json_schema, req.json_mode = schema, schema is None


def _decode_thinking(gen: dict[str, Any]) -> ir.Reasoning | None:
    path = "generationConfig.thinkingConfig"
    config = _opt_dict(gen, "thinkingConfig", path)
    if config is None:
        return None
    budget = _opt_int(config, "thinkingBudget", path + ".thinkingBudget")
    level = _opt_str(config, "thinkingLevel", path + ".thinkingLevel")
    include = _typed(config, "includeThoughts", path + ".includeThoughts", bool, "a boolean") or False
    effort = level.lower() if level and level.upper() != "THINKING_LEVEL_UNSPECIFIED" else None
    if budget == 0:
        effort, budget = "none", None
    elif budget == -1:  # dynamic: the model decides
        effort, budget = effort or "medium", None
    elif budget is not None and budget < 0:
        raise InvalidRequest(
            f"expected -1 (dynamic), 0 (off) or a token budget, got {budget}", path + ".thinkingBudget"
        )
    return ir.Reasoning(effort=effort, budget_tokens=budget, include_thoughts=include)
