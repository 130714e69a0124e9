"""Gemini streams: the decoder over recorded-style fixtures (whole and cut at every byte), the encoder
read back by google-genai's own stream parser, the JSON-array framing, and the passthrough tap."""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from hypothesis import given, settings
from hypothesis import strategies as st

from relayproxy import ir
from relayproxy.codecs import gemini_generate as gem
from relayproxy.codecs.gemini_generate._vocab import CallRef, call_id, parse_call_id
from relayproxy.errors import InsufficientBalance, RateLimited, RelayError, UpstreamStatusError
from relayproxy.sse import SSEEvent, SSEFramer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gemini"
SIG = "CiIBcE0HvWxOfmKL85KWBEQTduRmAFNDtqRSSnqcMbNySu+4GSNTo5grT+esmh8rGkfPb8nySorAwL8+ojo="
THINK_SIG = "CiQBcHRob3VnaHQtc2lnbmF0dXJlLWJ5dGVzLWZvci10aGUtdGVzdCsvPw=="


NONCES = [itertools.count()]


@pytest.fixture(autouse=True)
def fixed_nonces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthesized call ids use secrets.token_hex: count instead (from 0 in each decode())."""
    monkeypatch.setattr(secrets, "token_hex", lambda n: f"{next(NONCES[0]):0{2 * n}x}")


def decode(chunks: list[bytes]) -> list[ir.StreamEvent]:
    NONCES[0] = itertools.count()
    framer, decoder = SSEFramer(), gem.stream_decoder()
    events = [e for chunk in chunks for ev in framer.feed(chunk) for e in decoder.feed(ev)]
    events += [e for ev in framer.close() for e in decoder.feed(ev)]
    return events + decoder.close()


def prompt(n: int, cached: int = 0) -> ir.Usage:
    return ir.Usage(n, cached, 0, 0)


GOLDEN: dict[str, list[ir.StreamEvent]] = {
    "text": [
        ir.MessageStart("kS4jacXKJ4mXz7IPq5DVyQM", "gemini-2.5-flash", prompt(9)),
        ir.TextDelta("Hello! 👋"),
        ir.UsageUpdate(prompt(9)),
        ir.TextDelta(" How can I help you today?"),
        ir.UsageUpdate(ir.Usage(9, 0, 38, 27)),
        ir.MessageStop(ir.FinishReason.STOP),
    ],
    "tools": [
        ir.MessageStart("pX7yaM2bLqW3z7IP0cKV8Qs", "gemini-2.5-flash", prompt(71)),
        ir.TextDelta("I'll check the weather in Paris and Tōkyō 🌦️"),
        ir.UsageUpdate(prompt(71)),
        ir.ToolCallStart(0, "gcall_000000000000_" + SIG.rstrip("=").replace("+", "-"), "get_weather", SIG),
        ir.ToolCallDelta(0, '{"city":"Paris","unit":"celsius"}'),
        ir.ToolCallStart(1, "gcall_000000000001", "get_weather"),
        ir.ToolCallDelta(1, '{"city":"Tōkyō","unit":"celsius"}'),
        ir.UsageUpdate(ir.Usage(71, 0, 95, 55)),
        ir.MessageStop(ir.FinishReason.TOOL_CALLS),
    ],
    "error": [
        ir.MessageStart("zQ9maN4cRtY6z7IPl8Gh3Wk", "gemini-2.5-flash", prompt(9)),
        ir.TextDelta("Hello"),
        ir.UsageUpdate(prompt(9)),
        ir.StreamFailed(503, "The model is overloaded. Please try again later.", "UNAVAILABLE"),
    ],
    "thinking": [
        ir.MessageStart("Th1nKaQ3LpW8z7IPm9yR0Ag", "gemini-2.5-pro", prompt(12)),
        ir.ThinkingDelta("**Planning** the answer."),
        ir.UsageUpdate(prompt(12)),
        ir.ThinkingDelta(" The user wants the capital."),
        ir.ThinkingSignature(THINK_SIG),
        ir.TextDelta("The capital of France is Paris — café? ☕"),
        ir.UsageUpdate(ir.Usage(12, 4, 51, 40)),
        ir.MessageStop(ir.FinishReason.STOP),
    ],
    "blocked": [
        ir.MessageStart("B1ockEdQ9mXz7IPl8Gh3Wk", "gemini-2.5-flash", prompt(7)),
        ir.UsageUpdate(prompt(7)),
        ir.MessageStop(ir.FinishReason.CONTENT_FILTER),
    ],
    "truncated": [  # no finishReason, then the body ended: no MessageStop
        ir.MessageStart("TrUnc8tedXz7IPl8Gh3Wk", "gemini-2.5-flash", prompt(5)),
        ir.TextDelta("Once upon a time,"),
        ir.UsageUpdate(prompt(5)),
    ],
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_decoder_golden(name: str) -> None:
    assert decode([(FIXTURES / f"{name}.sse").read_bytes()]) == GOLDEN[name]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_decoder_same_events_however_cut(name: str) -> None:
    data = (FIXTURES / f"{name}.sse").read_bytes()
    expected = GOLDEN[name]
    assert decode([data[i : i + 1] for i in range(len(data))]) == expected
    for cut in range(0, len(data) + 1, 7):
        assert decode([data[:cut], data[cut:]]) == expected, cut


def test_decoder_id_keeps_the_signature_for_the_replay() -> None:
    start = next(e for e in GOLDEN["tools"] if isinstance(e, ir.ToolCallStart))
    assert parse_call_id(start.id) == CallRef(None, SIG)


def test_decoder_edge_cases() -> None:
    decoder = gem.stream_decoder()
    assert decoder.feed(SSEEvent(None, b"", b"")) == []
    events = decoder.feed(SSEEvent(None, b"{not json", b""))
    assert isinstance(events[0], ir.MessageStart) and events[0].id.startswith("gen-")
    assert events[1] == ir.StreamFailed(502, "Gemini upstream sent a stream event that is not JSON", None)
    assert decoder.feed(SSEEvent(None, b'{"candidates": []}', b"")) == []  # nothing after a failure
    assert decoder.close() == []

    decoder = gem.stream_decoder()
    assert decoder.feed(SSEEvent(None, b"[1]", b""))[-1].status == 502  # type: ignore[union-attr]

    decoder = gem.stream_decoder()
    chunk = {
        "candidates": [
            {
                "content": {
                    "parts": [{"inlineData": {}}, {"text": ""}, "junk", {"functionCall": {"name": "f", "id": "x1"}}]
                },
                "finishReason": "MAX_TOKENS",
            }
        ],
    }
    events = decoder.feed(SSEEvent(None, orjson.dumps(chunk), b""))
    assert events[1:] == [ir.ToolCallStart(0, call_id("x1", None), "f"), ir.ToolCallDelta(0, "{}")]
    assert decoder.feed(SSEEvent(None, b'{"usageMetadata": {"promptTokenCount": 3}}', b"")) == [
        ir.UsageUpdate(prompt(3)),
        ir.MessageStop(ir.FinishReason.LENGTH),  # usage after the finish completes the answer
    ]
    assert decoder.done
    assert decoder.close() == []  # exactly once


EVENT_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=4),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(
            st.sampled_from(["candidates", "content", "parts", "text", "thought", "functionCall", "args", "name", "id"])
            | st.sampled_from(["finishReason", "usageMetadata", "promptTokenCount", "error", "code", "promptFeedback"])
            | st.sampled_from(["blockReason", "thoughtSignature", "responseId", "modelVersion"]),
            c,
            max_size=4,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=400)
@given(st.lists(EVENT_JSON, max_size=4))
def test_decoder_and_tap_never_raise(chunks: list[Any]) -> None:
    decoder, tap = gem.stream_decoder(), gem.stream_tap(ir.ChatRequest("m", []))
    events: list[ir.StreamEvent] = []
    for chunk in chunks:
        ev = SSEEvent(None, orjson.dumps(chunk), b"")
        events += decoder.feed(ev)
        assert tap.feed(ev) is True
    events += decoder.close()
    if events:
        assert isinstance(events[0], ir.MessageStart)
    assert sum(isinstance(e, ir.MessageStop) for e in events) <= 1


# -- encoder, read back by google-genai ------------------------------------------------------------


def sdk_stream(pieces: list[bytes]) -> tuple[list[types.GenerateContentResponse], Exception | None]:
    """Serve ``pieces`` as a streamGenerateContent body and let google-genai parse it."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path.endswith(":streamGenerateContent")
        return httpx2.Response(200, content=iter(pieces), headers={"content-type": "text/event-stream"})

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    options = types.HttpOptions(base_url="http://gateway.test", api_version="v1beta", httpx_client=http)
    client = genai.Client(api_key="k", http_options=options)
    chunks: list[types.GenerateContentResponse] = []
    try:
        chunks.extend(client.models.generate_content_stream(model="client-model", contents="hi"))
    except genai_errors.APIError as exc:
        return chunks, exc
    return chunks, None


