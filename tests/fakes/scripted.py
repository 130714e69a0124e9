"""The ``agent`` scenario of FakeUpstream: a model that answers from the conversation, not a fixture.

Real clients and coding agents keep one model for a whole tool loop, so the reply depends on the
request: a turn whose latest messages carry a tool result gets a text answer that quotes whether
``TOOL_MARKER`` came back in it; a conversation that says ``TRIGGER`` and offers a tool this fake
knows (``KNOWN_TOOLS``: the tests' ``get_weather`` and the agents' own shell / file tools) gets a
call to it (after a short text); anything else gets ``TEXT``. Every stream pauses ``HOLD_S``
before its finish event, so a client that sees its first delta well before the end proves the
gateway streams rather than buffers. A conversation
carrying a run token (``[run:TOKEN]``) is held instead until that client reports its first delta
(``GET /release/TOKEN`` on the fake): no clock involved, and a gateway that buffered leaves the
hold to time out, which ``Holds.timed_out`` counts.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

__all__ = [
    "ANSWER",
    "HOLD",
    "HOLD_S",
    "KNOWN_TOOLS",
    "PREFACE",
    "TEXT",
    "TOOL_MARKER",
    "TRIGGER",
    "Holds",
    "run_token",
    "scripted_reply",
]

TEXT = "Relay check: héllo wörld 👋, all good."
TOOL_MARKER = "relay-tool-ok-7"
TRIGGER = "[use-tool]"
ANSWER = f"The tool said {TOOL_MARKER}. Done ✅"
MISSING = "The tool result did not come back."
PREFACE = "Let me check."
HOLD_S = 1.2
#: Tool name -> the arguments this fake calls it with (the agents' real tools print the marker).
KNOWN_TOOLS: dict[str, dict[str, Any]] = {
    "get_weather": {"city": "Paris"},
    "Bash": {"command": f"echo {TOOL_MARKER}", "description": "Print a marker"},
    "exec_command": {"cmd": f"echo {TOOL_MARKER}"},
    "read_file": {"file_path": "relay-marker.txt"},
}
USAGE = (21, 9)  # input, output tokens
RUN_TOKEN = re.compile(r"\[run:([A-Za-z0-9_-]{1,64})\]")
RELEASE_TIMEOUT_S = 20.0


class Holds:
    """Streams held until their client reports a delta, per run token (module-wide: tokens are unique)."""

    held: dict[str, int] = {}
    released: dict[str, int] = {}
    timed_out: dict[str, int] = {}

    @classmethod
    def release(cls, token: str) -> None:
        cls.released[token] = cls.released.get(token, 0) + 1

    @classmethod
    async def wait(cls, token: str) -> None:
        cls.held[token] = n = cls.held.get(token, 0) + 1
        deadline = time.monotonic() + RELEASE_TIMEOUT_S
        while cls.released.get(token, 0) < n:
            if time.monotonic() > deadline:
                cls.timed_out[token] = cls.timed_out.get(token, 0) + 1
                return
            await asyncio.sleep(0.01)


def run_token(body: dict[str, Any]) -> str | None:
    found = RUN_TOKEN.search(json.dumps(body, ensure_ascii=False))
    return found.group(1) if found else None


def scripted_reply(protocol: str, body: dict[str, Any], stream: bool) -> tuple[list[bytes], bool]:
    """The reply events (SSE frames, or one JSON body when not streaming), and whether it is a tool call."""
    turns = _turns(protocol, body)
    tail = _after_last_assistant(protocol, turns)
    if any(_is_tool_result(protocol, m) for m in tail):
        return _encode(protocol, stream, ANSWER if TOOL_MARKER in json.dumps(tail) else MISSING, None), False
    tool = next((n for n in _tool_names(protocol, body) if n in KNOWN_TOOLS), None)
    if tool is None or TRIGGER not in json.dumps(turns, ensure_ascii=False):
        return _encode(protocol, stream, TEXT, None), False
    return _encode(protocol, stream, PREFACE, (tool, KNOWN_TOOLS[tool])), True


def _turns(protocol: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    return list(body.get("contents" if protocol == "gemini" else "messages") or [])


def _after_last_assistant(protocol: str, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    role = "model" if protocol == "gemini" else "assistant"
    last = max((i for i, m in enumerate(turns) if m.get("role") == role), default=-1)
    return turns[last + 1 :] if last >= 0 else []


def _is_tool_result(protocol: str, message: dict[str, Any]) -> bool:
    if protocol == "openai":
        return message.get("role") == "tool"
    blocks = message.get("parts" if protocol == "gemini" else "content")
    if not isinstance(blocks, list):
        return False
    keys = ("functionResponse", "function_response")
    return any(isinstance(b, dict) and (b.get("type") == "tool_result" or any(k in b for k in keys)) for b in blocks)


def _tool_names(protocol: str, body: dict[str, Any]) -> list[str]:
    tools = body.get("tools") or []
    if protocol == "openai":
        return [t.get("function", {}).get("name", "") for t in tools]
    if protocol == "anthropic":
        return [t.get("name", "") for t in tools]
    decls = [t.get("functionDeclarations") or t.get("function_declarations") or [] for t in tools]
    return [d.get("name", "") for group in decls for d in group]


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _encode(protocol: str, stream: bool, text: str, call: tuple[str, dict[str, Any]] | None) -> list[bytes]:
    if protocol == "openai":
        return _openai_stream(text, call) if stream else [json.dumps(_openai_unary(text, call)).encode()]
    if protocol == "anthropic":
        return _anthropic_stream(text, call) if stream else [json.dumps(_anthropic_unary(text, call)).encode()]
    return _gemini_stream(text, call) if stream else [json.dumps(_gemini_chunk(text, call, final=True)).encode()]


HOLD = b""  # marks where the stream pauses HOLD_S (dropped from the bytes sent)


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


def _openai_chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    chunk = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1, "model": "agent"}
    return _sse({**chunk, "choices": choices, "usage": usage})


def _openai_stream(text: str, call: tuple[str, dict[str, Any]] | None) -> list[bytes]:
    events = [_openai_chunk({"role": "assistant", "content": ""})]
    events += [_openai_chunk({"content": p}) for p in _pieces(text)]
    if call:
        args = json.dumps(call[1], ensure_ascii=False)
        head = {"index": 0, "id": "call_scripted1", "type": "function", "function": {"name": call[0], "arguments": ""}}
        events.append(_openai_chunk({"tool_calls": [head]}))
        half = len(args) // 2
        for part in (args[:half], args[half:]):
            events.append(_openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
    events.append(HOLD)
    events.append(_openai_chunk({}, "tool_calls" if call else "stop"))
    usage = {"prompt_tokens": USAGE[0], "completion_tokens": USAGE[1], "total_tokens": sum(USAGE)}
    return [*events, _openai_chunk({}, usage=usage), b"data: [DONE]\n\n"]


def _openai_unary(text: str, call: tuple[str, dict[str, Any]] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if call:
        fn = {"name": call[0], "arguments": json.dumps(call[1], ensure_ascii=False)}
        message["tool_calls"] = [{"id": "call_scripted1", "type": "function", "function": fn}]
    usage = {"prompt_tokens": USAGE[0], "completion_tokens": USAGE[1], "total_tokens": sum(USAGE)}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls" if call else "stop"}
    return {"id": "chatcmpl-scripted", "object": "chat.completion", "created": 1, "model": "agent",
            "choices": [choice], "usage": usage}  # fmt: skip


def _anthropic_stream(text: str, call: tuple[str, dict[str, Any]] | None) -> list[bytes]:
    usage = {"input_tokens": USAGE[0], "output_tokens": 1}
    message = {"id": "msg_scripted", "type": "message", "role": "assistant", "model": "agent", "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": usage}  # fmt: skip
    events = [_sse({"type": "message_start", "message": message}, "message_start")]
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    events.append(_sse(start, "content_block_start"))
    for p in _pieces(text):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        events.append(_sse(delta, "content_block_delta"))
    events.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    if call:
        block = {"type": "tool_use", "id": "toolu_scripted1", "name": call[0], "input": {}}
        events.append(_sse({"type": "content_block_start", "index": 1, "content_block": block}, "content_block_start"))
        args = json.dumps(call[1], ensure_ascii=False)
        for part in (args[: len(args) // 2], args[len(args) // 2 :]):
            delta = {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": part},
            }
            events.append(_sse(delta, "content_block_delta"))
        events.append(_sse({"type": "content_block_stop", "index": 1}, "content_block_stop"))
    events.append(HOLD)
    stop = {"stop_reason": "tool_use" if call else "end_turn", "stop_sequence": None}
    end = {"type": "message_delta", "delta": stop, "usage": {"output_tokens": USAGE[1]}}
    return [*events, _sse(end, "message_delta"), _sse({"type": "message_stop"}, "message_stop")]


def _anthropic_unary(text: str, call: tuple[str, dict[str, Any]] | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if call:
        content.append({"type": "tool_use", "id": "toolu_scripted1", "name": call[0], "input": call[1]})
    return {"id": "msg_scripted", "type": "message", "role": "assistant", "model": "agent", "content": content,
            "stop_reason": "tool_use" if call else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": USAGE[0], "output_tokens": USAGE[1]}}  # fmt: skip


def _gemini_chunk(text: str, call: tuple[str, dict[str, Any]] | None, *, final: bool) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    if call:
        parts.append({"functionCall": {"name": call[0], "args": call[1]}})
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    chunk: dict[str, Any] = {"candidates": [candidate], "modelVersion": "agent", "responseId": "scripted"}
    if final:
        candidate["finishReason"] = "STOP"
        total = sum(USAGE)
        chunk["usageMetadata"] = {
            "promptTokenCount": USAGE[0],
            "candidatesTokenCount": USAGE[1],
            "totalTokenCount": total,
        }
    return chunk


def _gemini_stream(text: str, call: tuple[str, dict[str, Any]] | None) -> list[bytes]:
    pieces = _pieces(text)
    events = [_sse(_gemini_chunk(p, None, final=False)) for p in pieces[:-1]]
    events.append(HOLD)
    return [*events, _sse(_gemini_chunk(pieces[-1], call, final=True))]
