"""Sans-IO stream relays between an upstream SSE byte stream and the client.

Theory of operation (passthrough): when client and upstream speak the same protocol the client
receives the upstream's own bytes. Each upstream chunk goes through an SSEFramer only so that a
codec tap can read usage, the finish reason and the terminator. When a chunk starts and ends on
event boundaries and the tap keeps every event in it (the common case), the chunk object itself
is returned: no copy, no re-serialisation. Otherwise the kept events' raw byte spans are returned
(memoryview slices of the chunk where an event lies inside one chunk).
"""

from __future__ import annotations

from typing import Protocol

from .sse import SSEEvent, SSEFramer

__all__ = ["EventTap", "Passthrough"]


class EventTap(Protocol):
    def feed(self, ev: SSEEvent) -> bool:
        """Look at one event; return False to keep it from the client."""
        ...


class Passthrough:
    """Zero-copy same-protocol relay: ``feed(chunk)`` returns what the client should receive."""

    def __init__(self, tap: EventTap, *, max_event_bytes: int = 8 * 1024 * 1024) -> None:
        self._framer = SSEFramer(max_event_bytes)
        self._tap = tap

    def feed(self, chunk: bytes) -> list[bytes | memoryview]:
        aligned = not self._framer.has_partial
        events = self._framer.feed(chunk)
        kept = [ev for ev in events if self._tap.feed(ev)]
        if aligned and len(kept) == len(events) and not self._framer.has_partial:
            return [chunk]
        return [ev.raw for ev in kept]

    def close(self) -> list[bytes | memoryview]:
        """End of the upstream body: events completed only by EOF (no final blank line)."""
        return [ev.raw for ev in self._framer.close() if self._tap.feed(ev)]

    @property
    def truncated(self) -> bool:
        """True when the upstream body ended inside an event."""
        return self._framer.has_partial
