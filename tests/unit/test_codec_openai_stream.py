"""openai_chat streams: the decoder on golden and quirky upstream streams, the encoder read back by
the real openai SDK (raw iteration and the ``.stream()`` helper), and the passthrough tap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayproxy import ir
from relayproxy.codecs import openai_chat
from relayproxy.errors import UpstreamStatusError, UpstreamTimeout
from relayproxy.ir import (
    FinishReason,
    MessageStart,
    MessageStop,
    StreamFailed,
    TextDelta,
    ThinkingDelta,
    ThinkingSignature,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageUpdate,
)
from relayproxy.relay import Passthrough
from relayproxy.sse import SSEEvent, SSEFramer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "openai"
MESSAGES: Any = [{"role": "user", "content": "Weather in Paris and Tokyo?"}]


def ev(data: bytes | str) -> SSEEvent:
    raw = data.encode() if isinstance(data, str) else data
    return SSEEvent(None, raw, b"data: " + raw + b"\n\n")


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **top: Any) -> SSEEvent:
    choices = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    return ev(json.dumps({"id": "c1", "model": "m", "choices": choices, **top}))


def decode(pieces: list[bytes]) -> list[ir.StreamEvent]:
    framer, decoder = SSEFramer(), openai_chat.stream_decoder()
    out = [e for piece in pieces for sse in framer.feed(piece) for e in decoder.feed(sse)]
    out += [e for sse in framer.close() for e in decoder.feed(sse)]
    return out + decoder.close()


def decode_events(*events: SSEEvent) -> list[ir.StreamEvent]:
    decoder = openai_chat.stream_decoder()
    return [e for sse in events for e in decoder.feed(sse)] + decoder.close()


# -- decoder: golden streams ---------------------------------------------------------------------

TEXT = ["Hello", "!", " 👋", " How", " can", " I", " help", " you", " today", "?"]
GOLDEN: dict[str, list[ir.StreamEvent]] = {
    "text": [
        MessageStart("chatcmpl-C3kYq7tB9pW2nR8sV1xZ4aD6fH0jL", "gpt-4o-mini-2024-07-18"),
        *[TextDelta(t) for t in TEXT],
        UsageUpdate(Usage(19, 0, 11, 0)),
        MessageStop(FinishReason.STOP),
    ],
    "tools": [
        MessageStart("chatcmpl-C3kZ1mQ8rT4vW7yB0dF3hJ6kL9nP2s", "gpt-4o-mini-2024-07-18"),
        *[TextDelta(t) for t in ["I'll", " check", " the weather", " in Paris", " and Tōkyō", " 🌦️"]],
        ToolCallStart(0, "call_W2aQ9vXr7bN4cT1yK6mP8sLd", "get_weather"),
        *[ToolCallDelta(0, a) for a in ['{"ci', 'ty": "', 'Paris", ', '"unit": "celsius"}']],
        ToolCallStart(1, "call_B7fK3mN9qR2sT5vX8zA1cE4g", "get_weather"),
        *[ToolCallDelta(1, a) for a in ['{"city"', ': "Tōk', 'yō", "unit"', ': "celsius"}']],
        UsageUpdate(Usage(88, 64, 61, 0)),
        MessageStop(FinishReason.TOOL_CALLS),
    ],
    "error": [
        MessageStart("chatcmpl-C3kZ9xV2bN5mQ8wE1rT4yU7iO0pA3s", "gpt-4o-mini-2024-07-18"),
        TextDelta("Hello"),
        TextDelta("!"),
        StreamFailed(500, "The server had an error while processing your request. Sorry about that!", "server_error"),
    ],
    # DeepSeek: reasoning_content before content, cache hits, reasoning tokens (keep-alives: injected below).
    "reasoning": [
        MessageStart("5f0e3c2a-9b1d-4e7a-8c6f-2d4b1a0e9f37", "deepseek-reasoner"),
        *[ThinkingDelta(t) for t in ["The user asks", " which is larger: 9.11", " or 9.8. Compare tenths: 1 < 8."]],
        *[TextDelta(t) for t in ["9.8", " is larger", " — ça va de soi 🙂."]],
        UsageUpdate(Usage(14, 8, 61, 52)),
        MessageStop(FinishReason.STOP),
    ],
    # Moonshot: role on every chunk, tool deltas without index, usage inside choices[0] (then repeated).
    "moonshot_usage": [
        MessageStart("chatcmpl-6810567267ee141b4630dccb", "kimi-k2-turbo-preview"),
        TextDelta("Let me check"),
        TextDelta(" both cities."),
        ToolCallStart(0, "functions.get_weather:0", "get_weather"),
        ToolCallDelta(0, '{"city": '),
        ToolCallDelta(0, '"Paris"}'),
        ToolCallStart(1, "functions.get_weather:1", "get_weather"),
        ToolCallDelta(1, '{"city"'),
        ToolCallDelta(1, ': "Tōkyō"}'),
        UsageUpdate(Usage(120, 100, 40, 0)),  # inside choices[0] on the finish chunk
        UsageUpdate(Usage(120, 100, 40, 0)),  # and the top-level trailing chunk: the last one wins
        MessageStop(FinishReason.TOOL_CALLS),
    ],
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_decoder_golden_stream_whole_and_byte_by_byte(name: str) -> None:
    data = (FIXTURES / f"{name}.sse").read_bytes()
    assert decode([data]) == GOLDEN[name]
    assert decode([data[i : i + 1] for i in range(len(data))]) == GOLDEN[name]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_decoder_same_events_for_every_two_way_cut(name: str) -> None:
    data = (FIXTURES / f"{name}.sse").read_bytes()
    for i in range(len(data) + 1):
        assert decode([data[:i], data[i:]]) == GOLDEN[name], i


@pytest.mark.parametrize(
    ("head", "between"), [(b": keep-alive\n\n" * 3, b": keep-alive\n\n"), (b"", b": keep-alive\n")]
)
def test_decoder_ignores_deepseek_keep_alive_comments(head: bytes, between: bytes) -> None:
    """DeepSeek sends ``: keep-alive`` while queued (as blocks, or as lines within a block: both are
    comments the framer drops). Injected here: the shared SSE tests keep comments out of fixtures."""
    data = (FIXTURES / "reasoning.sse").read_bytes()
    queued = head + data.replace(b"\n\ndata: ", b"\n\n" + between + b"data: ")
    assert queued.count(b"keep-alive") >= 9
    assert decode([queued]) == decode([queued[i : i + 5] for i in range(0, len(queued), 5)]) == GOLDEN["reasoning"]


def test_decoder_crlf_framing_gives_the_same_events() -> None:
    data = (FIXTURES / "tools.sse").read_bytes().replace(b"\n", b"\r\n")
    assert decode([data[i : i + 7] for i in range(0, len(data), 7)]) == GOLDEN["tools"]


# -- decoder: quirks, terminators, errors --------------------------------------------------------


def test_eof_without_done_after_finish_and_usage_ends_as_done_would() -> None:
    """Issue 12 (was: no MessageStop without [DONE]): the protocol counts EOF after the finish as the end."""
    data = (FIXTURES / "text.sse").read_bytes().replace(b"data: [DONE]\n\n", b"")
    assert decode([data]) == GOLDEN["text"]


def test_done_alone_still_starts_and_stops_and_later_events_are_ignored() -> None:
    events = decode_events(ev(b"[DONE]"), chunk({"content": "late"}), ev(b"[DONE]"))
    assert isinstance(events[0], MessageStart) and events[0].id.startswith("chatcmpl-")
    assert events[1:] == [MessageStop(FinishReason.STOP)]


def test_empty_data_is_ignored() -> None:
    assert decode_events(ev(b""), ev(b"  ")) == []


def test_usage_in_choices_and_at_top_level_is_reported_each_time_last_wins() -> None:
    events = decode_events(
        chunk({"content": "x"}),
        ev(
            json.dumps(
                {
                    "id": "c1",
                    "choices": [
                        {
                            "index": 0,
                            "delta": {},
                            "finish_reason": "stop",
                            "usage": {"prompt_tokens": 5, "completion_tokens": 2},
                        }
                    ],
                }
            )
        ),
        ev(json.dumps({"id": "c1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})),
        ev(b"[DONE]"),
    )
    usages = [e.usage for e in events if isinstance(e, UsageUpdate)]
    assert usages == [Usage(5, 0, 2, 0), Usage(5, 0, 3, 0)]
    assert events[-1] == MessageStop(FinishReason.STOP)


def test_tool_call_without_id_gets_a_synthesized_one() -> None:
    events = decode_events(chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]}))
    start = events[1]
    assert isinstance(start, ToolCallStart) and start.id.startswith("call_") and len(start.id) == 29
    assert events[2:] == [ToolCallDelta(0, "{}")]


def test_index_less_fragment_opens_a_call_when_none_is_current() -> None:
    events = decode_events(chunk({"tool_calls": [{"function": {"name": "f", "arguments": '{"a":1}'}}]}))
    assert isinstance(events[1], ToolCallStart) and events[1].index == 0 and events[1].name == "f"
    assert events[2] == ToolCallDelta(0, '{"a":1}')


def test_repeated_id_and_name_on_every_fragment_is_one_call() -> None:
    frag = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{"}}
    frag2 = {**frag, "function": {"name": "f", "arguments": "}"}}
    events = decode_events(chunk({"tool_calls": [frag]}), chunk({"tool_calls": [frag2]}))
    assert events[1:] == [ToolCallStart(0, "call_1", "f"), ToolCallDelta(0, "{"), ToolCallDelta(0, "}")]


def test_every_call_numbered_zero_with_new_ids_is_still_two_calls() -> None:
    a = {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}
    b = {"index": 0, "id": "b", "function": {"name": "g", "arguments": "{}"}}
    events = decode_events(chunk({"tool_calls": [a, b]}))
    assert events[1:] == [
        ToolCallStart(0, "a", "f"),
        ToolCallDelta(0, "{}"),
        ToolCallStart(1, "b", "g"),
        ToolCallDelta(1, "{}"),
    ]


def test_empty_argument_fragments_are_skipped() -> None:
    events = decode_events(chunk({"tool_calls": [{"index": 3, "id": "x", "function": {"name": "f", "arguments": ""}}]}))
    assert events[1:] == [ToolCallStart(0, "x", "f")]


def test_forced_tool_call_reported_as_stop_becomes_tool_calls() -> None:
    call = {"index": 0, "id": "x", "function": {"name": "f", "arguments": "{}"}}
    events = decode_events(chunk({"tool_calls": [call]}), chunk({}, "stop"), ev(b"[DONE]"))
    assert events[-1] == MessageStop(FinishReason.TOOL_CALLS)


@pytest.mark.parametrize(
    ("reason", "want"),
    [
        ("length", FinishReason.LENGTH),
        ("content_filter", FinishReason.CONTENT_FILTER),
        ("function_call", FinishReason.TOOL_CALLS),
        ("insufficient_system_resource", FinishReason.LENGTH),
        ("something_new", FinishReason.STOP),
    ],
)
def test_finish_reasons(reason: str, want: FinishReason) -> None:
    assert decode_events(chunk({}, reason), ev(b"[DONE]"))[-1] == MessageStop(want)


def test_minimax_reasoning_details_and_vllm_reasoning_become_thinking() -> None:
    events = decode_events(
        chunk({"reasoning_details": [{"type": "reasoning.text", "text": "hmm"}, {"text": ""}], "content": None}),
        chunk({"reasoning": "so", "reasoning_details": [{"text": "so"}]}),  # OpenRouter sends both: once
        chunk({"content": "ok", "refusal": None}),
    )
    assert events[1:] == [ThinkingDelta("hmm"), ThinkingDelta("so"), TextDelta("ok")]


def test_refusal_delta_is_text() -> None:
    assert decode_events(chunk({"refusal": "I can't help with that."}))[1:] == [TextDelta("I can't help with that.")]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ({"message": "slow down", "type": "rate_limit_error"}, 429),
        ({"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}, 429),
        ({"message": "bad", "type": "invalid_request_error"}, 400),
        ({"message": "boom", "type": "server_error"}, 500),
        ({"message": "busy", "code": 503}, 503),
        ({"message": "?", "type": "weird"}, 502),
    ],
)
def test_error_chunk_becomes_stream_failed_and_ends_the_stream(error: dict[str, Any], status: int) -> None:
    events = decode_events(chunk({"content": "a"}), ev(json.dumps({"error": error})), chunk({"content": "b"}))
    assert events[1:] == [TextDelta("a"), StreamFailed(status, error["message"], error.get("type"))]


def test_error_first_still_starts_the_message() -> None:
    events = decode_events(ev(b'{"error": "overloaded"}'))
    assert isinstance(events[0], MessageStart) and events[1:] == [StreamFailed(502, "overloaded", None)]


def test_minimax_base_resp_in_a_chunk_is_a_failure() -> None:
    ok = chunk({"content": "a"}, base_resp={"status_code": 0, "status_msg": ""})
    bad = ev(b'{"base_resp": {"status_code": 1002, "status_msg": "rate limit exceeded"}}')
    assert decode_events(ok, bad)[1:] == [TextDelta("a"), StreamFailed(429, "rate limit exceeded", None)]


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'"text"'])
def test_malformed_event_is_a_502_failure(data: bytes) -> None:
    events = decode_events(ev(data))
    assert isinstance(events[0], MessageStart)
    assert isinstance(events[1], StreamFailed) and events[1].status == 502


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
CHUNKISH = st.fixed_dictionaries(
    {"choices": st.lists(st.fixed_dictionaries({"delta": JSON, "finish_reason": JSON, "usage": JSON}), max_size=2)},
    optional={"id": JSON, "usage": JSON, "error": JSON, "base_resp": JSON},
)


@settings(max_examples=300, deadline=None)
@given(st.lists(JSON | CHUNKISH, max_size=6))
def test_decoder_never_raises_on_any_json(chunks: list[Any]) -> None:
    """Invariant: any JSON events give IR events only, MessageStart first, at most one terminal event."""
    events = decode_events(*[ev(json.dumps(c)) for c in chunks], ev(b"[DONE]"))
    assert isinstance(events[0], MessageStart)
    assert sum(isinstance(e, MessageStop | StreamFailed) for e in events) == 1
    assert isinstance(events[-1], MessageStop | StreamFailed)


# -- encoder: bytes the openai SDK reads back ------------------------------------------------------


def sdk_client(body: bytes) -> openai.OpenAI:
    """An openai client whose HTTP layer (httpx2, which the 3.x SDK uses) serves ``body`` in 7-byte
    pieces, as a TCP stream might cut it."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        pieces = iter([body[i : i + 7] for i in range(0, len(body), 7)])
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=pieces)

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai.OpenAI(base_url="http://relay.test/v1", api_key="k", max_retries=0, http_client=http)


