"""The asyncio side of one upstream connection: received bytes wait here for their single reader.

A ``StreamReader`` copies every read into its buffer and back out, and a read with a timeout
costs a coroutine, a future and a timer handle; on a stream that reads one small chunk every few
milliseconds those are most of the upstream leg's CPU. Here the transport reads straight into one
receive buffer shared by every connection of a pool (``new_receive_buffer``; a ``BufferedProtocol``:
the buffer is only used between ``get_buffer`` and ``buffer_updated``, which the transport calls
back to back on the pool's event-loop thread),
and each read is copied out as ``bytes`` of its own size. Failure prevented: the plain
``Protocol`` path has the transport ``recv(256 KiB)`` and shrink the result, which glibc serves
with an mmap, an mremap and a munmap on every read. ``take`` hands the reads over (joined only if
several arrived), and the reader waits on one bare future, woken by the next bytes, EOF, or
whoever holds ``wake`` (the connection's deadline timer). Reading pauses past ``_MAX_BUFFERED``
unread bytes and writing pauses at the transport's high-water mark, as with the streams API.
"""

from __future__ import annotations

import asyncio
from typing import cast

__all__ = ["ConnectionProtocol", "new_receive_buffer"]

_MAX_BUFFERED = 128 * 1024  # unread bytes before reading pauses (a StreamReader's default: 2 x 64 KiB)
_RECEIVE_BUFFER_BYTES = 64 * 1024


def new_receive_buffer() -> memoryview:
    """A receive buffer for the connections of one event loop (a pool's: it runs on one thread)."""
    return memoryview(bytearray(_RECEIVE_BUFFER_BYTES))


class ConnectionProtocol(asyncio.BufferedProtocol):
    """Transport events for one client connection; one reader task at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, receive_buffer: memoryview) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._received: list[bytes] = []
        self._size = 0  # len of everything in _received
        self._eof = False  # the peer closed (or the connection was lost)
        self._error: Exception | None = None  # what the connection was lost with
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()  # done once the socket is released
        self._buffer = receive_buffer  # shared with the pool's other connections (module docstring)

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    # -- transport callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self._buffer[:nbytes].tobytes()
        self._received.append(data)
        self._size += len(data)
        if self._size > _MAX_BUFFERED and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self.wake()

    def eof_received(self) -> bool:
        self._eof = True
        self.wake()
        return False  # HTTP/1.1 framing is explicit: nothing is sent after the peer's FIN; close

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self.wake()
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake_drain()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain()

    # -- the reader's side --

    @property
    def buffered(self) -> int:
        """Bytes received and not taken yet."""
        return self._size

    @property
    def at_eof(self) -> bool:
        """The peer closed or the connection was lost (bytes may still be buffered)."""
        return self._eof

    def take(self) -> bytes | None:
        """Everything received since the last take; ``b""`` once the peer closed; None if nothing yet.

        The error the connection was lost with (an OSError) is raised after the bytes before it.
        """
        received = self._received
        if received:
            data = received[0] if len(received) == 1 else b"".join(received)
            received.clear()
            self._size = 0
            if self._reading_paused:
                self._reading_paused = False
                self.transport.resume_reading()
            return data
        if self._error is not None:
            raise self._error
        return b"" if self._eof else None

    def wait(self) -> asyncio.Future[None]:
        """A future resolved by the next bytes, EOF, the connection's loss or `wake`."""
        waiter = self._loop.create_future()
        if self._received or self._eof:
            waiter.set_result(None)
        else:
            self._waiter = waiter
        return waiter

    @property
    def waiting(self) -> bool:
        return self._waiter is not None

    def wake(self) -> None:
        """Resolve the reader's pending `wait`, if any."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # it may have been cancelled with its task
                waiter.set_result(None)

    # -- the writer's side --

    async def drain(self) -> None:
        """Wait while the transport is above its high-water mark; ConnectionResetError if lost."""
        if self._writing_paused and not self.transport.is_closing():
            waiter = self._drain_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None
        if self.closed.done() or self.transport.is_closing():
            raise self._error or ConnectionResetError("Connection lost")

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
