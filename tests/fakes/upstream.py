"""FakeUpstream: a stdlib asyncio HTTP/1.1 server speaking the providers' real wire formats.

It answers OpenAI (``/v1/chat/completions``, ``/v1/responses``), Anthropic (``/v1/messages``, ``count_tokens``) and
Gemini (``/v1beta/models/{m}:generateContent`` / ``:streamGenerateContent`` / ``:countTokens``).

Deliberately not built on relayproxy's own server. The behaviour is chosen by the ``model`` field
of the request body (the gateway sends the configured ``upstream_model``; for Gemini, the model in
the path), so e2e tests stay declarative: ``text``, ``tools``, ``nousage``, ``midstream-error``,
``truncated``, ``reset``, ``stall``, ``cut``, ``noanswer``, ``slow``, ``http429``, ``http500``,
``http400``, ``http529``, ``badjson``, ``nodone`` (OpenAI: EOF without ``[DONE]``), ``late`` (head
after a pause), ``pause`` (a pause mid-stream), ``tailN`` (N ms of silence after the event that
completes the answer, before the final framing: OpenAI's usage chunk then ``[DONE]``, Anthropic's
``message_delta`` then ``message_stop``, Gemini's finishReason chunk then the end of the body),
``hang`` (everything before that event, then silence until the gateway hangs up), ``tailhang``
(everything through that event, then the same silence: the final framing never comes),
``nousagehang`` (Anthropic: ``nousage`` as ``tailhang``). A suffix
``@N`` cuts the body into N-byte writes (splitting UTF-8 characters and CRLFs); ``@cl`` sends
Content-Length instead of chunked encoding.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.scripted import HOLD, HOLD_S, Holds, run_token, scripted_reply

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

__all__ = ["Captured", "FakeUpstream"]


@dataclass
class Captured:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)
    delay_s: float = 0.0
    head_delay_s: float = 0.0  # silence before the status line
    pause_after: int = 0  # a long pause after this many events (0: none)
    pause_s: float = 0.0  # its length (0: PAUSE_S)
    hang_after: int = -1  # after this many events, wait for the gateway to hang up (-1: never)
    hold_token: str | None = None  # instead of the pause: wait for that client's release (scripted.Holds)
    end: str = "ok"  # ok | truncate (clean chunked end, no terminator) | reset | stall | cut (no final chunk)


def sse_events(path: Path) -> list[bytes]:
    """Split a fixture into its events, keeping each event's exact bytes."""
    data = path.read_bytes()
    sep = b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n"
    parts = data.split(sep)
    return [p + sep for p in parts if p.strip()]


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


def _error(status: int, message: str, etype: str, code: str | None = None) -> Reply:
    body = json.dumps({"error": {"message": message, "type": etype, "param": None, "code": code}}).encode()
    return Reply(status, [("content-type", "application/json")], [body])


def _json_error(status: int, body: dict[str, Any], retry_after: str | None = None) -> Reply:
    reply = Reply(status, [("content-type", "application/json")], [json.dumps(body).encode()])
    if retry_after:
        reply.headers.append(("retry-after", retry_after))
    return reply


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
        return _json_error(status, body, "7" if status == 429 else None)
    if scenario in ("http500", "badjson") or not stream:
        return _common_reply(scenario) or _json_reply(anthropic_unary(scenario))
    return _stream_reply("anthropic", scenario, terminal=b"message_stop", usage_marker=b"message_delta")


