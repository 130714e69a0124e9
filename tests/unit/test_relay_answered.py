"""Where the answer is complete, per codec: each upstream fixture fed through a passthrough tap and
through translation to every client protocol. Up to the event before the answer-completing one the
relay is not ``answered``; with that event it is, and its bytes hold the client's own
answer-completing event; the framing after it (``[DONE]``, ``message_stop``; Gemini has none) is
what turns ``done``."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayproxy import ir
from relayproxy.codecs.registry import CODECS
from relayproxy.relay import Passthrough, Relay, Translate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
#: Per upstream protocol: the fixture, and a marker inside its answer-completing event.
UPSTREAMS = {
    "openai": ("openai/text.sse", b'"choices":[],"usage"'),
    "anthropic": ("anthropic/text.sse", b"event: message_delta"),
    "gemini": ("gemini/text.sse", b'data: {"candidates": [{"content": {"parts": [{"text": " How'),
}
#: What each client protocol's answer-completing event looks like on the wire.
CLIENT_ANSWER = {
    "openai": b'"usage":{"prompt_tokens"',
    "anthropic": b"event: message_delta",
    "gemini": b'"finishReason"',
    "openai_responses": b"event: response.completed",
}
HAS_FRAMING = {"openai": True, "anthropic": True, "gemini": False}


def _answer_event(up: str, data: bytes) -> tuple[int, int]:
    """Where the answer-completing event starts and ends in ``data``."""
    sep = b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n"
    at = data.index(UPSTREAMS[up][1])
    return data.rindex(sep, 0, at) + len(sep), data.index(sep, at) + len(sep)


def _relay(client: str, up: str) -> Relay:
    req = ir.ChatRequest("m", [], stream=True, include_usage=True)
    if client == up:
        return Passthrough(CODECS[up].stream_tap(req))
    return Translate(CODECS[up].stream_decoder(), CODECS[client].stream_encoder(req, "m"))


@pytest.mark.parametrize("client", ["openai", "anthropic", "gemini", "openai_responses"])
@pytest.mark.parametrize("up", ["openai", "anthropic", "gemini"])
def test_answered_at_the_answer_completing_event_and_done_at_the_framing(client: str, up: str) -> None:
    data = (FIXTURES / UPSTREAMS[up][0]).read_bytes()
    start, end = _answer_event(up, data)
    relay = _relay(client, up)
    before = relay.feed(data[:start])
    assert not relay.answered and not relay.done
    assert CLIENT_ANSWER[client] not in before
    answer = relay.feed(data[start:end])
    assert relay.answered and CLIENT_ANSWER[client] in answer
    assert relay.usage is not None and relay.usage.output_tokens > 0
    assert relay.done is not HAS_FRAMING[up]  # the framing is still owed, where the protocol has one
    relay.feed(data[end:])
    if HAS_FRAMING[up]:
        assert relay.done
    relay.close()
    assert relay.done and relay.failed is None


@pytest.mark.parametrize("up", ["openai", "anthropic"])
def test_a_clean_end_after_the_answer_without_framing_is_done_and_the_client_gets_the_terminator(up: str) -> None:
    data = (FIXTURES / UPSTREAMS[up][0]).read_bytes()
    _, end = _answer_event(up, data)
    relay = _relay(up, up)
    relay.feed(data[:end])
    tail = relay.close()
    assert relay.done
    assert tail.startswith({"openai": b"data: [DONE]\n\n", "anthropic": b"event: message_stop\n"}[up])
