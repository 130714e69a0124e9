"""relayproxy.server over raw sockets: framing, limits, timeouts, backpressure, cancellation, drain.

The client is a plain socket writing hand-made bytes (whole, or one byte per loop turn so the
server sees one byte per read), and a small hand-written response reader, so the server's
framing mistakes cannot be mirrored by the same mistakes in the client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from relayproxy.http_types import HttpRequest, HttpResponse, query_params
from relayproxy.server.listener import Server, ServerLimits

pytestmark = pytest.mark.anyio

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the test handler ---------------------------------------------------------------------------


class App:
    """The handler under the server: behaviour chosen by path; records what it saw."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.pulled = 0  # chunks taken from /big's generator
        self.cancelled = asyncio.Event()  # /block saw CancelledError
        self.closed = asyncio.Event()  # a streaming generator saw GeneratorExit or CancelledError
        self.closed_at = 0.0
        self.finished = asyncio.Event()  # a streaming generator ran to its end

    async def __call__(self, req: HttpRequest) -> HttpResponse:
        self.paths.append(req.path)
        args = query_params(req.query)
        if req.path == "/echo":
            return self.echo(req)
        if req.path == "/raise":
            raise RuntimeError("handler bug")
        if req.path == "/block":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if req.path in ("/stream", "/stream-block", "/stream-raise", "/big"):
            return HttpResponse(200, [(b"content-type", b"text/plain")], self.stream(req.path, args))
        return HttpResponse(404, [], b"no such path")

    def echo(self, req: HttpRequest) -> HttpResponse:
        doc = {"method": req.method, "path": req.path, "query": req.query, "body_len": len(req.body)}
        doc["version"] = req.http_version
        return HttpResponse(200, [(b"content-type", b"application/json")], json.dumps(doc).encode())

    async def stream(self, path: str, args: dict[str, str]) -> AsyncIterator[bytes]:
        n, delay = int(args.get("n", "3")), float(args.get("delay", "0"))
        try:
            for i in range(n):
                if path == "/big":
                    self.pulled += 1
                    yield b"x" * 65536
                    continue
                yield b"chunk %d\n" % i
                if path == "/stream-block":
                    await asyncio.Event().wait()
                if path == "/stream-raise":
                    raise RuntimeError("generator bug")
                await asyncio.sleep(delay)
            self.finished.set()
        except (GeneratorExit, asyncio.CancelledError):
            self.closed_at = time.monotonic()
            self.closed.set()
            raise


@asynccontextmanager
async def serving(app: Any = None, **limits: Any) -> AsyncIterator[tuple[Server, int]]:
    server = Server(app or App(), limits=ServerLimits(**limits))
    bound: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(server.serve("127.0.0.1", 0, ready=bound.set_result))
        addresses = await bound
        try:
            yield server, addresses[0][1]
        finally:
            task.cancel()


# -- the raw client -----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes = b""
    complete: bool = True  # the body's framing ended properly
    closed: bool = False  # the server closed the connection after it
    informational: list[int] = field(default_factory=list)


