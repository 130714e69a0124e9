"""SSE framer: every input is fed whole, byte by byte, in every 2-way split and with trailing junk."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayproxy.errors import FramingError
from relayproxy.sse import SSEEvent, SSEFramer, encode_event

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures").glob("*/*.sse"))
JUNK = b"event: junk\ndata: an unfinished event after the last complete one"

Key = tuple[str | None, bytes, bytes, str | None]


def key(ev: SSEEvent) -> Key:
    return (ev.event, ev.data, bytes(ev.raw), ev.id)


def run(chunks: Iterable[bytes | bytearray | memoryview], max_event_bytes: int = 1 << 23) -> tuple[list[Key], bool]:
    """Feed chunks to a fresh framer, then close it: the events and has_partial."""
    framer = SSEFramer(max_event_bytes)
    events = [key(ev) for chunk in chunks for ev in framer.feed(chunk)]
    events += [key(ev) for ev in framer.close()]
    return events, framer.has_partial


def split_every_way(stream: bytes) -> Iterator[list[bytes]]:
    yield [stream[i : i + 1] for i in range(len(stream))]
    for i in range(len(stream) + 1):
        yield [stream[:i], stream[i:]]


def ends_at_boundary(stream: bytes) -> bool:
    """True if the stream ends with a blank line (or is empty), so junk after it is a new event."""
    return not stream or stream.splitlines(keepends=True)[-1].strip(b"\r\n") == b""


def ignorable(gap: bytes, *, at_end: bool = False) -> bool:
    """Blocks with no data or event line (blank lines, comments, lone id/retry/unknown fields).

    These are the only bytes that rightly belong to no event's raw.
    """
    lines = gap.splitlines(keepends=True)
    if any(line.rstrip(b"\r\n").partition(b":")[0] in (b"data", b"event") for line in lines):
        return False
    return at_end or not lines or lines[-1].strip(b"\r\n") == b""  # a gap ends with a blank line


def assert_tiles(stream: bytes, raws: list[bytes], *, dropped: bool) -> None:
    """Each raw starts where the previous one ended, after nothing but ignorable bytes."""
    pos = 0
    for raw in raws:
        start = stream.find(raw, pos)
        assert start >= 0, (raw, stream[pos:])
        assert ignorable(stream[pos:start]), stream[pos:start]
        pos = start + len(raw)
    assert dropped or ignorable(stream[pos:], at_end=True), stream[pos:]


def check_framing(stream: bytes) -> list[Key]:
    """The one helper every framing test goes through (h11 tests/test_io.py style)."""
    whole, partial = run([stream])
    for chunks in split_every_way(stream):
        assert run(chunks) == (whole, partial), [bytes(c) for c in chunks]
    for chunk in (bytearray(stream), memoryview(stream)):
        assert run([chunk]) == (whole, partial)
    if ends_at_boundary(stream):
        framer = SSEFramer()
        assert [key(ev) for ev in framer.feed(stream + JUNK)] == whole
        assert framer.close() == []
        assert framer.has_partial
    assert_tiles(stream, [raw for _, _, raw, _ in whole], dropped=partial)
    return whole


def fields(stream: bytes) -> list[tuple[str | None, bytes]]:
    return [(event, data) for event, data, _, _ in check_framing(stream)]


# -- line ends ----------------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_each_line_end_frames_events(eol):
    """LF, CR and CRLF each end lines; two in a row end an event."""
    stream = b"event: a" + eol + b"data: 1" + eol + eol + b"data: 2" + eol + b"data: 3" + eol + eol
    assert fields(stream) == [("a", b"1"), (None, b"2\n3")]


def test_mixed_line_ends_in_one_stream():
    """Line ends may differ line by line; CR LF is one line end, LF CR is two."""
    stream = b"data: a\rdata: b\r\n\n" + b"data: c\n\r\n" + b"data: d\r\r" + b"data: e\n\r"
    assert fields(stream) == [(None, b"a\nb"), (None, b"c"), (None, b"d"), (None, b"e")]


def test_crlf_split_across_feeds_is_one_line_end():
    """A chunk ending in CR followed by one starting with LF is one line end, not a blank line."""
    framer = SSEFramer()
    assert framer.feed(b"data: a\r") == []
    assert framer.feed(b"\n") == []
    assert framer.feed(b"data: b\r\n\r") == []  # the blank line's LF may still come
    [ev] = framer.feed(b"\n")
    assert key(ev) == (None, b"a\nb", b"data: a\r\ndata: b\r\n\r\n", None)
    assert not framer.has_partial


def test_event_ended_by_cr_at_chunk_end_is_held_for_one_byte():
    """A trailing CR blank line is dispatched once the next byte shows it is not CR LF."""
    framer = SSEFramer()
    assert framer.feed(b"data: a\r\r") == []
    assert framer.has_partial
    assert [key(ev) for ev in framer.feed(b"data: b\r\r")] == [(None, b"a", b"data: a\r\r", None)]
    assert [key(ev) for ev in framer.close()] == [(None, b"b", b"data: b\r\r", None)]
    assert not framer.has_partial


def test_blank_lines_before_and_between_events_are_skipped():
    """Blank lines with no pending block dispatch nothing and belong to no event's raw."""
    assert fields(b"\n\r\n\r\r\n\ndata: x\n\n\n\r\n\rdata: y\n\n\n") == [(None, b"x"), (None, b"y")]
    assert fields(b"\n\n\r\n") == []