def parts_of(chunks: list[types.GenerateContentResponse]) -> Iterator[types.Part]:
    for chunk in chunks:
        for candidate in chunk.candidates or []:
            yield from (candidate.content.parts or []) if candidate.content else []


def seven_byte_pieces(data: bytes) -> list[bytes]:
    return [data[i : i + 7] for i in range(0, len(data), 7)]


def request(include_thoughts: bool = False) -> ir.ChatRequest:
    reasoning = ir.Reasoning(include_thoughts=True) if include_thoughts else None
    return ir.ChatRequest("client-model", [ir.Message("user", [ir.Text("hi")])], reasoning=reasoning, stream=True)


FINAL_USAGE = ir.Usage(88, 64, 61, 20)

ORDERS: dict[str, list[ir.StreamEvent]] = {
    # OpenAI upstream: argument fragments, the finish held until the trailing usage chunk and [DONE]
    "openai": [
        ir.MessageStart("chatcmpl-1", "gpt-x"),
        ir.TextDelta("Checking "),
        ir.TextDelta("both."),
        ir.ToolCallStart(0, "call_a", "get_weather"),
        ir.ToolCallDelta(0, '{"ci'),
        ir.ToolCallDelta(0, 'ty": "Paris"}'),
        ir.ToolCallStart(1, "call_b", "get_weather"),
        ir.ToolCallDelta(1, ""),
        ir.ToolCallDelta(1, '{"city": "Tōkyō"}'),
        ir.UsageUpdate(FINAL_USAGE),
        ir.MessageStop(ir.FinishReason.TOOL_CALLS),
    ],
    # Anthropic upstream: input usage on MessageStart, thinking with a signature, one final usage
    "anthropic": [
        ir.MessageStart("msg_1", "claude-x", ir.Usage(88, 64)),
        ir.ThinkingDelta("Two cities."),
        ir.ThinkingSignature("c2lnbmF0dXJl"),
        ir.TextDelta("Checking "),
        ir.TextDelta("both."),
        ir.ToolCallStart(0, "call_a", "get_weather"),
        ir.ToolCallDelta(0, ""),
        ir.ToolCallDelta(0, '{"city": "Paris"}'),
        ir.ToolCallStart(1, "call_b", "get_weather"),
        ir.ToolCallDelta(1, '{"city": "Tōkyō"}'),
        ir.UsageUpdate(FINAL_USAGE),
        ir.MessageStop(ir.FinishReason.TOOL_CALLS),
    ],
    # Gemini-like: cumulative usage on every chunk, each call complete in one delta
    "gemini": [
        ir.MessageStart("resp-1", "gemini-x", ir.Usage(88, 64)),
        ir.TextDelta("Checking "),
        ir.UsageUpdate(ir.Usage(88, 64)),
        ir.TextDelta("both."),
        ir.ToolCallStart(0, "call_a", "get_weather", signature=SIG),
        ir.ToolCallDelta(0, '{"city":"Paris"}'),
        ir.ToolCallStart(1, "call_b", "get_weather"),
        ir.ToolCallDelta(1, '{"city":"Tōkyō"}'),
        ir.UsageUpdate(FINAL_USAGE),
        ir.MessageStop(ir.FinishReason.TOOL_CALLS),
    ],
}


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("include_thoughts", [False, True])
def test_encoder_read_by_google_genai(order: str, include_thoughts: bool) -> None:
    encoder = gem.stream_encoder(request(include_thoughts), "client-model")
    pieces = [encoder.encode(ev) for ev in ORDERS[order]] + [encoder.finish()]
    data = b"".join(pieces)
    assert b"event:" not in data and b"[DONE]" not in data and b"\n:" not in data
    assert all(frame.startswith(b"data: {") for frame in data.split(b"\r\n\r\n") if frame)
    with_pings = [piece + gem.stream_encoder(request(), "m").ping() for piece in pieces]  # a CRLF after each
    for served in (seven_byte_pieces(data), with_pings):
        chunks, failure = sdk_stream(served)
        assert failure is None
        parts = list(parts_of(chunks))
        assert "".join(p.text for p in parts if p.text and not p.thought) == "Checking both."
        thoughts = [p.text for p in parts if p.thought and p.text]
        assert thoughts == (["Two cities."] if include_thoughts and order == "anthropic" else [])
        calls = [p.function_call for p in parts if p.function_call]
        assert [(c.name, c.args, c.id) for c in calls] == [
            ("get_weather", {"city": "Paris"}, "call_a"),
            ("get_weather", {"city": "Tōkyō"}, "call_b"),
        ]
        last = chunks[-1]
        assert last.candidates is not None and last.candidates[0].finish_reason == types.FinishReason.STOP
        usage = last.usage_metadata
        assert usage is not None
        assert (usage.prompt_token_count, usage.candidates_token_count, usage.thoughts_token_count) == (88, 41, 20)
        assert (usage.cached_content_token_count, usage.total_token_count) == (64, 149)
        assert (last.model_version, last.response_id) == ("client-model", ORDERS[order][0].id)  # type: ignore[union-attr]


