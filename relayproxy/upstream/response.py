"""A response from an upstream connection whose head has arrived; its body as an async iterator."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable

from relayproxy.errors import UpstreamProtocolError
from relayproxy.http_types import Headers
from relayproxy.upstream.connection import FOREIGN_ERRORS, UpstreamConnection, reraise
from relayproxy.upstream.head import ResponseHead

__all__ = ["UpstreamResponse"]


class UpstreamResponse:
    """A response whose head has arrived; the body is read with ``aiter_body`` or ``aread``."""

    def __init__(
        self,
        head: ResponseHead,
        conn: UpstreamConnection,
        read_timeout_s: float,
        release: Callable[[UpstreamConnection], Awaitable[None]],
    ) -> None:
        self.status: int = head.status_code
        self.headers: Headers = head.headers  # names lower-cased
        self.reason: bytes = head.reason
        self._conn: UpstreamConnection | None = conn
        self._label = conn.label
        self._read_timeout_s = read_timeout_s
        self._release = release
        self._body_taken = False

    async def aiter_body(self, heartbeat_s: float | None = None) -> AsyncGenerator[bytes, None]:
        """Raw body chunks as they arrive; at the end the connection goes back to the pool.

        Chunks are ``bytes`` as the body reader cut them (a chunk's data, or what one read
        brought of any other body), never re-buffered. Any error or cancellation closes the
        connection instead of pooling it. The body can be iterated once. With ``heartbeat_s``,
        an empty chunk is yielded after each such pause with no bytes (the read timeout still
        counts from the last bytes).
        """
        conn = self._conn
        if conn is None or self._body_taken:
            raise RuntimeError("the response body was already read or the response closed")
        self._body_taken = True
        timeout_s = self._read_timeout_s
        try:
            while True:
                # The loop asks the connection directly (no coroutine per chunk): bytes already
                # here come back at once, else it awaits one future until bytes or a deadline.
                try:
                    chunk = conn.read_body()
                    while chunk is None:
                        waiter = conn.body_waiter(timeout_s, heartbeat_s)
                        if waiter is None:
                            break  # a heartbeat is due
                        await waiter
                        chunk = conn.read_body()
                except FOREIGN_ERRORS as exc:
                    reraise(exc, self._label, "reading the response body", timeout_s)
                if chunk == b"":
                    break
                yield chunk or b""  # None: the heartbeat
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