# -- fields -------------------------------------------------------------------------------------


def test_comments_are_ignored():
    """Lines starting with ':' are ignored; a block of only comments dispatches nothing."""
    assert fields(b": keep-alive\n\n:\n\n: a\n: b\n\n") == []
    [(event, data, raw, _)] = check_framing(b": keep-alive\n\n: x\ndata: 1\n: y\n\n")
    assert (event, data) == (None, b"1")
    assert raw == b": x\ndata: 1\n: y\n\n"  # comments inside an event stay in its raw


def test_one_leading_space_is_stripped_and_the_colon_is_optional():
    """`event:x`, `data:x`, `data:  x` (one space stripped) and a bare `data` line."""
    assert fields(b"event:x\ndata:y\n\n") == [("x", b"y")]
    assert fields(b"data:  two spaces\n\n") == [(None, b" two spaces")]
    assert fields(b"data\n\n") == [(None, b"")]
    assert fields(b"data:\ndata:\n\n") == [(None, b"\n")]
    assert fields(b"data: a:b: c\n\n") == [(None, b"a:b: c")]


def test_block_dispatches_with_a_data_or_event_line_only():
    """An `event:` line alone dispatches (data b""); `id:`/`retry:`/unknown lines alone do not."""
    assert fields(b"event: ping\n\n") == [("ping", b"")]
    assert fields(b"event:\n\n") == [("", b"")]
    assert fields(b"id: 1\n\nretry: 10\n\nfoo: bar\n\n") == []


def test_id_and_retry():
    """`id` is kept (a NUL makes it ignored, as WHATWG says); `retry` is ignored; last value wins."""
    [ev] = check_framing(b"id: 7\nretry: 1000\nevent: a\nevent: b\nid: 42\ndata: x\n\n")
    assert ev == ("b", b"x", b"id: 7\nretry: 1000\nevent: a\nevent: b\nid: 42\ndata: x\n\n", "42")
    [ev] = check_framing(b"id\ndata: x\n\n")
    assert ev[3] == ""
    [ev] = check_framing(b"id: a\0b\ndata: x\n\n")
    assert ev[3] is None


def test_unknown_fields_are_ignored():
    """Field names are case sensitive and not trimmed: `DATA`, ` data` and `foo` are unknown."""
    assert fields(b"foo: bar\nDATA: no\n data: no\ndata: yes\n\n") == [(None, b"yes")]


