"""The interface between the listener and its connections, both ways, and nothing else.

``Host`` is what a connection needs of the listener that accepted it (``listener.Server``
implements it); ``Connection`` is what the listener needs of a connection
(``connection.ClientConnection`` implements it), whose ``ConnState`` it reads while draining.
So neither side reaches into the other's private attributes, and neither imports the other's
module for a type.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from relayproxy.http_types import HttpRequest, HttpResponse
from relayproxy.server.limits import ServerLimits

__all__ = ["ConnState", "Connection", "Host"]


class ConnState(enum.Enum):
    IDLE = enum.auto()  # between requests: no byte of the next one yet
    HEAD = enum.auto()  # reading a request head into our buffer
    BODY = enum.auto()  # h11 parses the head and reads the body
    HANDLING = enum.auto()  # the handler runs / its response is written; reads are buffered
    CLOSING = enum.auto()  # FIN sent after our last bytes; client bytes are dropped
    CLOSED = enum.auto()


class Connection(Protocol):
    """What the listener needs of one of its connections."""

    @property
    def state(self) -> ConnState: ...

    def close_if_idle(self) -> None: ...

    def abort(self) -> None: ...

    def stop(self) -> None: ...


class Host(Protocol):
    """What a connection needs of the listener that accepted it (``listener.Server``)."""

    limits: ServerLimits
    handler: Callable[[HttpRequest], Awaitable[HttpResponse]]
    render_error: Callable[[int, str, HttpRequest | None], HttpResponse]

    @property
    def draining(self) -> bool: ...

    def adopt(self, conn: Connection) -> bool: ...

    def forget(self, conn: Connection) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None: ...

    def check_drained(self) -> None: ...

    def request_started(self) -> None: ...

    def request_ended(self) -> None: ...
