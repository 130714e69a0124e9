"""Sans-IO stream relays between an upstream SSE byte stream and the client.

Both relays take upstream body chunks and return what the client should receive (one bytes-like
object, empty when there is nothing to send), and tell the gateway what happened: ``answered``
(what was returned so far holds the client's whole answer, by the codec's definition: the tap's
for passthrough, the client encoder's for translation), ``done`` (nothing more is owed: the
upstream's closing framing was seen), ``usage`` (the last normalised snapshot), ``failed`` (the
upstream reported an error in-band).

Passthrough (same protocol): the client receives the upstream's own bytes. Each chunk goes
through an SSEFramer only so that a codec tap can read usage and the terminator. When a chunk
starts and ends on event boundaries and the tap keeps every event in it (the common case), the
chunk object itself is returned: no copy, no re-serialisation. Otherwise the kept events' raw
byte spans are returned, joined (an event that lay inside the chunk is a memoryview slice of it,
so only the join copies), with the tap's rewrite in place of an event it fixed (a provider quirk
the client's SDK would trip on: tool-call deltas without ``index``, a ``role`` repeated on every
delta, usage inside ``choices[0]``, Anthropic events without ``usage``) and without the events it dropped.

Translate (different protocols, or a different framing): framer -> the upstream codec's
StreamDecoder -> IR events -> the client codec's StreamEncoder -> bytes. After an in-band
upstream error the encoder's error event is the last thing the client gets.
"""

from __future__ import annotations

from typing import Any

from relayproxy import ir
from relayproxy.codecs import StreamDecoder, StreamEncoder, StreamTap
from relayproxy.errors import UpstreamStatusError
from relayproxy.sse import MAX_EVENT_BYTES, SSEEvent, SSEFramer

__all__ = ["Passthrough", "Relay", "Translate"]


class Passthrough:
    """Zero-copy same-protocol relay: ``feed(chunk)`` returns what the client should receive."""

    def __init__(self, tap: StreamTap, *, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._framer = SSEFramer(max_event_bytes)
        self._tap = tap
        self.relayed_bytes = 0  # upstream bytes seen (the output budget's measure)

    def feed(self, chunk: bytes) -> bytes:
        self.relayed_bytes += len(chunk)
        framer = self._framer
        aligned = not framer.has_partial
        out, same = self._pass(framer.feed(chunk))
        if same and aligned and not framer.has_partial:
            return chunk
        return b"".join(out)

    def close(self) -> bytes:
        """End of the upstream body: an event completed only by EOF (no final blank line)."""
        return b"".join(self._pass(self._framer.close())[0]) + self._tap.close()

    def _pass(self, events: list[SSEEvent]) -> tuple[list[bytes | memoryview], bool]:
        """What the tap lets through of ``events`` (each as it came, or its rewrite), and whether
        that is every event unchanged."""
        tap, out, same = self._tap, [], True
        for ev in events:
            verdict = tap.feed(ev)
            if verdict is True:
                out.append(ev.raw)
            else:
                same = False
                if verdict:  # the tap's rewrite of the event
                    out.append(verdict)
        return out, same

    @property
    def done(self) -> bool:
        return self._tap.done

    @property
    def answered(self) -> bool:
        return self._tap.answered

    @property
    def usage(self) -> ir.Usage | None:
        return self._tap.usage

    @property
    def failed(self) -> dict[str, Any] | None:
        return self._tap.error

    @property
    def truncated(self) -> bool:
        """True when the upstream body ended inside an event."""
        return self._framer.has_partial


class Translate:
    """Cross-protocol relay: upstream SSE -> IR stream events -> the client's wire format."""

    def __init__(
        self, decoder: StreamDecoder, encoder: StreamEncoder, *, max_event_bytes: int = MAX_EVENT_BYTES
    ) -> None:
        self._framer = SSEFramer(max_event_bytes)
        self._decoder = decoder
        self._encoder = encoder
        self.answered = False  # the client encoder wrote the answer's end (at MessageStop)
        self.done = False  # answered, and the upstream's closing framing seen (or its body ended)
        self.usage: ir.Usage | None = None
        self.failed: ir.StreamFailed | None = None
        self.relayed_bytes = 0  # generated content bytes (text, thinking, tool arguments)

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self._framer.feed(chunk):
            self._emit(self._decoder.feed(ev), out)
        if self.answered:
            self.done = self._decoder.done
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> bytes:
        out: list[bytes] = []
        for ev in self._framer.close():
            self._emit(self._decoder.feed(ev), out)
        self._emit(self._decoder.close(), out)
        self.done = self.answered
        return b"".join(out)

    def _emit(self, events: list[ir.StreamEvent], out: list[bytes]) -> None:
        encode = self._encoder.encode
        for ev in events:
            if self.answered or self.failed is not None:
                return  # nothing may follow the answer's end or an error event
            if isinstance(ev, _TEXTS):  # the bulk of a stream first
                self.relayed_bytes += len(ev.text)
            elif isinstance(ev, ir.ToolCallDelta):
                self.relayed_bytes += len(ev.arguments)
            elif isinstance(ev, ir.UsageUpdate):
                self.usage = ev.usage
            elif isinstance(ev, ir.StreamFailed):
                self.failed = ev
                out.append(self._encoder.error(UpstreamStatusError(ev.status, ev.message, upstream_type=ev.type)))
                return
            data = encode(ev)
            if data:
                out.append(data)
            if isinstance(ev, ir.MessageStop):
                self.answered = self._encoder.answered


_TEXTS = (ir.TextDelta, ir.ThinkingDelta)  # a tuple: `A | B` would build a union object per call
Relay = Passthrough | Translate
