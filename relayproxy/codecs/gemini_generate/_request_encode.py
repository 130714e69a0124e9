"""Gemini generateContent requests, IR -> upstream: ``encode_request``, ``prepare_passthrough`` and
the request body that ``countTokens`` reuses.

Requests to Gemini merge adjacent same-role turns, name every ``functionResponse`` (looked up from
the call it answers) and send tool schemas as ``parametersJsonSchema``, the original JSON Schema
(§7.3). Each call goes back with the ``thoughtSignature`` its id carries, and the first call of a
model turn without one gets Google's documented stand-in.
"""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs import UpstreamCall
from relayproxy.codecs.gemini_generate._vocab import SKIP_SIGNATURE, parse_call_id
from relayproxy.errors import InvalidRequest

__all__ = ["encode_image", "encode_request", "model_path", "prepare_passthrough", "request_body"]

# -- requests: IR -> Gemini upstream ----------------------------------------------------------------


def model_path(model: str, method: str) -> str:
    return f"/v1beta/models/{model.removeprefix('models/')}:{method}"


def _method(stream: bool) -> str:
    return "streamGenerateContent?alt=sse" if stream else "generateContent"


def encode_request(req: ir.ChatRequest, upstream_model: str) -> UpstreamCall:
    return UpstreamCall(model_path(upstream_model, _method(req.stream)), orjson.dumps(request_body(req)))


def prepare_passthrough(body: dict[str, Any], req: ir.ChatRequest, upstream_model: str) -> UpstreamCall:
    """Gemini to Gemini: the client's body unchanged (the model lives in the path)."""
    return UpstreamCall(model_path(upstream_model, _method(req.stream)), orjson.dumps(body))