def read_raw(body: bytes) -> dict[str, Any]:
    """What a raw ``stream=True`` user accumulates (strings concatenated, as most users do)."""
    got: dict[str, Any] = {"text": "", "thinking": "", "calls": {}, "finish": None, "usage": None, "roles": []}
    with sdk_client(body) as client:
        for piece in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
            got["usage"] = piece.usage or got["usage"]
            for choice in piece.choices:
                delta = choice.delta
                got["roles"] += [delta.role] if delta.role else []
                got["text"] += delta.content or ""
                got["thinking"] += (delta.model_extra or {}).get("reasoning_content") or ""
                got["finish"] = choice.finish_reason or got["finish"]
                for tc in delta.tool_calls or []:
                    call = got["calls"].setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] += tc.id or ""
                    call["name"] += (tc.function.name if tc.function else None) or ""
                    call["arguments"] += (tc.function.arguments if tc.function else None) or ""
    got["calls"] = [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(got["calls"].items())]
    return got


def read_helper(body: bytes) -> dict[str, Any]:
    """What ``client.chat.completions.stream()`` makes of the bytes: it concatenates every repeated
    string field, so a repeated role, id or name shows up here."""
    with sdk_client(body) as client, client.chat.completions.stream(model="m", messages=MESSAGES) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    message = choice.message
    calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
    return {
        "text": message.content or "",
        "thinking": (message.model_extra or {}).get("reasoning_content") or "",
        "calls": calls,
        "finish": choice.finish_reason,
        "usage": final.usage,
        "roles": [message.role],
    }


