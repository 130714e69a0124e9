"""Upstream request and response heads, checked against h11 (which they replace on the client side):
the same request bytes, the same parsed response heads, the same inputs rejected."""

from __future__ import annotations

from typing import Any

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayproxy.upstream.head import (
    MAX_HEAD_BYTES,
    HeadError,
    RequestError,
    ResponseHead,
    parse_response_head,
    render_request,
)

# -- requests -----------------------------------------------------------------------------------


def h11_request(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> bytes | None:
    conn = h11.Connection(h11.CLIENT)
    try:
        data = conn.send(h11.Request(method=method, target=target, headers=headers))
    except (h11.LocalProtocolError, UnicodeError):
        return None
    return data


def ours_request(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> bytes | None:
    try:
        return render_request(method, target, headers)
    except RequestError:
        return None


def test_request_head_is_what_h11_writes() -> None:
    headers = [(b"host", b"api.example:8443"), (b"Authorization", b"Bearer sk-x"), (b"content-length", b"2")]
    expected = (
        b"POST /v1/x?y=1 HTTP/1.1\r\nhost: api.example:8443\r\nAuthorization: Bearer sk-x\r\ncontent-length: 2\r\n\r\n"
    )
    assert render_request("POST", "/v1/x?y=1", headers) == expected == h11_request("POST", "/v1/x?y=1", headers)


@pytest.mark.parametrize(
    ("method", "target", "header"),
    [
        ("POST", "/", (b"x-key", b"Bearer sk-SECRET\r\nx-injected: 1")),
        ("POST", "/", (b"x-key", b"a\x00b")),
        ("POST", "/", (b"x-key", b" leading")),
        ("POST", "/", (b"bad name", b"v")),
        ("POST", "/", (b"", b"v")),
        ("PO ST", "/", (b"x", b"v")),
        ("POST", "/a b", (b"x", b"v")),
        ("POST", "/\u00e9", (b"x", b"v")),
        ("POST", "", (b"x", b"v")),
    ],
)
def test_invalid_requests_are_refused_without_quoting_values(method: str, target: str, header: Any) -> None:
    headers = [(b"host", b"h"), header]
    assert h11_request(method, target, headers) is None
    with pytest.raises(RequestError) as caught:
        render_request(method, target, headers)
    assert "SECRET" not in str(caught.value) and caught.value.__cause__ is None


header_bytes = st.binary(max_size=12) | st.sampled_from([b"v", b"a b", b"a\tb", b" a", b"a ", b"\x80\xff", b""])


@given(
    st.sampled_from(["GET", "POST", "HEAD", "P\u00e9", "A B", ""]),
    st.sampled_from(["/", "/v1/chat?x=1", "*", "/a b", "/\x7f", ""]),
    st.lists(st.tuples(st.binary(max_size=6) | st.sampled_from([b"x-a", b"X-B"]), header_bytes), max_size=4),
)
def test_request_rendering_agrees_with_h11(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"host", b"h"), *headers]
    # h11 also checks Host and the framing headers, which the connection always writes itself.
    if any(name.lower() in (b"host", b"content-length", b"transfer-encoding") for name, _ in headers[1:]):
        return
    assert ours_request(method, target, headers) == h11_request(method, target, headers)


# -- responses ----------------------------------------------------------------------------------

Parsed = tuple[int, bytes, bytes, list[tuple[bytes, bytes]]] | str  # or "error", or "incomplete"


def h11_response(data: bytes, method: str = "GET") -> Parsed:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[(b"host", b"h")]))
    conn.send(h11.EndOfMessage())
    if data:  # b"" would be EOF
        conn.receive_data(data)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return "incomplete"
            if isinstance(event, h11.Response):
                return (event.status_code, event.reason, event.http_version, list(event.headers))
            assert isinstance(event, h11.InformationalResponse)
    except h11.RemoteProtocolError:
        return "error"


