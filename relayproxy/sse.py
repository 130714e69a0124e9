"""Sans-IO Server-Sent Events: a framer (bytes in, `SSEEvent`s out) and the matching encoder.

Theory of operation
-------------------
An SSE stream is lines (ended by CR, LF or CRLF) grouped into blocks, each ended by a blank line.
We never walk bytes in Python. A blank line after a line end always shows up as one of three byte
pairs, LF LF, LF CR or CR CR (CR LF alone is a single line end), so a block ends at the earliest
hit of three `bytes.find`s. `_Scanner` remembers each pattern's next hit in a buffer, so a chunk
holding many events is searched once per pattern, not once per event (a CRLF stream would
otherwise rescan the rest of the chunk for LF LF after every event).

The common case, a chunk holding whole events, is zero copy: each event's `raw` is a memoryview
slice of the fed chunk. Only the unfinished tail is copied, into `_pending`. The next feed first
looks for the end of the pending event on the seam (the pending bytes plus the first two new ones,
all a blank line straddling the seam needs), then in the new chunk alone, and joins just the
pending bytes and the part of the chunk the event needs. `_scan` remembers how far `_pending` has
been searched, so an event fed one byte at a time costs O(n), not O(n**2) (the DoS that h11's
ReceiveBuffer comment warns about); `max_event_bytes` caps the memory one event can hold.

An event whose blank line is a CR at the very end of the data waits for the next byte (or
close()): if that byte is LF, it is part of the same line end and so of this event's `raw`.
Failure prevented: the LF of a CRLF CRLF terminator split off by a chunk boundary turning up as a
stray blank line, making `raw` depend on the chunking. The cost, one chunk of latency, is paid
only when a chunk ends exactly between that CR and LF, or in a CR-only stream.

Data is bytes and never decoded, so a UTF-8 character split across feeds needs no care; `event`
and `id` are decoded with replacement, which cannot fail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relayproxy.errors import FramingError

__all__ = ["MAX_EVENT_BYTES", "SSEEvent", "SSEFramer", "encode_event"]

#: The most one event may hold (a base64 image in a Gemini chunk fits; an endless line does not).
MAX_EVENT_BYTES = 8 * 1024 * 1024

_LF, _CR = 0x0A, 0x0D
_EOL = (_LF, _CR)
_PAIRS = (b"\n\n", b"\n\r", b"\r\r")  # a line end, then the first byte of a blank line
_UNSEARCHED, _NONE = -2, -1  # _Scanner hit states besides a position
_NOT_EOL = re.compile(rb"[^\r\n]")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event; `raw` is exactly its bytes, first line through terminating blank line.

    When the event lay wholly inside one fed chunk, `raw` is a memoryview slice of that chunk: it
    keeps the chunk alive, and a fed bytearray must not be mutated or resized while it is in use.
    An event that spanned feeds gets `raw` as bytes, joined from just the pieces it needs.

    A value: nothing changes an event once made. It is not ``frozen`` only because a frozen
    dataclass's ``__init__`` (an ``object.__setattr__`` per field) costs three times as much, once
    per event of every stream.
    """

    event: str | None
    data: bytes
    raw: bytes | memoryview
    id: str | None = None


class _Scanner:
    """Finds block ends in one buffer; each pattern's next hit is kept, so no byte is re-searched."""

    __slots__ = ("_data", "_hits", "_lf_only")

    def __init__(self, data: bytes | bytearray, start: int) -> None:
        self._data = data
        self._lf_only = data.find(b"\r", start) < 0  # then a block ends at LF LF, found with one find
        self._hits = [_UNSEARCHED, _UNSEARCHED, _UNSEARCHED]

    def block_end(self, pos: int) -> int:
        """End of the first blank line at or after `pos` (positions only grow), or -1 if not certain yet."""
        data, hits = self._data, self._hits
        if self._lf_only:
            first = data.find(b"\n\n", pos)
            return -1 if first < 0 else first + 2
        first = -1
        for k, hit in enumerate(hits):
            if hit != _NONE and hit < pos:
                hit = hits[k] = data.find(_PAIRS[k], pos)
            if hit >= 0 and (first < 0 or hit < first):
                first = hit
        if first < 0:
            return -1
        end = first + 2
        if data[first + 1] == _CR:  # the blank line is CR or CRLF: look at the next byte
            if end == len(data):
                return -1  # held back until we know whether an LF follows
            if data[end] == _LF:
                end += 1
        return end