class Client:
    """A plain non-blocking socket on the test's loop, with a hand-written response reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None) -> Client:
        sock = socket.socket()
        sock.setblocking(False)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    async def send(self, data: bytes, *, split: bool = False) -> None:
        """Send whole, or one byte per loop turn; stops quietly if the server has gone."""
        try:
            if not split:
                await self.loop.sock_sendall(self.sock, data)
                return
            for i in range(len(data)):
                await self.loop.sock_sendall(self.sock, data[i : i + 1])
                await asyncio.sleep(0)
        except (BrokenPipeError, ConnectionResetError):
            pass

    async def _recv(self, wait_s: float) -> bool:
        if self.eof:
            return False
        try:
            data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), wait_s)
        except ConnectionResetError:
            data = b""
        self.eof = not data
        self.buf += data
        return bool(data)

    async def _until(self, marker: bytes, wait_s: float) -> int:
        while (i := self.buf.find(marker)) < 0:
            if not await self._recv(wait_s):
                return -1
        return i

    async def _take(self, n: int, wait_s: float) -> bytes | None:
        while len(self.buf) < n:
            if not await self._recv(wait_s):
                return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_response(self, *, head: bool = False, wait_s: float = 5.0) -> Reply | None:
        """One response (1xx skipped and noted); None if the server closed before a whole head."""
        informational = []
        while True:
            end = await self._until(b"\r\n\r\n", wait_s)
            if end < 0:
                return None
            lines = bytes(self.buf[:end]).split(b"\r\n")
            del self.buf[: end + 4]
            status = int(lines[0].split(b" ")[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if status >= 200:
                break
            informational.append(status)
        reply = Reply(status, headers, informational=informational)
        if not head and status not in (204, 304):
            await self._read_body(reply, wait_s)
        return reply

    async def _read_body(self, reply: Reply, wait_s: float) -> None:
        if reply.headers.get(b"transfer-encoding") == b"chunked":
            parts: list[bytes] = []
            while True:
                end = await self._until(b"\r\n", wait_s)
                size = int(self.buf[:end], 16) if end >= 0 else -1
                data = await self._take(end + 2 + size + 2, wait_s) if end >= 0 else None
                if data is None:
                    reply.body, reply.complete = b"".join(parts), False
                    return
                parts.append(data[end + 2 : end + 2 + size])
                if size == 0:
                    reply.body = b"".join(parts)
                    return
        elif b"content-length" in reply.headers:
            data = await self._take(int(reply.headers[b"content-length"]), wait_s)
            reply.body, reply.complete = (data, True) if data is not None else (bytes(self.buf), False)
        else:
            while await self._recv(wait_s):
                pass
            reply.body = bytes(self.buf)

    async def wait_eof(self, wait_s: float) -> bool:
        """True if the server closes the connection within ``wait_s`` (bytes are kept)."""
        try:
            while await self._recv(wait_s):
                pass
        except TimeoutError:
            return False
        return True


async def raw(port: int, data: bytes, *, split: bool = False, head: bool = False) -> Reply | None:
    """Send ``data`` on a new connection, read one response and whether the server then closed."""
    client = await Client.connect(port)
    try:
        await client.send(data, split=split)
        reply = await client.read_response(head=head)
        if reply is not None:
            says_close = reply.headers.get(b"connection") == b"close"
            reply.closed = await client.wait_eof(2.0 if says_close else 0.05)
        return reply
    finally:
        client.close()


def get(path: str, *extra: bytes, method: bytes = b"GET") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (method, path.encode(), b"".join(extra))


def body_of(reply: Reply | None) -> dict[str, Any]:
    assert reply is not None
    assert reply.status == 200, reply
    return json.loads(reply.body)  # type: ignore[no-any-return]


# -- keep-alive, pipelining, bodies ---------------------------------------------------------------


async def test_keep_alive_serves_three_requests_on_one_connection() -> None:
    """Sequential requests reuse one connection; each gets its own Content-Length response."""
    async with serving() as (server, port):
        client = await Client.connect(port)
        try:
            for i in range(3):
                await client.send(get(f"/echo?i={i}"))
                reply = await client.read_response()
                assert body_of(reply)["query"] == f"i={i}"
                assert reply is not None
                assert b"connection" not in reply.headers
            assert server.open_connections == 1
        finally:
            client.close()


async def test_pipelined_requests_are_answered_in_order() -> None:
    """Four requests in one packet (a Content-Length and a chunked body in the middle) get four
    responses, in order; the bytes h11 read past the chunked body are not lost."""
    app = App()
    async with serving(app) as (_, port):
        client = await Client.connect(port)
        try:
            post = b"POST /echo?b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            chunked = b"POST /echo?c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            await client.send(get("/echo?a") + post + chunked + get("/echo?d"))
            replies = [body_of(await client.read_response()) for _ in range(4)]
        finally:
            client.close()
    assert [(r["query"], r["body_len"]) for r in replies] == [("a", 0), ("b", 5), ("c", 3), ("d", 0)]
    assert app.paths == ["/echo"] * 4


async def test_many_pipelined_requests_pause_reading_and_all_get_answers() -> None:
    """Over 64 KiB of pipelined requests: reading pauses and resumes; nothing is lost or reordered."""
    n = 2000
    async with serving() as (_, port):
        client = await Client.connect(port)
        try:
            async with asyncio.TaskGroup() as tg:  # send and read at once, as a pipelining client must
                tg.create_task(client.send(b"".join(get(f"/echo?{i}") for i in range(n))))
                queries = [body_of(await client.read_response())["query"] for _ in range(n)]
        finally:
            client.close()
    assert queries == [str(i) for i in range(n)]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
async def test_chunked_request_body_is_read_whole(split: bool) -> None:
    """A chunked body (with a chunk extension and a trailer) reaches the handler joined, and the
    request pipelined after it is answered next."""
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with serving() as (_, port):
        client = await Client.connect(port)
        try:
            await client.send(request + get("/echo?next"), split=split)
            first, second = await client.read_response(), await client.read_response()
        finally:
            client.close()
    assert body_of(first)["body_len"] == 11
    assert body_of(second)["query"] == "next"


async def test_large_bodies_then_pipelined_requests() -> None:
    """A 1 MiB Content-Length body and a 120 KB chunked body, each with a request right behind it
    in the same send: every body arrives whole and every request is answered in order."""
    big = b"b" * (1 << 20)
    chunked = b"".join(b"%x\r\n%s\r\n" % (40000, b"c" * 40000) for _ in range(3)) + b"0\r\n\r\n"
    data = (
        get("/echo?cl", b"Content-Length: %d\r\n" % len(big), method=b"POST")
        + big
        + get("/echo?a")
        + get("/echo?te", b"Transfer-Encoding: chunked\r\n", method=b"POST")
        + chunked
        + get("/echo?b")
    )
    async with serving() as (_, port):
        client = await Client.connect(port)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(client.send(data))
                replies = [body_of(await client.read_response()) for _ in range(4)]
        finally:
            client.close()
    assert [(r["query"], r["body_len"]) for r in replies] == [("cl", 1 << 20), ("a", 0), ("te", 120000), ("b", 0)]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
async def test_bare_lf_line_endings_are_accepted(split: bool) -> None:
    """A deliberate choice (RFC 9112 §2.2 MAY, as h11/nginx/HAProxy): same verdict however split."""
    async with serving() as (_, port):
        reply = await raw(port, b"GET /echo HTTP/1.1\nHost: x\n\n", split=split)
    assert body_of(reply)["path"] == "/echo"


async def test_http10_request_is_answered_then_closed() -> None:
    async with serving() as (_, port):
        reply = await raw(port, b"GET /echo HTTP/1.0\r\n\r\n")
    assert body_of(reply)["version"] == "1.0"
    assert reply is not None
    assert reply.closed


async def test_head_response_has_length_but_no_body() -> None:
    async with serving() as (_, port):
        client = await Client.connect(port)
        try:
            await client.send(get("/echo", method=b"HEAD") + get("/echo?after"))
            head = await client.read_response(head=True)
            after = await client.read_response()
        finally:
            client.close()
    assert head is not None
    assert head.status == 200
    assert int(head.headers[b"content-length"]) > 0
    assert body_of(after)["query"] == "after"  # no stray body bytes between the two


async def test_expect_100_continue_is_answered_for_an_acceptable_body() -> None:
    async with serving() as (_, port):
        client = await Client.connect(port)
        try:
            await client.send(get("/echo", b"Content-Length: 3\r\n", b"Expect: 100-continue\r\n", method=b"POST"))
            await asyncio.sleep(0.05)
            await client.send(b"abc")
            reply = await client.read_response()
        finally:
            client.close()
    assert reply is not None
    assert reply.informational == [100]
    assert body_of(reply)["body_len"] == 3


# -- limits (hardening.md §(b) 7, 8, 9, 11) ------------------------------------------------------


def head_of_size(size: int) -> bytes:
    """A GET /echo head of exactly ``size`` bytes, blank line included."""
    base = get("/echo", b"X-Pad: \r\n")
    return base.replace(b"X-Pad: ", b"X-Pad: " + b"a" * (size - len(base)))


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("size", "status"), [(16384, 200), (16385, 431), (20000, 431)])
async def test_head_size_limit_is_the_same_however_the_bytes_arrive(size: int, status: int, split: bool) -> None:
    """h11 alone accepts a 20 KB head that arrives in one read; we count raw bytes ourselves."""
    async with serving() as (_, port):
        reply = await raw(port, head_of_size(size), split=split)
    assert reply is not None
    assert reply.status == status
    assert reply.closed is (status != 200)


@pytest.mark.parametrize(("count", "status"), [(100, 200), (101, 431), (3000, 431)])
async def test_header_count_limit(count: int, status: int) -> None:
    async with serving() as (_, port):
        reply = await raw(port, get("/echo", *(b"X-H%d: v\r\n" % i for i in range(count - 1))))
    assert reply is not None
    assert reply.status == status


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("line_len", "status"), [(8192, 200), (8193, 414), (12000, 414)])
async def test_request_line_limit(line_len: int, status: int, split: bool) -> None:
    """The request line, without its CRLF, may be 8,192 bytes; one more is 414."""
    prefix, suffix = b"GET /echo?", b" HTTP/1.1"
    line = prefix + b"q" * (line_len - len(prefix) - len(suffix)) + suffix
    async with serving() as (_, port):
        reply = await raw(port, line + b"\r\nHost: x\r\n\r\n", split=split)
    assert reply is not None
    assert reply.status == status
    assert reply.closed is (status != 200)


async def test_huge_content_length_gets_413_before_any_body_byte() -> None:
    """No body is sent at all: the 413 must come from the head alone (and no 100 Continue)."""
    async with serving() as (_, port):
        head = get("/echo", b"Content-Length: 10737418240\r\n", b"Expect: 100-continue\r\n", method=b"POST")
        reply = await raw(port, head)
    assert reply is not None
    assert reply.status == 413
    assert reply.closed
    assert reply.informational == []
    assert json.loads(reply.body)["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
async def test_chunked_body_over_the_limit_gets_413_and_close(split: bool) -> None:
    app = App()
    chunk = b"200\r\n" + b"z" * 512 + b"\r\n"
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n"
    async with serving(app, max_body_bytes=1024) as (_, port):
        reply = await raw(port, request + SMUGGLED, split=split)
        at_limit = await raw(port, request.replace(chunk * 3, chunk * 2))
    assert reply is not None
    assert reply.status == 413
    assert reply.closed
    assert body_of(at_limit)["body_len"] == 1024
    assert app.paths == ["/echo"]  # only the request at the limit ran


async def test_content_length_body_at_the_limit_is_accepted() -> None:
    async with serving(max_body_bytes=1024) as (_, port):
        ok = await raw(port, get("/echo", b"Content-Length: 1024\r\n", method=b"POST") + b"b" * 1024)
        over = await raw(port, get("/echo", b"Content-Length: 1025\r\n", method=b"POST"))
    assert body_of(ok)["body_len"] == 1024
    assert over is not None
    assert over.status == 413
    assert over.closed


# -- the smuggling corpus (hardening.md §(b) 1-6, 9, 10) ------------------------------------------

H = b"Host: x\r\n"
CORPUS: list[tuple[str, bytes, set[int]]] = [
    (
        "cl+te",
        b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        {400},
    ),
    (
        "te+cl",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        {400},
    ),
    (
        "cl-differing",
        b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        {400},
    ),
    (
        "cl-equal-dup",
        b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\na",
        {400},
    ),
    ("cl-list", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 1, 1\r\n\r\na", {400}),
    ("cl-plus", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: +1\r\n\r\na", {400}),
    ("cl-minus", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\na", {400}),
    ("cl-21-digits", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: " + b"1" * 21 + b"\r\n\r\n", {400}),
    ("cl-hex", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 0x10\r\n\r\n", {400}),
    ("cl-inner-space", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 1 1\r\n\r\n", {400}),
    ("cl-space-before-colon", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length : 1\r\n\r\na", {400}),
    (
        "te-xchunked",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        {400, 501},
    ),
    (
        "te-twice-in-list",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n",
        {400, 501},
    ),
    (
        "te-vtab",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n",
        {400, 501},
    ),
    (
        "te-space-colon",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        {400},
    ),
    (
        "te-two-lines",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        {400, 501},
    ),
    ("te-identity", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", {400, 501}),
    (
        "te-gzip-chunked",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        {400, 501},
    ),
    ("http10-te", b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
    ("obs-fold", b"GET /echo HTTP/1.1\r\n" + H + b"X-A: b\r\n  c\r\n\r\n", {400}),
    ("obs-fold-auth", b"GET /echo HTTP/1.1\r\n" + H + b"Authorization: Bearer\r\n\trp_live_x\r\n\r\n", {400}),
    ("fold-first-line", b"GET /echo HTTP/1.1\r\n Host: x\r\n\r\n", {400}),
    ("bare-cr", b"GET /echo HTTP/1.1\r\n" + H + b"X-A: b\rc\r\n\r\n", {400}),
    ("nul-in-value", b"GET /echo HTTP/1.1\r\n" + H + b"X-A: b\x00c\r\n\r\n", {400}),
    ("del-in-value", b"GET /echo HTTP/1.1\r\n" + H + b"X-A: b\x7fc\r\n\r\n", {400}),
    ("vtab-in-value", b"GET /echo HTTP/1.1\r\n" + H + b"X-A: b\x0bc\r\n\r\n", {400}),
    (
        "chunk-size-0x",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n",
        {400},
    ),
    (
        "chunk-size-21-hex",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 20 + b"2\r\nab\r\n0\r\n\r\n",
        {400},
    ),
    (
        "chunk-missing-crlf",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
        {400},
    ),
    (
        "chunk-ext-bare-lf",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2;a\nb\r\nab\r\n0\r\n\r\n",
        {400},
    ),
    ("space-in-target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("http-2.0", b"GET /echo HTTP/2.0\r\n" + H + b"\r\n", {505}),
    ("http-1.2", b"GET /echo HTTP/1.2\r\n" + H + b"\r\n", {505}),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {505}),
    ("nul-in-method", b"G\x00T /echo HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("no-version", b"GET /echo\r\n" + H + b"\r\n", {400}),
    ("missing-host", b"GET /echo HTTP/1.1\r\n\r\n", {400}),
    ("two-hosts", b"GET /echo HTTP/1.1\r\n" + H + H + b"\r\n", {400}),
    ("leading-blank-line", b"\r\nGET /echo HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("no-colon", b"GET /echo HTTP/1.1\r\n" + H + b"X-A b\r\n\r\n", {400}),
    ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", {405}),
    (
        "cl-zero+te",
        b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        {400},
    ),
    ("http10-te+cl", b"POST /echo HTTP/1.0\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
    ("cl-empty", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length:\r\n\r\n", {400}),
    ("cl-inner-tab", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 1\t1\r\n\r\n", {400}),
    (
        "chunk-size-negative",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-1\r\na\r\n0\r\n\r\n",
        {400},
    ),
    ("space-in-name", b"GET /echo HTTP/1.1\r\n" + H + b"X A: b\r\n\r\n", {400}),
    ("nul-in-name", b"GET /echo HTTP/1.1\r\n" + H + b"X\x00A: b\r\n\r\n", {400}),
    ("tab-in-request-line", b"GET\t/echo HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("cr-in-request-line", b"GET /echo\r HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("lowercase-version", b"GET /echo http/1.1\r\n" + H + b"\r\n", {400}),
]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("request_bytes", "statuses"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
async def test_smuggling_corpus_is_refused_and_what_follows_never_runs(
    request_bytes: bytes, statuses: set[int], split: bool
) -> None:
    """Every case: an error status, Connection: close, the socket closed, the pipelined request unseen."""
    app = App()
    async with serving(app) as (_, port):
        reply = await raw(port, request_bytes + SMUGGLED, split=split)
    assert reply is not None, "the server closed without an answer"
    assert reply.status in statuses
    assert reply.headers.get(b"connection") == b"close"
    assert reply.closed
    assert "/smuggled" not in app.paths
    assert app.paths == []


# -- timeouts (hardening.md §(b) 13-15) -----------------------------------------------------------


async def test_slowloris_is_cut_off_by_the_header_deadline() -> None:
    """One byte every 0.15 s never completes a head: 408 + close at the wall-clock deadline."""
    async with serving(header_read_s=0.6) as (_, port):
        client = await Client.connect(port)
        started = time.monotonic()
        try:
            request = get("/echo", b"X-Slow: " + b"s" * 100 + b"\r\n")
            for i in range(len(request)):
                await client.send(request[i : i + 1])
                await asyncio.sleep(0.15)
                if client.eof or await _readable(client):
                    break
            reply = await client.read_response()
            closed = await client.wait_eof(1.0)
        finally:
            client.close()
    elapsed = time.monotonic() - started
    assert reply is not None
    assert reply.status == 408
    assert closed
    assert 0.5 < elapsed < 1.2


async def _readable(client: Client) -> bool:
    try:
        return await client._recv(0.001)
    except TimeoutError:
        return False


async def test_connection_that_sends_nothing_is_closed_silently_at_the_header_deadline() -> None:
    async with serving(header_read_s=0.3) as (server, port):
        client = await Client.connect(port)
        try:
            started = time.monotonic()
            assert await client.wait_eof(2.0)
            assert 0.25 < time.monotonic() - started < 1.0
            assert client.buf == b""
            await asyncio.sleep(0.01)
            assert server.open_connections == 0
        finally:
            client.close()


async def test_slow_body_is_cut_off_by_the_body_deadline() -> None:
    """R-U-D-Y: the head arrives, the body trickles in: 408 + close, and the handler never runs."""
    app = App()
    async with serving(app, body_read_s=0.4) as (_, port):
        client = await Client.connect(port)
        try:
            await client.send(get("/echo", b"Content-Length: 100\r\n", method=b"POST"))
            for _ in range(10):
                await client.send(b"b")
                await asyncio.sleep(0.1)
                if client.eof or await _readable(client):
                    break
            reply = await client.read_response()
        finally:
            client.close()
    assert reply is not None
    assert reply.status == 408
    assert app.paths == []


async def test_idle_keep_alive_connection_is_closed_silently() -> None:
    async with serving(keepalive_idle_s=0.3) as (server, port):
        client = await Client.connect(port)
        try:
            await client.send(get("/echo"))
            assert body_of(await client.read_response())
            started = time.monotonic()
            assert await client.wait_eof(2.0)
            assert 0.25 < time.monotonic() - started < 1.0
            assert client.buf == b""  # silently: no 408 on an idle connection
            await asyncio.sleep(0.01)
            assert server.open_connections == 0
        finally:
            client.close()


# -- streaming responses, backpressure, disconnects ----------------------------------------------


async def test_streamed_response_is_chunked_and_the_connection_is_reused() -> None:
    app = App()
    async with serving(app) as (_, port):
        client = await Client.connect(port)
        try:
            await client.send(get("/stream?n=4&delay=0.01"))
            reply = await client.read_response()
            await client.send(get("/echo"))
            after = await client.read_response()
        finally:
            client.close()
    assert reply is not None
    assert reply.complete
    assert reply.headers[b"transfer-encoding"] == b"chunked"
    assert reply.body == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"
    assert app.finished.is_set()
    assert not app.closed.is_set()
    assert body_of(after)["path"] == "/echo"


async def test_stream_to_an_http10_client_is_close_delimited() -> None:
    async with serving() as (_, port):
        reply = await raw(port, b"GET /stream?n=2 HTTP/1.0\r\n\r\n")
    assert reply is not None
    assert b"transfer-encoding" not in reply.headers
    assert reply.body == b"chunk 0\nchunk 1\n"


async def test_slow_reader_stops_the_generator_then_the_write_stall_closes_it() -> None:
    """A client that does not read: the generator is not resumed while writes are paused, so the
    number of 64 KiB chunks taken stays flat; after client_write_stall_s the stream is closed."""
    app = App()
    async with serving(app, client_write_stall_s=1.0) as (server, port):
        client = await Client.connect(port, rcvbuf=4096)
        try:
            await client.send(get("/big?n=2000"))
            await asyncio.sleep(0.4)
            pulled = app.pulled
            await asyncio.sleep(0.4)
            assert app.pulled == pulled, "the generator was resumed while the client read nothing"
            assert pulled < 100  # kernel buffers (~3 MB here) + one transport high-water mark
            assert not app.closed.is_set()
            await asyncio.wait_for(app.closed.wait(), 2.0)
            await asyncio.sleep(0.05)
            assert server.open_connections == 0
            assert server.active_requests == 0
        finally:
            client.close()


async def test_slow_but_steady_reader_gets_the_whole_stream() -> None:
    """Backpressure pauses the producer; it never drops or reorders bytes."""
    app = App()
    async with serving(app) as (_, port):
        client = await Client.connect(port, rcvbuf=4096)
        try:
            await client.send(get("/big?n=100"))
            await asyncio.sleep(0.2)  # let the server hit its high-water mark first
            reply = await client.read_response()
        finally:
            client.close()
    assert reply is not None
    assert reply.complete
    assert reply.body == b"x" * 65536 * 100
    assert app.finished.is_set()


async def test_client_disconnect_mid_stream_closes_the_generator_within_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    app = App()
    async with serving(app) as (server, port):
        client = await Client.connect(port)
        await client.send(get("/stream-block?n=5"))
        await client._until(b"chunk 0\n", 2.0)
        client.close()
        gone = time.monotonic()
        await asyncio.wait_for(app.closed.wait(), 1.0)
        assert app.closed_at - gone < 1.0
        await asyncio.sleep(0.01)
        assert server.active_requests == 0
        assert server.open_connections == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # a disconnect is no error


async def test_client_disconnect_cancels_a_blocked_handler_within_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    app = App()
    async with serving(app) as (server, port):
        client = await Client.connect(port)
        await client.send(get("/block"))
        await asyncio.sleep(0.05)
        assert server.active_requests == 1
        client.close()
        await asyncio.wait_for(app.cancelled.wait(), 1.0)
        await asyncio.sleep(0.01)
        assert server.active_requests == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_handler_bug_gets_500_and_is_logged_without_headers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="relayproxy.server")
    async with serving() as (_, port):
        reply = await raw(port, get("/raise", b"Authorization: Bearer rp_live_CANARY\r\n"))
        after = await raw(port, get("/echo"))  # the server lives on
    assert reply is not None
    assert reply.status == 500
    assert reply.closed
    assert json.loads(reply.body)["error"]["code"] == "internal_error"
    assert body_of(after)
    assert "handler bug" in caplog.text
    assert "Traceback" in caplog.text
    assert "CANARY" not in caplog.text


async def test_generator_bug_mid_stream_closes_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    """Headers already went out: no 500 is possible, the chunked body is left unterminated."""
    caplog.set_level(logging.ERROR, logger="relayproxy.server")
    async with serving() as (_, port):
        reply = await raw(port, get("/stream-raise"))
    assert reply is not None
    assert reply.status == 200
    assert not reply.complete
    assert reply.body.startswith(b"chunk 0\n")
    assert "generator bug" in caplog.text


async def test_render_error_is_used_with_the_parsed_request() -> None:
    """The caller's renderer answers server-found errors, with the request once its head parsed."""
    seen: list[tuple[int, str | None]] = []

    def render(status: int, message: str, req: HttpRequest | None) -> HttpResponse:
        seen.append((status, req.path if req else None))
        return HttpResponse(status, [(b"content-type", b"text/plain")], b"custom: " + message.encode())

    server = Server(App(), render_error=render)
    bound: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(server.serve("127.0.0.1", 0, ready=bound.set_result))
        port = (await bound)[0][1]
        too_big = await raw(port, get("/v1/chat", b"Content-Length: 99999999999\r\n", method=b"POST"))
        bad = await raw(port, b"GET /x HTTP/1.1\r\nHost: x\r\nX: \x01\r\n\r\n")
        failed = await raw(port, get("/raise"))
        task.cancel()
    assert too_big is not None
    assert too_big.status == 413
    assert too_big.body.startswith(b"custom: ")
    assert bad is not None
    assert bad.status == 400
    assert failed is not None
    assert failed.status == 500
    assert seen == [(413, "/v1/chat"), (400, None), (500, "/raise")]