def test_encoder_signature_part_only_with_thoughts() -> None:
    encoder = gem.stream_encoder(request(include_thoughts=True), "m")
    encoder.encode(ir.MessageStart("r", "u"))
    frame = encoder.encode(ir.ThinkingSignature("c2ln"))
    assert orjson.loads(frame.removeprefix(b"data: "))["candidates"][0]["content"]["parts"] == [
        {"text": "", "thought": True, "thoughtSignature": "c2ln"}
    ]
    plain = gem.stream_encoder(request(), "m")
    assert plain.encode(ir.ThinkingDelta("x")) == b"" and plain.encode(ir.ThinkingSignature("c2ln")) == b""


@pytest.mark.parametrize(
    ("finish", "name"),
    [
        (ir.FinishReason.STOP, types.FinishReason.STOP),
        (ir.FinishReason.LENGTH, types.FinishReason.MAX_TOKENS),
        (ir.FinishReason.CONTENT_FILTER, types.FinishReason.SAFETY),
    ],
)
def test_encoder_finish_without_calls_or_usage(finish: ir.FinishReason, name: types.FinishReason) -> None:
    encoder = gem.stream_encoder(request(), "client-model")
    data = b"".join(
        encoder.encode(ev) for ev in (ir.MessageStart("r", "u"), ir.TextDelta("hi"), ir.MessageStop(finish))
    )
    final = orjson.loads(data.split(b"\r\n\r\n")[1].removeprefix(b"data: "))
    assert final["candidates"][0]["content"]["parts"] == [] and "usageMetadata" not in final
    chunks, failure = sdk_stream([data])
    assert failure is None and chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == name
    assert encoder.encode(ir.TextDelta("late")) == b""  # nothing after MessageStop