class SSEFramer:
    """Cuts a byte stream into `SSEEvent`s (WHATWG rules, LF/CR/CRLF, split anywhere).

    Raises only `FramingError`: when one event's bytes (comments and blank line included) exceed
    `max_event_bytes`, however they were chunked. Blank lines between events cost no memory.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max_event_bytes = max_event_bytes
        self._pending = bytearray()  # the unfinished event, from its first line on
        self._scan = 0  # where the block-end search in _pending resumes
        self._dropped = False  # close() threw an unterminated event away

    @property
    def has_partial(self) -> bool:
        """True while bytes of an unfinished event are pending, or after close() dropped some."""
        return bool(self._pending) or self._dropped

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[SSEEvent]:
        """Frame `chunk`; return the events it completed."""
        self._dropped = False
        if type(chunk) is bytes:
            data, view = chunk, memoryview(chunk)
        else:  # search a bytes copy (for find() and bytes slices); raw still slices the caller's buffer
            view = memoryview(chunk)
            data = view.tobytes()
            if view.format != "B" or view.ndim != 1 or not view.c_contiguous:
                view = memoryview(data)  # an exotic buffer: slice the copy instead
        events: list[SSEEvent] = []
        pos = self._finish_pending(data, view, events) if self._pending else 0
        if pos >= 0:
            self._frame(data, view, pos, events)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: dispatch a block whose lines all ended, drop an unterminated one."""
        pending, self._pending, self._scan = self._pending, bytearray(), 0
        if not pending:
            return []
        if pending[-1] not in _EOL:
            self._dropped = True
            return []
        block = bytes(pending)
        event = _parse_block(block, block)
        return [] if event is None else [event]

    def _frame(self, data: bytes, view: memoryview, pos: int, events: list[SSEEvent]) -> None:
        """Dispatch every complete block in data[pos:]; keep the unfinished rest as pending."""
        size, limit = len(data), self._max_event_bytes
        if data.find(b"\r", pos) < 0:
            # LF only (the usual case): a block ends at LF LF, and the common block shapes are
            # parsed in place (`_parse_lf_block`), with no slice of the block.
            while pos < size:
                if data[pos] == _LF:  # blank lines between blocks: they dispatch nothing
                    pos = _skip_blank_lines(data, pos)
                    continue
                end = data.find(b"\n\n", pos) + 2
                if end < 2:
                    self._hold(view, pos)
                    return
                if end - pos > limit:
                    self._check_size(end - pos)
                raw = view if pos == 0 and end == size else view[pos:end]
                if (event := _parse_lf_block(data, pos, end, raw)) is not None:
                    events.append(event)
                pos = end
            return
        scanner = _Scanner(data, pos)
        while pos < size:
            if data[pos] in _EOL:
                pos = _skip_blank_lines(data, pos)
                continue
            end = scanner.block_end(pos)
            if end < 0:
                self._hold(view, pos)
                return
            if end - pos > limit:
                self._check_size(end - pos)
            if (event := _parse_block(data[pos:end], view[pos:end])) is not None:
                events.append(event)
            pos = end

    def _hold(self, view: memoryview, pos: int) -> None:
        """Keep the unfinished event that starts at `pos` for the next feed."""
        self._pending += view[pos:]
        self._scan = max(0, len(self._pending) - 2)
        self._check_size(len(self._pending))

    def _finish_pending(self, data: bytes, view: memoryview, events: list[SSEEvent]) -> int:
        """Complete the pending event from the head of `view`: where the rest starts, or -1."""
        pending, start = self._pending, len(self._pending)
        pending += view[:2]  # a blank line straddling the seam is decided within two more bytes
        end = _Scanner(pending, self._scan).block_end(self._scan)
        if end >= 0:
            del pending[end:]
            self._emit_pending(bytes(pending), events)
            return end - start
        if len(view) <= 2:  # the whole chunk is now pending
            self._scan = max(0, len(pending) - 2)
            self._check_size(len(pending))
            return -1
        del pending[start:]
        end = _Scanner(data, 0).block_end(0)
        if end < 0:
            pending += view
            self._scan = len(pending) - 2
            self._check_size(len(pending))
            return -1
        self._emit_pending(b"".join((pending, view[:end])), events)
        return end

    def _emit_pending(self, raw: bytes, events: list[SSEEvent]) -> None:
        self._pending, self._scan = bytearray(), 0
        self._check_size(len(raw))
        if (event := _parse_block(raw, raw)) is not None:
            events.append(event)

    def _check_size(self, size: int) -> None:
        if size > self._max_event_bytes:
            raise FramingError(
                f"SSE event of at least {size} bytes exceeds max_event_bytes={self._max_event_bytes}: "
                "the peer is not sending SSE, or never sends the blank line that ends an event"
            )


