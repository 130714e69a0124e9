"""Writing responses on one client connection: whole in one write, or streamed with backpressure.

``ClientConnection`` (``connection``) reads requests and decides what a connection does next;
its ``ResponseWriter`` turns a handler's ``HttpResponse`` into bytes on the transport, through the
connection's current ``h11.Connection`` (passed in: a new one replaces it after a chunked body).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus

import h11

from relayproxy.http_types import HttpRequest, HttpResponse, header
from relayproxy.server.limits import body_allowed

__all__ = ["ClientGone", "ResponseWriter", "frame_chunk", "render_whole", "should_keep_alive"]

_CLOSE = (b"connection", b"close")
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class ClientGone(Exception):
    """The client cannot be written to any more (closed, reset, or stalled past the limit)."""


def should_keep_alive(h11_state: object, draining: bool) -> bool:
    """After a response: reuse the connection only if h11 agrees and the server is not draining."""
    return h11_state is h11.DONE and not draining


def frame_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body, as h11's ChunkedWriter frames it."""
    return b"%x\r\n%b\r\n" % (len(data), data)


async def _aclose(body: AsyncIterator[bytes]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()


def h11_bytes(conn: h11.Connection, event: h11.Event) -> bytes:
    data = conn.send(event)
    assert data is not None  # None only for ConnectionClosed, which we never send
    return data


def render_whole(
    conn: h11.Connection, req: HttpRequest | None, response: HttpResponse, body: bytes, close: bool
) -> bytes:
    """The whole response (head, body, end) as the bytes of one write."""
    status = response.status
    headers = [*response.headers]
    if status != 204 and status != 304:
        headers.append((b"content-length", b"%d" % len(body)))
    if close:
        headers.append(_CLOSE)
    parts = [h11_bytes(conn, h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b"")))]
    if body and (req is None or body_allowed(req.method, status)):
        parts += conn.send_with_data_passthrough(h11.Data(data=body)) or ()
    parts.append(h11_bytes(conn, h11.EndOfMessage()))
    return b"".join(parts)


class ResponseWriter:
    """The write side of one client connection: its transport, its pause state, its stall limit."""

    __slots__ = ("_drain_waiter", "_loop", "_stall_s", "_transport", "paused")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, stall_s: float) -> None:
        self._transport = transport
        self._loop = loop
        self._stall_s = stall_s  # client_write_stall_s
        self._drain_waiter: asyncio.Future[None] | None = None
        self.paused = False  # mirrors pause_writing() / resume_writing()

    def resume(self) -> None:
        self.paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def send(self, conn: h11.Connection, req: HttpRequest, response: HttpResponse, *, close: bool) -> None:
        body = response.body
        if isinstance(body, bytes):
            written = False
            try:
                self._write(render_whole(conn, req, response, body, close))
                written = True
            finally:
                if response.sent is not None:
                    response.sent(written)
            if self.paused:  # one response's worth of buffer, never more
                await self._wait_writable()
            return
        try:
            headers = [*response.headers, _CLOSE] if close else response.headers
            reason = _REASONS.get(response.status, b"")
            self._write(h11_bytes(conn, h11.Response(status_code=response.status, headers=headers, reason=reason)))
            if body_allowed(req.method, response.status):
                # h11 frames a body without Content-Length as chunks for an HTTP/1.1 client and
                # as raw bytes up to the close for an HTTP/1.0 one (and adds the headers that
                # say so); the Data events themselves change no state in it, so the chunks are
                # framed here, without an event object and a state-machine pass per chunk.
                own = header(response.headers, b"content-length") is None
                await self._write_stream(
                    conn, body, frame=frame_chunk if own and conn.their_http_version == b"1.1" else None
                )
            self._write(h11_bytes(conn, h11.EndOfMessage()))
        finally:
            await _aclose(body)  # GeneratorExit in the handler's generator if we stopped early

    async def _write_stream(
        self, conn: h11.Connection, body: AsyncIterator[bytes], *, frame: Callable[[bytes], bytes] | None
    ) -> None:
        # The iterator is resumed only after its previous chunk was handed to the transport and
        # the transport's buffer is below its high-water mark: a slow client slows the producer.
        async for chunk in body:
            if chunk:
                self._write(frame(chunk) if frame is not None else h11_bytes(conn, h11.Data(data=chunk)))
                if self.paused:
                    await self._wait_writable()

    def _write(self, data: bytes) -> None:
        if self._transport.is_closing():
            raise ClientGone
        self._transport.write(data)

    async def _wait_writable(self) -> None:
        """Wait while the transport is over its high-water mark, at most client_write_stall_s."""
        waiter = self._drain_waiter = self._loop.create_future()
        try:
            async with asyncio.timeout(self._stall_s):
                await waiter
        except TimeoutError:
            self._transport.abort()  # a client that stopped reading holds buffers and an upstream
            raise ClientGone from None
        finally:
            self._drain_waiter = None