async def test_error_bodies_never_echo_header_values() -> None:
    """h11 quotes the offending line in its message; the client's key must not come back."""
    async with serving() as (_, port):
        reply = await raw(port, get("/echo", b"Authorization: Bearer rp_live_SECRET\x00\r\n"))
        folded = await raw(port, get("/echo", b"X-A: 1\r\n", b" rp_live_SECRET\r\n"))
    for r in (reply, folded):
        assert r is not None
        assert r.status == 400
        assert b"SECRET" not in r.body


async def test_serve_on_a_given_socket_reports_its_address() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = Server(App())
    bound: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(server.serve("ignored", 0, sock=sock, ready=bound.set_result))
        assert await bound == [sock.getsockname()]
        assert body_of(await raw(sock.getsockname()[1], get("/echo")))["path"] == "/echo"
        await server.shutdown(drain_s=1.0)
    assert sock.fileno() == -1  # the listener owned and closed it


# -- shutdown (hardening.md §(b) 39) --------------------------------------------------------------


async def test_shutdown_closes_listener_and_idle_connections_and_lets_streams_finish() -> None:
    app = App()
    async with serving(app) as (server, port):
        idle = await Client.connect(port)
        streaming = await Client.connect(port)
        try:
            await idle.send(get("/echo"))
            assert body_of(await idle.read_response())
            await streaming.send(get("/stream?n=6&delay=0.1"))
            await streaming._until(b"chunk 0\n", 2.0)
            started = time.monotonic()
            async with asyncio.TaskGroup() as tg:
                stopping = tg.create_task(server.shutdown(drain_s=3.0))
                await asyncio.sleep(0.05)
                with pytest.raises(ConnectionRefusedError):
                    await Client.connect(port)
                assert await idle.wait_eof(0.5)
                reply = await streaming.read_response()
                await stopping
        finally:
            idle.close()
            streaming.close()
    assert reply is not None
    assert reply.complete
    assert reply.body.count(b"chunk") == 6
    assert reply.headers.get(b"connection") is None  # its response started before the drain
    assert app.finished.is_set()
    assert time.monotonic() - started < 2.0


