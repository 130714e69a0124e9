"""A per-origin keep-alive pool of upstream connections.

The decisions (which idle connection to reuse, which to close) are plain methods that only move
connections between lists and return the ones to close; the awaits happen after them, the way
httpcore's ``_assign_requests_to_connections`` separates deciding from doing.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import urlsplit

from relayproxy.errors import UpstreamConnectError
from relayproxy.http_types import Headers
from relayproxy.upstream.connection import Origin, UpstreamConnection
from relayproxy.upstream.protocol import new_receive_buffer
from relayproxy.upstream.response import UpstreamResponse

__all__ = ["Pool", "split_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_url(url: str) -> tuple[Origin, str]:
    """``https://h:1/p?q`` -> (Origin("https", "h", 1), "/p?q"); the default port when none is given."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"upstream URL must be http:// or https:// with a host, got {url!r}")
    port = parts.port if parts.port is not None else _DEFAULT_PORTS[scheme]
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return Origin(scheme, parts.hostname, port), target


async def _close_all(conns: list[UpstreamConnection]) -> None:
    for conn in conns:
        conn.close_nowait()  # all aborted before the first await: a cancel cannot leak one
    for conn in conns:
        await conn.aclose()


class Pool:
    """HTTP/1.1 connections per origin ``(scheme, host, port)``: LIFO idle lists, expiry, an idle cap."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_origin: int = 64,
        idle_expiry_s: float = 60.0,
    ) -> None:
        self._ssl_context = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._max_idle = max_idle_per_origin
        self._idle_expiry_s = idle_expiry_s
        self._idle: dict[Origin, list[UpstreamConnection]] = {}  # oldest first; reuse from the end
        self._closed = False
        self.connections_opened = 0
        # One receive buffer for all of the pool's connections (a pool serves one event loop).
        self._receive_buffer = new_receive_buffer()

    def idle_count(self, url: str | None = None) -> int:
        """Idle connections to the origin of ``url``, or to all origins."""
        if url is None:
            return sum(len(idle) for idle in self._idle.values())
        return len(self._idle.get(split_url(url)[0], ()))

    async def request(
        self,
        method: str,
        url: str,
        headers: Headers,
        body: bytes,
        *,
        connect_timeout_s: float = 5.0,
        first_byte_timeout_s: float = 300.0,
        read_timeout_s: float = 120.0,
    ) -> UpstreamResponse:
        """Send a request and return once the response head arrived; the body is read from the response.

        Sends Host and Content-Length itself; ``headers`` go as given (hop-by-hop already stripped).
        A reused connection found dead before any request byte left is replaced by a fresh one, once.
        """
        if self._closed:
            raise RuntimeError("the upstream pool is closed")
        origin, target = split_url(url)
        conn = await self._acquire(origin, connect_timeout_s)
        try:
            deadline_s = asyncio.get_running_loop().time() + first_byte_timeout_s
            if not await conn.send_request(method, target, headers, body, deadline_s):
                conn = await self._retry_fresh(conn, connect_timeout_s)
                if not await conn.send_request(method, target, headers, body, deadline_s):
                    raise UpstreamConnectError(
                        f"upstream {origin.label}: connection closed before sending", before_send=True
                    )
            head = await conn.receive_head(deadline_s, first_byte_timeout_s)
        except BaseException:  # errors and cancellation: never pool a half-used connection
            conn.close_nowait()
            raise
        return UpstreamResponse(head, conn, read_timeout_s, self._release)

    async def _retry_fresh(self, dead: UpstreamConnection, connect_timeout_s: float) -> UpstreamConnection:
        """The single retry: only a reused connection that failed before sending earns one."""
        dead.close_nowait()
        if dead.cycles == 0:
            raise UpstreamConnectError(f"upstream {dead.label}: new connection closed before sending", before_send=True)
        return await self._open(dead.origin, connect_timeout_s)

    async def _acquire(self, origin: Origin, connect_timeout_s: float) -> UpstreamConnection:
        """A live idle connection to ``origin`` if there is one, else a new one."""
        chosen, to_close = self._assign_connection(origin, time.monotonic())
        try:
            if to_close:
                await _close_all(to_close)
            return chosen if chosen is not None else await self._open(origin, connect_timeout_s)
        except BaseException:
            if chosen is not None:
                chosen.close_nowait()
            raise

    async def _open(self, origin: Origin, connect_timeout_s: float) -> UpstreamConnection:
        ssl_context = self._ssl_context if origin.scheme == "https" else None
        conn = await UpstreamConnection.open(origin, ssl_context, connect_timeout_s, self._receive_buffer)
        self.connections_opened += 1
        return conn

    def _assign_connection(
        self, origin: Origin, now_s: float
    ) -> tuple[UpstreamConnection | None, list[UpstreamConnection]]:
        """Decide (no I/O): the idle connection to reuse for ``origin``, and the ones to close.

        Expired connections of every origin are closed; for ``origin`` the most recently used
        live one is taken (LIFO keeps the warm ones warm and lets the rest expire), and dead
        ones met on the way are closed.
        """
        to_close = self._expire(now_s - self._idle_expiry_s)
        idle = self._idle.get(origin, [])
        while idle:
            conn = idle.pop()
            if not conn.is_dead():
                return conn, to_close
            to_close.append(conn)
        return None, to_close

    def _expire(self, cutoff_s: float) -> list[UpstreamConnection]:
        """Remove and return idle connections parked before ``cutoff_s``."""
        expired: list[UpstreamConnection] = []
        for idle in self._idle.values():
            stale = 0
            while stale < len(idle) and idle[stale].idle_since_s < cutoff_s:
                stale += 1
            expired.extend(idle[:stale])
            del idle[:stale]
        return expired

    def _park(self, conn: UpstreamConnection) -> list[UpstreamConnection]:
        """Decide (no I/O): put ``conn`` on its idle list; return the oldest ones over the cap."""
        idle = self._idle.setdefault(conn.origin, [])
        idle.append(conn)
        excess = len(idle) - self._max_idle
        if excess <= 0:
            return []
        evicted = idle[:excess]
        del idle[:excess]
        return evicted

    async def _release(self, conn: UpstreamConnection) -> None:
        """Take back a connection whose response body is complete."""
        if self._closed or not conn.start_idle(time.monotonic()):
            await conn.aclose()
            return
        await _close_all(self._park(conn))

    async def aclose(self) -> None:
        """Close all idle connections; connections still in use close when their response ends."""
        self._closed = True
        idle = [conn for conns in self._idle.values() for conn in conns]
        self._idle.clear()
        await _close_all(idle)

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