def test_encoder_bad_arguments_are_kept() -> None:
    encoder = gem.stream_encoder(request(), "m")
    events: list[ir.StreamEvent] = [
        ir.ToolCallStart(0, "c0", "f"),
        ir.ToolCallDelta(0, '{"broken'),
        ir.ToolCallStart(1, "c1", "g"),
        ir.ToolCallDelta(1, "[1, 2]"),
        ir.ToolCallStart(2, "c2", "h"),
        ir.ToolCallDelta(9, "{}"),  # an index never started: ignored
        ir.MessageStop(ir.FinishReason.TOOL_CALLS),
    ]
    final = orjson.loads(b"".join(encoder.encode(ev) for ev in events).removeprefix(b"data: "))
    assert [p["functionCall"]["args"] for p in final["candidates"][0]["content"]["parts"]] == [
        {"_raw": '{"broken'},
        {"_raw": "[1, 2]"},
        {},
    ]


@pytest.mark.parametrize(
    ("err", "code", "cls"),
    [
        (UpstreamStatusError(503, "The model is overloaded."), 503, genai_errors.ServerError),
        (UpstreamStatusError(500, "boom"), 502, genai_errors.ServerError),
        (RateLimited("slow down"), 429, genai_errors.ClientError),
        (InsufficientBalance("top up"), 402, genai_errors.ClientError),
    ],
)
def test_encoder_error_mid_stream_raises_in_google_genai(err: RelayError, code: int, cls: type[Exception]) -> None:
    encoder = gem.stream_encoder(request(), "m")
    head = encoder.encode(ir.MessageStart("r", "u")) + encoder.encode(ir.TextDelta("Once upon a time,"))
    tail = encoder.error(err)
    assert tail.startswith(b'data: {"error":{') and tail.endswith(b"\r\n\r\n")
    assert encoder.encode(ir.TextDelta("more")) == b"" and encoder.error(err) == b"" and encoder.finish() == b""
    chunks, failure = sdk_stream(seven_byte_pieces(head + encoder.ping() + tail))
    assert "".join(p.text or "" for p in parts_of(chunks)) == "Once upon a time,"
    assert isinstance(failure, cls) and isinstance(failure, genai_errors.APIError)
    assert (failure.code, failure.message) == (code, err.message)


