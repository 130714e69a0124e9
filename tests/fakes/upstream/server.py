"""The fake upstream's HTTP/1.1 server: reads requests, routes them to a protocol's reply, and
writes the reply with its pacing, chunking and way of ending."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from tests.fakes.scripted import HOLD, HOLD_S, Holds, run_token, scripted_reply
from tests.fakes.upstream._wire import PAUSE_S, Captured, Reply, json_error, json_reply
from tests.fakes.upstream.anthropic import anthropic_reply
from tests.fakes.upstream.gemini import gemini_reply
from tests.fakes.upstream.openai import openai_reply, responses_reply


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
            return await _write_reply(reader, writer, json_error(503, body_503), mode)
        if path.startswith("/release/"):
            Holds.release(path[len("/release/") :])
            return await _write_reply(reader, writer, json_reply({"released": True}), mode)
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
        if path == "/v1/responses/input_tokens":
            return json_reply({"object": "response.input_tokens", "input_tokens": 42})
        if path == "/v1/messages/count_tokens":
            return json_reply({"input_tokens": 42})
        if path.endswith(":countTokens"):
            return json_reply({"totalTokens": 42})
        if path.endswith(":streamGenerateContent"):
            return gemini_reply(scenario, True)
        if path.endswith(":generateContent"):
            return gemini_reply(scenario, False)
        return json_error(404, {"error": {"message": f"fake upstream: no route {path}"}})


def _scripted(path: str, body: dict[str, Any]) -> Reply:
    """The ``agent`` scenario (tests/fakes/scripted.py): the reply depends on the conversation."""
    protocol = "gemini" if path.startswith("/v1beta/") else "anthropic" if path == "/v1/messages" else "openai"
    stream = path.endswith(":streamGenerateContent") or bool(body.get("stream"))
    if path.endswith(":countTokens") or path.endswith("/count_tokens"):
        return json_reply({"totalTokens": 42} if protocol == "gemini" else {"input_tokens": 42})
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
