"""relayproxy.upstream against a stdlib fake server that writes hand-scripted HTTP/1.1 bytes.

The fake is deliberately not h11 and not our server: it speaks the wire format byte for byte,
so framing mistakes in the client cannot be mirrored by the same mistakes in the fake.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trustme

from relayproxy.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from relayproxy.upstream import Pool, UpstreamResponse
from relayproxy.upstream.connection import Origin, UpstreamConnection
from relayproxy.upstream.pool import split_url

pytestmark = pytest.mark.anyio

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Upstream: yes\r\n\r\nhello"
FAST = {"connect_timeout_s": 1.0, "first_byte_timeout_s": 2.0, "read_timeout_s": 2.0}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the fake server ----------------------------------------------------------------------------


class FakeServer:
    """Runs ``script(server, reader, writer)`` per connection and records what it was sent."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.connections = 0
        self.requests: list[bytes] = []
        self.signal = asyncio.Event()  # the test tells a script to go on
        self.peer_closed = asyncio.Event()  # a script saw the client close the connection
        self.request_seen = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def url(self, path: str = "/v1/x", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        try:
            await self.script(self, reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head + Content-Length body), or None when the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, OSError):
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        self.request_seen.set()
        return request

    async def wait_peer_closed(self, reader: asyncio.StreamReader) -> None:
        """Read (and drop) until the client closes; this is how a script stalls."""
        try:
            while await reader.read(65536):
                pass
        except OSError:
            pass
        self.peer_closed.set()