READERS = {"raw": read_raw, "helper": read_helper}

# One conversation as each upstream protocol's decoder would deliver it.
OPENAI_ORDER: list[ir.StreamEvent] = [
    MessageStart("chatcmpl-abc", "gpt-4o"),
    TextDelta("I'll check"),
    TextDelta(" both."),
    ToolCallStart(0, "call_a", "get_weather"),
    ToolCallDelta(0, '{"city": '),
    ToolCallDelta(0, '"Paris"}'),
    ToolCallStart(1, "call_b", "get_weather"),
    ToolCallDelta(1, '{"city": "Tōkyō"}'),
    UsageUpdate(Usage(88, 64, 61, 0)),
    MessageStop(FinishReason.TOOL_CALLS),
]
ANTHROPIC_ORDER: list[ir.StreamEvent] = [
    MessageStart("msg_01", "claude", Usage(412, 256, 1, 0)),
    ThinkingDelta("Two cities, "),
    ThinkingDelta("two calls."),
    ThinkingSignature("EqQBCkYIBxgCKkA="),
    TextDelta("I'll check both."),
    ToolCallStart(0, "toolu_01", "get_weather"),
    ToolCallDelta(0, ""),
    ToolCallDelta(0, '{"city": "Pa'),
    ToolCallDelta(0, 'ris"}'),
    ToolCallStart(1, "toolu_02", "get_weather"),
    ToolCallDelta(1, '{"city": "Tōkyō"}'),
    UsageUpdate(Usage(412, 256, 96, 0)),
    MessageStop(FinishReason.TOOL_CALLS),
]
GEMINI_ORDER: list[ir.StreamEvent] = [
    MessageStart("pX7y", "gemini-2.5-flash"),
    UsageUpdate(Usage(71, 0, 0, 0)),
    TextDelta("I'll check both."),
    UsageUpdate(Usage(71, 0, 10, 0)),
    ToolCallStart(0, "call_g1", "get_weather", signature="CiIB"),
    ToolCallDelta(0, '{"city":"Paris"}'),
    ToolCallStart(1, "call_g2", "get_weather"),
    ToolCallDelta(1, '{"city":"Tōkyō"}'),
    UsageUpdate(Usage(71, 0, 95, 55)),
    MessageStop(FinishReason.TOOL_CALLS),
]
PARIS, TOKYO = {"city": "Paris"}, {"city": "Tōkyō"}
EXPECTED = {
    "openai": ("I'll check both.", "", [("call_a", PARIS), ("call_b", TOKYO)], (88, 61, 149, 64, 0)),
    "anthropic": (
        "I'll check both.",
        "Two cities, two calls.",
        [("toolu_01", PARIS), ("toolu_02", TOKYO)],
        (412, 96, 508, 256, 0),
    ),
    "gemini": ("I'll check both.", "", [("call_g1~CiIB", PARIS), ("call_g2", TOKYO)], (71, 95, 166, 0, 55)),
}
ORDERS = {"openai": OPENAI_ORDER, "anthropic": ANTHROPIC_ORDER, "gemini": GEMINI_ORDER}


