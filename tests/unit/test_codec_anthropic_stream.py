"""Anthropic streams: the upstream decoder on recorded streams (whole and cut at every byte), the
client encoder on IR sequences in each upstream protocol's order, read back by the official
``anthropic`` SDK (raw iteration and the ``messages.stream()`` helper), and the passthrough tap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayproxy import ir
from relayproxy.codecs import anthropic_messages as am
from relayproxy.codecs.anthropic_messages._vocab import unfold_call_id
from relayproxy.errors import RateLimited, UpstreamStatusError, UpstreamTimeout
from relayproxy.relay import Passthrough, Translate
from relayproxy.sse import SSEEvent, SSEFramer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"
MODEL = "claude-sonnet-4-5-20250929"
REQ = ir.ChatRequest("client-model", [ir.Message("user", [ir.Text("hi")])], stream=True)
THINKING_REQ = ir.ChatRequest(
    "client-model", REQ.messages, stream=True, reasoning=ir.Reasoning(budget_tokens=2048, include_thoughts=True)
)


def frame(data: bytes, cut: int | None = None) -> list[SSEEvent]:
    framer = SSEFramer()
    pieces = [data] if cut is None else [data[i : i + cut] for i in range(0, len(data), cut)]
    return [ev for piece in pieces for ev in framer.feed(piece)] + framer.close()


def decode(data: bytes, cut: int | None = None) -> list[ir.StreamEvent]:
    decoder = am.stream_decoder()
    events = [out for ev in frame(data, cut) for out in decoder.feed(ev)]
    return events + decoder.close()


def sse(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


# -- decoder -------------------------------------------------------------------------------------

GOLDEN: dict[str, list[ir.StreamEvent]] = {
    "text.sse": [
        ir.MessageStart("msg_01XFDUDYJgAACzvnptvVoYEL", MODEL, ir.Usage(21, 0)),
        ir.UsageUpdate(ir.Usage(21, 0, 1)),
        ir.TextDelta("Hello! 👋"),
        ir.TextDelta(" How can I help"),
        ir.TextDelta(" you today?"),
        ir.UsageUpdate(ir.Usage(21, 0, 14)),
        ir.MessageStop(ir.FinishReason.STOP),
    ],
    "tools.sse": [
        ir.MessageStart("msg_01Hq8Zp3cVbN6sK2wYtR5mJx", MODEL, ir.Usage(668, 256)),
        ir.UsageUpdate(ir.Usage(668, 256, 1)),
        ir.TextDelta("I'll check the weather"),
        ir.TextDelta(" in Paris and Tōkyō 🌦️"),
        ir.ToolCallStart(0, "toolu_01A09q90qw90lq917835lq9", "get_weather"),
        ir.ToolCallDelta(0, '{"city": "Pa'),
        ir.ToolCallDelta(0, 'ris", "unit": '),
        ir.ToolCallDelta(0, '"celsius"}'),
        ir.ToolCallStart(1, "toolu_01KbW7nRzXc4Ty8sDfGh2jLm", "get_weather"),
        ir.ToolCallDelta(1, '{"city": "Tōk'),
        ir.ToolCallDelta(1, 'yō", "un'),
        ir.ToolCallDelta(1, 'it": "celsius"}'),
        ir.UsageUpdate(ir.Usage(668, 256, 96)),
        ir.MessageStop(ir.FinishReason.TOOL_CALLS),
    ],
    "thinking_tools.sse": [
        ir.MessageStart("msg_01Wq7ThinkTo0lsZx4Rb", MODEL, ir.Usage(2468, 2048)),
        ir.UsageUpdate(ir.Usage(2468, 2048, 2)),
        ir.ThinkingDelta("The user wants the weather"),
        ir.ThinkingDelta(" in Zürich; I should call the tool."),
        ir.ThinkingSignature("EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxSmMkcLhBq7Jg=="),
        ir.TextDelta("Let me check the weather."),
        ir.ToolCallStart(0, "toolu_01Zr8Qm4ThinkWx7Ab", "get_weather"),
        ir.ToolCallDelta(0, '{"city": "Zür'),
        ir.ToolCallDelta(0, 'ich"}'),
        ir.UsageUpdate(ir.Usage(2468, 2048, 187, 120)),  # input numbers kept from message_start
        ir.MessageStop(ir.FinishReason.TOOL_CALLS),
    ],
    "error.sse": [
        ir.MessageStart("msg_01Tr4Ue7Wq1Yx3Zb6Nc9Md2Lf", MODEL, ir.Usage(21, 0)),
        ir.UsageUpdate(ir.Usage(21, 0, 1)),
        ir.TextDelta("Hello"),
        ir.StreamFailed(503, "Overloaded", "overloaded_error"),
    ],
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_decoder_golden_whole_and_cut_at_every_byte(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    assert decode(data) == GOLDEN[name]
    assert decode(data, 1) == GOLDEN[name]
    assert decode(data, 7) == GOLDEN[name]
    junk = b'event: content_block_delta\ndata: {"type":"content_block_delta","ind'
    assert decode(data + junk) == GOLDEN[name]  # an unfinished trailing event adds nothing


def test_decoder_cut_stream_has_no_message_stop() -> None:
    data = (FIXTURES / "text.sse").read_bytes()
    events = decode(data[: data.index(b"event: message_delta")])
    assert not any(isinstance(e, ir.MessageStop) for e in events)


def test_decoder_answer_ends_at_message_delta_and_message_stop_is_framing() -> None:
    data = (FIXTURES / "text.sse").read_bytes()
    decoder = am.stream_decoder()
    framer = SSEFramer()
    events = [e for ev in framer.feed(data[: data.index(b"event: message_stop")]) for e in decoder.feed(ev)]
    assert events[-2:] == [ir.UsageUpdate(ir.Usage(21, 0, 14, 0)), ir.MessageStop(ir.FinishReason.STOP)]
    assert not decoder.done  # the answer is whole; its framing is still owed
    assert [e for ev in framer.feed(data[data.index(b"event: message_stop") :]) for e in decoder.feed(ev)] == []
    assert decoder.done


def test_decoder_malformed_json_fails_the_stream_once() -> None:
    start = sse("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "m", "usage": {}}})
    events = decode(start + b"event: content_block_delta\ndata: {nope\n\n" + (FIXTURES / "text.sse").read_bytes())
    assert events[0] == ir.MessageStart("msg_1", "m", ir.Usage())
    assert isinstance(events[-1], ir.StreamFailed) and events[-1].status == 502
    assert len(events) == 3  # nothing after the failure


def test_decoder_synthesizes_message_start_and_ignores_noise() -> None:
    data = (
        b'event: ping\ndata: {"type": "ping"}\n\n'
        + sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}},
        )
        + b'data: {"type":"future_thing","x":1}\n\n'
        + b": comment\n\n"
        + sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta"}})
        + b"data: [DONE]\n\n"
    )
    events = decode(data)
    assert isinstance(events[0], ir.MessageStart) and events[0].id.startswith("msg_")
    assert events[1:] == [ir.TextDelta("a")]


def test_decoder_stop_sequence_and_whole_input_in_block_start() -> None:
    data = (
        sse("message_start", {"type": "message_start", "message": {"id": "msg_2", "model": "m"}})
        + sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "name": "f", "input": {"a": 1}},
            },
        )
        + sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}},
        )
        + sse(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"}},
        )
        + sse("message_stop", {"type": "message_stop"})
    )
    events = decode(data)
    # No usage in message_start: no UsageUpdate (an unknown usage must never look like a zero count).
    assert events[:1] == [ir.MessageStart("msg_2", "m")]
    assert not any(isinstance(e, ir.UsageUpdate) for e in events)
    start = events[1]
    assert isinstance(start, ir.ToolCallStart) and start.id.startswith("toolu_") and start.name == "f"
    assert events[2:] == [ir.ToolCallDelta(0, '{"a":1}'), ir.MessageStop(ir.FinishReason.STOP, "END")]


@pytest.mark.parametrize(
    ("etype", "status"),
    [
        ("overloaded_error", 503),
        ("rate_limit_error", 429),
        ("invalid_request_error", 400),
        ("api_error", 500),
        ("timeout_error", 504),
        ("authentication_error", 401),
        ("mystery_error", 500),
        (None, 500),
    ],
)
def test_decoder_error_event_statuses(etype: str | None, status: int) -> None:
    data = sse("error", {"type": "error", "error": {"type": etype, "message": "m"}})
    assert decode(data)[1:] == [ir.StreamFailed(status, "m", etype)]


# -- encoder, read back by the SDK ---------------------------------------------------------------


def encode(events: list[ir.StreamEvent], req: ir.ChatRequest = THINKING_REQ) -> bytes:
    encoder = am.stream_encoder(req, "client-model")
    data = b"".join(encoder.encode(ev) for ev in events)
    return data + encoder.finish()


def check_wire(data: bytes, *, late_deltas: bool = False) -> list[dict[str, Any]]:
    """Structure the SDK helper depends on: named events, message_start first, one open block at a
    time, block indices 0-based and contiguous, message_delta with usage. ``late_deltas`` allows a
    delta for an already stopped block (an upstream that went back to a call it had left)."""
    payloads, open_block, next_index = [], None, 0
    for ev in frame(data):
        payload = orjson.loads(ev.data)
        assert ev.event == payload["type"]
        kind = payload["type"]
        if kind == "content_block_start":
            assert open_block is None and payload["index"] == next_index
            open_block, next_index = next_index, next_index + 1
        elif kind == "content_block_delta" and late_deltas:
            assert payload["index"] < next_index
        elif kind in ("content_block_delta", "content_block_stop"):
            assert payload["index"] == open_block
            open_block = None if kind == "content_block_stop" else open_block
        elif kind == "message_delta":
            assert open_block is None and "usage" in payload
        payloads.append(payload)
    assert payloads[0]["type"] == "message_start"
    return payloads


def sdk_client(data: bytes) -> anthropic.Anthropic:
    transport = httpx2.MockTransport(
        lambda request: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=data)
    )
    return anthropic.Anthropic(
        api_key="k", base_url="http://gw.test", http_client=httpx2.Client(transport=transport), max_retries=0
    )


ASK: dict[str, Any] = {"model": "client-model", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def sdk_read(data: bytes) -> tuple[str, Any, list[str]]:
    """(text_stream joined, final message) from the helper, and the raw iterator's event types."""
    client = sdk_client(data)
    raw_types = [event.type for event in client.messages.create(**ASK, stream=True)]
    with client.messages.stream(**ASK) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    return text, final, raw_types


