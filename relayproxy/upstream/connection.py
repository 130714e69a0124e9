"""One HTTP/1.1 client connection to an upstream origin: an asyncio protocol, TLS via ssl.SSLContext.

The HTTP/1.1 itself is sans-IO: `relayproxy.upstream.head` renders the request and parses response
heads, `relayproxy.upstream.body` cuts the body. This module is the edge of the upstream leg:
every OSError, ssl.SSLError, TimeoutError and HTTP error raised here is translated once, by
``map_exceptions`` (``reraise`` in the body loop), into the Upstream* errors of ``relayproxy.errors``.
It knows HTTP and nothing about LLMs, and it never logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
from collections.abc import Iterable, Iterator
from typing import NamedTuple, NoReturn

from relayproxy.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from relayproxy.http_types import Headers
from relayproxy.upstream.body import BodyError, BodyReader, Framing
from relayproxy.upstream.head import HeadError, RequestError, ResponseHead, parse_response_head, render_request
from relayproxy.upstream.protocol import ConnectionProtocol

__all__ = ["FOREIGN_ERRORS", "ConnState", "Origin", "UpstreamConnection", "map_exceptions", "reraise"]

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


# What the socket, TLS and the HTTP/1.1 readers and writer raise; translated once, by ``reraise``.
FOREIGN_ERRORS = (TimeoutError, OSError, RequestError, HeadError, BodyError)


def reraise(exc: BaseException, label: str, phase: str, timeout_s: float | None = None) -> NoReturn:
    """Raise the Upstream* error for a foreign exception raised while ``phase``."""
    err: UpstreamError
    if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
        limit = f" (limit {timeout_s:g} s)" if timeout_s is not None else ""
        err = UpstreamTimeout(f"upstream {label}: timed out {phase}{limit}")
    elif isinstance(exc, RequestError):
        # ``from None``: no chained exception may carry a header value (it may be an API key).
        msg = f"upstream {label}: the request is not valid HTTP/1.1 while {phase} (header values not shown)"
        raise UpstreamProtocolError(msg) from None
    elif isinstance(exc, HeadError | BodyError):  # their messages never quote the peer's bytes
        err = UpstreamProtocolError(f"upstream {label}: invalid HTTP/1.1 response while {phase}: {exc}")
    else:  # ssl.SSLError, ConnectionError, socket.gaierror are OSErrors
        msg = f"upstream {label}: {phase} failed: {type(exc).__name__}: {exc}"
        err = UpstreamConnectError(msg, before_send=phase == "connecting")
    raise err from exc


@contextlib.contextmanager
def map_exceptions(label: str, phase: str, timeout_s: float | None = None) -> Iterator[None]:
    """Translate foreign exceptions raised while ``phase`` into Upstream* errors naming the origin."""
    try:
        yield
    except FOREIGN_ERRORS as exc:
        reraise(exc, label, phase, timeout_s)


def _framing(method: str, head: ResponseHead) -> tuple[Framing, int]:
    """How the response body is delimited (RFC 9112 §6.3, as h11 decides it; the head parser has
    already rejected any Transfer-Encoding but ``chunked`` and conflicting Content-Lengths)."""
    status = head.status_code
    if status in (204, 304) or method == "HEAD" or (method == "CONNECT" and 200 <= status < 300):
        return Framing.LENGTH, 0
    length = None
    for name, value in head.headers:
        if name == b"transfer-encoding":  # it beats Content-Length
            return Framing.CHUNKED, 0
        if name == b"content-length":
            length = int(value)
    return (Framing.UNTIL_EOF, 0) if length is None else (Framing.LENGTH, length)


def _says_close(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """A ``Connection: close`` among ``headers`` (names in any case)."""
    for name, value in headers:
        if name.lower() == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
            return True
    return False


class UpstreamConnection:
    """One keep-alive HTTP/1.1 connection; the pool drives its lifecycle.

    Each cycle writes one whole request (`render_request`), parses response heads until the final
    one (`parse_response_head`), then cuts the body with a `BodyReader`.

    Every wait for bytes (head or body) is one future from the protocol, and its deadline is one
    timer per connection that is pushed forward lazily: a wait whose deadline is later than the
    armed timer keeps it, and the timer, when it fires early, re-arms itself for the current
    deadline. A stream reading a chunk every few milliseconds with a 15 s heartbeat so allocates a
    timer about once per heartbeat interval instead of once per chunk.
    """

    def __init__(self, origin: Origin, protocol: ConnectionProtocol) -> None:
        self.origin = origin
        self.state = ConnState.NEW
        self.idle_since_s = 0.0  # monotonic time it was parked; set by start_idle
        self.cycles = 0  # completed request/response cycles: > 0 means this is a reused connection
        self._sock = protocol
        self._transport = protocol.transport
        self._method = ""
        self._keep_alive = True  # neither our request nor the response head says otherwise
        self._body: BodyReader | None = None  # once the response head arrived
        self._loop = asyncio.get_running_loop()
        self._idle_since: float | None = None  # when the body last went quiet
        self._beat_at = 0.0  # when the next heartbeat is due, while quiet
        self._timer: asyncio.TimerHandle | None = None
        self._wake_at = 0.0  # the current wait's deadline (the timer may be armed earlier)
        self._high_water = self._transport.get_write_buffer_limits()[1]

    @classmethod
    async def open(
        cls, origin: Origin, ssl_context: ssl.SSLContext | None, timeout_s: float, receive_buffer: memoryview
    ) -> UpstreamConnection:
        """Connect (and handshake TLS when ``ssl_context`` is given) within ``timeout_s``.

        ``receive_buffer`` (``protocol.new_receive_buffer``) may be shared by every connection of
        one event loop: the transport reads into it and the protocol copies the bytes out at once.
        """
        loop = asyncio.get_running_loop()
        with map_exceptions(origin.label, "connecting", timeout_s):
            async with asyncio.timeout(timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: ConnectionProtocol(loop, receive_buffer),
                    origin.host,
                    origin.port,
                    ssl=ssl_context,
                    server_hostname=origin.host if ssl_context is not None else None,
                )
        return cls(origin, protocol)

    @property
    def label(self) -> str:
        return self.origin.label

    def is_dead(self) -> bool:
        """True if an idle connection cannot carry a request: peer closed, reset, or sent unasked bytes."""
        # Bytes on an idle connection (a 408, junk) would be read as the next response.
        return self._transport.is_closing() or self._sock.at_eof or self._sock.buffered > 0

    async def send_request(self, method: str, target: str, headers: Headers, body: bytes, deadline_s: float) -> bool:
        """Write the whole request; False if the connection proved broken before any byte left."""
        assert self.state in (ConnState.NEW, ConnState.IDLE), self.state
        self.state = ConnState.ACTIVE
        transport = self._transport
        with map_exceptions(self.label, "sending the request"):
            pieces = self._render(method, target, headers, body)
            if transport.is_closing():
                return False
            for sent_before, piece in enumerate(pieces):
                transport.write(piece)
                # A plain-TCP transport marks itself closing when the immediate send() fails.
                if transport.is_closing():
                    if sent_before == 0:
                        return False
                    raise UpstreamConnectError(f"upstream {self.label}: connection lost while sending")
            if transport.get_write_buffer_size() > self._high_water:
                # A large body: wait for the kernel to take it, or memory grows without bound.
                async with asyncio.timeout_at(deadline_s):
                    await self._sock.drain()
        return True

    def _render(self, method: str, target: str, headers: Headers, body: bytes) -> list[bytes]:
        """The request as one or two byte strings (head + body joined when small)."""
        all_headers: Headers = [(b"host", self.origin.host_header)]
        all_headers.extend(h for h in headers if h[0].lower() not in _OWNED_HEADERS)
        if body or method in _BODY_METHODS:
            all_headers.append((b"content-length", b"%d" % len(body)))
        head = render_request(method, target, all_headers)
        self._method, self._keep_alive = method, not _says_close(all_headers)
        if not body:
            return [head]
        return [head + body] if len(body) <= _COALESCE_MAX_BYTES else [head, body]

    async def receive_head(self, deadline_s: float, timeout_s: float) -> ResponseHead:
        """Wait for the status line and headers (skipping 1xx) until ``deadline_s`` (loop time)."""
        with map_exceptions(self.label, "waiting for the response head", timeout_s):
            buf, pos, searched = b"", 0, 0
            while True:
                parsed = parse_response_head(buf, pos, searched)
                if parsed is None:
                    searched = max(0, len(buf) - pos - 2)  # a blank line may straddle the next read
                    buf, pos = buf[pos:] + await self._read_head_data(deadline_s, started=pos > 0 or bool(buf)), 0
                    continue
                head, pos = parsed
                searched = 0
                if head.status_code >= 200:
                    self._start_body(head, buf[pos:])
                    return head
                if head.status_code == 101:  # we never ask to switch protocols
                    raise HeadError("unexpected 101 Switching Protocols")

    async def _read_head_data(self, deadline_s: float, *, started: bool) -> bytes:
        while (data := self._sock.take()) is None:
            if self._loop.time() >= deadline_s:
                raise TimeoutError
            await self._wait_until(deadline_s)
        if not data:
            if not started:
                # The classic keep-alive race or a server that drops requests: nothing came back.
                raise UpstreamConnectError(f"upstream {self.label}: connection closed before any response byte")
            raise HeadError("peer closed connection without sending a complete response head")
        return data

    def _start_body(self, head: ResponseHead, unread: bytes) -> None:
        """The body reader takes over, with whatever arrived after the head."""
        framing, length = _framing(self._method, head)
        self._keep_alive = self._keep_alive and head.http_version >= b"1.1" and not _says_close(head.headers)
        self._body = BodyReader(framing, length)
        if unread:
            self._body.receive(unread)

    def read_body(self) -> bytes | None:
        """The next piece of the body from what has arrived: data, ``b""`` once the body is
        complete, or None if nothing is here yet. Raises BodyError, or the OSError the
        connection died of."""
        body = self._body
        assert body is not None, "read_body before the response head"
        data = body.read()
        while data is None:
            if body.done:
                return b""
            more = self._sock.take()
            if more is None:
                return None
            self._idle_since = None  # bytes came: the quiet period (if any) is over
            body.receive(more)
            data = body.read()
        return data

    def body_waiter(self, timeout_s: float, heartbeat_s: float | None) -> asyncio.Future[None] | None:
        """What to await for more body bytes, or None when a heartbeat is due.

        ``timeout_s`` counts from when the body went quiet, heartbeats every ``heartbeat_s`` of it;
        TimeoutError when the timeout has passed.
        """
        now = self._loop.time()
        beat = heartbeat_s if heartbeat_s is not None else float("inf")
        if self._idle_since is None:
            self._idle_since, self._beat_at = now, now + beat
        elif now >= self._idle_since + timeout_s:
            raise TimeoutError
        elif now >= self._beat_at:
            self._beat_at = now + beat
            return None
        return self._wait_until(min(self._idle_since + timeout_s, self._beat_at))

    def _wait_until(self, wake_at: float) -> asyncio.Future[None]:
        """A future resolved by the next bytes, or by the timer at ``wake_at`` (loop time)."""
        self._wake_at = wake_at
        timer = self._timer
        if timer is None or timer.when() > wake_at:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(wake_at, self._on_timer)
        return self._sock.wait()

    def _on_timer(self) -> None:
        self._timer = None
        if not self._sock.waiting:
            return  # the next wait arms a timer again
        if self._loop.time() >= self._wake_at:
            self._sock.wake()
        else:  # the deadline moved on since the timer was armed
            self._timer = self._loop.call_at(self._wake_at, self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def body_complete(self) -> bool:
        """True once the whole response body was received."""
        return self._body is not None and self._body.done

    def finish_body_nowait(self) -> bool:
        """Consume the end of the body if it is already buffered (204, Content-Length: 0, last chunk)."""
        if self._body is None:
            return False
        try:
            return self.read_body() == b""
        except (BodyError, OSError):
            return False

    def start_idle(self, now_s: float) -> bool:
        """Ready the connection for its next cycle and mark IDLE if keep-alive allows it; False if it must close."""
        self._stop_timer()
        body = self._body
        reusable = (
            self.state is ConnState.ACTIVE
            and body is not None
            and body.done
            and body.framing is not Framing.UNTIL_EOF
            and self._keep_alive  # neither side said `Connection: close`, and not HTTP/1.0
            and not body.leftover  # bytes after the response: the stream is out of sync
            and not self.is_dead()
        )
        if not reusable:
            return False
        self._body = None
        self._idle_since = None
        self.state = ConnState.IDLE
        self.idle_since_s = now_s
        self.cycles += 1
        return True

    def close_nowait(self) -> None:
        """Abort the transport now (idempotent, no await, so safe on cancellation)."""
        # abort(), not close(): HTTP/1.1 framing is explicit, so a TLS close_notify adds nothing,
        # and close() would let a silent TLS peer hold the socket for the 30 s shutdown timeout.
        self._stop_timer()
        if self.state is not ConnState.CLOSED:
            self.state = ConnState.CLOSED
            self._transport.abort()

    async def aclose(self) -> None:
        """Close and wait until the transport has released its socket."""
        self.close_nowait()
        await self._sock.closed