Script = Callable[[FakeServer, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def fake_server(script: Script, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[FakeServer]:
    srv = FakeServer(script)
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0, ssl=ssl_context)
    srv.port = server.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        server.close()
        for task in srv.tasks:
            task.cancel()
        await asyncio.gather(*srv.tasks, return_exceptions=True)
        await server.wait_closed()


def serve(*responses: bytes) -> Script:
    """Answer the n-th request on each connection with responses[n] (the last one repeats)."""

    async def script(srv: FakeServer, reader: Reader, writer: Writer) -> None:
        n = 0
        while await srv.read_request(reader) is not None:
            writer.write(responses[min(n, len(responses) - 1)])
            await writer.drain()
            n += 1

    return script


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer gets a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def get(pool: Pool, srv: FakeServer, **timeouts: float) -> UpstreamResponse:
    return await pool.request("GET", srv.url(), [], b"", **{**FAST, **timeouts})


async def fetch(pool: Pool, srv: FakeServer) -> bytes:
    response = await get(pool, srv)
    assert response.status == 200
    return await response.aread()


# -- framing ------------------------------------------------------------------------------------


async def test_content_length_body_and_request_bytes() -> None:
    """The request carries Host with the port, our Content-Length and the caller's headers as given."""
    async with fake_server(serve(OK)) as srv, Pool() as pool:
        headers = [(b"x-custom", b"v"), (b"content-length", b"999"), (b"host", b"evil.example")]
        response = await pool.request("POST", srv.url("/v1/x?y=1"), headers, b"12345", **FAST)
        assert (response.status, response.reason) == (200, b"OK")
        assert response.headers == [(b"content-length", b"5"), (b"x-upstream", b"yes")]
        assert await response.aread() == b"hello"
    # Compared whole: the port is random, so a substring test such as "999" not in the
    # request can match the Host line by chance.
    assert srv.requests[0].lower() == (
        b"post /v1/x?y=1 http/1.1\r\n"
        + f"host: 127.0.0.1:{srv.port}\r\n".encode()
        + b"x-custom: v\r\ncontent-length: 5\r\n\r\n12345"
    )


async def test_chunked_body_yields_chunks_as_they_arrive() -> None:
    async def script(srv: FakeServer, reader: Reader, writer: Writer) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await srv.signal.wait()
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        await srv.wait_peer_closed(reader)

    async with fake_server(script) as srv, Pool() as pool:
        response = await get(pool, srv)
        chunks = []
        async for chunk in response.aiter_body():
            chunks.append(bytes(chunk))
            srv.signal.set()
        assert chunks == [b"hello", b" world"]
        assert pool.idle_count(srv.url()) == 1


async def test_body_until_eof_is_read_and_not_pooled() -> None:
    async def script(srv: FakeServer, reader: Reader, writer: Writer) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"eof")

    async with fake_server(script) as srv, Pool() as pool:
        response = await get(pool, srv)
        assert await response.aread() == b"until eof"
        assert pool.idle_count() == 0


async def test_empty_body_response_is_pooled_without_reading() -> None:
    """A 204 has nothing to read: aclose() alone hands the connection back."""
    async with fake_server(serve(b"HTTP/1.1 204 No Content\r\n\r\n")) as srv, Pool() as pool:
        for _ in range(2):
            async with await get(pool, srv) as response:
                assert response.status == 204
            assert pool.idle_count(srv.url()) == 1
        assert pool.connections_opened == 1


async def test_informational_responses_are_skipped() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n" + OK
    async with fake_server(serve(early)) as srv, Pool() as pool:
        assert await fetch(pool, srv) == b"hello"
        assert await fetch(pool, srv) == b"hello"
        assert pool.connections_opened == 1


async def test_malformed_status_line_is_protocol_error() -> None:
    async with fake_server(serve(b"HTTP/1.1 two hundred OK\r\n\r\n")) as srv, Pool() as pool:
        with pytest.raises(UpstreamProtocolError, match=f"127.0.0.1:{srv.port}"):
            await get(pool, srv)
        assert pool.idle_count() == 0


async def test_large_body_is_sent_whole() -> None:
    """A body beyond the kernel's socket buffers is drained, not buffered in the transport unbounded."""
    body = bytes(range(256)) * (32 * 1024)  # 8 MiB

    async def script(srv: FakeServer, reader: Reader, writer: Writer) -> None:
        await asyncio.sleep(0.1)  # a slow reader: the client's transport buffer passes its high-water mark
        request = await srv.read_request(reader)
        assert request is not None
        assert request.endswith(body)
        writer.write(OK)
        await srv.wait_peer_closed(reader)

    async with fake_server(script) as srv, Pool() as pool:
        response = await pool.request("POST", srv.url(), [], body, **FAST)
        assert await response.aread() == b"hello"


async def test_invalid_header_value_is_rejected_without_echoing_it() -> None:
    """h11 quotes a bad header value in its message; ours must not (it may be the provider key)."""
    async with fake_server(serve(OK)) as srv, Pool() as pool:
        headers = [(b"authorization", b"Bearer sk-SECRET\r\nx-injected: 1")]
        with pytest.raises(UpstreamProtocolError) as caught:
            await pool.request("POST", srv.url(), headers, b"{}", **FAST)
        assert "SECRET" not in str(caught.value)
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__
        await asyncio.sleep(0.05)
        assert srv.requests == []


# -- keep-alive and the pool --------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection() -> None:
    async with fake_server(serve(OK)) as srv, Pool() as pool:
        for _ in range(3):
            assert await fetch(pool, srv) == b"hello"
        assert pool.connections_opened == 1
        assert srv.connections == 1
        assert len(srv.requests) == 3
        assert pool.idle_count(srv.url()) == 1


async def test_connection_close_response_is_not_reused() -> None:
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
    async with fake_server(serve(close)) as srv, Pool() as pool:
        assert await fetch(pool, srv) == b"hello"
        assert pool.idle_count() == 0
        assert await fetch(pool, srv) == b"hello"
        assert pool.connections_opened == 2


@pytest.mark.parametrize(
    ("method", "headers", "response", "pooled"),
    [
        ("GET", [(b"Connection", b"keep-alive, Close")], OK, False),  # we asked the upstream to close
        ("GET", [], b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", False),
        ("GET", [], b"HTTP/1.1 200 OK\r\nConnection: x, close\r\nContent-Length: 5\r\n\r\nhello", False),
        ("GET", [], OK + b"junk", False),  # bytes after the response: out of sync
        ("HEAD", [], b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True),  # no body after a HEAD
        ("GET", [], b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", True),
    ],
    ids=["request-close", "http-1.0", "response-close", "trailing-junk", "head", "304"],
)
async def test_keep_alive_follows_both_heads_and_the_body_framing(
    method: str, headers: list[tuple[bytes, bytes]], response: bytes, pooled: bool
) -> None:
    async with fake_server(serve(response)) as srv, Pool() as pool:
        response_ = await pool.request(method, srv.url(), headers, b"", **FAST)
        assert await response_.aread() == (b"hello" if method == "GET" and response_.status == 200 else b"")
        await asyncio.sleep(0.01)  # let bytes sent after the response arrive
        assert pool.idle_count() == int(pooled)


async def test_large_bodies_arrive_whole() -> None:
    """Reads much larger than the receive buffer, in chunks of every size, and a long Content-Length body."""
    data = bytes(range(256)) * 4096  # 1 MiB
    sizes = [1, 2, 100, 65535, 65536, 65537, 300_000]
    chunks, at = [], 0
    for size in sizes * 4:
        chunks.append(data[at : at + size])
        at += size
        if at >= len(data):
            break
    chunks.append(data[at:])
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    responses = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data),
    ]
    async with fake_server(serve(*responses)) as srv, Pool() as pool:
        for _ in responses:
            assert await (await get(pool, srv)).aread(max_bytes=len(data)) == data
        assert pool.connections_opened == 1


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    data = bytes(range(256)) * 8192  # 2 MiB, far beyond what the client buffers before pausing
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
    async with fake_server(serve(response)) as srv, Pool() as pool:
        response_ = await get(pool, srv)
        await asyncio.sleep(0.2)  # the server writes all it can meanwhile
        conn = response_._conn
        assert conn is not None and conn._sock.buffered <= 256 * 1024  # reading paused
        assert await response_.aread(max_bytes=len(data)) == data


async def test_unread_body_closes_instead_of_pooling() -> None:
    async with fake_server(serve(OK)) as srv, Pool() as pool:
        response = await get(pool, srv)
        await response.aclose()
        await response.aclose()  # idempotent
        assert pool.idle_count() == 0


async def test_abandoned_iterator_does_not_close_a_released_connection() -> None:
    """aclose() after the last chunk pools the connection; the iterator's late cleanup leaves it alone."""
    async with fake_server(serve(OK)) as srv, Pool() as pool:
        response = await get(pool, srv)
        body = response.aiter_body()
        assert await anext(body) == b"hello"
        await response.aclose()
        assert pool.idle_count() == 1
        await body.aclose()  # what the garbage collector's finalizer would do
        assert await fetch(pool, srv) == b"hello"
        assert pool.connections_opened == 1


async def test_idle_connections_expire() -> None:
    async with fake_server(serve(OK)) as srv, Pool(idle_expiry_s=0.05) as pool:
        await fetch(pool, srv)
        await asyncio.sleep(0.1)
        await fetch(pool, srv)
        assert pool.connections_opened == 2
        assert pool.idle_count() == 1


async def test_concurrent_requests_get_their_own_connections_and_idle_is_capped() -> None:
    n = 5

    async def script(srv: FakeServer, reader: Reader, writer: Writer) -> None:
        while await srv.read_request(reader) is not None:
            if len(srv.requests) == n:
                srv.signal.set()
            await srv.signal.wait()  # answers only once all n requests are in flight at once
            writer.write(OK)

    async with fake_server(script) as srv, Pool(max_idle_per_origin=2) as pool:
        async with asyncio.timeout(5):
            bodies = await asyncio.gather(*(fetch(pool, srv) for _ in range(n)))
        assert bodies == [b"hello"] * n
        assert pool.connections_opened == n
        assert pool.idle_count(srv.url()) == 2


async def test_server_closed_idle_connection_is_replaced_transparently() -> None:
    async def script(srv: FakeServer, reader: Reader, writer: Writer) -> None:
        if srv.connections > 1:
            return await serve(OK)(srv, reader, writer)
        await srv.read_request(reader)
        writer.write(OK)
        await srv.signal.wait()  # then the handler closes: a FIN on an idle connection

    async with fake_server(script) as srv, Pool() as pool:
        await fetch(pool, srv)
        assert pool.idle_count() == 1
        srv.signal.set()
        await asyncio.sleep(0.05)  # let the FIN arrive
        assert await fetch(pool, srv) == b"hello"
        assert pool.connections_opened == 2
        assert len(srv.requests) == 2


async def test_unsolicited_bytes_on_idle_connection_make_it_dead() -> None:
    """A 408 sent to an idle connection would otherwise be read as the next response."""

    async def script(srv: FakeServer, reader: Reader, writer: Writer) -> None:
        if srv.connections > 1:
            return await serve(OK)(srv, reader, writer)
        await srv.read_request(reader)
        writer.write(OK)
        await srv.signal.wait()
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await srv.wait_peer_closed(reader)

    async with fake_server(script) as srv, Pool() as pool:
        await fetch(pool, srv)
        srv.signal.set()
        await asyncio.sleep(0.05)
        assert await fetch(pool, srv) == b"hello"
        assert pool.connections_opened == 2


async def test_failed_write_on_reused_connection_is_retried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer reset the idle socket but we have not noticed: the write fails, nothing was sent."""

    async def script(srv: FakeServer, reader: Reader, writer: Writer) -> None:
        if srv.connections > 1:
            return await serve(OK)(srv, reader, writer)
        await srv.read_request(reader)
        writer.write(OK)
        await srv.signal.wait()
        reset(writer)

    async with fake_server(script) as srv, Pool() as pool:
        await fetch(pool, srv)
        (idle,) = pool._idle[split_url(srv.url())[0]]
        idle._transport.pause_reading()  # so the RST stays unseen
        srv.signal.set()
        await asyncio.sleep(0.05)
        monkeypatch.setattr(UpstreamConnection, "is_dead", lambda self: False)
        assert await fetch(pool, srv) == b"hello"
        assert pool.connections_opened == 2
        assert len(srv.requests) == 2


@pytest.mark.parametrize("how", ["rst", "fin"])
async def test_drop_after_request_was_sent_is_not_retried(how: str) -> None:
    """Once request bytes left, a broken connection is an error: LLM calls are not idempotent."""

    async def script(srv: FakeServer, reader: Reader, writer: Writer) -> None:
        await srv.read_request(reader)
        writer.write(OK)
        await srv.read_request(reader)
        reset(writer) if how == "rst" else writer.close()

    async with fake_server(script) as srv, Pool() as pool:
        await fetch(pool, srv)
        with pytest.raises((UpstreamConnectError, UpstreamProtocolError)):
            await get(pool, srv)
        assert len(srv.requests) == 2
        assert srv.connections == 1
        assert pool.connections_opened == 1
        assert pool.idle_count() == 0


# -- connect errors and timeouts ----------------------------------------------------------------


async def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with Pool() as pool:
        with pytest.raises(UpstreamConnectError, match=f"127.0.0.1:{port}: connecting failed"):
            await pool.request("GET", f"http://127.0.0.1:{port}/", [], b"", **FAST)


@contextmanager
def full_backlog() -> Iterator[int]:
    """A loopback listener whose accept queue is full: the next SYN is dropped, connect() hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    try:
        for filler in fillers:
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
        yield port
    finally:
        for s in [*fillers, listener]:
            s.close()


async def test_connect_timeout() -> None:
    with full_backlog() as port:
        async with Pool() as pool:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout, match="timed out connecting"):
                await pool.request("GET", f"http://127.0.0.1:{port}/", [], b"", connect_timeout_s=0.2)
            assert time.monotonic() - started < 1.0