def _skip_blank_lines(data: bytes, pos: int) -> int:
    """Where the next block starts: blank lines between blocks belong to no event."""
    found = _NOT_EOL.search(data, pos)
    return len(data) if found is None else found.start()


def _parse_lf_block(data: bytes, pos: int, end: int, raw: bytes | memoryview) -> SSEEvent | None:
    """`_parse_block` of data[pos:end], a block with LF line ends only: the two commonest shapes,
    one ``data`` line (OpenAI, Gemini) or an ``event`` line then a ``data`` line (Anthropic), are
    read in place, copying only the field values; any other block goes to `_parse_block`."""
    last = end - 2  # the LF ending the block's last line
    if data.startswith(b"data:", pos):
        if data.find(b"\n", pos + 5, last) < 0:
            start = pos + 6 if data.startswith(b" ", pos + 5) else pos + 5
            return SSEEvent(None, data[start:last], raw)
    elif data.startswith(b"event:", pos):
        eol = data.find(b"\n", pos + 6, last)
        if eol >= 0 and data.startswith(b"data:", eol + 1) and data.find(b"\n", eol + 6, last) < 0:
            name = pos + 7 if data.startswith(b" ", pos + 6) else pos + 6
            start = eol + 7 if data.startswith(b" ", eol + 6) else eol + 6
            return SSEEvent(data[name:eol].decode("utf-8", "replace"), data[start:last], raw)
    return _parse_block(data[pos:end], raw)


def _parse_block(block: bytes, raw: bytes | memoryview) -> SSEEvent | None:
    """Apply the WHATWG field rules to one block; None if it has neither a data nor an event line."""
    if block[:5] == b"data:":  # fast path for the commonest block, a single data line
        value = block[5:].rstrip(b"\r\n")
        if b"\n" not in value and b"\r" not in value:
            return SSEEvent(None, value[1:] if value[:1] == b" " else value, raw)
    event = id_ = None
    data: list[bytes] = []
    for line in block.splitlines():  # bytes.splitlines splits at CR, LF and CRLF only
        name, _, value = line.partition(b":")
        if not name:  # the blank line itself, or a comment
            continue
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            id_ = value.decode("utf-8", "replace")
    if not data and event is None:
        return None
    return SSEEvent(event, b"\n".join(data), raw, id_)


def encode_event(data: bytes, event: str | None = None) -> bytes:
    """Render one event: `event: x` (if given), one `data: ` line per line of `data`, blank line.

    Line breaks in `data` (CR, LF, CRLF) all come back from a framer as LF.
    """
    head = b""
    if event is not None:
        if "\r" in event or "\n" in event:
            raise ValueError(f"SSE event name must be one line, got {event!r}")
        head = b"event: " + event.encode() + b"\n"
    if b"\n" in data or b"\r" in data:
        return head + b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK.split(data)) + b"\n"
    return head + b"data: " + data + b"\n\n"