def test_non_utf8_names_are_replaced_and_data_is_never_decoded():
    """Data stays bytes (a split UTF-8 character is fine); names decode with replacement."""
    assert fields("data: Tōkyō 🌦️\n\n".encode() + b"event: \xff\ndata: \xfe\n\n") == [
        (None, "Tōkyō 🌦️".encode()),
        ("\ufffd", b"\xfe"),
    ]


# -- close, partial events, limits ----------------------------------------------------------------


def test_close_dispatches_a_block_whose_lines_all_ended():
    """At end of stream a block missing only its blank line is dispatched."""
    assert check_framing(b"data: a\n\ndata: b\r\ndata: c\r") == [
        (None, b"a", b"data: a\n\n", None),
        (None, b"b\nc", b"data: b\r\ndata: c\r", None),
    ]
    assert run([b"data: a\n"]) == ([(None, b"a", b"data: a\n", None)], False)
    assert run([b": only a comment\n"]) == ([], False)


def test_close_drops_an_unterminated_block():
    """A block whose last line has no line end is dropped whole, and has_partial says so."""
    assert check_framing(b"data: a\n\ndata: b\ndata: c") == [(None, b"a", b"data: a\n\n", None)]
    assert run([b'event: content_block_delta\ndata: {"ty']) == ([], True)
    assert run([b": comm"]) == ([], True)


def test_has_partial_tracks_pending_bytes():
    """A conversation: each step's input, the data it dispatches and has_partial after it."""
    framer = SSEFramer()
    script: list[tuple[bytes | None, list[bytes], bool]] = [
        (b"\n\n", [], False),  # blank lines are not the start of an event
        (b"data: x", [], True),
        (b"\n\n", [b"x"], False),
        (b"data: y", [], True),
        (None, [], True),  # close() drops the unterminated event, and says so
        (b"data: z\n\n", [b"z"], False),  # a closed framer frames a new stream
        (None, [], False),
    ]
    for chunk, data, partial in script:
        events = framer.close() if chunk is None else framer.feed(chunk)
        assert ([ev.data for ev in events], framer.has_partial) == (data, partial), chunk


def test_empty_feeds_are_harmless():
    framer = SSEFramer()
    assert framer.feed(b"") == []
    assert framer.feed(b"data: a") == []
    assert framer.feed(b"") == []
    assert [ev.data for ev in framer.feed(b"\n\n")] == [b"a"]


@pytest.mark.parametrize("chunking", ["whole", "bytewise", "halves"])
def test_oversized_event_raises_framing_error(chunking):
    """An event over max_event_bytes raises FramingError however it is chunked."""
    stream = b"data: ok\n\ndata: " + b"x" * 40 + b"\n\n"
    chunks = {
        "whole": [stream],
        "bytewise": [stream[i : i + 1] for i in range(len(stream))],
        "halves": [stream[:20], stream[20:]],
    }[chunking]
    framer = SSEFramer(max_event_bytes=32)
    with pytest.raises(FramingError, match="max_event_bytes=32"):
        for chunk in chunks:
            framer.feed(chunk)


def test_event_at_the_size_limit_passes_and_blank_lines_do_not_count():
    """The cap is on one event's raw bytes; blank lines between events are not buffered."""
    stream = b"data: " + b"x" * 10 + b"\n\n"
    assert run([stream], max_event_bytes=len(stream)) == ([(None, b"x" * 10, stream, None)], False)
    assert run([b"\n" * 1000, stream, b"\r\n" * 1000], max_event_bytes=len(stream))[0][0][1] == b"x" * 10
    with pytest.raises(FramingError):
        SSEFramer(max_event_bytes=len(stream) - 1).feed(stream)
    with pytest.raises(FramingError):  # a comment-only block is buffered too
        SSEFramer(max_event_bytes=8).feed(b": " + b"c" * 10)