async def test_shutdown_cancels_what_is_left_at_the_drain_deadline() -> None:
    app = App()
    async with serving(app) as (server, port):
        client = await Client.connect(port)
        try:
            await client.send(get("/stream-block"))
            await client._until(b"chunk 0\n", 2.0)
            started = time.monotonic()
            await server.shutdown(drain_s=0.3)
            assert 0.25 < time.monotonic() - started < 1.0
            assert app.closed.is_set()
            reply = await client.read_response()
            assert reply is not None
            assert not reply.complete
        finally:
            client.close()


async def test_responses_started_while_draining_say_connection_close() -> None:
    """A request still arriving when the drain starts is served, with Connection: close."""
    async with serving() as (server, port):
        client = await Client.connect(port)
        try:
            request = get("/echo")
            await client.send(request[:10])
            await asyncio.sleep(0.01)  # the server has read them: the connection is not idle
            async with asyncio.TaskGroup() as tg:
                stopping = tg.create_task(server.shutdown(drain_s=2.0))
                await asyncio.sleep(0.05)
                await client.send(request[10:])
                reply = await client.read_response()
                assert reply is not None
                assert reply.headers.get(b"connection") == b"close"
                assert body_of(reply)
                assert await client.wait_eof(1.0)
                await stopping
        finally:
            client.close()


@pytest.mark.parametrize("size", [1, 15, 16, 255, 4096, 70_000])
def test_stream_chunks_are_framed_exactly_as_h11_frames_them(size: int) -> None:
    """The server frames streamed chunks itself (no h11 event per chunk): byte for byte h11's framing."""
    import h11

    from relayproxy.server.writer import frame_chunk

    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    head = conn.send(h11.Response(status_code=200, headers=[]))
    assert head is not None and b"transfer-encoding: chunked" in head.lower()
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert frame_chunk(data) == conn.send(h11.Data(data=data))