OPENAI_ORDER: list[ir.StreamEvent] = [
    ir.MessageStart("chatcmpl-Wx1", "gpt-4o-mini"),
    ir.TextDelta("I'll check"),
    ir.TextDelta(" both cities."),
    ir.ToolCallStart(0, "call_Wx1p", "get_weather"),
    ir.ToolCallDelta(0, '{"city": "Pa'),
    ir.ToolCallDelta(0, 'ris", "unit": "celsius"}'),
    ir.ToolCallStart(1, "call_Bq8R", "get_weather"),
    ir.ToolCallDelta(1, '{"city": "Tōkyō",'),
    ir.ToolCallDelta(1, ' "unit": "celsius"}'),
    ir.UsageUpdate(ir.Usage(88, 64, 61, 0)),
    ir.MessageStop(ir.FinishReason.TOOL_CALLS),
]
GEMINI_ORDER: list[ir.StreamEvent] = [
    ir.MessageStart("pX7y", "gemini-2.5-flash", ir.Usage(71, 0)),
    ir.UsageUpdate(ir.Usage(71, 0, 0, 0)),
    ir.ThinkingDelta("Two cities, two calls."),
    ir.TextDelta("I'll check both cities."),
    ir.UsageUpdate(ir.Usage(71, 0, 10, 5)),
    ir.ToolCallStart(0, "call_g0", "get_weather", signature="CiIB+/sig=="),
    ir.ToolCallDelta(0, '{"city":"Paris","unit":"celsius"}'),
    ir.ToolCallStart(1, "call_g1", "get_weather"),
    ir.ToolCallDelta(1, '{"city":"Tōkyō","unit":"celsius"}'),
    ir.UsageUpdate(ir.Usage(71, 0, 95, 55)),
    ir.MessageStop(ir.FinishReason.TOOL_CALLS),
]
PARIS, TOKYO = {"city": "Paris", "unit": "celsius"}, {"city": "Tōkyō", "unit": "celsius"}