def gemini_reply(scenario: str, stream: bool) -> Reply:
    """The scripted Gemini-protocol reply for a scenario."""
    errors = {
        "http429": (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
        "http400": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    }
    if scenario in errors:
        code, status, message = errors[scenario]
        return _json_error(code, {"error": {"code": code, "message": message, "status": status}}, None)
    if scenario in ("http500", "badjson") or not stream:
        return _common_reply(scenario) or _json_reply(gemini_unary(scenario))
    return _stream_reply("gemini", scenario, terminal=b'"finishReason"', usage_marker=b"\x00")


def _json_reply(body: dict[str, Any]) -> Reply:
    return Reply(200, [("content-type", "application/json")], [json.dumps(body).encode()])


def _common_reply(scenario: str) -> Reply | None:
    if scenario == "http500":
        return Reply(500, [("content-type", "text/html")], [b"<html><body>Internal Server Error</body></html>"])
    if scenario == "badjson":
        return Reply(200, [("content-type", "application/json")], [b"{not json"])
    return None


def _stream_reply(protocol: str, scenario: str, *, terminal: bytes, usage_marker: bytes) -> Reply:
    thinking = {"anthropic": "thinking_tools.sse", "gemini": "thinking.sse"}[protocol]
    name = {"tools": "tools.sse", "midstream-error": "error.sse", "thinking": thinking}.get(scenario, "text.sse")
    events = sse_events(FIXTURES / protocol / name)
    reply = Reply(200, [("content-type", "text/event-stream; charset=utf-8")], events)
    head = [e for e in events if terminal not in e and usage_marker not in e]
    if scenario == "nousage" and protocol == "gemini":
        reply.events = [_strip_gemini_usage(e) for e in events]
    elif scenario in ("nousage", "nousagehang"):
        reply.events = [_strip_anthropic_usage(e) for e in events]
        _pacing(reply, "tailhang" if scenario == "nousagehang" else scenario, b"event: message_delta")
    elif scenario in ("truncated", "reset", "stall", "cut"):
        reply.events = head[:3]
        reply.end = {"truncated": "truncate"}.get(scenario, scenario)
    else:
        answer = b"event: message_delta" if protocol == "anthropic" else b'"finishReason"'
        _pacing(reply, scenario, answer)
    return reply


PAUSE_S = 1.6  # longer than the e2e gateway's keepalive_ping_s


def _pacing(reply: Reply, scenario: str, answer: bytes) -> None:
    """``answer``: a marker of the event that completes the answer (for ``tailN`` and ``hang``)."""
    at = next((i for i, e in enumerate(reply.events) if answer in e), len(reply.events) - 1)
    if scenario.startswith("tail") and scenario[4:].isdigit():
        reply.pause_after, reply.pause_s = at + 1, int(scenario[4:]) / 1000
    elif scenario in ("hang", "tailhang"):
        reply.hang_after = at if scenario == "hang" else at + 1
    elif scenario == "slow":
        reply.delay_s = 0.05
    elif scenario == "late":
        reply.head_delay_s = PAUSE_S
    elif scenario == "pause":
        reply.pause_after = 2


def _strip_gemini_usage(event: bytes) -> bytes:
    data = json.loads(event.split(b"data: ", 1)[1])
    data.pop("usageMetadata", None)
    return b"data: " + json.dumps(data).encode() + b"\r\n\r\n"


def _strip_anthropic_usage(event: bytes) -> bytes:
    name, _, data = event.partition(b"\ndata: ")
    obj = json.loads(data)
    if obj.get("type") == "message_start":
        obj["message"].pop("usage", None)
    if obj.get("type") == "message_delta":
        obj.pop("usage", None)
    return name + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"


def openai_reply(scenario: str, stream: bool) -> Reply:
    """The scripted OpenAI-protocol reply for a scenario."""
    if scenario == "http429":
        r = _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
        r.headers.append(("retry-after", "7"))
        return r
    if scenario == "http400":
        return _error(400, "Invalid value for 'messages'.", "invalid_request_error", "invalid_value")
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
        _pacing(reply, scenario, b'"choices":[]')
    return reply


class FakeUpstream:
    """Runs in a background thread with its own event loop; records every request it sees."""

    def __init__(self) -> None:
        self.requests: list[Captured] = []
        self.port = 0
        self.connections = 0
        self.active = 0  # requests being answered right now
        self.cancelled = 0  # responses cut short because the gateway closed the connection
        self.hanging = 0  # replies that reached their hang_after point (``hang``, ``tailhang``)
        self.seen: dict[str, int] = {}  # requests per scenario
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> FakeUpstream:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _start(self) -> asyncio.AbstractServer:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    def stop(self) -> None:
        assert self._server is not None
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                captured = await _read_request(reader)
                if captured is None:
                    break
                self.requests.append(captured)
                self.active += 1
                try:
                    keep = await self._answer(captured, reader, writer)
                finally:
                    self.active -= 1
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            self.cancelled += 1
        finally:
            writer.close()

    async def _answer(self, req: Captured, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        body = req.json() if req.body else {}
        path = req.path.split("?", 1)[0]
        model = str(body.get("model", "text"))
        if path.startswith("/v1beta/models/"):
            model = path[len("/v1beta/models/") :].partition(":")[0]
        scenario, _, mode = model.partition("@")
        if scenario == "noanswer":
            await _wait_hangup(reader)
            return False
        self.seen[scenario] = self.seen.get(scenario, 0) + 1
        if scenario == "flaky" and self.seen[scenario] % 2:  # every other request: overloaded
            body_503 = {"error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}}
            return await _write_reply(reader, writer, _json_error(503, body_503), mode)
        if path.startswith("/release/"):
            Holds.release(path[len("/release/") :])
            return await _write_reply(reader, writer, _json_reply({"released": True}), mode)
        if scenario == "agent":
            return await _write_reply(reader, writer, _scripted(path, body), mode)
        reply = self._route(path, "text" if scenario == "flaky" else scenario, body)
        return await _write_reply(reader, writer, reply, mode, self._hung)

    def _hung(self) -> None:
        self.hanging += 1

    @staticmethod
    def _route(path: str, scenario: str, body: dict[str, Any]) -> Reply:
        if path == "/v1/chat/completions":
            return openai_reply(scenario, bool(body.get("stream")))
        if path == "/v1/responses":
            return responses_reply(scenario, bool(body.get("stream")))
        if path == "/v1/messages":
            return anthropic_reply(scenario, bool(body.get("stream")))
        if path == "/v1/messages/count_tokens":
            return _json_reply({"input_tokens": 42})
        if path.endswith(":countTokens"):
            return _json_reply({"totalTokens": 42})
        if path.endswith(":streamGenerateContent"):
            return gemini_reply(scenario, True)
        if path.endswith(":generateContent"):
            return gemini_reply(scenario, False)
        return _json_error(404, {"error": {"message": f"fake upstream: no route {path}"}})


def _scripted(path: str, body: dict[str, Any]) -> Reply:
    """The ``agent`` scenario (tests/fakes/scripted.py): the reply depends on the conversation."""
    protocol = "gemini" if path.startswith("/v1beta/") else "anthropic" if path == "/v1/messages" else "openai"
    stream = path.endswith(":streamGenerateContent") or bool(body.get("stream"))
    if path.endswith(":countTokens") or path.endswith("/count_tokens"):
        return _json_reply({"totalTokens": 42} if protocol == "gemini" else {"input_tokens": 42})
    events, _ = scripted_reply(protocol, body, stream)
    if not stream:
        return Reply(200, [("content-type", "application/json")], events)
    pause_after = events.index(HOLD)
    sent = [e for e in events if e != HOLD]
    token = run_token(body)
    return Reply(200, [("content-type", "text/event-stream")], sent, pause_after=pause_after, pause_s=HOLD_S,
                 hold_token=token)  # fmt: skip


async def _read_request(reader: asyncio.StreamReader) -> Captured | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)]
    length = int(next((v for k, v in headers if k == "content-length"), "0"))
    body = await reader.readexactly(length) if length else b""
    return Captured(method, path, headers, body)


async def _wait_hangup(reader: asyncio.StreamReader) -> None:
    """Stall until the gateway closes the connection (what a real upstream would notice)."""
    await asyncio.wait_for(reader.read(1), 3600)


async def _write_reply(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    reply: Reply,
    mode: str,
    hung: Callable[[], None] | None = None,
) -> bool:
    payload = b"".join(reply.events)
    use_cl = mode == "cl" or reply.status != 200 or not reply.events or len(reply.events) == 1
    head = [f"HTTP/1.1 {reply.status} X", *(f"{k}: {v}" for k, v in reply.headers)]
    head.append(f"content-length: {len(payload)}" if use_cl else "transfer-encoding: chunked")
    if reply.head_delay_s:
        await asyncio.sleep(reply.head_delay_s)
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    piece = int(mode) if mode.isdigit() else 0
    for i, event in enumerate(reply.events, 1):
        if i - 1 == reply.hang_after:
            return await _hang(reader, hung)
        framed = event if use_cl else b"%x\r\n%s\r\n" % (len(event), event)
        await _send(writer, framed, piece)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if i == reply.pause_after and reply.hold_token:
            await Holds.wait(reply.hold_token)
        elif i == reply.pause_after:
            await asyncio.sleep(reply.pause_s or PAUSE_S)
    if reply.hang_after == len(reply.events):
        return await _hang(reader, hung)
    return await _finish(reader, writer, reply, use_cl)


async def _hang(reader: asyncio.StreamReader, hung: Callable[[], None] | None) -> bool:
    if hung is not None:
        hung()
    await _wait_hangup(reader)
    return False


async def _send(writer: asyncio.StreamWriter, data: bytes, piece: int) -> None:
    if not piece:
        writer.write(data)
        await writer.drain()
        return
    for i in range(0, len(data), piece):
        writer.write(data[i : i + piece])
        await writer.drain()
        await asyncio.sleep(0)


async def _finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: Reply, use_cl: bool) -> bool:
    if reply.end == "stall":
        await _wait_hangup(reader)
        return False
    if reply.end == "reset":
        writer.transport.abort()
        return False
    if reply.end == "cut":
        writer.close()
        return False
    if not use_cl:
        writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True
