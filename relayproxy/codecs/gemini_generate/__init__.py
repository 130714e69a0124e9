"""Gemini generateContent: responses, errors and token counts; requests and streams in sibling modules.

Theory of operation
-------------------
A Gemini body is proto-JSON: every field may be spelled lowerCamelCase or snake_case, even mixed in
one body (google-genai 3.x sends ``parameters_json_schema`` and ``thinkingConfig.thinking_budget``).
``_get`` reads a protocol field under either spelling. It is only ever applied to the protocol's own
objects: user data (function-call ``args``, ``functionResponse.response``, JSON Schemas) is copied
as it is, so a property named ``max_tokens`` or ``type`` survives.

Gemini calls usually carry no id, and Gemini 3 wants each call's ``thoughtSignature`` back on later
turns. Clients of the other protocols only echo a call id, so the id we hand them carries both
facts (the id format is in gemini_generate_vocab): the round trip is stateless.

Requests are decoded (client -> IR) in ``gemini_generate_request_decode`` and encoded (IR ->
upstream) in ``gemini_generate_request_encode``; this module re-exports what the registry uses.
Streams live in ``gemini_generate_stream`` and ``gemini_generate_stream_encode``, the wire
vocabulary in ``gemini_generate_vocab``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs import UpstreamCall
from relayproxy.codecs.gemini_generate._request_decode import append_part, decode_request
from relayproxy.codecs.gemini_generate._request_encode import (
    encode_image,
    encode_request,
    model_path,
    prepare_passthrough,
    request_body,
)
from relayproxy.codecs.gemini_generate._stream_decode import GeminiStreamDecoder, GeminiStreamTap
from relayproxy.codecs.gemini_generate._stream_encode import GeminiStreamEncoder
from relayproxy.codecs.gemini_generate._vocab import (
    blocked,
    call_part,
    candidate_parts,
    client_signature,
    decode_finish,
    decode_usage,
    encode_finish,
    encode_usage,
    error_body,
    error_message,
    error_object,
    error_status,
    error_type,
    response_call,
    response_id,
    signature,
)
from relayproxy.codecs.gemini_generate._vocab import get as _get
from relayproxy.errors import RelayError, UpstreamProtocolError, UpstreamStatusError

__all__ = [
    "auth_headers",
    "caller_headers",
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
    "prepare_count_passthrough",
    "prepare_passthrough",
    "response_usage",
    "stream_decoder",
    "stream_encoder",
    "stream_tap",
]


def caller_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return []  # no caller header changes what this protocol's upstream does


def auth_headers(api_key: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-goog-api-key", api_key.encode())]


# -- responses --------------------------------------------------------------------------------------


def decode_response(body: Any) -> ir.ChatResponse:
    if not isinstance(body, dict) or not isinstance(body.get("candidates", []), list):
        raise UpstreamProtocolError("Gemini response: expected a JSON object with a `candidates` array")
    candidate, wire = candidate_parts(body)
    parts: list[ir.Part] = []
    for part in wire:
        text = part.get("text")
        if isinstance(_get(part, "functionCall"), dict):
            append_part(parts, response_call(part))
        elif isinstance(text, str) and part.get("thought") is True:
            append_part(parts, ir.Thinking(text, signature=signature(part)))
        elif isinstance(text, str):  # a signature on a text part is not needed back: dropped
            append_part(parts, ir.Text(text))
    has_calls = any(isinstance(p, ir.ToolCall) for p in parts)
    finish = decode_finish(_get(candidate, "finishReason") if candidate else None, has_calls)
    if blocked(body):
        finish = ir.FinishReason.CONTENT_FILTER
    model = _get(body, "modelVersion")
    return ir.ChatResponse(
        response_id(body), model if isinstance(model, str) else "", parts, finish, response_usage(body)
    )


def response_usage(body: Any) -> ir.Usage | None:
    return decode_usage(_get(body, "usageMetadata")) if isinstance(body, dict) else None


def encode_response(resp: ir.ChatResponse, model: str) -> dict[str, Any]:
    """ChatResponse -> GenerateContentResponse. Thinking always goes out as thought parts: without the
    request, we cannot tell whether the client asked for includeThoughts (clients skip thought parts
    when reading ``.text``)."""
    candidate = {
        "content": {"role": "model", "parts": [w for p in resp.parts for w in _response_part(p)]},
        "finishReason": encode_finish(resp.finish),
        "index": 0,
    }
    body: dict[str, Any] = {"candidates": [candidate]}
    if resp.usage is not None:
        body["usageMetadata"] = encode_usage(resp.usage)
    body["modelVersion"] = model
    body["responseId"] = resp.id
    return body


def _response_part(part: ir.Part) -> list[dict[str, Any]]:
    if isinstance(part, ir.Text):
        return [{"text": part.text}]
    if isinstance(part, ir.Thinking):
        if part.redacted is not None and not part.text:
            return []
        thought: dict[str, Any] = {"text": part.text, "thought": True}
        if part.signature:
            thought["thoughtSignature"] = client_signature(part.signature)
        return [thought]
    if isinstance(part, ir.ToolCall):
        return [call_part(part.id, part.name, part.arguments, part.signature)]
    if isinstance(part, ir.Image):
        return [encode_image(part)]
    return []


# -- errors -----------------------------------------------------------------------------------------


def encode_error(err: RelayError) -> tuple[int, dict[str, Any]]:
    """Gemini's error shape: google-genai raises ClientError (4xx) / ServerError (5xx) by ``code``."""
    return err.status, error_body(err)