def test_encoder_openai_order() -> None:
    data = encode(OPENAI_ORDER)
    payloads = check_wire(data)
    assert payloads[0]["message"]["model"] == "client-model"
    assert payloads[0]["message"]["id"] == "msg_chatcmpl-Wx1"
    text, final, raw_types = sdk_read(data)
    assert text == "I'll check both cities."
    assert raw_types[0] == "message_start" and raw_types[-2:] == ["message_delta", "message_stop"]
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert [(b.id, b.name, b.input) for b in final.content[1:]] == [
        ("call_Wx1p", "get_weather", PARIS),
        ("call_Bq8R", "get_weather", TOKYO),
    ]
    assert final.stop_reason == "tool_use"
    usage = final.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (24, 64, 61)


def test_encoder_anthropic_order_from_the_thinking_fixture() -> None:
    """Anthropic upstream (as a translating relay would see it): thinking + signature, text, tool."""
    data = encode(GOLDEN["thinking_tools.sse"])
    check_wire(data)
    text, final, _ = sdk_read(data)
    assert text == "Let me check the weather."
    thinking, answer, tool = final.content
    assert (thinking.type, thinking.thinking) == (
        "thinking",
        "The user wants the weather in Zürich; I should call the tool.",
    )
    assert thinking.signature == "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxSmMkcLhBq7Jg=="
    assert (answer.type, tool.type, tool.id, tool.input) == (
        "text",
        "tool_use",
        "toolu_01Zr8Qm4ThinkWx7Ab",
        {"city": "Zürich"},
    )
    usage = final.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (420, 2048, 187)
    assert final.stop_reason == "tool_use"


