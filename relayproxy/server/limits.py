"""Request limits and the framing checks that h11 leaves to the application. Pure: no I/O.

Theory of operation. The server keeps the raw bytes of a request head in its own buffer until
``HeadScanner`` has seen the blank line that ends it; only then does h11 see them. Counting raw
bytes ourselves is necessary because h11 enforces its 16 KiB cap only while an event is
incomplete: a 20 KB head that arrives in one read is accepted by h11, while the same head sent
byte by byte is refused at byte 16,385. The scanner never looks past the first
``max_header_bytes + 1`` bytes and checks lines in arrival order, so its verdict depends on the
bytes alone, never on how they were split into reads. It resumes its search where it stopped, so
each byte is searched once (O(n) however the head is cut; no slow-drip CPU burn).

It also catches what h11 silently normalises away or lets through: obs-fold lines (h11 unfolds
them), duplicate ``Content-Length`` headers (h11 merges equal ones, and accepts ``1, 1``), and
control characters such as DEL in field values.

After h11 has parsed the head, ``check_request`` refuses what h11 accepts but RFC 9112 lets a
server refuse (CL together with TE, HTTP/1.0 with TE, versions other than 1.0/1.1), and applies
the body-size limit to a declared Content-Length before a byte of the body is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relayproxy.config.settings import Limits, Timeouts
from relayproxy.http_types import Headers

__all__ = [
    "HeadScanner",
    "RequestRejected",
    "ServerLimits",
    "body_allowed",
    "check_request",
    "describe_malformed",
    "split_target",
]

_TAB, _SP, _CR = 9, 32, 13
_MAX_CONTENT_LENGTH_DIGITS = 20  # h11's own cap; longer values are refused, not parsed
# Control characters other than HTAB, CR, LF. h11 refuses only NUL and whitespace controls in
# field values, so DEL or \x01 would reach the handler (and an upstream) unnoticed.
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_QUOTED_BYTES = re.compile(r"(?:bytearray\()?b['\"]")
# The defaults of [limits] and [timeouts]: written once, in config.settings.
_LIMITS, _TIMEOUTS = Limits(), Timeouts()


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Limits and timeouts of the HTTP server. Statuses: what the client gets when it is exceeded."""

    # the whole head (request line + headers + blank line), raw bytes -> 431
    max_header_bytes: int = _LIMITS.max_header_bytes
    max_headers: int = _LIMITS.max_headers  # header lines -> 431
    max_request_line_bytes: int = 8192  # request line without its CRLF -> 414
    max_body_bytes: int = _LIMITS.max_body_bytes  # declared CL over it -> 413 unread; chunked -> 413 + close
    # deadline for the whole head, from connection open / first byte -> 408
    header_read_s: float = _TIMEOUTS.header_read_s
    body_read_s: float = _TIMEOUTS.body_read_s  # deadline for the whole body -> 408
    keepalive_idle_s: float = _TIMEOUTS.keepalive_idle_s  # idle keep-alive connection closed silently
    # a write that cannot drain for this long: the client is gone
    client_write_stall_s: float = _TIMEOUTS.client_write_stall_s
    lingering_close_s: float = 2.0  # after our last byte, drop what the client still sends this long


