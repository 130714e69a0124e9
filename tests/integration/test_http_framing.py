"""The server's pure decisions: HeadScanner fed whole, byte by byte and with trailing bytes;
check_request; keep-alive; the default error body. No sockets here (test_server.py has those).

Invariant under test first: the scanner's verdict (head length, or the rejection status)
depends only on the bytes, never on how they are split into reads.
"""

from __future__ import annotations

import json

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayproxy.server.limits import (
    HeadScanner,
    RequestRejected,
    ServerLimits,
    body_allowed,
    check_request,
    split_target,
)
from relayproxy.server.listener import default_render_error, should_keep_alive

LIMITS = ServerLimits()
SMALL = ServerLimits(max_header_bytes=64, max_headers=3, max_request_line_bytes=24)


def verdict(data: bytes, cuts: list[int], limits: ServerLimits = LIMITS) -> int:
    """Feed ``data`` cut at ``cuts`` into one growing buffer: the head length, 0, or -status."""
    scanner, buf = HeadScanner(limits), bytearray()
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        buf += data[start:end]
        try:
            found = scanner.scan(buf)
        except RequestRejected as exc:
            return -exc.status
        if found:
            return found
    return 0


def all_ways(data: bytes, limits: ServerLimits = LIMITS) -> int:
    """The verdict whole, byte by byte and with trailing bytes; asserts they agree."""
    whole = verdict(data, [], limits)
    assert verdict(data, list(range(1, len(data))), limits) == whole
    trailing = verdict(data + b"GET /next HTTP/1.1\r\n\r\n\x00junk", [], limits)
    assert trailing == whole or (whole == 0 and trailing != 0)
    return whole


GOOD = b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (GOOD, len(GOOD)),
        (GOOD.replace(b"\r\n", b"\n"), len(GOOD) - 4),  # bare LF accepted
        (b"GET / HTTP/1.1\r\nHost: x\r\n", 0),  # incomplete
        (b"\r\n", 2),  # an empty first line ends the "head"; h11 then refuses it with 400
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", -400),  # obs-fold
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7f\r\n\r\n", -400),  # DEL
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\tb\r\n\r\n", 35),  # HTAB is fine
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\n", -400),
        (b"GET / HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n", -400),
        (b"GET / HTTP/1.1\r\nContent-Length: \r\n\r\n", -400),
        (b"GET / HTTP/1.1\r\nCONTENT-LENGTH: +5\r\n\r\n", -400),
        (b"GET / HTTP/1.1\r\nContent-Length:\t 7 \r\n\r\n", 39),  # OWS around the value is allowed
        (b"GET / HTTP/1.1\r\nContent-Lengthy: +5\r\n\r\n", 39),  # another header, not ours to judge
    ],
)
def test_scanner_verdicts(data: bytes, expected: int) -> None:
    assert all_ways(data) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [(64, 64), (65, -431), (500, -431)],
)
def test_scanner_head_size_boundary(size: int, expected: int) -> None:
    base = b"GET / HTTP/1.1\r\nX: \r\n\r\n"
    data = base.replace(b"X: ", b"X: " + b"a" * (size - len(base)))
    assert len(data) == size
    assert all_ways(data, SMALL) == expected


def test_scanner_request_line_boundary() -> None:
    """24 bytes before the line ending pass, 25 do not, with CRLF or bare LF. With no LF yet,
    25 bytes are undecided (the 25th may be the CR) and 26 are refused at once."""
    ok, long = b"GET /" + b"a" * 10 + b" HTTP/1.1", b"GET /" + b"a" * 11 + b" HTTP/1.1"
    assert len(ok) == 24
    for ending in (b"\r\nHost: x\r\n\r\n", b"\nHost: x\n\n"):
        assert all_ways(ok + ending, SMALL) == len(ok + ending)
        assert all_ways(long + ending, SMALL) == -414
    assert all_ways(long, SMALL) == 0
    assert all_ways(long + b"a", SMALL) == -414


def test_scanner_header_count_boundary() -> None:
    three = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
    assert all_ways(three, SMALL) == len(three)
    assert all_ways(three.replace(b"\r\n\r\n", b"\r\nD: 4\r\n\r\n"), SMALL) == -431


def test_scanner_reset_starts_a_new_head() -> None:
    scanner = HeadScanner(LIMITS)
    assert scanner.scan(b"GET / HTTP/1.1\r\nContent-Length: 1\r\n\r\n") > 0
    scanner.reset()
    assert scanner.scan(b"GET / HTTP/1.1\r\nContent-Length: 1\r\n\r\n") > 0  # not a duplicate


heads = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.sampled_from(
            [
                b"GET / HTTP/1.1",
                b"Host: x",
                b"Content-Length: 1",
                b" fold",
                b"X: \x7f",
                b"",
                b"A: " + b"a" * 30,
            ]
        ),
        max_size=8,
    ).map(lambda lines: b"\r\n".join(lines) + b"\r\n\r\n"),
)


@given(heads, st.lists(st.integers(min_value=1, max_value=199), max_size=20))
def test_scanner_verdict_never_depends_on_the_split(data: bytes, cuts: list[int]) -> None:
    cuts = sorted({c for c in cuts if c < len(data)})
    assert verdict(data, cuts, SMALL) == verdict(data, [], SMALL)


def _request(version: bytes, *headers: tuple[bytes, bytes], method: bytes = b"POST") -> int | None:
    """check_request's verdict: the body length (None: chunked), or -status."""
    try:
        return check_request(method, version, list(headers), ServerLimits(max_body_bytes=100))
    except RequestRejected as exc:
        return -exc.status


def test_check_request() -> None:
    cl, te = (b"content-length", b"5"), (b"transfer-encoding", b"chunked")
    assert _request(b"1.1", cl) == 5
    assert _request(b"1.1", te) is None
    assert _request(b"1.0") == 0
    assert _request(b"1.1", cl, te) == -400
    assert _request(b"1.1", te, cl) == -400
    assert _request(b"1.0", te) == -400
    assert _request(b"2.0") == -505
    assert _request(b"0.9") == -505
    assert _request(b"1.1", (b"content-length", b"100")) == 100
    assert _request(b"1.1", (b"content-length", b"101")) == -413
    assert _request(b"1.1", method=b"CONNECT") == -405


def test_should_keep_alive() -> None:
    assert should_keep_alive(h11.DONE, draining=False)
    assert not should_keep_alive(h11.DONE, draining=True)
    assert not should_keep_alive(h11.MUST_CLOSE, draining=False)


def test_small_decisions() -> None:
    assert split_target(b"/v1/models?key=a&b") == ("/v1/models", "key=a&b")
    assert split_target(b"/v1/models") == ("/v1/models", "")
    assert body_allowed("GET", 200)
    assert not body_allowed("HEAD", 200)
    assert not body_allowed("GET", 204)
    assert not body_allowed("GET", 304)


def test_default_error_body_is_openai_shaped() -> None:
    response = default_render_error(431, "too big", None)
    assert response.status == 431
    assert (b"content-type", b"application/json") in response.headers
    assert isinstance(response.body, bytes)
    error = json.loads(response.body)["error"]
    assert error == {"message": "too big", "type": "invalid_request_error", "code": "header_fields_too_large"}
    assert json.loads(default_render_error(500, "x", None).body)["error"]["type"] == "server_error"  # type: ignore[arg-type]