def ours_response(data: bytes) -> Parsed:
    pos = 0
    try:
        while (parsed := parse_response_head(data, pos)) is not None:
            head, pos = parsed
            if head.status_code >= 200:
                return (head.status_code, head.reason, head.http_version, head.headers)
            if head.status_code == 101:
                return "error"
    except HeadError:
        return "error"
    return "incomplete"


def test_response_head_with_1xx_obs_fold_and_leftover() -> None:
    data = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Long: one\r\n  two\r\n"
        b"Content-Length: 5, 5\r\nContent-Length: 5\r\n\r\nhello"
    )
    first = parse_response_head(data)
    assert first is not None and first[0].status_code == 103
    second = parse_response_head(data, first[1])
    assert second is not None
    head, end = second
    assert head == ResponseHead(
        200, b"OK", [(b"content-type", b"text/plain"), (b"x-long", b"one two"), (b"content-length", b"5")], b"1.1"
    )
    assert data[end:] == b"hello"
    assert ours_response(data) == h11_response(data)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200\r\n\r\n",  # no reason phrase
        b"HTTP/1.0 204 No Content\n\n",  # bare LF line ends
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX:\r\nY:  v  \r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 123456789012345678901\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n continued\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"\r\nHTTP/1.1 200 OK\r\n\r\n",
        b" HTTP/1.1 200 OK\r\n\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS handshake: rejected before it is complete
        b"HTTP/1.1 200 OK\r\nX: y\r\n",
    ],
)
def test_response_heads_parse_or_fail_as_h11_does(data: bytes) -> None:
    assert ours_response(data) == h11_response(data)


def test_an_endless_response_head_is_cut_at_the_cap() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEAD_BYTES // 6)
    with pytest.raises(HeadError, match="over"):
        parse_response_head(head)
    assert parse_response_head(head + b"\r\n") is not None  # complete, it is parsed (as h11 does)


line_end = st.sampled_from([b"\r\n", b"\n"])
status_line = st.sampled_from(
    [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 \xe9t\xe9"]
)
header_line = st.sampled_from(
    [
        b"Content-Type: text/event-stream",
        b"Content-Length: 12",
        b"content-length: 12",
        b"Content-Length: 7",
        b"Transfer-Encoding: chunked",
        b"Connection: keep-alive, close",
        b"X-Empty:",
        b"X-Spaces:   a b   ",
        b"  folded",
        b"\tfolded",
        b"Set-Cookie: a=b; Path=/",
    ]
)


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    eol = draw(line_end)
    data = b""
    if draw(st.booleans()):
        data += b"HTTP/1.1 100 Continue" + eol + eol
    data += draw(status_line) + eol + b"".join(line + eol for line in draw(st.lists(header_line, max_size=5))) + eol
    data += draw(st.sampled_from([b"", b"body", b"HTTP/1.1 200 OK\r\n"]))
    mutation = draw(st.sampled_from(["none", "replace", "cut", "insert"]))
    at = draw(st.integers(0, len(data) - 1))
    byte = bytes([draw(st.sampled_from(b"\r\n \t:\x00\x7f\xffaZ1,"))])
    if mutation == "cut":
        data = data[:at]
    elif mutation == "replace":
        data = data[:at] + byte + data[at + 1 :]
    elif mutation == "insert":
        data = data[:at] + byte + data[at:]
    return data


@given(response_heads())
def test_response_head_parsing_agrees_with_h11(data: bytes) -> None:
    assert ours_response(data) == h11_response(data)


@given(response_heads())
def test_a_head_arriving_in_pieces_parses_as_when_whole(data: bytes) -> None:
    """What the connection does: re-parse the growing buffer, resuming the blank-line search."""
    whole = ours_response(data)
    for cut in range(len(data) + 1):
        buf, searched = data[:cut], 0
        try:
            parsed = parse_response_head(buf)
            if parsed is None:
                searched = max(0, len(buf) - 2)
                buf = data
                parsed = parse_response_head(buf, 0, searched)
        except HeadError:
            assert whole == "error"
            continue
        if parsed is not None and parsed[0].status_code >= 200:
            head = parsed[0]
            assert whole == (head.status_code, head.reason, head.http_version, head.headers)