async def _read_and_stall(srv: FakeServer, reader: Reader, writer: Writer) -> None:
    await srv.read_request(reader)
    await srv.wait_peer_closed(reader)


async def test_first_byte_timeout_closes_the_connection() -> None:
    async with fake_server(_read_and_stall) as srv, Pool() as pool:
        with pytest.raises(UpstreamTimeout, match="response head"):
            await get(pool, srv, first_byte_timeout_s=0.2)
        async with asyncio.timeout(1):
            await srv.peer_closed.wait()
        assert pool.idle_count() == 0


async def _head_then_stall(srv: FakeServer, reader: Reader, writer: Writer) -> None:
    await srv.read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    await srv.wait_peer_closed(reader)


async def test_mid_body_stall_times_out() -> None:
    async with fake_server(_head_then_stall) as srv, Pool() as pool:
        response = await get(pool, srv, read_timeout_s=0.2)
        body = response.aiter_body()
        assert await anext(body) == b"hello"
        with pytest.raises(UpstreamTimeout, match="response body"):
            await anext(body)
        async with asyncio.timeout(1):
            await srv.peer_closed.wait()
        assert pool.idle_count() == 0


async def _head_pause_rest(srv: FakeServer, reader: Reader, writer: Writer) -> None:
    await srv.read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    await asyncio.sleep(0.35)
    writer.write(b"world")
    await srv.wait_peer_closed(reader)


