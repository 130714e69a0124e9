"""One client connection of the HTTP/1.1 server: an ``asyncio.Protocol`` driving h11.

See ``listener`` for the states a connection moves through. This module holds the per-connection
protocol (reading requests, the state machine, timers and closing); ``writer`` writes its
responses; ``host`` is the small interface between it and ``listener``, which holds the listening
socket, the TaskGroup and shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import h11

from relayproxy.http_types import HttpRequest
from relayproxy.server.host import ConnState, Host
from relayproxy.server.limits import (
    HeadScanner,
    RequestRejected,
    check_request,
    describe_malformed,
    split_target,
)
from relayproxy.server.writer import ClientGone, ResponseWriter, h11_bytes, render_whole, should_keep_alive

__all__ = ["ClientConnection"]

_log = logging.getLogger("relayproxy.server")

_READ_HIGH_WATER = 64 * 1024  # pipelined bytes buffered while a response is in progress
_CHUNKED_PIECE = 16 * 1024
_INTERNAL_ERROR = "The server failed while answering this request."


class ClientConnection(asyncio.Protocol):
    """One client connection; see the module docstring for its states."""

    __slots__ = (
        "_body_left",
        "_body_len",
        "_buf",
        "_chunks",
        "_client",
        "_h11",
        "_head_deadline",
        "_limits",
        "_loop",
        "_read_paused",
        "_request",
        "_scanner",
        "_server",
        "_state",
        "_task",
        "_timer",
        "_transport",
        "_writer",
    )
    _transport: asyncio.Transport
    _writer: ResponseWriter  # both set in connection_made

    def __init__(self, server: Host) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._state = ConnState.IDLE
        self._h11 = self._new_h11()
        self._scanner = HeadScanner(server.limits)
        self._buf = bytearray()  # received, not yet given to h11: a partial head, or pipelined bytes
        self._chunks: list[bytes] = []  # body read so far
        self._body_len = 0
        self._body_left = 0  # body bytes still to give h11; -1: chunked, until h11 sees its end
        self._request: HttpRequest | None = None  # the request being read
        self._client: tuple[str, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # the one deadline of the current state
        self._head_deadline = 0.0  # 0.0: starts with the first byte of the next head
        self._read_paused = False  # mirrors transport.pause_reading()

    @property
    def state(self) -> ConnState:
        return self._state

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.max_header_bytes)

    # -- asyncio.Protocol callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one, though not by subclass
        self._writer = ResponseWriter(self._transport, self._loop, self._limits.client_write_stall_s)
        if not self._server.adopt(self):
            self._state = ConnState.CLOSED
            self._transport.abort()
            return
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._client = (peer[0], peer[1])
        self._head_deadline = self._loop.time() + self._limits.header_read_s
        self._arm(self._head_deadline)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state is ConnState.HANDLING:
            self._buf += data
            if len(self._buf) > _READ_HIGH_WATER and not self._read_paused:
                self._read_paused = True
                self._transport.pause_reading()
        elif state is ConnState.CLOSING or state is ConnState.CLOSED:
            return  # dropped on purpose (see _close_gracefully)
        elif self._buf:
            self._buf += data
            self._feed_buffered()
        else:  # the common case: a request arrives in reads of its own, nothing buffered
            used = self._feed(data)
            if used < len(data) and self._state is not ConnState.CLOSING:
                self._buf += memoryview(data)[used:]

    def eof_received(self) -> bool | None:
        # A half-closed client cannot be told apart from one that is gone, and the gateway must
        # stop upstream work at once when a client leaves: so EOF closes the connection.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = ConnState.CLOSED
        self._cancel_timer()
        if self._task is not None:
            self._task.cancel()
        self._server.forget(self)

    def pause_writing(self) -> None:
        self._writer.paused = True

    def resume_writing(self) -> None:
        self._writer.resume()

    # -- reading a request ---------------------------------------------------------------------

    def _feed_buffered(self) -> None:
        used = self._feed(self._buf)
        del self._buf[:used]  # cheap: CPython drops a bytearray's head without moving the rest

    def _feed(self, buf: bytes | bytearray) -> int:
        """Read the current request from the start of ``buf``; return how many bytes it used.

        Bytes past the request stay with the caller (pipelined requests wait their turn in
        ``_buf`` and never sit in h11), so each byte is handled a bounded number of times.
        """
        if self._state is ConnState.IDLE:
            self._cancel_timer()
            self._state = ConnState.HEAD
            if not self._head_deadline:
                self._head_deadline = self._loop.time() + self._limits.header_read_s
        used = self._read_head(buf) if self._state is ConnState.HEAD else 0
        while self._state is ConnState.BODY and used < len(buf):
            used += self._read_body(buf, used)
        if self._state is ConnState.BODY and self._timer is None:
            self._arm(self._loop.time() + self._limits.body_read_s)
        return used

    def _read_head(self, buf: bytes | bytearray) -> int:
        try:
            end = self._scanner.scan(buf)
        except RequestRejected as exc:
            self._reject(exc.status, exc.message, None)
            return len(buf)
        if not end:  # incomplete: it stays buffered whole, for the scanner to resume on
            if self._timer is None:
                self._arm(self._head_deadline)
            return 0
        self._cancel_timer()
        self._state = ConnState.BODY
        self._give_h11(buf, 0, end)
        self._next_events()
        return end

    def _read_body(self, buf: bytes | bytearray, start: int) -> int:
        # A Content-Length body is given exactly; a chunked one in pieces, so that what h11 reads
        # past its end (and hands back through trailing_data) stays small.
        left = self._body_left
        assert left != 0  # h11 ends a body at its Content-Length
        stop = min(len(buf), start + (left if left > 0 else _CHUNKED_PIECE))
        self._give_h11(buf, start, stop)
        if left > 0:
            self._body_left -= stop - start
        self._next_events()
        return stop - start

    def _give_h11(self, buf: bytes | bytearray, start: int, stop: int) -> None:
        # A view, not a copy; released at once, as an exported bytearray cannot be resized.
        with memoryview(buf) as view, view[start:stop] as piece:
            self._h11.receive_data(cast(bytes, piece))  # h11 copies; it takes any buffer

    def _next_events(self) -> None:
        """Take h11's events for this request until it needs more bytes or is complete."""
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._reject(exc.error_status_hint, describe_malformed(str(exc)), self._request)
                return
            if isinstance(event, h11.Data):
                if not self._add_body(event.data):
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._finish_request()
                return
            elif isinstance(event, h11.Request):
                if not self._start_request(event):
                    return
            else:  # NEED_DATA (we never feed EOF, and stop at the first EndOfMessage)
                return

    def _start_request(self, event: h11.Request) -> bool:
        path, query = split_target(event.target)
        headers = list(event.headers)
        req = HttpRequest(
            event.method.decode("ascii"),
            path,
            query,
            headers,
            client=self._client,
            http_version=event.http_version.decode("ascii"),
        )
        self._request = req
        try:
            content_length = check_request(event.method, event.http_version, headers, self._limits)
        except RequestRejected as exc:
            self._reject(exc.status, exc.message, req)
            return False
        self._body_left = -1 if content_length is None else content_length
        if self._h11.they_are_waiting_for_100_continue:
            self._transport.write(h11_bytes(self._h11, h11.InformationalResponse(status_code=100, headers=[])))
        return True

    def _add_body(self, data: bytes) -> bool:
        self._body_len += len(data)
        if self._body_len > self._limits.max_body_bytes:  # only chunked bodies get here
            limit = self._limits.max_body_bytes
            self._reject(413, f"The request body exceeds the limit of {limit} bytes.", self._request)
            return False
        self._chunks.append(data)
        return True

    def _finish_request(self) -> None:
        self._cancel_timer()
        req = self._request
        assert req is not None
        if self._chunks:
            req.body = b"".join(self._chunks)
            self._chunks = []
        self._body_len = 0
        self._state = ConnState.HANDLING
        task = self._server.spawn(self._respond(req))
        if task is None:  # the server is stopping
            self.abort()
            return
        self._task = task

    # -- answering -----------------------------------------------------------------------------

    async def _respond(self, req: HttpRequest) -> None:
        server = self._server
        server.request_started()
        try:
            answered = await self._answer(req)
        finally:
            server.request_ended()
        if answered:
            self._end_cycle()

    async def _answer(self, req: HttpRequest) -> bool:
        """Run the handler and write its response; True if the response went out whole.

        This is the server's one catch-all: a handler bug is logged and answered with a 500
        if nothing was sent yet (else the connection closes); it never reaches the TaskGroup.
        """
        failed = False
        while True:
            try:
                if failed:
                    response = self._server.render_error(500, _INTERNAL_ERROR, req)
                else:
                    response = await self._server.handler(req)
                await self._writer.send(self._h11, req, response, close=failed or self._server.draining)
                return True
            except ClientGone:
                return False
            except Exception:  # noqa: BLE001 -- the per-request boundary: a bug fails one request, never the server
                # Method and path only: headers and bodies carry keys and prompts.
                _log.exception("request %s %s failed", req.method, req.path)
                if failed or self._h11.our_state is not h11.SEND_RESPONSE:
                    self._close_gracefully()
                    return False
                failed = True

    def _end_cycle(self) -> None:
        """The response is out: close, or get ready for the next request (maybe already here)."""
        self._task = None
        if self._state is not ConnState.HANDLING:
            return
        if not should_keep_alive(self._h11.our_state, self._server.draining):
            self._close_gracefully()
            return
        leftover = self._h11.trailing_data[0]  # what h11 read past a chunked body
        if leftover:  # it must go through HeadScanner, so h11 starts afresh without it
            self._h11 = self._new_h11()
            self._buf[:0] = leftover
        else:
            self._h11.start_next_cycle()
        self._scanner.reset()
        self._request = None
        self._state = ConnState.IDLE
        self._head_deadline = 0.0
        if self._buf:
            self._feed_buffered()
        else:
            self._arm(self._loop.time() + self._limits.keepalive_idle_s)
        if self._read_paused and len(self._buf) <= _READ_HIGH_WATER:
            self._read_paused = False
            self._transport.resume_reading()

    # -- errors, timers, closing ---------------------------------------------------------------

    def _reject(self, status: int, message: str, req: HttpRequest | None) -> None:
        """Answer an error the server found itself, then close: nothing after it is parsed."""
        our_state = self._h11.our_state
        if our_state is h11.IDLE or our_state is h11.SEND_RESPONSE:
            response = self._server.render_error(status, message, req)
            assert isinstance(response.body, bytes), "render_error must return a bytes body"
            self._transport.write(render_whole(self._h11, req, response, response.body, close=True))
        self._close_gracefully()

    def _on_timer(self) -> None:
        self._timer = None
        state = self._state
        limits = self._limits
        if state is ConnState.IDLE:  # idle keep-alive, or a new connection that sent nothing
            self._state = ConnState.CLOSING
            self._transport.close()
        elif state is ConnState.HEAD:
            self._reject(408, f"The request head did not arrive within {limits.header_read_s:g} s.", None)
        elif state is ConnState.BODY:
            self._reject(408, f"The request body did not arrive within {limits.body_read_s:g} s.", self._request)
        elif state is ConnState.CLOSING:
            self._transport.abort()

    def _arm(self, when: float) -> None:
        self._timer = self._loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_gracefully(self) -> None:
        """Send FIN after our last bytes, and drop what the client still sends for a while.

        Closing outright with unread client bytes in the kernel makes it send RST, and a RST can
        destroy the response still on its way to the client (nginx's lingering close).
        """
        if self._state is ConnState.CLOSED:
            return
        self._state = ConnState.CLOSING
        self._server.check_drained()
        self._cancel_timer()
        transport = self._transport
        self._buf.clear()
        self._chunks = []
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        limits = self._limits
        linger_s = limits.client_write_stall_s if transport.get_write_buffer_size() else limits.lingering_close_s
        self._arm(self._loop.time() + linger_s)

    def close_if_idle(self) -> None:
        if self._state is ConnState.IDLE:
            self._cancel_timer()
            self._state = ConnState.CLOSING
            self._transport.close()

    def abort(self) -> None:
        """Cancel the request task and drop the connection."""
        if self._task is not None:
            self._task.cancel()
        if self._state is not ConnState.CLOSED:
            self._transport.abort()

    def stop(self) -> None:
        """Server stop: a lingering connection whose bytes are all out gets a plain close (its
        FIN is already sent; a RST could still destroy the response in flight), others abort."""
        if self._state is ConnState.CLOSING and not self._transport.get_write_buffer_size():
            self._transport.close()
        else:
            self.abort()
