"""Passthrough relay: the client gets the upstream's own bytes; usage is tapped on the way."""

from __future__ import annotations

from pathlib import Path

from relayproxy.codecs.openai_chat import StreamTap
from relayproxy.ir import Usage
from relayproxy.relay import Passthrough

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "openai" / "text.sse"


def run(data: bytes, cut: int, wants_usage: bool) -> tuple[bytes, StreamTap, list[bytes]]:
    tap = StreamTap(client_wants_usage=wants_usage)
    relay = Passthrough(tap)
    chunks = [data[i : i + cut] for i in range(0, len(data), cut)]
    out = [relay.feed(chunk) for chunk in chunks]
    out.append(relay.close())
    return b"".join(out), tap, out


def test_aligned_chunks_are_returned_as_the_same_objects() -> None:
    data = FIXTURE.read_bytes()
    events = [e + b"\n\n" for e in data.split(b"\n\n") if e]
    tap = StreamTap(client_wants_usage=True)
    relay = Passthrough(tap)
    for event in events:
        assert relay.feed(event) is event
    assert tap.done and tap.usage == Usage(19, 0, 11, 0)


def test_every_cut_gives_the_upstream_bytes_when_usage_was_asked() -> None:
    data = FIXTURE.read_bytes()
    for cut in (1, 2, 7, 64, len(data)):
        got, tap, _ = run(data, cut, wants_usage=True)
        assert got == data
        assert tap.done and tap.usage == Usage(19, 0, 11, 0)


def test_unrequested_usage_chunk_is_removed_and_nothing_else() -> None:
    data = FIXTURE.read_bytes()
    events = [e + b"\n\n" for e in data.split(b"\n\n") if e]
    want = b"".join(e for e in events if b'"choices":[]' not in e)
    for cut in (1, 7, len(data)):
        got, tap, _ = run(data, cut, wants_usage=False)
        assert got == want
        assert tap.usage == Usage(19, 0, 11, 0)


def test_truncated_stream_is_detected() -> None:
    data = FIXTURE.read_bytes()
    tap = StreamTap(client_wants_usage=True)
    relay = Passthrough(tap)
    relay.feed(data[:500])
    relay.close()
    assert relay.truncated and not tap.done
