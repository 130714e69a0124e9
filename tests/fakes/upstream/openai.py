"""The fake upstream's OpenAI replies: Chat Completions (fixtures or scripted scenarios) and Responses."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.upstream._wire import FIXTURES, Reply, error, pacing, sse_events


def openai_unary(scenario: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "Hello! The capital of France is Paris.",
        "refusal": None,
    }
    finish = "stop"
    if scenario == "tools":
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Tōkyō"}'},
                },
            ],
        }
        finish = "tool_calls"
    body: dict[str, Any] = {
        "id": "chatcmpl-unary1",
        "object": "chat.completion",
        "created": 1763900000,
        "model": "gpt-fake-2026",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 24,
            "completion_tokens": 9,
            "total_tokens": 33,
            "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }
    if scenario == "nousage":
        del body["usage"]
    return body


def openai_reply(scenario: str, stream: bool) -> Reply:
    """The scripted OpenAI-protocol reply for a scenario."""
    if scenario == "http429":
        r = error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
        r.headers.append(("retry-after", "7"))
        return r
    if scenario == "http400":
        return error(400, "Invalid value for 'messages'.", "invalid_request_error", "invalid_value")
    if scenario == "http500":
        return Reply(500, [("content-type", "text/html")], [b"<html><body>Internal Server Error</body></html>"])
    if scenario == "badjson":
        return Reply(200, [("content-type", "application/json")], [b"{not json"])
    if not stream:
        return Reply(200, [("content-type", "application/json")], [json.dumps(openai_unary(scenario)).encode()])
    return _openai_stream(scenario)


def responses_reply(scenario: str, stream: bool) -> Reply:
    """OpenAI's Responses API (``text``, ``tools``, ``midstream-error``; ``http429`` as for chat):
    the event sequence of the fixtures (each event with its ``event:`` line, no ``[DONE]``), or the
    unary Response object, which is the ``response.completed`` event's ``response``."""
    if scenario == "http429":
        return openai_reply(scenario, stream)
    events = sse_events(FIXTURES / "openai" / ("responses_tools.sse" if scenario == "tools" else "responses_text.sse"))
    if scenario == "midstream-error":  # the answer starts, then the response fails
        failed = {
            "type": "response.failed",
            "sequence_number": 5,
            "response": {
                "id": "resp_fake1",
                "object": "response",
                "status": "failed",
                "output": [],
                "usage": None,
                "error": {"code": "server_error", "message": "The model crashed mid-answer."},
            },
        }
        events = [*events[:5], f"event: response.failed\ndata: {json.dumps(failed)}\n\n".encode()]
    if stream:
        return Reply(200, [("content-type", "text/event-stream; charset=utf-8")], events)
    completed = json.loads(events[-1].split(b"data: ", 1)[1])
    return Reply(200, [("content-type", "application/json")], [json.dumps(completed["response"]).encode()])


def _runaway_openai_stream() -> list[bytes]:
    """An upstream ignoring max_tokens: 3,000 content chunks, then a huge usage and [DONE]."""
    head = '{"id":"chatcmpl-run","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    events = [f'data: {head}[{{"index":0,"delta":{{"role":"assistant","content":""}}}}]}}\n\n'.encode()]
    piece = "All work and no play makes a very long answer. "
    events += [f'data: {head}[{{"index":0,"delta":{{"content":"{piece}"}}}}]}}\n\n'.encode()] * 3000
    events.append(f'data: {head}[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}\n\n'.encode())
    usage = '{"prompt_tokens":10,"completion_tokens":30000,"total_tokens":30010}'
    events.append(f'data: {head}[],"usage":{usage}}}\n\n'.encode())
    return [*events, b"data: [DONE]\n\n"]


def _openai_stream(scenario: str) -> Reply:
    name = {"tools": "tools.sse", "thinking": "reasoning.sse", "moonshot": "moonshot_usage.sse"}.get(scenario)
    events = (
        _runaway_openai_stream() if scenario == "runaway" else sse_events(FIXTURES / "openai" / (name or "text.sse"))
    )
    reply = Reply(200, [("content-type", "text/event-stream; charset=utf-8")], events)
    head = [e for e in events if b'"choices":[]' not in e and b"[DONE]" not in e]
    if scenario == "nousage":
        reply.events = [e for e in events if b'"choices":[]' not in e]
    elif scenario == "nodone":  # a clean EOF after the finish and usage chunks, no [DONE]
        reply.events = [e for e in events if b"[DONE]" not in e]
    elif scenario == "midstream-error":
        err = {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
            }
        }
        reply.events = [*head[:3], b"data: " + json.dumps(err).encode() + b"\n\n"]
    elif scenario in ("truncated", "reset", "stall", "cut"):
        reply.events = head[:3]
        reply.end = {"truncated": "truncate"}.get(scenario, scenario)
    else:
        pacing(reply, scenario, b'"choices":[]')
    return reply