async def test_heartbeat_yields_empty_chunks_during_a_pause_without_losing_bytes() -> None:
    """A heartbeat lets the caller ping its own client; the read timeout counts from the last bytes."""
    async with fake_server(_head_pause_rest) as srv, Pool() as pool:
        response = await get(pool, srv, read_timeout_s=1.0)
        chunks = [chunk async for chunk in response.aiter_body(heartbeat_s=0.1)]
        assert b"".join(chunks) == b"helloworld"
        assert chunks[0] == b"hello" and chunks[-1] == b"world"
        assert 2 <= chunks.count(b"") <= 4


async def test_heartbeat_does_not_extend_the_read_timeout() -> None:
    async with fake_server(_head_then_stall) as srv, Pool() as pool:
        response = await get(pool, srv, read_timeout_s=0.3)
        body = response.aiter_body(heartbeat_s=0.1)
        assert await anext(body) == b"hello"
        beats = 0
        with pytest.raises(UpstreamTimeout, match="response body"):
            while await anext(body) == b"":
                beats += 1
        assert 2 <= beats <= 3


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
    ],
    ids=["chunked", "content-length"],
)
async def test_truncated_body_is_protocol_error(response: bytes) -> None:
    async def script(srv: FakeServer, reader: Reader, writer: Writer) -> None:
        await srv.read_request(reader)
        writer.write(response)  # then the handler closes: EOF before the body's end

    async with fake_server(script) as srv, Pool() as pool:
        response_ = await get(pool, srv)
        with pytest.raises(UpstreamProtocolError, match="response body"):
            await response_.aread()
        assert pool.idle_count() == 0