class RequestRejected(Exception):
    """The client sent a request the server refuses before any handler sees it (client's fault)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HeadScanner:
    """Finds the end of one request head in raw bytes and applies the raw-byte limits.

    Feed it the buffer holding the head from its first byte, after every read (the buffer only
    grows); ``reset()`` before the next request.
    """

    __slots__ = ("_content_lengths", "_headers", "_limits", "_line_start", "_pos")

    def __init__(self, limits: ServerLimits) -> None:
        self._limits = limits
        self.reset()

    def reset(self) -> None:
        self._pos = 0  # where the search for the next LF resumes
        self._line_start = 0  # first byte of the line being read
        self._headers = -1  # header lines seen; -1 while the request line is incomplete
        self._content_lengths = 0

    def scan(self, buf: bytes | bytearray) -> int:
        """The head's length once its blank line is in ``buf``, else 0. Raises RequestRejected.

        Bare LF line endings are accepted, as h11, nginx and HAProxy do (RFC 9112 §2.2 allows it).
        """
        limit = self._limits.max_header_bytes
        while (lf := buf.find(b"\n", self._pos, limit)) >= 0:
            start = self._line_start
            self._pos = self._line_start = lf + 1
            end = lf - 1 if lf > start and buf[lf - 1] == _CR else lf
            if end == start:  # the blank line (or an empty first line, which h11 refuses)
                if _CTL.search(buf, 0, lf):
                    raise RequestRejected(400, "The request head contains a control character.")
                return lf + 1
            self._check_line(buf, start, end)
        self._pos = min(len(buf), limit)
        self._check_incomplete(len(buf))
        return 0

    def _check_incomplete(self, received: int) -> None:
        limits = self._limits
        # The request line may still lack its CR LF: more than limit + 1 bytes without LF is too long.
        seen = min(received, limits.max_header_bytes + 1)
        if self._headers < 0 and seen > limits.max_request_line_bytes + 1:
            raise RequestRejected(414, _line_too_long(limits))
        if received > limits.max_header_bytes:
            raise RequestRejected(431, _head_too_large(limits))

    def _check_line(self, buf: bytes | bytearray, start: int, end: int) -> None:
        limits = self._limits
        if self._headers < 0:
            self._headers = 0
            if end - start > limits.max_request_line_bytes:
                raise RequestRejected(414, _line_too_long(limits))
            return
        if buf[start] == _SP or buf[start] == _TAB:
            # h11 would unfold it into the previous value; a proxy that reads it differently
            # from us would see another header (RFC 9112 §5.2 lets a server answer 400).
            raise RequestRejected(400, "Header lines must not start with whitespace (obs-fold).")
        self._headers += 1
        if self._headers > limits.max_headers:
            raise RequestRejected(431, f"More than {limits.max_headers} header lines; send fewer headers.")
        colon = buf.find(b":", start, end)
        if colon - start == 14 and buf[start:colon].lower() == b"content-length":
            self._check_content_length(buf[colon + 1 : end])

    def _check_content_length(self, value: bytes | bytearray) -> None:
        # h11 merges equal duplicates and accepts "1, 1"; two parsers that disagree on the body
        # length are the root of request smuggling, so only one plain decimal number passes.
        self._content_lengths += 1
        if self._content_lengths > 1:
            raise RequestRejected(400, "More than one Content-Length header; send exactly one.")
        digits = value.strip(b" \t")
        if not (0 < len(digits) <= _MAX_CONTENT_LENGTH_DIGITS and digits.isdigit()):
            raise RequestRejected(400, "Content-Length must be a single non-negative decimal number.")


def _line_too_long(limits: ServerLimits) -> str:
    return f"The request line is longer than {limits.max_request_line_bytes} bytes; shorten the URL."


def _head_too_large(limits: ServerLimits) -> str:
    return f"The request head is larger than {limits.max_header_bytes} bytes; send smaller headers."


def check_request(method: bytes, http_version: bytes, headers: Headers, limits: ServerLimits) -> int | None:
    """Refuse a parsed request head that h11 accepts but this server must not (raise
    RequestRejected); else return the body length: Content-Length, 0 if absent, None if chunked."""
    if http_version != b"1.1" and http_version != b"1.0":
        raise RequestRejected(505, f"HTTP/{http_version.decode()} is not supported; use HTTP/1.1.")
    if method == b"CONNECT":
        raise RequestRejected(405, "CONNECT is not supported by this server.")
    content_length = transfer_encoding = None
    for name, value in headers:
        if name == b"content-length":
            content_length = value
        elif name == b"transfer-encoding":
            transfer_encoding = value
    if transfer_encoding is not None:
        if content_length is not None:
            raise RequestRejected(400, "Content-Length together with Transfer-Encoding is ambiguous; send only one.")
        if http_version == b"1.0":
            raise RequestRejected(400, "Transfer-Encoding is not defined for HTTP/1.0; use HTTP/1.1.")
        return None  # h11 has checked that it is exactly "chunked"
    length = 0 if content_length is None else int(content_length)
    if length > limits.max_body_bytes:
        raise RequestRejected(
            413, f"The request body ({length} bytes) exceeds the limit of {limits.max_body_bytes} bytes."
        )
    return length


def describe_malformed(reason: str) -> str:
    """The 400 message for h11's ``reason``, cut before any quoted bytes: it may quote a header
    value (a key, say)."""
    reason = _QUOTED_BYTES.split(reason, maxsplit=1)[0].rstrip(" :")
    return f"Malformed HTTP/1.1 request: {reason[:200]}"


def split_target(target: bytes) -> tuple[str, str]:
    """Split a request target into (path, query); neither is percent-decoded."""
    path, _, query = target.partition(b"?")
    return path.decode("ascii"), query.decode("ascii")  # h11 admits only visible ASCII here


def body_allowed(method: str, status: int) -> bool:
    """Whether a response to ``method`` with ``status`` carries body bytes (RFC 9110 §6.4.1)."""
    return method != "HEAD" and status != 204 and status != 304
