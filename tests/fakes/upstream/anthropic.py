"""The fake upstream's Anthropic Messages replies."""

from __future__ import annotations

from typing import Any

from tests.fakes.upstream._wire import Reply, common_reply, json_error, json_reply, stream_reply

ANTHROPIC_TEXT = "Hello! The capital of France is Paris."
ANTHROPIC_SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxSmMkcLhBq7Jg=="  # not strict base64, as in thinking_tools.sse


def anthropic_unary(scenario: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": ANTHROPIC_TEXT}]
    stop = "end_turn"
    if scenario == "tools":
        content = [
            {"type": "text", "text": "I'll check."},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Tōkyō"}},
        ]
        stop = "tool_use"
    if scenario == "thinking":  # a signed thought, then a call (the signature as in thinking_tools.sse)
        content = [
            {"type": "thinking", "thinking": "I should call the tool.", "signature": ANTHROPIC_SIGNATURE},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
        ]
        stop = "tool_use"
    body: dict[str, Any] = {
        "id": "msg_unary1",
        "type": "message",
        "role": "assistant",
        "model": "claude-fake-2026",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 16,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 8,
            "output_tokens": 9,
        },
    }
    if scenario == "nousage":
        del body["usage"]
    return body


def anthropic_reply(scenario: str, stream: bool) -> Reply:
    """The scripted Anthropic-protocol reply for a scenario."""
    errors = {
        "http429": (429, "rate_limit_error", "Number of request tokens has exceeded your rate limit."),
        "http400": (400, "invalid_request_error", "messages: roles must alternate"),
        "http529": (529, "overloaded_error", "Overloaded"),
    }
    if scenario in errors:
        status, etype, message = errors[scenario]
        body = {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_fake"}
        return json_error(status, body, "7" if status == 429 else None)
    if scenario in ("http500", "badjson") or not stream:
        return common_reply(scenario) or json_reply(anthropic_unary(scenario))
    return stream_reply("anthropic", scenario, terminal=b"message_stop", usage_marker=b"message_delta")
