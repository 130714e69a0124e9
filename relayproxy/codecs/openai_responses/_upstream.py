"""The upstream half of the Responses codec: a passthrough to an OpenAI provider that serves
``/responses`` itself (``responses = true``). Only a Responses client is planned this way (same
protocol, passthrough on); every other pair goes through the canonical model.

The call is the client's own body with two changes: the upstream model name, and ``store``
forced to ``false`` (the gateway is stateless: nothing is left stored at the provider that a later
``previous_response_id`` could not reach through it anyway). Everything else (``prompt_cache_key``,
``include``, ``metadata``, reasoning items' ``encrypted_content``, built-in tools the provider runs)
goes as it came. The tap reads the terminal events only (``response.completed``/``.incomplete``
for usage and the end, ``response.failed``/``error`` for in-band failures): delta events are
recognised by their ``event:`` line and passed without parsing.
"""

from __future__ import annotations

from typing import Any

import orjson

from relayproxy import ir
from relayproxy.codecs import UpstreamCall
from relayproxy.codecs.shared import count
from relayproxy.errors import UpstreamProtocolError, UpstreamStatusError
from relayproxy.sse import SSEEvent

__all__ = [
    "RESPONSES_PATH",
    "ResponsesTap",
    "decode_count_response",
    "decode_error",
    "decode_usage",
    "embedded_error",
    "prepare_count_passthrough",
    "prepare_passthrough",
]

RESPONSES_PATH = "/responses"  # relative to an OpenAI base_url ending in /v1
INPUT_TOKENS_PATH = "/responses/input_tokens"
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})


def prepare_passthrough(body: dict[str, Any], upstream_model: str) -> UpstreamCall:
    out = dict(body)
    out["model"] = upstream_model
    out["store"] = False
    return UpstreamCall(RESPONSES_PATH, orjson.dumps(out))


def prepare_count_passthrough(body: dict[str, Any], upstream_model: str) -> UpstreamCall:
    """``POST /responses/input_tokens`` (``client.responses.input_tokens.count``): the client's body
    with the upstream model name; the answer is ``{"object": "response.input_tokens", "input_tokens": n}``."""
    return UpstreamCall(INPUT_TOKENS_PATH, orjson.dumps({**body, "model": upstream_model}))


def decode_count_response(body: Any) -> int:
    tokens = body.get("input_tokens") if isinstance(body, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise UpstreamProtocolError("the OpenAI upstream's input_tokens answer has no input_tokens count")
    return tokens


def decode_usage(usage: Any) -> ir.Usage | None:
    """ResponseUsage -> normalised Usage; None if absent."""
    if not isinstance(usage, dict):
        return None
    prompt = count(usage.get("input_tokens"))
    details = usage.get("input_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    out_details = usage.get("output_tokens_details")
    reasoning = count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    return ir.Usage(prompt, min(cached, prompt), count(usage.get("output_tokens")), reasoning)


def decode_error(status: int, body: bytes, retry_after: str | None) -> UpstreamStatusError:
    """OpenAI's error envelope ``{"error": {"message", "type", ...}}``, kept as the upstream said it."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    etype = err.get("type") if isinstance(err, dict) else None
    return UpstreamStatusError(
        status,
        message if isinstance(message, str) and message else f"upstream returned HTTP {status}",
        upstream_type=etype if isinstance(etype, str) else None,
        retry_after=retry_after,
    )


def embedded_error(body: Any) -> UpstreamStatusError | None:
    """A 200 whose Response failed (``status: "failed"`` with its ``error``), or a bare error body."""
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict) and (body.get("status") == "failed" or body.get("object") != "response"):
        return UpstreamStatusError(502, str(err.get("message") or "upstream error"), upstream_type=None)
    return None


class ResponsesTap:
    """Reads a Responses stream that passes through: usage and the end from ``response.completed``
    (or ``response.incomplete``), an in-band failure from ``response.failed`` or ``error``."""

    def __init__(self) -> None:
        self.usage: ir.Usage | None = None
        self.done = False
        self.answered = False  # response.completed is both the answer's end and the stream's
        self.error: dict[str, Any] | None = None

    def feed(self, ev: SSEEvent) -> bool:
        if ev.event is not None and ev.event not in _TERMINAL:
            return True  # the bulk of a stream: deltas, item and part events
        try:
            data = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            return True  # a non-JSON frame (a stray [DONE]): the SDKs skip it
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in _TERMINAL:
            return True
        response = data.get("response")
        response = response if isinstance(response, dict) else {}
        if kind == "error":
            self.error = {"message": str(data.get("message") or "upstream error"), "code": data.get("code")}
        elif kind == "response.failed":
            err = response.get("error")
            self.error = err if isinstance(err, dict) else {"message": "the upstream response failed"}
        else:
            self.usage = decode_usage(response.get("usage"))
            self.done = self.answered = True
        return True

    def close(self) -> bytes:
        """Responses streams have no framing after ``response.completed``: nothing is owed."""
        return b""
