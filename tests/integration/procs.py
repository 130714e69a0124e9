"""Helpers for tests that run `relayproxy serve` as a real process: a paced upstream, raw clients.

``DripUpstream`` speaks OpenAI chat-completions SSE (chunked), paced by the model name:
``drip-<events>-<interval_ms>`` sends that many content events that far apart, then the usage
chunk and ``[DONE]``. It counts the streams it is serving and those the gateway cut short.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

UPSTREAM_KEY_ENV = "RELAYPROXY_TEST_DRIP_KEY"


class DripUpstream:
    """A stdlib asyncio server in a background thread (deliberately not relayproxy's server)."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0  # the most streams served at once
        self.cut = 0  # streams the gateway closed before their end
        self.finished = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def __enter__(self) -> DripUpstream:
        self._thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def wait_idle(self, timeout_s: float = 2.0) -> int:
        """Wait until no stream is being served (a cut one is noticed at its next write)."""
        deadline = time.monotonic() + timeout_s
        while self.active and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.active

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            body = json.loads(await reader.readexactly(length))
            _, count, interval_ms = str(body["model"]).split("-")
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                await self._drip(writer, int(count), int(interval_ms) / 1000)
                self.finished += 1
            except ConnectionError:
                self.cut += 1
            finally:
                self.active -= 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _drip(writer: asyncio.StreamWriter, count: int, interval_s: float) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )
        for i in range(count):
            delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f" w{i}"}
            await _chunk(writer, _event([{"index": 0, "delta": delta, "finish_reason": None}]))
            await asyncio.sleep(interval_s)
        await _chunk(writer, _event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        usage = {"prompt_tokens": 5, "completion_tokens": count, "total_tokens": 5 + count}
        await _chunk(writer, _event([], usage) + b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def _event(choices: list[object], usage: object = None) -> bytes:
    chunk = {"id": "chatcmpl-drip", "object": "chat.completion.chunk", "created": 1, "model": "drip"}
    return b"data: " + json.dumps({**chunk, "choices": choices, "usage": usage}).encode() + b"\n\n"


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()
    if writer.transport.is_closing():
        raise ConnectionResetError


def write_config(path: Path, upstream_port: int, models: list[str], **sections: dict[str, object]) -> None:
    tables = "\n".join(
        f'[models."{m}"]\nprovider = "drip"\ninput_price = 1.0\noutput_price = 2.0\nmax_output_tokens = 1000\n'
        for m in models
    )
    extra = "\n".join(
        f"[{name}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
        for name, values in sections.items()
    )
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
database = "relay.db"

[providers.drip]
protocol = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key_env = "{UPSTREAM_KEY_ENV}"

{tables}
{extra}
"""
    )


def run_cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relayproxy", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    stdout: Path
    db: Path

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_gateway(config: Path, *args: str, ready_pattern: str = "", new_session: bool = False) -> GatewayProcess:
    """``relayproxy serve`` on an ephemeral port; returns once it logged its port (and, if given,
    once the log matched ``ready_pattern``). ``new_session``: in a process group of its own, so a
    test can signal the whole group as a terminal's Ctrl-C does."""
    tmp = config.parent
    log, out = tmp / "gateway.log", tmp / "gateway.out"
    env = {**os.environ, UPSTREAM_KEY_ENV: "sk-drip-upstream-key"}
    with log.open("wb") as err, out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relayproxy", "serve", "--config", str(config), *args],
            stdout=stdout,
            stderr=err,
            env=env,
            start_new_session=new_session,
        )
    gw = GatewayProcess(proc, 0, log, out, tmp / "relay.db")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = gw.log_text()
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", text)
        if found and re.search(ready_pattern, text):
            gw.port = int(found.group(1))
            return gw
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited {proc.returncode}: {text}")
        time.sleep(0.02)
    gw.close()
    raise RuntimeError(f"gateway did not start: {gw.log_text()}")


@dataclass
class StreamResult:
    """What one raw client saw of a streaming request."""

    started: threading.Event = field(default_factory=threading.Event)  # response head received
    data: bytes = b""
    ended_at: float = 0.0
    error: str = ""

    @property
    def done(self) -> bool:
        return b"data: [DONE]" in self.data

    @property
    def status(self) -> int:
        return int(self.data[9:12]) if self.data.startswith(b"HTTP/1.1 ") else 0


def stream_in_thread(port: int, key: str, model: str) -> tuple[threading.Thread, StreamResult]:
    """POST a streaming chat completion on a fresh connection and read until the server closes."""
    result = StreamResult()

    def run() -> None:
        body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(head.encode() + body.encode())
                while chunk := sock.recv(65536):
                    result.data += chunk
                    if b"\r\n\r\n" in result.data:
                        result.started.set()
                    if result.done and result.data.endswith(b"0\r\n\r\n"):
                        break  # the whole chunked body is in: do not wait for the close
        except OSError as exc:
            result.error = type(exc).__name__
        finally:
            result.ended_at = time.monotonic()
            result.started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def post_stream(port: int, key: str, model: str, max_tokens: int = 100) -> tuple[int, dict[str, str], bytes]:
    """A streamed chat completion over a raw socket, read to the end: (status, headers, body)."""
    body = json.dumps(
        {"model": model, "stream": True, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head.encode() + body.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0][9:12]), headers, rest


def http_get(port: int, path: str, sock: socket.socket | None = None) -> bytes:
    """One keep-alive GET; returns the whole response (head and Content-Length body)."""
    own = sock is None
    sock = sock or socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536) or _eof()
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += sock.recv(65536) or _eof()
        return head + b"\r\n\r\n" + body
    finally:
        if own:
            sock.close()


def _eof() -> bytes:
    raise ConnectionError("the server closed the connection")


def usage_rows(db: Path) -> list[dict[str, object]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY seq")]


def held_microusd(db: Path) -> int:
    """The sum of credit held by requests in flight (0 on a schema without holds)."""
    with sqlite3.connect(db) as conn:
        cols = {row[1] for row in conn.execute("PRAGMA table_info(accounts)")}
        if "held_microusd" not in cols:
            return 0
        return int(conn.execute("SELECT COALESCE(SUM(held_microusd), 0) FROM accounts").fetchone()[0])
