"""Sans-IO HTTP/1.1 response body framing: Content-Length, chunked, or until the peer closes.

`relayproxy.upstream.head` parses the response head; the body is cut here. A stream's body is
the per-chunk hot path of the gateway, where h11 costs an event object, a state-machine step, a
bytearray copy and a second ``next_event`` call (to learn that it needs more bytes) per chunk; this
reader does none of that and hands out ``bytes`` slices, which the SSE framer searches without
copying (the measured difference is in bench/README.md).
It accepts what h11 accepts (RFC 9112 §6 and §7.1: chunk-size lines ended by CRLF, extensions
ignored, the CRLF after each chunk's data checked) except that the trailer section is skipped
without checking its fields, which nothing here uses; and it holds no more than ``_MAX_LINE``
bytes of a line it has not finished, as h11's ``max_incomplete_event_size`` does.

Bytes go in with ``receive`` (``b""`` means the peer closed); ``read`` returns the next piece of
body data, or None when it needs more bytes or the body is over (``done``). Whatever follows the
body stays in ``leftover``: on a keep-alive connection that means the stream is out of sync.
"""

from __future__ import annotations

import re
from enum import Enum

__all__ = ["BodyError", "BodyReader", "Framing"]

# A chunk-size line without its CRLF: h11's chunk_header (1-20 hex digits, `;` extensions, OWS).
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\n]*)?[ \t]*")
_BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of a trailer section (h11 accepts bare LF there)
_MAX_LINE = 16 * 1024  # a chunk-size line or a trailer section still incomplete after this: not HTTP


class BodyError(Exception):
    """The peer broke the body's framing (the message never quotes the peer's bytes)."""


class Framing(Enum):
    LENGTH = "content-length"
    CHUNKED = "chunked"
    UNTIL_EOF = "until-eof"  # HTTP/1.0 style: the connection cannot be reused


# Reader states (plain ints: this is the per-chunk path, and an Enum member lookup costs more
# than the rest of a state step).
_DATA = 0  # inside chunk data or a Content-Length body: _left bytes to go
_SIZE = 1  # expecting a chunk-size line
_FOOTER = 2  # expecting the CRLF after chunk data
_TRAILER = 3  # after the last chunk: skipping the trailer section up to its blank line
_UNTIL_EOF = 4
_DONE = 5


class BodyReader:
    """One response body; see the module docstring."""

    __slots__ = ("_buf", "_chunked", "_eof", "_left", "_pos", "_scan", "_state", "done", "framing")

    def __init__(self, framing: Framing, length: int = 0) -> None:
        self.framing = framing
        self.done = False  # the whole body was read
        self._buf = b""
        self._pos = 0  # where unread bytes start in _buf
        self._scan = 0  # how far past _pos a line end was already looked for
        self._eof = False
        self._chunked = framing is Framing.CHUNKED
        self._left = length  # bytes of the current chunk (or of the whole body) still to come
        if framing is Framing.CHUNKED:
            self._state = _SIZE
        elif framing is Framing.UNTIL_EOF:
            self._state = _UNTIL_EOF
        elif length > 0:
            self._state = _DATA
        else:
            self._end()

    @property
    def leftover(self) -> bytes:
        """Bytes received after the end of the body (or not yet read)."""
        return self._buf[self._pos :]

    def receive(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means it closed the connection."""
        if not data:
            self._eof = True
        elif self._pos >= len(self._buf):
            self._buf, self._pos = data, 0
        else:
            self._buf, self._pos = self._buf[self._pos :] + data, 0

    def read(self) -> bytes | None:
        """The next piece of body data; None when more bytes are needed, or at the end (`done`)."""
        while True:
            state = self._state
            if state == _DATA:
                return self._data()
            if state == _UNTIL_EOF:
                return self._until_eof()
            if not self._step(state):
                return None

    def _data(self) -> bytes | None:
        buf, pos = self._buf, self._pos
        end = min(len(buf), pos + self._left)
        if end == pos:
            if self._eof:
                kind = "chunked" if self._chunked else "Content-Length"
                raise BodyError(f"peer closed connection without sending complete message body ({kind})")
            return None
        self._pos = end
        self._left -= end - pos
        if not self._left:
            if self._chunked:
                self._state = _FOOTER
            else:
                self._end()
        return buf if pos == 0 and end == len(buf) else buf[pos:end]  # all of it: no copy

    def _until_eof(self) -> bytes | None:
        buf, pos = self._buf, self._pos
        self._pos = len(buf)
        if pos < len(buf):
            return buf if pos == 0 else buf[pos:]
        if self._eof:
            self._end()
        return None

    def _step(self, state: int) -> bool:
        """Read one piece of chunked framing; False if more bytes are needed (or the body is done)."""
        buf, pos = self._buf, self._pos
        if state == _FOOTER:
            if buf.startswith(b"\r\n", pos):
                self._pos, self._state = pos + 2, _SIZE
                return True
            if buf[pos:] not in (b"", b"\r"):
                raise BodyError("malformed chunk footer")
            self._incomplete("chunk footer")
            return False
        if state == _SIZE:
            end = buf.find(b"\r\n", pos + self._scan)
            if end < 0:
                if pos < len(buf) or self._eof:
                    self._incomplete("chunk-size line")
                return False
            found = _CHUNK_SIZE.fullmatch(buf, pos, end)
            if found is None:
                raise BodyError("illegal chunk header")
            self._pos, self._scan = end + 2, 0
            self._left = int(found[1], 16)
            self._state = _DATA if self._left else _TRAILER
            return True
        return state == _TRAILER and self._trailer()

    def _end(self) -> None:
        self._state, self.done = _DONE, True

    def _trailer(self) -> bool:
        buf, pos = self._buf, self._pos
        if buf.startswith(b"\r\n", pos) or buf.startswith(b"\n", pos):  # no trailer fields (the usual case)
            self._pos = pos + (2 if buf[pos] == 0x0D else 1)
        else:
            found = _BLANK_LINE.search(buf, pos + self._scan)
            if found is None:
                self._incomplete("trailer section")
                return False
            self._pos, self._scan = found.end(), 0
        self._end()
        return True

    def _incomplete(self, what: str) -> None:
        """More bytes are needed to finish a line: fail at EOF or past the size cap."""
        pending = len(self._buf) - self._pos
        if self._eof:
            raise BodyError(f"peer closed connection without sending complete message body (in a {what})")
        if pending > _MAX_LINE:
            raise BodyError(f"{what} over {_MAX_LINE} bytes")
        self._scan = max(0, pending - 2)  # a CRLF or LF CR LF may straddle the next feed
