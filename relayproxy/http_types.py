"""Plain HTTP data passed between the server, the gateway and the upstream client.

No I/O here. Header names are lower-case ``bytes`` (as h11 gives them); values are ``bytes``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

__all__ = ["Body", "Headers", "HttpRequest", "HttpResponse", "header", "query_params"]

Headers = list[tuple[bytes, bytes]]

#: A response body: whole bytes, or an async iterator of chunks for streams.
#: The server resumes an iterator only after the previous chunk was written to the socket
#: and drained; if the client goes away it closes the iterator (``aclose``) instead, so a
#: generator that is resumed after yielding its last chunk knows that chunk was handed over.
Body = bytes | AsyncIterator[bytes]


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def query_params(query: str) -> dict[str, str]:
    """Decode an ``a=b&c=d`` query string (percent-decoding values); the first value wins."""
    from urllib.parse import parse_qsl

    out: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        out.setdefault(key, value)
    return out


@dataclass(slots=True)
class HttpRequest:
    """A parsed request with its whole body read."""

    method: str
    path: str  # the target before '?', not percent-decoded
    query: str  # the target after '?', '' when absent
    headers: Headers
    body: bytes = b""
    client: tuple[str, int] | None = None
    http_version: str = "1.1"


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: Headers = field(default_factory=list)
    body: Body = b""
    #: For a whole-bytes body: called once when the server is done with the response, with True
    #: if all of it was handed to the client's socket (False: the client went away first).
    sent: Callable[[bool], None] | None = None