@pytest.mark.parametrize(
    "response",
    [
        OK,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_aread_over_max_bytes_is_protocol_error(response: bytes) -> None:
    async with fake_server(serve(response)) as srv, Pool() as pool:
        response_ = await get(pool, srv)
        with pytest.raises(UpstreamProtocolError, match="over 4 bytes"):
            await response_.aread(max_bytes=4)
        assert pool.idle_count() == 0


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ssl(tls_ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


async def test_tls_with_trusted_ca(tls_ca: trustme.CA, server_ssl: ssl.SSLContext) -> None:
    client_ssl = ssl.create_default_context()
    tls_ca.configure_trust(client_ssl)
    async with fake_server(serve(OK), server_ssl) as srv, Pool(ssl_context=client_ssl) as pool:
        for _ in range(2):
            response = await pool.request("GET", srv.url(scheme="https"), [], b"", **FAST)
            assert await response.aread() == b"hello"
        assert pool.connections_opened == 1
    assert f"host: 127.0.0.1:{srv.port}".encode() in srv.requests[0].lower()


async def test_default_context_rejects_untrusted_certificate(server_ssl: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()
    # In asyncio debug mode the fake server reports its side of the failed handshake to the loop.
    loop.set_exception_handler(lambda loop, context: None)
    try:
        async with fake_server(serve(OK), server_ssl) as srv, Pool() as pool:
            with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await pool.request("GET", srv.url(scheme="https"), [], b"", **FAST)
            await asyncio.sleep(0.05)  # let the server see the client go away
        assert srv.requests == []
    finally:
        loop.set_exception_handler(handler)


# -- cancellation -------------------------------------------------------------------------------


async def test_cancel_while_reading_body_closes_the_connection() -> None:
    got_first = asyncio.Event()

    async def consume(response: UpstreamResponse) -> None:
        async for _ in response.aiter_body():
            got_first.set()

    async with fake_server(_head_then_stall) as srv, Pool() as pool:
        response = await get(pool, srv)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(consume(response))
            await got_first.wait()
            task.cancel()
        assert task.cancelled()
        async with asyncio.timeout(1):
            await srv.peer_closed.wait()
        assert pool.idle_count() == 0
        await response.aclose()  # still safe


async def test_cancel_while_waiting_for_head_closes_the_connection() -> None:
    async with fake_server(_read_and_stall) as srv, Pool() as pool:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(get(pool, srv))
            await srv.request_seen.wait()
            task.cancel()
        assert task.cancelled()
        async with asyncio.timeout(1):
            await srv.peer_closed.wait()
        assert pool.idle_count() == 0


# -- URLs ---------------------------------------------------------------------------------------


def test_split_url_and_host_header() -> None:
    origin, target = split_url("https://api.openai.com/v1/chat/completions")
    assert origin == Origin("https", "api.openai.com", 443)
    assert target == "/v1/chat/completions"
    assert origin.host_header == b"api.openai.com"
    origin, target = split_url("http://[::1]:8080?a=1")
    assert (origin.label, origin.host_header, target) == ("[::1]:8080", b"[::1]:8080", "/?a=1")
    with pytest.raises(ValueError, match="http:// or https://"):
        split_url("ftp://example.com/")