def test_one_mebibyte_event_fed_one_byte_at_a_time_is_linear():
    """The pending search resumes where it stopped, so this is O(n), not O(n**2)."""
    payload = b"x" * (1 << 20)
    stream = b"data: " + payload + b"\r\n\r\n"
    framer = SSEFramer()
    events = [ev for i in range(len(stream)) for ev in framer.feed(stream[i : i + 1])]
    assert [ev.data for ev in events] == [payload]
    assert bytes(events[0].raw) == stream


# -- zero copy ----------------------------------------------------------------------------------


def test_events_inside_one_chunk_are_memoryview_slices_of_it():
    """raw of an event wholly inside one fed chunk is a slice of that chunk, not a copy."""
    chunk = b"data: a\n\nevent: b\ndata: c\n\ndata: d"
    framer = SSEFramer()
    events = framer.feed(chunk)
    assert [bytes(ev.raw) for ev in events] == [b"data: a\n\n", b"event: b\ndata: c\n\n"]
    assert all(isinstance(ev.raw, memoryview) and ev.raw.obj is chunk for ev in events)
    later = b"\n\ndata: e\n\n"
    first, second = framer.feed(later)
    assert first.raw == b"data: d\n\n"  # spans two feeds: joined bytes
    assert isinstance(second.raw, memoryview) and second.raw.obj is later


def test_any_buffer_can_be_fed_and_data_is_always_bytes():
    """bytearray and memoryview chunks work, strided and non-byte views included."""
    strided = memoryview(b"ddaattaa::  xx\n\n\n\n")[::2]
    wide = memoryview(b"data: x\n\n\n").cast("H")  # a trailing blank line makes the length even
    for chunk in (bytearray(b"data: x\n\n"), memoryview(b"data: x\n\n"), strided, wide):
        [ev] = SSEFramer().feed(chunk)
        assert (type(ev.data), ev.data, bytes(ev.raw)) == (bytes, b"x", b"data: x\n\n")


# -- recorded streams ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fixture_frames_the_same_at_every_split_and_raws_tile_the_file(path):
    """Fixtures hold no comment-only blocks, so the raws concatenate to the file exactly."""
    stream = path.read_bytes()
    events = check_framing(stream)
    assert b"".join(raw for _, _, raw, _ in events) == stream
    assert events


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fixture_follows_its_protocol(path):
    """The wire shapes of protocols.md 2.3, 3.3 and 4.3, so other tests can trust the fixtures."""
    stream = path.read_bytes()
    events, _ = run([stream])
    protocol = path.parent.name
    if protocol == "openai" and path.name.startswith("responses_"):
        protocol = "openai_responses"
    for event, data, raw, _ in events:
        if data == b"[DONE]":
            continue
        body = json.loads(data)
        if protocol in ("anthropic", "openai_responses"):
            assert event == body["type"]
            assert raw.endswith(b"\n\n") and b"\r" not in raw
        elif protocol == "gemini":
            assert event is None
            assert raw.startswith(b"data: ") and raw.endswith(b"}\r\n\r\n")
        else:
            assert event is None
            assert raw.startswith(b"data: {") and raw.endswith(b"}\n\n")
    if protocol == "openai_responses":  # numbered from 0, ending in response.completed, no [DONE]
        assert [json.loads(e[1])["sequence_number"] for e in events] == list(range(len(events)))
        assert json.loads(events[-1][1])["type"] == "response.completed"
    if protocol == "openai" and path.name != "error.sse":
        assert events[-1][1] == b"[DONE]"
        assert json.loads(events[-2][1])["choices"] == []  # the usage chunk


# -- properties ---------------------------------------------------------------------------------

SSEISH = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"data:", b"event:", b"id:", b":", b" ", b"x", b"\0", b"\xff"]),
    max_size=60,
).map(b"".join)


