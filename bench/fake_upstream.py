"""A fast fake LLM upstream for benchmarks: one plain-asyncio ``Protocol``, canned bytes, no JSON work.

Run as ``python bench/fake_upstream.py [--port 0]``; it prints ``PORT <n>`` once it listens and
serves until SIGTERM/SIGINT. It answers, on HTTP/1.1 keep-alive connections:

- ``POST .../chat/completions``: an OpenAI-shaped unary JSON body (``Content-Length``), or, when
  the body has ``"stream":true``, a 20-chunk OpenAI SSE stream (chunked transfer encoding): role,
  17 content deltas, the finish chunk, then the usage chunk together with ``data: [DONE]``;
- ``POST .../messages``: the same for Anthropic (``message_start``, ``content_block_start``,
  15 ``text_delta``s, ``content_block_stop``, ``message_delta`` with usage, ``message_stop``);
- any stream request whose body names the model ``hold-open``: the head and the first event, then
  nothing until the peer closes the connection (for the open-streams memory scenario).

Stream chunks are written ``--interval-ms`` (5 ms) apart by ``loop.call_later`` timers, so a
stream costs the fake one tiny callback per chunk and no task. Every response is built once at
start-up: answering is a few ``bytes.find`` calls and one ``transport.write``. The request routing
looks only at the path and at two substrings of the body (it is never parsed), which keeps the
fake at tens of thousands of requests per second on one core, far beyond what it is asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import socket
import sys
from typing import Any

CHUNKS = 20
UNARY_TEXT = "Hello! The capital of France is Paris."


def _http_head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _unary_response(body: bytes) -> bytes:
    head = _http_head("200 OK", [("content-type", "application/json"), ("content-length", str(len(body)))])
    return head + body


def openai_unary() -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1763900000,
        "model": "bench-fake-2026",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": UNARY_TEXT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 24,
            "completion_tokens": 9,
            "total_tokens": 33,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }
    return _unary_response(_json(body))


def _anthropic_usage(output_tokens: int) -> dict[str, int]:
    usage = {"input_tokens": 24, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    return {**usage, "output_tokens": output_tokens}


def anthropic_unary() -> bytes:
    body = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "bench-fake-2026",
        "content": [{"type": "text", "text": UNARY_TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(9),
    }
    return _unary_response(_json(body))


def _openai_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1763900000,
        "model": "bench-fake-2026",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }
    return b"data: " + _json(chunk) + b"\n\n"


def openai_events(chunks: int) -> list[bytes]:
    """``chunks`` writes: role, content deltas, finish, then usage + ``[DONE]`` in the last one."""
    usage = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1763900000,
        "model": "bench-fake-2026",
        "choices": [],
        "usage": {"prompt_tokens": 24, "completion_tokens": chunks - 3, "total_tokens": 21 + chunks},
    }
    events = [_openai_chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [_openai_chunk({"content": f" tok{i}"}) for i in range(chunks - 3)]
    events.append(_openai_chunk({}, "stop"))
    events.append(b"data: " + _json(usage) + b"\n\ndata: [DONE]\n\n")
    return events


def _anthropic_event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _json(payload) + b"\n\n"


def anthropic_events(chunks: int) -> list[bytes]:
    """``chunks`` events: message_start, block start, text deltas, block stop, message_delta, message_stop."""
    message = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "bench-fake-2026",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(1),
    }
    events = [
        _anthropic_event("message_start", {"type": "message_start", "message": message}),
        _anthropic_event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
    ]
    events += [
        _anthropic_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" tok{i}"}},
        )
        for i in range(chunks - 5)
    ]
    events += [
        _anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _anthropic_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": chunks - 5},
            },
        ),
        _anthropic_event("message_stop", {"type": "message_stop"}),
    ]
    return events


def framed_stream(events: list[bytes]) -> list[bytes]:
    """The writes of a chunked SSE response: the head rides with the first event, the terminating
    zero-size chunk with the last."""
    sse = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
    head = _http_head("200 OK", [*sse, ("transfer-encoding", "chunked")])
    writes = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
    writes[0] = head + writes[0]
    writes[-1] += b"0\r\n\r\n"
    return writes


def _content_length(head: bytes) -> int:
    """The Content-Length of a lower-cased request head (0 when absent)."""
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    stop = head.find(b"\r\n", at + 2)
    return int(head[at + 17 : stop if stop > 0 else len(head)])


NOT_FOUND = _http_head("404 Not Found", [("content-type", "application/json"), ("content-length", "2")]) + b"{}"
BAD_REQUEST = _http_head("400 Bad Request", [("content-length", "0"), ("connection", "close")])


class Canned:
    """Every answer the fake can give, built once."""

    def __init__(self, chunks: int, interval_s: float) -> None:
        self.interval_s = interval_s
        self.openai_unary = openai_unary()
        self.anthropic_unary = anthropic_unary()
        self.openai_stream = framed_stream(openai_events(chunks))
        self.anthropic_stream = framed_stream(anthropic_events(chunks))


class FakeUpstream(asyncio.Protocol):
    """One connection. Requests are handled one at a time (no pipelining is expected from a proxy)."""

    __slots__ = ("_buf", "_canned", "_i", "_loop", "_stream", "_timer", "_transport")

    def __init__(self, canned: Canned) -> None:
        self._canned = canned
        self._buf = b""
        self._stream: list[bytes] | None = None  # the writes of the stream in progress
        self._i = 0
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._stream = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        while self._stream is None and self._transport is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            if b"transfer-encoding:" in head:  # a proxy sends Content-Length for a JSON body
                self._transport.write(BAD_REQUEST)
                self._transport.close()
                return
            total = end + 4 + _content_length(head)
            if len(buf) < total:
                break
            self._answer(head[: head.find(b"\r\n")], buf[end + 4 : total])
            buf = buf[total:]
        self._buf = buf

    def _answer(self, request_line: bytes, body: bytes) -> None:
        assert self._transport is not None
        c = self._canned
        stream = b'"stream":true' in body or b'"stream": true' in body
        if b"/chat/completions" in request_line:
            writes, unary = c.openai_stream, c.openai_unary
        elif b"/messages" in request_line:
            writes, unary = c.anthropic_stream, c.anthropic_unary
        else:
            self._transport.write(NOT_FOUND)
            return
        if not stream:
            self._transport.write(unary)
            return
        self._transport.write(writes[0])
        if b"hold-open" in body:
            self._stream = []  # never finishes: the connection is held until the peer closes it
            return
        self._stream, self._i = writes, 1
        self._timer = self._loop.call_later(c.interval_s, self._tick)

    def _tick(self) -> None:
        stream, transport = self._stream, self._transport
        if stream is None or transport is None:
            return
        transport.write(stream[self._i])
        self._i += 1
        if self._i < len(stream):
            self._timer = self._loop.call_later(self._canned.interval_s, self._tick)
            return
        self._stream, self._timer = None, None
        if self._buf:  # a request that arrived while streaming (not expected from a proxy)
            pending, self._buf = self._buf, b""
            self.data_received(pending)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


async def serve(host: str, port: int, chunks: int, interval_s: float) -> None:
    loop = asyncio.get_running_loop()
    canned = Canned(chunks, interval_s)
    server = await loop.create_server(lambda: FakeUpstream(canned), host, port, backlog=4096)
    sys.stdout.write(f"PORT {server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=CHUNKS, help="SSE events per stream (>= 6)")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="pause between stream chunks")
    args = parser.parse_args()
    raise_nofile()
    asyncio.run(serve(args.host, args.port, max(6, args.chunks), args.interval_ms / 1000))


if __name__ == "__main__":
    main()