def encode(events: list[ir.StreamEvent], include_usage: bool, model: str = "client-model") -> bytes:
    req = ir.ChatRequest(model, [], stream=True, include_usage=include_usage)
    encoder = openai_chat.stream_encoder(req, model)
    return b"".join(encoder.encode(e) for e in events) + encoder.finish()


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("order", sorted(ORDERS))
def test_sdk_reads_the_encoded_stream(order: str, include_usage: bool, reader: str) -> None:
    got = READERS[reader](encode(ORDERS[order], include_usage))
    text, thinking, calls, (prompt, completion, total, cached, reasoning) = EXPECTED[order]
    assert got["roles"] == ["assistant"]  # helper: a repeated role would read "assistantassistant"
    assert (got["text"], got["thinking"], got["finish"]) == (text, thinking, "tool_calls")
    assert got["calls"] == [(cid, "get_weather", args) for cid, args in calls]
    if not include_usage:
        assert got["usage"] is None
        return
    usage = got["usage"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (prompt, completion, total)
    assert usage.prompt_tokens_details.cached_tokens == cached
    assert usage.completion_tokens_details.reasoning_tokens == reasoning


def frames(body: bytes) -> list[Any]:
    out: list[Any] = []
    for block in body.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: "), block
        data = block[len(b"data: ") :]
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_encoded_chunks_follow_the_wire_rules(order: str) -> None:
    chunks = frames(encode(ORDERS[order], include_usage=True))
    assert chunks[-1] == "[DONE]" and "[DONE]" not in chunks[:-1]
    body = chunks[:-1]
    assert {c["id"] for c in body} == {c["id"] for c in body[:1]} and body[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "client-model" for c in body)
    assert all(c["usage"] is None for c in body[:-1]) and body[-1]["choices"] == []
    deltas = [c["choices"][0]["delta"] for c in body[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert all("role" not in d for d in deltas[1:])
    assert deltas[-1] == {} and body[-2]["choices"][0]["finish_reason"] == "tool_calls"
    fragments = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert all("index" in tc for tc in fragments)
    heads = [tc for tc in fragments if "id" in tc]
    assert [tc["index"] for tc in heads] == [0, 1]  # id/type/name once per call, never repeated
    assert all(
        set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"} and tc["function"]["arguments"]
        for tc in fragments
        if "id" not in tc
    )


def test_without_include_usage_there_is_no_usage_key_and_no_usage_chunk() -> None:
    chunks = frames(encode(OPENAI_ORDER, include_usage=False))
    assert all("usage" not in c for c in chunks[:-1]) and all(c["choices"] for c in chunks[:-1])


def test_unknown_usage_still_gives_a_usage_chunk_when_asked() -> None:
    chunks = frames(encode([MessageStart("x", "m"), TextDelta("hi"), MessageStop(FinishReason.STOP)], True))
    assert chunks[-2]["usage"]["total_tokens"] == 0


def test_encoder_starts_the_message_if_content_comes_first_and_ignores_events_after_the_end() -> None:
    req = ir.ChatRequest("m", [])
    encoder = openai_chat.stream_encoder(req, "m", sse=False)
    first = frames(encoder.encode(TextDelta("hi")))
    assert [c["choices"][0]["delta"] for c in first] == [{"role": "assistant", "content": ""}, {"content": "hi"}]
    assert encoder.encode(MessageStart("late", "m")) == b""  # a second start changes nothing
    assert encoder.encode(ThinkingSignature("sig")) == b"" and encoder.encode(TextDelta("")) == b""
    assert encoder.encode(MessageStop(FinishReason.LENGTH)).endswith(b"data: [DONE]\n\n")
    assert encoder.encode(TextDelta("after")) == b"" and encoder.error(UpstreamTimeout("x")) == b""
    assert encoder.ping() == b": ping\n\n" and encoder.finish() == b""


def test_pings_between_chunks_are_ignored_by_the_sdk() -> None:
    req = ir.ChatRequest("m", [], include_usage=True)
    encoder = openai_chat.stream_encoder(req, "m")
    body = b"".join(encoder.encode(e) + encoder.ping() for e in OPENAI_ORDER)
    assert read_helper(body)["calls"] == [("call_a", "get_weather", PARIS), ("call_b", "get_weather", TOKYO)]
    assert read_raw(body)["text"] == "I'll check both."


def error_stream(failure: str) -> bytes:
    encoder = openai_chat.stream_encoder(ir.ChatRequest("m", []), "m")
    body = encoder.encode(MessageStart("x", "m")) + encoder.encode(TextDelta("Once upon a time,"))
    if failure == "error":
        body += encoder.error(UpstreamStatusError(529, "Overloaded", upstream_type="overloaded_error"))
    else:
        body += encoder.encode(StreamFailed(503, "Overloaded", "overloaded_error"))
    return body + encoder.encode(TextDelta("never sent")) + encoder.encode(MessageStop(FinishReason.STOP))


@pytest.mark.parametrize("failure", ["error", "stream_failed"])
def test_error_mid_stream_raises_api_error_after_the_text(failure: str) -> None:
    body = error_stream(failure)
    assert b"[DONE]" not in body and b"never sent" not in body
    seen = ""
    with sdk_client(body) as client, pytest.raises(openai.APIError) as info:
        for piece in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
            seen += piece.choices[0].delta.content or ""
    assert seen == "Once upon a time,"
    assert not isinstance(info.value, openai.APIStatusError)
    assert (info.value.message, info.value.type) == ("Overloaded", "server_error")
    with pytest.raises(openai.APIError) as helper_info:
        read_helper(body)
    assert not isinstance(helper_info.value, openai.APIStatusError)


def test_client_error_type_survives_in_the_stream_error() -> None:
    encoder = openai_chat.stream_encoder(ir.ChatRequest("m", []), "m")
    body = frames(encoder.error(UpstreamStatusError(429, "slow down", upstream_type="rate_limit_error")))
    assert body == [
        {"error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}}
    ]


def ir_expectations(events: list[ir.StreamEvent]) -> tuple[str, str, list[tuple[str, str, Any]], str]:
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    args = {
        s.index: "".join(e.arguments for e in events if isinstance(e, ToolCallDelta) and e.index == s.index)
        for s in starts
    }
    stop = [e for e in events if isinstance(e, MessageStop)]
    return text, thinking, [(s.id, s.name, json.loads(args[s.index])) for s in starts], stop[0].finish.value


@pytest.mark.parametrize("name", ["text", "tools", "reasoning", "moonshot_usage"])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_upstream_quirks_are_repaired_through_decode_then_encode(name: str, reader: str) -> None:
    """Moonshot's index-less deltas crash the SDK helper when passed through; translated, they do not."""
    events = GOLDEN[name]
    got = READERS[reader](encode(events, include_usage=True))
    text, thinking, calls, finish = ir_expectations(events)
    assert (got["text"], got["thinking"], got["calls"], got["finish"]) == (text, thinking, calls, finish)
    usage = [e.usage for e in events if isinstance(e, UsageUpdate)][-1]
    assert (got["usage"].prompt_tokens, got["usage"].completion_tokens) == (usage.input_tokens, usage.output_tokens)


def test_the_helper_really_crashes_on_raw_moonshot_deltas() -> None:
    """Why passthrough of Moonshot streams to OpenAI clients is unsafe (see StreamTap's docstring)."""
    with pytest.raises((TypeError, RuntimeError)):
        read_helper((FIXTURES / "moonshot_usage.sse").read_bytes())


# -- tap ------------------------------------------------------------------------------------------


def test_stream_tap_follows_the_requests_include_usage() -> None:
    usage_chunk = ev(b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}')
    asked = openai_chat.stream_tap(ir.ChatRequest("m", [], stream=True, include_usage=True))
    not_asked = openai_chat.stream_tap(ir.ChatRequest("m", [], stream=True))
    assert asked.feed(usage_chunk) and not not_asked.feed(usage_chunk)
    assert asked.usage == not_asked.usage == Usage(3, 0, 1, 0)


def test_stream_tap_on_golden_streams() -> None:
    for name, events in GOLDEN.items():
        tap = openai_chat.stream_tap(ir.ChatRequest("m", [], stream=True, include_usage=True))
        framer = SSEFramer()
        kept = [tap.feed(sse) for sse in framer.feed((FIXTURES / f"{name}.sse").read_bytes())]
        assert all(kept)
        usages = [e.usage for e in events if isinstance(e, UsageUpdate)]
        assert tap.usage == (usages[-1] if usages else None)
        assert tap.done == isinstance(events[-1], MessageStop)
        assert (tap.error is not None) == isinstance(events[-1], StreamFailed)


def passthrough(body: bytes, step: int) -> bytes:
    """What a same-protocol client receives of ``body`` fed in ``step``-byte pieces."""
    relay = Passthrough(openai_chat.stream_tap(ir.ChatRequest("m", [], stream=True, include_usage=True)))
    out = [bytes(relay.feed(body[i : i + step])) for i in range(0, len(body), step)]
    return b"".join(out) + relay.close()


@pytest.mark.parametrize("step", [1, 7, 1 << 20])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_passthrough_repairs_moonshot_quirks_for_the_sdk(step: int, reader: str) -> None:
    """Index-less tool deltas, a repeated role and usage in choices[0] (protocols.md §8.8): the tap
    rewrites just those chunks, so the helper that crashes on the raw bytes reads them right."""
    events = GOLDEN["moonshot_usage"]
    got = READERS[reader](passthrough((FIXTURES / "moonshot_usage.sse").read_bytes(), step))
    text, thinking, calls, finish = ir_expectations(events)
    assert (got["text"], got["thinking"], got["calls"], got["finish"]) == (text, thinking, calls, finish)
    usage = [e.usage for e in events if isinstance(e, UsageUpdate)][-1]
    assert (got["usage"].prompt_tokens, got["usage"].completion_tokens) == (usage.input_tokens, usage.output_tokens)
    if reader == "helper":
        assert got["roles"] == ["assistant"]


@pytest.mark.parametrize("name", ["text", "tools", "reasoning", "error"])
def test_passthrough_leaves_streams_without_quirks_byte_for_byte(name: str) -> None:
    body = (FIXTURES / f"{name}.sse").read_bytes()
    assert passthrough(body, len(body)) == passthrough(body, 1) == body


def test_stream_tap_rewrites_only_the_chunks_it_fixes() -> None:
    tap = openai_chat.StreamTap(client_wants_usage=True)
    first = ev(b'{"choices":[{"index":0,"delta":{"role":"assistant","content":"a"}}]}')
    assert tap.feed(first) is True
    fixed = tap.feed(ev(b'{"choices":[{"index":0,"delta":{"role":"assistant","content":"b"}}]}'))
    assert isinstance(fixed, bytes) and fixed.startswith(b"data: ") and fixed.endswith(b"\n\n")
    assert json.loads(fixed[6:]) == {"choices": [{"index": 0, "delta": {"content": "b"}}]}
    new_call = tap.feed(ev(b'{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"c1","function":{"name":"f"}}]}}]}'))
    more = tap.feed(ev(b'{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}'))
    second = tap.feed(ev(b'{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"c2","function":{"name":"g"}}]}}]}'))
    indexes = [json.loads(b[6:])["choices"][0]["delta"]["tool_calls"][0]["index"] for b in (new_call, more, second)]
    assert indexes == [0, 0, 1]
    assert tap.feed(ev(b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{}}]}}]}')) is True