def test_encoder_gemini_order_complete_calls_and_signatures() -> None:
    data = encode(GEMINI_ORDER)
    check_wire(data)
    text, final, _ = sdk_read(data)
    assert text == "I'll check both cities."
    thinking, _, first, second = final.content
    assert (thinking.type, thinking.thinking, thinking.signature) == ("thinking", "Two cities, two calls.", "")
    assert (first.input, second.input) == (PARIS, TOKYO)
    assert unfold_call_id(first.id) == ("call_g0", "CiIB+/sig==")  # comes back on the next request
    assert second.id == "call_g1"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (71, 95)


def test_encoder_buffers_interleaved_tool_calls() -> None:
    """A call whose JSON is incomplete keeps its block; a call started meanwhile waits its turn."""
    events: list[ir.StreamEvent] = [
        ir.MessageStart("x", "m"),
        ir.ToolCallStart(0, "call_a", "f"),
        ir.ToolCallDelta(0, '{"a": '),
        ir.ToolCallStart(1, "call_b", "g"),
        ir.ToolCallDelta(1, '{"b": '),
        ir.ToolCallDelta(0, "1}"),
        ir.ToolCallDelta(1, "2}"),
        ir.ToolCallStart(2, "call_c", "h"),
        ir.ToolCallStart(3, "call_d", "k"),
        ir.ToolCallDelta(3, '{"d": 4}'),
        ir.MessageStop(ir.FinishReason.TOOL_CALLS),
    ]
    data = encode(events)
    check_wire(data)
    _, final, _ = sdk_read(data)
    assert [(b.id, b.name, b.input) for b in final.content] == [
        ("call_a", "f", {"a": 1}),
        ("call_b", "g", {"b": 2}),
        ("call_c", "h", {}),
        ("call_d", "k", {"d": 4}),
    ]