@st.composite
def cut(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    points = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


@st.composite
def mutated_fixture(draw: st.DrawFn) -> bytes:
    stream = bytearray(draw(st.sampled_from([p.read_bytes() for p in FIXTURES])))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(stream)))
        insert = draw(st.sampled_from([b"", b"\r", b"\n", b"\r\n", b":", b": ping\n\n", b"data:", b"\xf0\x9f"]))
        stream[at : at + draw(st.integers(0, 3))] = insert
    return bytes(stream)


def outcome(chunks: list[bytes], max_event_bytes: int) -> tuple[list[Key], bool] | str:
    """The events, or the fact that FramingError was raised; any other exception escapes."""
    try:
        return run(chunks, max_event_bytes=max_event_bytes)
    except FramingError:
        return "FramingError"


@given(st.one_of(st.binary(), SSEISH).flatmap(lambda s: st.tuples(st.just(s), cut(s))), st.integers(1, 64))
def test_framer_only_ever_raises_framing_error(stream_and_chunks, max_event_bytes):
    # Invariant: on any bytes, in any chunking, the framer raises nothing but FramingError, and
    # it raises (or not) regardless of the chunking.
    stream, chunks = stream_and_chunks
    assert outcome(chunks, max_event_bytes) == outcome([stream], max_event_bytes)


@given(
    st.one_of(st.sampled_from([p.read_bytes() for p in FIXTURES]), mutated_fixture()).flatmap(
        lambda s: st.tuples(st.just(s), cut(s))
    )
)
def test_rechunking_never_changes_the_events(stream_and_chunks):
    # Invariant: a recorded stream (or a mutated one) cut at random points frames to exactly
    # the events, raws included, that feeding it whole gives.
    stream, chunks = stream_and_chunks
    assert run(chunks) == run([stream])


def naive_frames(stream: bytes) -> list[Key]:
    """The same rules as a plain line loop over the whole stream: slow, obvious, a reference."""
    events: list[Key] = []
    start, event, id_ = -1, None, None
    data: list[bytes] = []
    for m in re.finditer(rb"([^\r\n]*)(?:\r\n|\r|\n)", stream):
        line = m[1]
        if not line:  # a blank line ends the block, if one is open
            if start >= 0 and (data or event is not None):
                events.append((event, b"\n".join(data), stream[start : m.end()], id_))
            start, event, data, id_ = -1, None, [], None
            continue
        start = m.start() if start < 0 else start
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            id_ = value.decode("utf-8", "replace")
    if start >= 0 and stream.endswith((b"\r", b"\n")) and (data or event is not None):
        events.append((event, b"\n".join(data), stream[start:], id_))  # close(): all lines ended
    return events


@given(st.one_of(st.binary(), SSEISH, mutated_fixture()))
def test_framer_agrees_with_a_naive_line_loop(stream):
    # Invariant: the fast framer gives exactly the events (raws included) of the obvious one.
    assert run([stream])[0] == naive_frames(stream)


# -- encoder ------------------------------------------------------------------------------------


def test_encode_event_wire_format():
    assert encode_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_event(b'{"type":"ping"}', "ping") == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert encode_event(b"a\nb\r\nc\rd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"
    assert encode_event(b"") == b"data: \n\n"
    with pytest.raises(ValueError, match="one line"):
        encode_event(b"x", "bad\nname")


@given(st.binary(), st.none() | st.text().filter(lambda s: "\r" not in s and "\n" not in s))
def test_encode_event_round_trips_through_the_framer(data, event):
    # Invariant: framing an encoded event gives back its name and data (line breaks become LF).
    encoded = encode_event(data, event)
    assert run([encoded]) == ([(event, re.sub(rb"\r\n|\r|\n", b"\n", data), encoded, None)], False)


def test_encoded_stream_frames_back():
    stream = b"".join(encode_event(f'{{"n":{i}}}'.encode(), "x" if i % 2 else None) for i in range(5))
    assert fields(stream) == [("x" if i % 2 else None, f'{{"n":{i}}}'.encode()) for i in range(5)]