def test_stream_tap_moves_choice_usage_up_only_for_a_client_that_asked() -> None:
    moon = (
        b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":4,"completion_tokens":2}}]}'
    )
    asked = openai_chat.StreamTap(client_wants_usage=True).feed(ev(moon))
    assert isinstance(asked, bytes)
    chunk = json.loads(asked[6:])
    assert chunk["usage"] == {"prompt_tokens": 4, "completion_tokens": 2} and "usage" not in chunk["choices"][0]
    assert openai_chat.StreamTap(client_wants_usage=False).feed(ev(moon)) is True


def test_stream_tap_sees_minimax_errors() -> None:
    tap = openai_chat.stream_tap(ir.ChatRequest("m", []))
    assert tap.feed(ev(b'{"base_resp": {"status_code": 1008, "status_msg": "insufficient balance"}}'))
    assert tap.error == {"message": "insufficient balance", "code": 402} and not tap.done


USAGE_CHUNK = {"id": "c1", "model": "m", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}


def test_eof_after_finish_and_usage_without_done_is_the_end() -> None:
    """Issue 12: the answer is complete after the finish and usage chunks; [DONE] is framing."""
    events = decode_events(chunk({"content": "hi"}), chunk(finish="stop"), ev(json.dumps(USAGE_CHUNK)))
    assert events[-1] == MessageStop(FinishReason.STOP)
    tap = openai_chat.stream_tap(openai_chat.decode_request({"model": "m", "messages": MESSAGES, "stream": True}))
    relay = Passthrough(tap)
    relay.feed(chunk(finish="stop").raw + b"data: " + json.dumps(USAGE_CHUNK).encode() + b"\n\n")
    assert relay.close() == b"data: [DONE]\n\n" and relay.done and relay.usage is not None


@pytest.mark.parametrize("with_usage", [False, True])
def test_eof_before_the_answer_is_complete_stays_incomplete(with_usage: bool) -> None:
    """No finish chunk (usage or not), or a finish without the usage chunk: no end at EOF."""
    last = [ev(json.dumps(USAGE_CHUNK))] if with_usage else []
    assert not any(isinstance(e, MessageStop) for e in decode_events(chunk({"content": "hi"}), *last))
    assert not any(isinstance(e, MessageStop) for e in decode_events(chunk({"content": "hi"}), chunk(finish="stop")))
    tap = openai_chat.stream_tap(openai_chat.decode_request({"model": "m", "messages": MESSAGES, "stream": True}))
    relay = Passthrough(tap)
    relay.feed(chunk(finish="stop").raw)
    assert relay.close() == b"" and not relay.done