def test_encoder_block_switching_stop_sequence_and_late_usage() -> None:
    events: list[ir.StreamEvent] = [
        ir.TextDelta("a"),  # no MessageStart: one is synthesized
        ir.ThinkingDelta("t1"),
        ir.ThinkingSignature("s1"),
        ir.ThinkingDelta("t2"),
        ir.TextDelta(""),
        ir.TextDelta("b"),
        ir.MessageStop(ir.FinishReason.STOP, "END"),
        ir.TextDelta("after the end"),
    ]
    data = encode(events)
    payloads = check_wire(data)
    starts = [p["content_block"]["type"] for p in payloads if p["type"] == "content_block_start"]
    assert starts == ["text", "thinking", "thinking", "text"]
    delta = next(p for p in payloads if p["type"] == "message_delta")
    assert delta == {
        "type": "message_delta",
        "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
        "usage": {"input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0},
    }
    _, final, _ = sdk_read(data)
    assert [getattr(b, "text", None) or getattr(b, "thinking", None) for b in final.content] == ["a", "t1", "t2", "b"]
    assert final.content[1].signature == "s1" and final.content[2].signature == ""
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")


ARGS = st.dictionaries(
    st.text(max_size=4), st.integers(-(2**53), 2**53) | st.text(max_size=6) | st.booleans(), max_size=3
)


@st.composite
def mixed_streams(draw: st.DrawFn) -> tuple[list[ir.StreamEvent], list[str], list[dict[str, Any]]]:
    """Text pieces and up to 3 tool calls (arguments cut into fragments) in any interleaving that
    keeps each call's own order: (IR events, text pieces, call arguments in start order)."""
    texts = draw(st.lists(st.text(min_size=1, max_size=5), max_size=4))
    calls = draw(st.lists(ARGS, max_size=3))
    lanes: list[list[ir.StreamEvent]] = [[ir.TextDelta(t)] for t in texts]
    for i, args in enumerate(calls):
        raw = orjson.dumps(args).decode()
        cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=3)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        lanes.append([ir.ToolCallStart(i, f"call_{i}", f"f{i}"), *(ir.ToolCallDelta(i, p) for p in pieces)])
    events: list[ir.StreamEvent] = [ir.MessageStart("x", "m")]
    starts: list[int] = []
    text_order: list[str] = []
    while lanes := [lane for lane in lanes if lane]:
        ev = draw(st.sampled_from(lanes)).pop(0)
        if isinstance(ev, ir.ToolCallStart):
            starts.append(ev.index)
        elif isinstance(ev, ir.TextDelta):
            text_order.append(ev.text)
        events.append(ev)
    events += [ir.UsageUpdate(ir.Usage(10, 2, 5)), ir.MessageStop(ir.FinishReason.TOOL_CALLS)]
    return events, text_order, [calls[i] for i in starts]


@settings(max_examples=60, deadline=None)
@given(mixed_streams())
def test_encoder_any_interleaving_reaches_the_sdk_intact(case: Any) -> None:
    """Invariant: whatever the order, the SDK sees all the text and every call's parsed arguments,
    calls in the order they started, and the usage."""
    events, texts, calls = case
    data = encode(events)
    check_wire(data, late_deltas=True)
    text, final, _ = sdk_read(data)
    assert text == "".join(texts)
    assert [b.input for b in final.content if b.type == "tool_use"] == calls
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (8, 2, 5)


def test_encoder_drops_thinking_the_client_did_not_ask_for() -> None:
    data = encode(GEMINI_ORDER, REQ)
    check_wire(data)
    _, final, _ = sdk_read(data)
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        (ir.FinishReason.STOP, "end_turn"),
        (ir.FinishReason.LENGTH, "max_tokens"),
        (ir.FinishReason.CONTENT_FILTER, "refusal"),
    ],
)
def test_encoder_finish_reasons(finish: ir.FinishReason, reason: str) -> None:
    data = encode([ir.MessageStart("x", "m"), ir.TextDelta("hi"), ir.MessageStop(finish)])
    _, final, _ = sdk_read(data)
    assert (final.stop_reason, final.stop_sequence) == (reason, None)


def test_pings_are_ignored_by_the_sdk() -> None:
    encoder = am.stream_encoder(REQ, "client-model")
    ping = encoder.ping()
    assert ping == b'event: ping\ndata: {"type": "ping"}\n\n'
    data = ping + b"".join(encoder.encode(ev) + ping for ev in OPENAI_ORDER[:3] + OPENAI_ORDER[-2:])
    text, final, raw_types = sdk_read(data)
    assert text == "I'll check both cities." and "ping" not in raw_types
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("err", "etype"),
    [
        (UpstreamStatusError(529, "Overloaded", upstream_type="overloaded_error"), "overloaded_error"),
        (UpstreamStatusError(504, "slow", upstream_type="timeout_error"), "timeout_error"),
        (UpstreamStatusError(500, "boom", upstream_type="server_error"), "api_error"),
        (RateLimited("slow down"), "rate_limit_error"),
        (UpstreamTimeout("upstream went quiet"), "timeout_error"),
    ],
)
def test_error_mid_stream_raises_api_status_error_200(err: Any, etype: str) -> None:
    encoder = am.stream_encoder(REQ, "client-model")
    data = b"".join(encoder.encode(ev) for ev in OPENAI_ORDER[:3]) + encoder.error(err)
    assert encoder.encode(ir.TextDelta("more")) == b""  # nothing may follow the error
    client = sdk_client(data)
    seen = []
    with pytest.raises(anthropic.APIStatusError) as info, client.messages.stream(**ASK) as stream:
        seen.extend(stream.text_stream)
    assert "".join(seen) == "I'll check both cities."
    assert info.value.status_code == 200 and info.value.type == etype
    assert info.value.body == {"type": "error", "error": {"type": etype, "message": err.message}}


