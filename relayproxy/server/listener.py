"""HTTP/1.1 server on asyncio + h11: keep-alive, limits, timeouts, backpressure. Knows no LLMs.

One ``ClientConnection`` (an ``asyncio.Protocol``, as in uvicorn's ``h11_impl``) per client. Its
``ConnState`` moves IDLE -> HEAD -> BODY -> HANDLING -> IDLE ... and ends in CLOSING, CLOSED:

- IDLE, HEAD: bytes gather in our own buffer until ``HeadScanner`` has seen a whole, acceptable
  head (limits counted on raw bytes, see ``server_limits``); only then are they given to h11.
- BODY: h11 parses the head and the body; the whole body is read before the handler runs.
- HANDLING: one task in the server's TaskGroup runs the handler and writes the response. Bytes
  the client pipelines meanwhile wait in our buffer; reading pauses once it holds 64 KiB.
- CLOSING: our last bytes are out with a FIN; whatever the client still sends is dropped, so
  nothing after a rejected request is ever parsed.

``connection_lost`` cancels the request task at once, so a handler (or the body iterator it
returned) learns within one loop turn that its client is gone and can cancel its upstream.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from relayproxy.errors import SERVER_ERRORS
from relayproxy.http_types import HttpRequest, HttpResponse
from relayproxy.server.connection import ClientConnection
from relayproxy.server.host import Connection, ConnState
from relayproxy.server.limits import ServerLimits
from relayproxy.server.writer import should_keep_alive

__all__ = [
    "ConnState",
    "ErrorRenderer",
    "Handler",
    "Server",
    "ServerLimits",
    "default_render_error",
    "should_keep_alive",
]

_log = logging.getLogger("relayproxy.server")
_CUT_GRACE_S = 1.0  # after before_cancel(): time for in-flight responses to end themselves

Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]
#: Builds the response for an error the server found itself: (status, message, request or None).
#: The request (body b"") is given once its head was parsed, so the caller can answer in the
#: client's API dialect. It must return a ``bytes`` body and must not raise.
ErrorRenderer = Callable[[int, str, HttpRequest | None], HttpResponse]

_DEFAULT_LIMITS = ServerLimits()
_BACKLOG = 1024


class ServerState(enum.Enum):
    NEW = enum.auto()
    STARTING = enum.auto()  # serve() is binding
    SERVING = enum.auto()
    DRAINING = enum.auto()  # shutdown(): no listener, responses get Connection: close
    STOPPED = enum.auto()


def default_render_error(status: int, message: str, request: HttpRequest | None) -> HttpResponse:
    """An OpenAI-style JSON error: {"error": {"message", "type", "code"}}."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = SERVER_ERRORS.get(status)
    code = error.kind if error is not None else "error"
    body = json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()
    return HttpResponse(status, [(b"content-type", b"application/json")], body)


class Server:
    """Serves ``handler`` over HTTP/1.1 until cancelled or shut down."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: ServerLimits = _DEFAULT_LIMITS,
        render_error: ErrorRenderer | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.render_error = render_error or default_render_error
        self._state = ServerState.NEW
        self._connections: set[Connection] = set()
        self._tg: asyncio.TaskGroup | None = None  # None: no new request tasks
        self._listener: asyncio.Server | None = None
        self._active = 0
        self._stopped = asyncio.Event()
        self._finished = asyncio.Event()
        self._drained: asyncio.Future[None] | None = None  # set while shutdown() waits

    @property
    def active_requests(self) -> int:
        return self._active

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def draining(self) -> bool:
        return self._state is ServerState.DRAINING or self._state is ServerState.STOPPED

    async def serve(
        self,
        host: str,
        port: int,
        *,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        ready: Callable[[list[tuple[str, int]]], None] | None = None,
    ) -> None:
        """Accept connections until cancelled or until shutdown() is done; call ready(addresses)."""
        if self._state is not ServerState.NEW:
            raise RuntimeError("Server.serve() can run only once")
        self._state = ServerState.STARTING
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                if sock is not None:
                    listener = await loop.create_server(self._new_connection, sock=sock, backlog=_BACKLOG)
                else:
                    listener = await loop.create_server(
                        self._new_connection, host, port, backlog=_BACKLOG, reuse_port=reuse_port or None
                    )
                await self._run(tg, listener, ready)
        finally:
            self._finished.set()

    async def _run(
        self,
        tg: asyncio.TaskGroup,
        listener: asyncio.Server,
        ready: Callable[[list[tuple[str, int]]], None] | None,
    ) -> None:
        self._tg, self._listener = tg, listener
        if self._state is ServerState.STARTING:
            self._state = ServerState.SERVING
        try:
            if ready is not None:
                ready([sock.getsockname()[:2] for sock in listener.sockets])
            await self._stopped.wait()
        finally:
            # Runs before the TaskGroup exits: no task may be spawned from here on.
            self._state = ServerState.STOPPED
            self._tg = None
            listener.close()
            for conn in list(self._connections):
                conn.stop()

    def close_listener(self) -> None:
        """Stop accepting new connections at once (open ones are not touched)."""
        if self._listener is not None:
            self._listener.close()

    async def shutdown(self, drain_s: float, *, before_cancel: Callable[[], None] | None = None) -> None:
        """Close the listener and idle connections, let in-flight requests finish for up to
        ``drain_s`` (their responses get ``Connection: close``), then cancel the rest.

        ``before_cancel`` runs at the deadline if requests are still in flight, so the handler can
        end them in its own terms (the gateway sends an in-band error); they get a short grace.
        """
        if self._state is ServerState.SERVING:
            self._state = ServerState.DRAINING
            self.close_listener()
            for conn in list(self._connections):
                conn.close_if_idle()
            await self._wait_drained(drain_s)
            if before_cancel is not None and self._active:
                before_cancel()
                await self._wait_drained(_CUT_GRACE_S)
        self._stopped.set()
        if self._state is not ServerState.NEW:
            await self._finished.wait()

    async def _wait_drained(self, timeout_s: float) -> None:
        """Wait until every connection is closing or closed (its last response is out)."""
        self._drained = asyncio.get_running_loop().create_future()
        self.check_drained()
        try:
            async with asyncio.timeout(timeout_s):
                await self._drained
        except TimeoutError:
            pass
        finally:
            self._drained = None

    def check_drained(self) -> None:
        """Called by connections as they close, while shutdown() waits."""
        drained = self._drained
        if drained is None or drained.done():
            return
        if all(conn.state is ConnState.CLOSING for conn in self._connections):
            drained.set_result(None)

    def _new_connection(self) -> ClientConnection:
        return ClientConnection(self)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run one request's answer in the server's task group; None (and the coroutine closed)
        once the server is stopping."""
        if self._tg is None:
            coro.close()
            return None
        return self._tg.create_task(coro)

    def request_started(self) -> None:
        self._active += 1

    def request_ended(self) -> None:
        self._active -= 1

    def adopt(self, conn: Connection) -> bool:
        if self._tg is None:
            return False
        self._connections.add(conn)
        return True

    def forget(self, conn: Connection) -> None:
        self._connections.discard(conn)
        self.check_drained()