def request_body(req: ir.ChatRequest, *, generation: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": _encode_contents(req.messages)}
    if req.system:
        body["systemInstruction"] = {"parts": [{"text": req.system}]}
    if req.tools:
        # All functions in ONE tool object; schemas as parametersJsonSchema, the original JSON Schema,
        # since the OpenAPI-subset `parameters` rejects $ref, oneOf, additionalProperties... (§7.3).
        body["tools"] = [{"functionDeclarations": [_encode_tool(tool) for tool in req.tools]}]
        if req.tool_choice is not None and generation:
            body["toolConfig"] = {"functionCallingConfig": _encode_tool_choice(req.tool_choice)}
    if generation and (gen := _encode_generation(req)):
        body["generationConfig"] = gen
    return body


def _encode_tool(tool: ir.Tool) -> dict[str, Any]:
    decl: dict[str, Any] = {"name": tool.name}
    if tool.description:
        decl["description"] = tool.description
    decl["parametersJsonSchema"] = tool.parameters
    return decl


def _encode_tool_choice(choice: ir.ToolChoice) -> dict[str, Any]:
    if choice.mode == "tool" and choice.name:
        return {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    return {"mode": {"none": "NONE", "required": "ANY", "tool": "ANY"}.get(choice.mode, "AUTO")}


def _encode_contents(messages: list[ir.Message]) -> list[dict[str, Any]]:
    """Messages -> alternating user/model contents, with the signature rule applied to model turns."""
    names = {p.id: p.name for m in messages for p in m.parts if isinstance(p, ir.ToolCall)}
    contents: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        role = "model" if msg.role == "assistant" else "user"
        parts = [wire for j, p in enumerate(msg.parts) for wire in _encode_part(p, names, f"messages[{i}].parts[{j}]")]
        if not parts:
            continue  # Gemini rejects a content with no parts (e.g. only unsigned thinking)
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)  # Gemini wants alternating turns
        else:
            contents.append({"role": role, "parts": parts})
    for content in contents:
        if content["role"] == "model":
            _sign_first_call(content["parts"])
    return contents


def _sign_first_call(parts: list[dict[str, Any]]) -> None:
    """Gemini 3 rejects a model turn whose first functionCall part has no thoughtSignature. Calls made
    by another provider have none: send the documented sentinel, which Gemini 2.x ignores."""
    first = next((part for part in parts if "functionCall" in part), None)
    if first is not None and "thoughtSignature" not in first:
        first["thoughtSignature"] = SKIP_SIGNATURE


def _encode_part(part: ir.Part, names: dict[str, str], path: str) -> list[dict[str, Any]]:
    if isinstance(part, ir.Text):
        return [{"text": part.text}] if part.text else []  # an empty text part is a 400
    if isinstance(part, ir.Image):
        return [encode_image(part)]
    if isinstance(part, ir.Thinking):
        # Gemini only uses a thought again through its signature; unsigned or redacted thinking
        # (Anthropic's, DeepSeek's) would just be re-read as text, so it is dropped.
        if part.signature and part.redacted is None:
            return [{"text": part.text, "thought": True, "thoughtSignature": part.signature}]
        return []
    if isinstance(part, ir.ToolCall):
        return [_encode_call(part)]
    return _encode_result(part, names, path)


def _encode_call(call: ir.ToolCall) -> dict[str, Any]:
    ref = parse_call_id(call.id)
    function: dict[str, Any] = {"name": call.name, "args": call.arguments}
    if ref.upstream_id is not None:
        function["id"] = ref.upstream_id
    part: dict[str, Any] = {"functionCall": function}
    if signature := call.signature or ref.signature:
        part["thoughtSignature"] = signature
    return part


def _encode_result(result: ir.ToolResult, names: dict[str, str], path: str) -> list[dict[str, Any]]:
    name = result.name or names.get(result.call_id)
    if not name:
        raise InvalidRequest(
            f"the result for call id {result.call_id!r} answers no earlier call, and Gemini needs the function name",
            path,
        )
    images: list[ir.Image] = []
    if isinstance(result.content, str):
        text = result.content
    else:
        text = "".join(p.text for p in result.content if isinstance(p, ir.Text))
        images = [p for p in result.content if isinstance(p, ir.Image)]
    response = {"error": text} if result.is_error else {"output": _output_value(text)}
    function: dict[str, Any] = {"name": name, "response": response}
    if (upstream_id := parse_call_id(result.call_id).upstream_id) is not None:
        function["id"] = upstream_id
    return [{"functionResponse": function}, *(encode_image(image) for image in images)]


def _output_value(text: str) -> Any:
    """A JSON object result stays an object (Gemini reads its fields); anything else stays text."""
    if text[:1] == "{":
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
        if isinstance(value, dict):
            return value
    return text


def encode_image(image: ir.Image) -> dict[str, Any]:
    if image.data is not None:
        return {"inlineData": {"mimeType": image.mime_type or "image/png", "data": image.data}}
    url = image.url or ""
    if url.startswith("data:"):
        header, _, payload = url[5:].partition(",")
        mime = header.split(";")[0] or "image/png"
        if ";base64" not in header:
            payload = base64.b64encode(urllib.parse.unquote_to_bytes(payload)).decode()
        return {"inlineData": {"mimeType": mime, "data": payload}}
    # Gemini fetches Files API URIs and only some public URLs: another URL may be refused upstream
    # (400). A codec does no I/O, so the image is not fetched and inlined here.
    file: dict[str, Any] = {"fileUri": url}
    if image.mime_type:
        file["mimeType"] = image.mime_type
    return {"fileData": file}


# protocols.md §7.5: there is no official effort table; budgets inside each band it gives.
_EFFORT_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768, "max": 32768}


def _encode_generation(req: ir.ChatRequest) -> dict[str, Any]:
    gen: dict[str, Any] = {}
    plain = [
        ("temperature", req.temperature),
        ("topP", req.top_p),
        ("topK", req.top_k),
        ("maxOutputTokens", req.max_output_tokens),
        ("seed", req.seed),
    ]
    gen.update((key, value) for key, value in plain if value is not None)
    if req.stop:
        if len(req.stop) > 5:
            raise InvalidRequest(f"a Gemini model takes at most 5 stop sequences, got {len(req.stop)}", "stop")
        gen["stopSequences"] = req.stop
    if req.json_schema is not None or req.json_mode:
        gen["responseMimeType"] = "application/json"
    if req.json_schema is not None:
        gen["responseJsonSchema"] = req.json_schema
    if req.reasoning is not None and (thinking := _encode_thinking(req.reasoning)):
        gen["thinkingConfig"] = thinking
    return gen


def _encode_thinking(reasoning: ir.Reasoning) -> dict[str, Any]:
    config: dict[str, Any] = {}
    budget = reasoning.budget_tokens
    if budget is None:
        budget = _EFFORT_BUDGETS.get(reasoning.effort or "")
    if budget is not None:
        config["thinkingBudget"] = budget
    if reasoning.include_thoughts:
        config["includeThoughts"] = True
    return config