def test_translate_relay_carries_an_anthropic_error_to_an_anthropic_client() -> None:
    """Decoder + relay + encoder: the recorded error stream raises the SDK's error, partial text first."""
    relay = Translate(am.stream_decoder(), am.stream_encoder(REQ, "client-model"))
    data = (FIXTURES / "error.sse").read_bytes()
    out = b"".join(relay.feed(data[i : i + 5]) for i in range(0, len(data), 5)) + relay.close()
    with pytest.raises(anthropic.APIStatusError) as info:
        list(sdk_client(out).messages.create(**ASK, stream=True))
    assert info.value.type == "overloaded_error" and info.value.status_code == 200
    assert relay.failed == ir.StreamFailed(503, "Overloaded", "overloaded_error")


def test_stream_failed_event_is_rendered_as_an_error_event() -> None:
    data = encode([ir.MessageStart("x", "m"), ir.StreamFailed(429, "slow", "rate_limit_error")])
    assert data.endswith(
        b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error","message":"slow"}}\n\n'
    )
    data = encode([ir.MessageStart("x", "m"), ir.StreamFailed(503, "busy", "UNAVAILABLE")])
    assert b'"type":"overloaded_error"' in data


# -- passthrough tap -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "usage", "done", "error"),
    [
        ("text.sse", ir.Usage(21, 0, 14), True, None),
        ("tools.sse", ir.Usage(668, 256, 96), True, None),
        ("thinking_tools.sse", ir.Usage(2468, 2048, 187, 120), True, None),
        ("error.sse", ir.Usage(21, 0, 1), False, {"type": "overloaded_error", "message": "Overloaded"}),
    ],
)
def test_tap(name: str, usage: ir.Usage, done: bool, error: Any) -> None:
    tap = am.stream_tap(REQ)
    events = frame((FIXTURES / name).read_bytes(), 3)
    assert all(tap.feed(ev) for ev in events)
    assert (tap.usage, tap.done, tap.error) == (usage, done, error)


def test_tap_ignores_garbage() -> None:
    tap = am.stream_tap(REQ)
    for data in (b"{nope", b"[1]", b'{"type":"error","error":"text"}'):
        assert tap.feed(SSEEvent(None, data, data))
    assert tap.error == {"type": "api_error", "message": "text"} and tap.usage is None and not tap.done


def without_usage(data: bytes) -> bytes:
    """The stream as an upstream that reports no usage sends it."""
    out = []
    for ev in frame(data):
        payload = orjson.loads(ev.data)
        payload.pop("usage", None)
        if isinstance(payload.get("message"), dict):
            payload["message"].pop("usage", None)
        out.append(b"event: " + (ev.event or "").encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n")
    return b"".join(out)


@pytest.mark.parametrize("step", [1, 5, 1 << 20])
def test_passthrough_gives_the_helper_the_usage_it_needs(step: int) -> None:
    """Without usage in message_start and message_delta, the helper raises AttributeError on the
    upstream's bytes; through the tap it reads the whole message, with zero usage."""
    body = without_usage((FIXTURES / "text.sse").read_bytes())
    with pytest.raises(AttributeError):
        sdk_read(body)
    relay = Passthrough(am.stream_tap(REQ))
    out = b"".join(bytes(relay.feed(body[i : i + step])) for i in range(0, len(body), step)) + relay.close()
    text, final, raw_types = sdk_read(out)
    assert text == sdk_read((FIXTURES / "text.sse").read_bytes())[0]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (0, 0)
    assert raw_types[0] == "message_start" and raw_types[-1] == "message_stop"
    assert relay.usage is None  # unknown to the ledger: the request is not billed


@pytest.mark.parametrize("name", ["text.sse", "tools.sse", "thinking_tools.sse", "error.sse"])
def test_passthrough_leaves_streams_with_usage_byte_for_byte(name: str) -> None:
    body = (FIXTURES / name).read_bytes()
    for step in (1, len(body)):
        relay = Passthrough(am.stream_tap(REQ))
        out = b"".join(bytes(relay.feed(body[i : i + step])) for i in range(0, len(body), step))
        assert out + relay.close() == body
