"""One HTTP/1.1 client connection to an upstream origin: asyncio streams + h11, TLS via ssl.SSLContext.

This module is the edge of the upstream leg: every OSError, ssl.SSLError, TimeoutError and h11 error
raised here is translated once, by ``map_exceptions``, into the Upstream* errors of ``relayproxy.errors``.
It knows HTTP and nothing about LLMs, and it never logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator
from typing import NamedTuple, SupportsIndex, cast

import h11

from relayproxy.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from relayproxy.http_types import Headers

__all__ = ["ConnState", "Origin", "UpstreamConnection", "UpstreamResponse", "map_exceptions"]

_READ_SIZE = 65536
# Up to this size head and body are joined and sent with one write (one syscall, one TCP segment
# train); above it the copy costs more than a second write does.
_COALESCE_MAX_BYTES = 256 * 1024
# We set these ourselves from the URL and the body; a caller's copy would give the upstream two
# conflicting framings (request smuggling).
_OWNED_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Origin(NamedTuple):
    """Where a connection goes: the pool key."""

    scheme: str
    host: str
    port: int

    @property
    def label(self) -> str:
        """``host:port`` for error messages (IPv6 literals in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def host_header(self) -> bytes:
        """The Host value: the port only when it is not the scheme's default."""
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode("ascii")


class ConnState(enum.Enum):
    NEW = "new"  # connected, no request sent yet
    ACTIVE = "active"  # a request/response cycle is in progress
    IDLE = "idle"  # between cycles, parked in the pool
    CLOSED = "closed"


def _first_clause(exc: BaseException) -> str:
    # h11 messages may quote the offending header line after a colon; headers can carry secrets.
    return str(exc).split(":", 1)[0]


@contextlib.contextmanager
def map_exceptions(label: str, phase: str, timeout_s: float | None = None) -> Iterator[None]:
    """Translate foreign exceptions raised while ``phase`` into Upstream* errors naming the origin."""
    try:
        yield
    except TimeoutError as exc:  # before OSError: TimeoutError is one
        limit = f" (limit {timeout_s:g} s)" if timeout_s is not None else ""
        raise UpstreamTimeout(f"upstream {label}: timed out {phase}{limit}") from exc
    except h11.RemoteProtocolError as exc:
        msg = f"upstream {label}: invalid HTTP/1.1 response while {phase}: {_first_clause(exc)}"
        raise UpstreamProtocolError(msg) from exc
    except h11.LocalProtocolError:
        # ``from None``: h11's message quotes the bad header value, which may be an API key.
        msg = f"upstream {label}: the request is not valid HTTP/1.1 while {phase} (header values not shown)"
        raise UpstreamProtocolError(msg) from None
    except OSError as exc:  # ssl.SSLError, ConnectionError, socket.gaierror are OSErrors
        msg = f"upstream {label}: {phase} failed: {type(exc).__name__}: {exc}"
        raise UpstreamConnectError(msg, before_send=phase == "connecting") from exc


class _CountingReader(asyncio.StreamReader):
    """A StreamReader that counts bytes received, so an idle check can see unread bytes."""

    def __init__(self) -> None:
        super().__init__(limit=_READ_SIZE)
        self.bytes_received = 0

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        self.bytes_received += len(cast(bytes, data))
        super().feed_data(data)


class UpstreamConnection:
    """One keep-alive HTTP/1.1 connection; the pool drives its lifecycle."""

    def __init__(self, origin: Origin, reader: _CountingReader, writer: asyncio.StreamWriter) -> None:
        self.origin = origin
        self.state = ConnState.NEW
        self.idle_since_s = 0.0  # monotonic time it was parked; set by start_idle
        self.cycles = 0  # completed request/response cycles: > 0 means this is a reused connection
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.CLIENT)
        self._bytes_read = 0
        self._idle_since: float | None = None  # when the body last went quiet (heartbeats)
        self._loop = asyncio.get_running_loop()
        self._response_started = False
        self._high_water = writer.transport.get_write_buffer_limits()[1]

    @classmethod
    async def open(cls, origin: Origin, ssl_context: ssl.SSLContext | None, timeout_s: float) -> UpstreamConnection:
        """Connect (and handshake TLS when ``ssl_context`` is given) within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        reader = _CountingReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        with map_exceptions(origin.label, "connecting", timeout_s):
            async with asyncio.timeout(timeout_s):
                transport, _ = await loop.create_connection(
                    lambda: protocol,
                    origin.host,
                    origin.port,
                    ssl=ssl_context,
                    server_hostname=origin.host if ssl_context is not None else None,
                )
        return cls(origin, reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    @property
    def label(self) -> str:
        return self.origin.label

    def is_dead(self) -> bool:
        """True if an idle connection cannot carry a request: peer closed, reset, or sent unasked bytes."""
        return (
            self._writer.transport.is_closing()
            or self._reader.at_eof()
            or self._reader.exception() is not None
            # Bytes on an idle connection (a 408, junk) would be read as the next response.
            or self._reader.bytes_received != self._bytes_read
        )

    async def send_request(self, method: str, target: str, headers: Headers, body: bytes, deadline_s: float) -> bool:
        """Write the whole request; False if the connection proved broken before any byte left."""
        assert self.state in (ConnState.NEW, ConnState.IDLE), self.state
        self.state = ConnState.ACTIVE
        self._response_started = False
        transport = self._writer.transport
        with map_exceptions(self.label, "sending the request"):
            pieces = self._render(method, target, headers, body)
            if transport.is_closing():
                return False
            for sent_before, piece in enumerate(pieces):
                self._writer.write(piece)
                # A plain-TCP transport marks itself closing when the immediate send() fails.
                if transport.is_closing():
                    if sent_before == 0:
                        return False
                    raise UpstreamConnectError(f"upstream {self.label}: connection lost while sending")
            if transport.get_write_buffer_size() > self._high_water:
                # A large body: wait for the kernel to take it, or memory grows without bound.
                async with asyncio.timeout_at(deadline_s):
                    await self._writer.drain()
        return True

    def _render(self, method: str, target: str, headers: Headers, body: bytes) -> list[bytes]:
        """The request as one or two byte strings (head + body joined when small)."""
        all_headers: Headers = [(b"host", self.origin.host_header)]
        all_headers.extend(h for h in headers if h[0].lower() not in _OWNED_HEADERS)
        if body or method in _BODY_METHODS:
            all_headers.append((b"content-length", b"%d" % len(body)))
        head = self._h11.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            # passthrough: h11 checks the length and advances its state without joining (copying) it.
            self._h11.send_with_data_passthrough(h11.Data(data=body))
        self._h11.send(h11.EndOfMessage())
        assert head is not None
        if not body:
            return [head]
        return [head + body] if len(body) <= _COALESCE_MAX_BYTES else [head, body]

    async def receive_head(self, deadline_s: float, timeout_s: float) -> h11.Response:
        """Wait for the status line and headers (skipping 1xx) until ``deadline_s`` (loop time)."""
        with map_exceptions(self.label, "waiting for the response head", timeout_s):
            async with asyncio.timeout_at(deadline_s):
                while True:
                    event = self._h11.next_event()
                    if event is h11.NEED_DATA:
                        await self._read_head_data()
                    elif isinstance(event, h11.Response):
                        return event
                    elif not isinstance(event, h11.InformationalResponse):
                        raise UpstreamProtocolError(
                            f"upstream {self.label}: unexpected {type(event).__name__} before the response"
                        )

    async def _read_head_data(self) -> None:
        data = await self._reader.read(_READ_SIZE)
        if not data and not self._response_started:
            # The classic keep-alive race or a server that drops requests: nothing came back.
            raise UpstreamConnectError(f"upstream {self.label}: connection closed before any response byte")
        self._response_started = True
        self._bytes_read += len(data)
        self._h11.receive_data(data)

    async def receive_body_chunk(self, timeout_s: float, heartbeat_s: float | None = None) -> bytes | None:
        """The next body chunk as h11 parsed it, or None at the end of the body.

        With ``heartbeat_s``, ``b""`` is returned each time that long passes with no bytes, so the
        caller can keep its own client alive; ``timeout_s`` then still counts from the last bytes.
        Cancelling ``StreamReader.read`` loses no data, so a heartbeat never disturbs the stream.
        """
        with map_exceptions(self.label, "reading the response body", timeout_s):
            event = self._h11.next_event()
            while event is h11.NEED_DATA:
                data = await self._read_or_heartbeat(timeout_s, heartbeat_s)
                if data is None:
                    return b""
                self._h11.receive_data(data)  # b"": EOF; h11 ends or rejects the body
                event = self._h11.next_event()
        if isinstance(event, h11.Data):
            return event.data
        if isinstance(event, h11.EndOfMessage):
            return None
        raise UpstreamProtocolError(f"upstream {self.label}: unexpected {type(event).__name__} in the body")

    async def _read_or_heartbeat(self, timeout_s: float, heartbeat_s: float | None) -> bytes | None:
        """Bytes from the socket, or None when a heartbeat interval passed first."""
        now = self._loop.time()
        if self._idle_since is None:
            self._idle_since = now
        remaining = self._idle_since + timeout_s - now
        wait = remaining if heartbeat_s is None else min(heartbeat_s, remaining)
        try:
            async with asyncio.timeout(max(wait, 0)):
                data = await self._reader.read(_READ_SIZE)
        except TimeoutError:
            if wait < remaining:
                return None
            raise
        self._idle_since = None
        self._bytes_read += len(data)
        return data

    @property
    def body_complete(self) -> bool:
        """True once the whole response body was received."""
        return self._h11.their_state in (h11.DONE, h11.MUST_CLOSE)

    def finish_body_nowait(self) -> bool:
        """Consume the end of the body if it is already buffered (204, Content-Length: 0, last chunk)."""
        if self._h11.their_state is not h11.SEND_BODY:
            return self.body_complete
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError:
            return False
        return isinstance(event, h11.EndOfMessage)

    def start_idle(self, now_s: float) -> bool:
        """Start the next h11 cycle and mark IDLE if keep-alive allows it; False if it must close."""
        conn = self._h11
        reusable = (
            self.state is ConnState.ACTIVE
            and conn.our_state is h11.DONE
            and conn.their_state is h11.DONE  # MUST_CLOSE: `Connection: close` or read-until-EOF body
            and not conn.trailing_data[0]  # bytes after the response: the stream is out of sync
            and not self.is_dead()
        )
        if not reusable:
            return False
        conn.start_next_cycle()
        self.state = ConnState.IDLE
        self.idle_since_s = now_s
        self.cycles += 1
        return True

    def close_nowait(self) -> None:
        """Abort the transport now (idempotent, no await, so safe on cancellation)."""
        # abort(), not close(): HTTP/1.1 framing is explicit, so a TLS close_notify adds nothing,
        # and close() would let a silent TLS peer hold the socket for the 30 s shutdown timeout.
        if self.state is not ConnState.CLOSED:
            self.state = ConnState.CLOSED
            self._writer.transport.abort()

    async def aclose(self) -> None:
        """Close and wait until the transport has released its socket."""
        self.close_nowait()
        with contextlib.suppress(OSError):  # the error that killed the connection, already reported
            await self._writer.wait_closed()


class UpstreamResponse:
    """A response whose head has arrived; the body is read with ``aiter_body`` or ``aread``."""

    def __init__(
        self,
        head: h11.Response,
        conn: UpstreamConnection,
        read_timeout_s: float,
        release: Callable[[UpstreamConnection], Awaitable[None]],
    ) -> None:
        self.status: int = head.status_code
        self.headers: Headers = list(head.headers)  # h11 lower-cases the names
        self.reason: bytes = head.reason
        self._conn: UpstreamConnection | None = conn
        self._label = conn.label
        self._read_timeout_s = read_timeout_s
        self._release = release
        self._body_taken = False

    async def aiter_body(self, heartbeat_s: float | None = None) -> AsyncGenerator[bytes, None]:
        """Raw body chunks as they arrive; at the end the connection goes back to the pool.

        Chunks are the h11 ``Data`` payloads (bytes-like; h11 gives ``bytearray``), never
        re-buffered. Any error or cancellation closes the connection instead of pooling it.
        The body can be iterated once. With ``heartbeat_s``, an empty chunk is yielded after each
        such pause with no bytes (the read timeout still counts from the last bytes).
        """
        conn = self._conn
        if conn is None or self._body_taken:
            raise RuntimeError("the response body was already read or the response closed")
        self._body_taken = True
        try:
            while (chunk := await conn.receive_body_chunk(self._read_timeout_s, heartbeat_s)) is not None:
                yield chunk
                if self._conn is not conn:  # aclose() gave the connection away while we were suspended
                    raise RuntimeError("the response was closed while its body was being read")
        except BaseException:  # includes CancelledError and GeneratorExit (consumer stopped early)
            self._drop(conn)
            raise
        self._conn = None
        await self._release(conn)

    def _drop(self, conn: UpstreamConnection) -> None:
        # Only while this response still owns ``conn``: after aclose() released it to the pool, a
        # late GeneratorExit (the abandoned iterator being collected) must not close a pooled one.
        if self._conn is conn:
            self._conn = None
            conn.close_nowait()

    async def aread(self, max_bytes: int = 16 * 1024 * 1024) -> bytes:
        """The whole body; more than ``max_bytes`` is an UpstreamProtocolError (connection closed)."""
        chunks: list[bytes] = []
        total = 0
        async with contextlib.aclosing(self.aiter_body()) as body:
            async for chunk in body:
                total += len(chunk)
                if total > max_bytes:  # aclosing() then closes the connection
                    raise UpstreamProtocolError(f"upstream {self._label}: response body is over {max_bytes} bytes")
                chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        """Idempotent; a connection whose body was not fully read is closed, never reused."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.finish_body_nowait():
            await self._release(conn)
        else:
            await conn.aclose()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
