"""The fake upstream's Gemini generateContent replies."""

from __future__ import annotations

from typing import Any

from tests.fakes.upstream._wire import Reply, common_reply, json_error, json_reply, stream_reply
from tests.fakes.upstream.anthropic import ANTHROPIC_TEXT


def gemini_unary(scenario: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": ANTHROPIC_TEXT}]
    if scenario == "tools":
        parts = [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnLTE="},
            {"functionCall": {"name": "get_weather", "args": {"city": "Tōkyō"}}},
        ]
    body: dict[str, Any] = {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {
            "promptTokenCount": 24,
            "candidatesTokenCount": 7,
            "thoughtsTokenCount": 2,
            "cachedContentTokenCount": 8,
            "totalTokenCount": 33,
        },
        "modelVersion": "gemini-fake-2026",
        "responseId": "resp-unary1",
    }
    if scenario == "nousage":
        body.pop("usageMetadata")
    return body


def gemini_reply(scenario: str, stream: bool) -> Reply:
    """The scripted Gemini-protocol reply for a scenario."""
    errors = {
        "http429": (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
        "http400": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    }
    if scenario in errors:
        code, status, message = errors[scenario]
        return json_error(code, {"error": {"code": code, "message": message, "status": status}}, None)
    if scenario in ("http500", "badjson") or not stream:
        return common_reply(scenario) or json_reply(gemini_unary(scenario))
    return stream_reply("gemini", scenario, terminal=b'"finishReason"', usage_marker=b"\x00")