def test_encoder_stream_failed_event() -> None:
    encoder = gem.stream_encoder(request(), "m")
    data = encoder.encode(ir.StreamFailed(503, "overloaded", "overloaded_error"))
    assert orjson.loads(data.removeprefix(b"data: ")) == {
        "error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}
    }
    odd = gem.stream_encoder(request(), "m").encode(ir.StreamFailed(200, "strange", "RESOURCE_EXHAUSTED"))
    assert orjson.loads(odd.removeprefix(b"data: "))["error"]["code"] == 502
    chunks, failure = sdk_stream([data])
    assert chunks == [] and isinstance(failure, genai_errors.ServerError) and failure.status == "UNAVAILABLE"


# -- JSON-array framing (no alt=sse) -------------------------------------------------------------------


def test_array_framing_is_one_json_array() -> None:
    encoder = gem.stream_encoder(request(), "client-model", sse=False)
    out = [encoder.ping()] + [encoder.encode(ev) for ev in ORDERS["openai"]]
    out.insert(3, encoder.ping())
    out.append(encoder.finish())
    assert encoder.finish() == b""
    data = b"".join(out)
    assert data.lstrip().startswith(b"[{") and data.endswith(b"}]") and b",\r\n{" in data
    elements = json.loads(data)
    assert [p["text"] for e in elements for p in e["candidates"][0]["content"]["parts"] if "text" in p] == [
        "Checking ",
        "both.",
    ]
    assert elements[-1]["candidates"][0]["finishReason"] == "STOP"
    assert elements[-1]["usageMetadata"]["totalTokenCount"] == 149


def test_array_framing_error_and_empty() -> None:
    encoder = gem.stream_encoder(request(), "m", sse=False)
    data = encoder.encode(ir.TextDelta("partial")) + encoder.error(UpstreamStatusError(503, "busy"))
    assert encoder.finish() == b""
    elements = json.loads(data)
    assert elements[-1]["error"]["code"] == 503 and list(elements[-1]) == ["error"]
    first_error = gem.stream_encoder(request(), "m", sse=False)
    assert json.loads(first_error.error(RateLimited("x")))[0]["error"]["status"] == "RESOURCE_EXHAUSTED"
    empty = gem.stream_encoder(request(), "m", sse=False)
    assert json.loads(empty.finish()) == []
    assert gem.stream_encoder(request(), "m").finish() == b""


# -- Gemini upstream through IR to a Gemini client (the decoder feeds the encoder) -----------------------


@pytest.mark.parametrize("name", ["tools", "thinking", "text"])
def test_decoded_fixture_reencoded_for_google_genai(name: str) -> None:
    encoder = gem.stream_encoder(request(include_thoughts=True), "client-model")
    data = b"".join(encoder.encode(ev) for ev in GOLDEN[name]) + encoder.finish()
    chunks, failure = sdk_stream([data])
    assert failure is None
    original, _ = sdk_stream([(FIXTURES / f"{name}.sse").read_bytes()])
    text = ["".join(p.text for p in parts_of(c) if p.text and not p.thought) for c in (chunks, original)]
    assert text[0] == text[1]
    calls = [
        [(p.function_call.name, p.function_call.args) for p in parts_of(c) if p.function_call]
        for c in (chunks, original)
    ]
    assert calls[0] == calls[1]
    counts = [
        (u.prompt_token_count, u.candidates_token_count, u.thoughts_token_count or 0, u.total_token_count)
        for u in (chunks[-1].usage_metadata, original[-1].usage_metadata)
        if u is not None
    ]
    assert len(counts) == 2 and counts[0] == counts[1]


# -- passthrough tap ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "usage", "done", "error"),
    [
        ("text", ir.Usage(9, 0, 38, 27), True, None),
        ("tools", ir.Usage(71, 0, 95, 55), True, None),
        ("thinking", ir.Usage(12, 4, 51, 40), True, None),
        ("blocked", prompt(7), True, None),
        ("truncated", prompt(5), False, None),
        (
            "error",
            prompt(9),
            False,
            {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"},
        ),
    ],
)
def test_tap(name: str, usage: ir.Usage, done: bool, error: dict[str, Any] | None) -> None:
    tap = gem.stream_tap(request())
    events = SSEFramer().feed((FIXTURES / f"{name}.sse").read_bytes())
    assert all(tap.feed(ev) for ev in events)
    assert (tap.usage, tap.done, tap.error) == (usage, done, error)
    assert tap.feed(SSEEvent(None, b"not json", b"")) and tap.feed(SSEEvent(None, b"[]", b""))