def decode_error(status: int, body: bytes, retry_after: str | None) -> UpstreamStatusError:
    try:
        error = error_object(orjson.loads(body))
    except orjson.JSONDecodeError:
        error = None
    if error is None:  # an HTML page from a proxy, or nothing
        snippet = " ".join(body[:300].decode("utf-8", "replace").split())[:200]
        message = f"Gemini upstream returned HTTP {status}" + (f": {snippet}" if snippet else "")
        return UpstreamStatusError(status, message, retry_after=retry_after)
    retry_after = retry_after or _retry_delay(error)
    return UpstreamStatusError(status, error_message(error), upstream_type=error_type(error), retry_after=retry_after)


def _retry_delay(error: dict[str, Any]) -> str | None:
    """Seconds from a google.rpc.RetryInfo detail ("retryDelay": "38.5s"), rounded up."""
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and re.fullmatch(r"\d+(\.\d+)?s", delay):
            return str(math.ceil(float(delay[:-1])))
    return None


def embedded_error(body: Any) -> UpstreamStatusError | None:
    """An ``{"error": {...}}`` object in an HTTP 200 body, or None."""
    error = error_object(body)
    if error is None or (isinstance(body, dict) and "candidates" in body):
        return None
    return UpstreamStatusError(error_status(error.get("code")), error_message(error), upstream_type=error_type(error))


# -- token counting ---------------------------------------------------------------------------------


def prepare_count_passthrough(body: dict[str, Any], upstream_model: str) -> UpstreamCall | None:
    """None: a Gemini count is translated (its wrapped request form and model path)."""
    return None


def encode_count_request(req: ir.ChatRequest, upstream_model: str) -> UpstreamCall | None:
    """countTokens takes bare ``contents``, or a whole ``generateContentRequest`` (which must name the
    model) when the system instruction and tools count too; the Developer API has no top-level
    systemInstruction/tools there (google-genai refuses them in that mode)."""
    body = request_body(req, generation=False)
    if len(body) > 1:
        body = {"generateContentRequest": {"model": "models/" + upstream_model.removeprefix("models/"), **body}}
    return UpstreamCall(model_path(upstream_model, "countTokens"), orjson.dumps(body))


def decode_count_response(body: Any) -> int:
    total = _get(body, "totalTokens") if isinstance(body, dict) else None
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise UpstreamProtocolError("Gemini countTokens response: expected {totalTokens: integer}")
    return total


def encode_count_response(tokens: int) -> dict[str, Any]:
    return {"totalTokens": tokens}


# -- streams (gemini_generate_stream) ------------------------------------------------------------------


def stream_decoder() -> GeminiStreamDecoder:
    return GeminiStreamDecoder()


def stream_encoder(req: ir.ChatRequest, model: str, *, sse: bool = True) -> GeminiStreamEncoder:
    return GeminiStreamEncoder(req, model, sse=sse)


def stream_tap(req: ir.ChatRequest) -> GeminiStreamTap:
    return GeminiStreamTap()
