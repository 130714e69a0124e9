"""Sans-IO HTTP/1.1 message heads for the upstream client: the request head out, response heads in.

This replaces h11 on the client side (the body is cut by `relayproxy.upstream.body`). h11 is a
general state machine: each request it validates and renders through event objects, a header
normaliser and a state-machine pass, and each response head through a line buffer, a regex per
line and the same passes again, which was most of what the upstream leg added to the time to
first byte (figures in bench/README.md). The client only ever sends one complete request
and then reads one response (after any 1xx), so both directions are one function each, with the
same grammar h11 applies (the regexes below are h11's, from RFC 9110/9112), the same checks on
Content-Length and Transfer-Encoding, and h11's 16 KiB cap on a response head. Property tests
check that both agree with h11 on arbitrary input.

Errors never quote header values: a request header may carry the provider's key.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["MAX_HEAD_BYTES", "HeadError", "RequestError", "ResponseHead", "parse_response_head", "render_request"]

MAX_HEAD_BYTES = 16 * 1024  # h11's max_incomplete_event_size

_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_FIELD_CONTENT = rb"[^\x00\s]+(?:[ \t]+[^\x00\s]+)*"
_FIELD_VALUE = re.compile(rb"(?:%b)?" % _FIELD_CONTENT)
_HEADER_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:" + _FIELD_CONTENT + rb")?)[ \t]*")
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
_FOLD = re.compile(rb"[ \t]+")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_DIGITS = re.compile(rb"[0-9]+")
_MAX_LENGTH_DIGITS = 20  # h11's CONTENT_LENGTH_MAX_DIGITS


class RequestError(Exception):
    """Our request is not valid HTTP/1.1 (a header name or value, the method or the target)."""


class HeadError(Exception):
    """The upstream's response head is not valid HTTP/1.1."""


class ResponseHead(NamedTuple):
    status_code: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased, as h11 gives them
    http_version: bytes  # b"1.1", b"1.0"


def render_request(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """``METHOD target HTTP/1.1``, the headers as given (names as spelled), the blank line."""
    try:
        method_, target_ = method.encode("ascii"), target.encode("ascii")
    except UnicodeEncodeError:
        raise RequestError("the method or target is not ASCII") from None
    if _TOKEN.fullmatch(method_) is None or _TARGET.fullmatch(target_) is None:
        raise RequestError("illegal method or request target")
    lines = [b"%b %b HTTP/1.1\r\n" % (method_, target_)]
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
            raise RequestError("illegal header name or value")
        lines.append(b"%b: %b\r\n" % (name, value))
    lines.append(b"\r\n")
    return b"".join(lines)


def parse_response_head(buf: bytes, start: int = 0, searched: int = 0) -> tuple[ResponseHead, int] | None:
    """The response head (final or 1xx) at ``buf[start:]`` and where it ends; None if incomplete.

    ``searched``: how many bytes from ``start`` an earlier call already found no blank line in
    (pass the incomplete length minus 2), so a head that arrives in pieces is searched once.
    Raises HeadError for anything h11 would reject, including a head still incomplete past
    `MAX_HEAD_BYTES`.
    """
    if start < len(buf) and buf[start] < 0x21:  # a blank or control first byte (TLS, junk)
        raise HeadError("illegal status line")
    found = _BLANK_LINE.search(buf, start + searched)
    if found is None:
        if len(buf) - start > MAX_HEAD_BYTES:
            raise HeadError(f"response head over {MAX_HEAD_BYTES} bytes")
        return None
    lines = buf[start : found.start()].split(b"\n")
    status = _STATUS_LINE.fullmatch(_strip_cr(lines[0]))
    if status is None:
        raise HeadError("illegal status line")
    version, code, reason = status.groups()
    if code < b"100":
        raise HeadError("illegal status code")
    return ResponseHead(int(code), reason or b"", _headers(lines[1:]), version), found.end()


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def _headers(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Header lines (obs-fold joined) -> (lower-cased name, value), with h11's framing checks."""
    fields: list[bytes] = []
    for line in map(_strip_cr, lines):
        fold = _FOLD.match(line)
        if fold is None:
            fields.append(line)
        elif not fields:
            raise HeadError("continuation line at start of headers")
        else:
            fields[-1] += b" " + line[fold.end() :]
    headers: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    chunked = False
    for field in fields:
        parsed = _HEADER_LINE.fullmatch(field)
        if parsed is None:
            raise HeadError("illegal header line")
        name, value = parsed[1].lower(), parsed[2]
        if name == b"content-length":
            lengths = {part.strip() for part in value.split(b",")}
            value = lengths.pop()
            if lengths or _DIGITS.fullmatch(value) is None or len(value) > _MAX_LENGTH_DIGITS:
                raise HeadError("bad Content-Length")
            if length is not None:
                if value != length:
                    raise HeadError("conflicting Content-Length headers")
                continue
            length = value
        elif name == b"transfer-encoding":
            value = value.lower()
            if chunked or value != b"chunked":
                raise HeadError("only a single Transfer-Encoding, chunked, is supported")
            chunked = True
        headers.append((name, value))
    return headers
