"""openai_chat codec: requests (checks, decode, encode, round trips, fuzz), responses, usage, errors
(read back by the real openai SDK), token counting, the module shape, and the legacy stream tap."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayproxy import ir
from relayproxy.codecs import Codec, openai_chat
from relayproxy.codecs.registry import CODECS
from relayproxy.errors import (
    GatewayError,
    InsufficientBalance,
    InvalidRequest,
    PayloadTooLarge,
    ProviderUnavailable,
    RateLimited,
    RelayError,
    Unauthorized,
    UnknownModel,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from relayproxy.ir import Usage
from relayproxy.sse import SSEEvent

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_check_request_accepts_minimal_and_reads_flags() -> None:
    info = openai_chat.check_request({**OK, "stream": True, "stream_options": {"include_usage": True}})
    assert (info.model, info.stream, info.include_usage, info.max_output_tokens) == ("m", True, True, None)
    assert openai_chat.check_request({**OK, "max_tokens": 5, "max_completion_tokens": 7}).max_output_tokens == 7


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ([], None),
        ({"messages": OK["messages"]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["x"]}, "messages[0]"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({**OK, "stream": "yes"}, "stream"),
        ({**OK, "stream_options": {"include_usage": "y"}}, "stream_options.include_usage"),
        ({**OK, "max_tokens": -1}, "max_tokens"),
        ({**OK, "max_completion_tokens": True}, "max_completion_tokens"),
        ({**OK, "temperature": 3}, "temperature"),
        ({**OK, "n": 2}, "n"),
    ],
)
def test_check_request_rejects_with_field_path(body: object, path: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        openai_chat.check_request(body)
    assert info.value.path == path


def test_prepare_passthrough_forces_usage_and_upstream_model() -> None:
    body = {**OK, "stream": True, "stream_options": {"include_obfuscation": False}}
    call = openai_chat.prepare_passthrough(body, openai_chat.decode_request(body), "real-model")
    sent = orjson.loads(call.body)
    assert call.path == "/chat/completions" and sent["model"] == "real-model"
    assert sent["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert body["model"] == "m", "the client's dict is not changed"
    unary = openai_chat.prepare_passthrough(dict(OK), openai_chat.decode_request(dict(OK)), "x")
    assert "stream_options" not in orjson.loads(unary.body)


@pytest.mark.parametrize(
    ("usage", "want"),
    [
        (
            {"prompt_tokens": 88, "completion_tokens": 61, "prompt_tokens_details": {"cached_tokens": 64},
             "completion_tokens_details": {"reasoning_tokens": 20}},
            Usage(88, 64, 61, 20),
        ),
        ({"prompt_tokens": 10, "completion_tokens": 3, "prompt_cache_hit_tokens": 4}, Usage(10, 4, 3, 0)),  # DeepSeek
        ({"prompt_tokens": 10, "completion_tokens": 3, "cached_tokens": 6}, Usage(10, 6, 3, 0)),  # Moonshot
        ({"prompt_tokens": 2, "completion_tokens": 1, "cached_tokens": 9}, Usage(2, 2, 1, 0)),  # cached <= prompt
        ({"prompt_tokens": "2", "completion_tokens": None}, Usage(0, 0, 0, 0)),
        (None, None),
    ],
)  # fmt: skip
def test_decode_usage(usage: object, want: Usage | None) -> None:
    assert openai_chat.decode_usage(usage) == want


def test_response_usage_inside_choices() -> None:
    body = {"choices": [{"index": 0, "usage": {"prompt_tokens": 5, "completion_tokens": 2}}]}
    assert openai_chat.response_usage(body) == Usage(5, 0, 2, 0)


@pytest.mark.parametrize(
    ("err", "status", "etype", "code"),
    [
        (InvalidRequest("bad", "messages"), 400, "invalid_request_error", "invalid_request"),
        (UnknownModel("nope"), 404, "invalid_request_error", "model_not_found"),
        (ProviderUnavailable("set X"), 503, "service_unavailable_error", "provider_unavailable"),
        (UpstreamTimeout("slow"), 504, "timeout_error", "upstream_timeout"),
        (
            UpstreamStatusError(429, "slow down", upstream_type="requests"),
            429,
            "requests",
            "rate_limit_exceeded",
        ),
        (
            UpstreamStatusError(500, "boom", upstream_type="server_error"),
            502,
            "server_error",
            "upstream_status",
        ),
    ],
)
def test_encode_error_shape(err: InvalidRequest, status: int, etype: str, code: str) -> None:
    got_status, body = openai_chat.encode_error(err)
    assert got_status == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == (etype, code)


def test_decode_error_keeps_upstream_message_and_type() -> None:
    body = orjson.dumps({"error": {"message": "Rate limit", "type": "requests", "code": "rate_limit_exceeded"}})
    err = openai_chat.decode_error(429, body, "7")
    assert (err.status, err.message, err.upstream_type, err.retry_after) == (
        429,
        "Rate limit",
        "requests",
        "7",
    )
    assert openai_chat.decode_error(500, b"<html>", None).status == 502
    assert openai_chat.decode_error(529, b"", None).status == 503


def test_embedded_minimax_error() -> None:
    err = openai_chat.embedded_error({"base_resp": {"status_code": 1004, "status_msg": "auth failed"}})
    assert err is not None and err.status == 401 and err.message == "auth failed"
    assert openai_chat.embedded_error({"choices": [], "base_resp": {"status_code": 0}}) is None


def ev(data: bytes) -> SSEEvent:
    return SSEEvent(None, data, b"data: " + data + b"\n\n")


def test_stream_tap_reads_finish_usage_done_and_drops_unrequested_usage_chunk() -> None:
    tap = openai_chat.StreamTap(client_wants_usage=False)
    assert tap.feed(ev(b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}'))
    assert not tap.feed(ev(b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}'))
    assert tap.feed(ev(b"[DONE]"))
    assert (tap.finish_reason, tap.usage, tap.done) == ("stop", Usage(3, 0, 1, 0), True)


def test_stream_tap_keeps_usage_chunk_when_asked_and_reads_moonshot_usage() -> None:
    tap = openai_chat.StreamTap(client_wants_usage=True)
    assert tap.feed(ev(b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}'))
    moon = (
        b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":4,"completion_tokens":2}}]}'
    )
    assert tap.feed(ev(moon))
    assert tap.usage == Usage(4, 0, 2, 0)


def test_stream_tap_error_and_junk() -> None:
    tap = openai_chat.StreamTap(client_wants_usage=False)
    assert tap.feed(ev(b"{not json")) and tap.feed(ev(b"[1,2]")) and tap.feed(ev(b""))
    assert tap.feed(ev(b'{"error":{"message":"x","type":"server_error"}}'))
    assert tap.error == {"message": "x", "type": "server_error"} and not tap.done


def test_stream_encoder_error_is_an_openai_error_event() -> None:
    encoder = openai_chat.stream_encoder(openai_chat.decode_request(dict(OK)), "m")
    out = encoder.error(UpstreamTimeout("stalled"))
    assert out.startswith(b"data: {") and out.endswith(b"\n\n")
    assert orjson.loads(out[6:])["error"]["message"] == "stalled"


# -- decode_request ---------------------------------------------------------------------------------

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
RICH: dict[str, Any] = {
    "model": "gpt-x",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris and Tokyo?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/map.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "Two cities: two calls.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Tōkyō"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "22°C"},
        {"role": "user", "content": "Thanks. Which is warmer?"},
        {"role": "assistant", "content": "Tōkyō."},
        {"role": "user", "content": "And now?"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER, "strict": True},
        },
        {"type": "function", "function": {"name": "get_time"}},
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "max_completion_tokens": 256,
    "max_tokens": 999,
    "temperature": 0.2,
    "top_p": 0.9,
    "stop": ["\n\nUser:"],
    "seed": 7,
    "reasoning_effort": "low",
    "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}},
    "user": "u-1",
    "stream": True,
    "stream_options": {"include_usage": True},
}

RICH_IR = ir.ChatRequest(
    model="gpt-x",
    system="You are terse.\n\nAnswer in French.",
    messages=[
        ir.Message(
            "user",
            [
                ir.Text("Weather in Paris and Tokyo?"),
                ir.Image("image/png", "iVBORw0KGgo="),
                ir.Image(url="https://example.com/map.png"),
            ],
        ),
        ir.Message(
            "assistant",
            [
                ir.Thinking("Two cities: two calls."),
                ir.Text("Checking."),
                ir.ToolCall("call_1", "get_weather", {"city": "Paris"}),
                ir.ToolCall("call_2", "get_weather", {"city": "Tōkyō"}),
            ],
        ),
        ir.Message(
            "user",
            [
                ir.ToolResult("call_1", "18°C", name="get_weather"),
                ir.ToolResult("call_2", "22°C", name="get_weather"),
                ir.Text("Thanks. Which is warmer?"),
            ],
        ),
        ir.Message("assistant", [ir.Text("Tōkyō.")]),
        ir.Message("user", [ir.Text("And now?")]),
    ],
    tools=[ir.Tool("get_weather", "Weather now", WEATHER), ir.Tool("get_time")],
    tool_choice=ir.ToolChoice("tool", "get_weather", parallel=False),
    max_output_tokens=256,
    temperature=0.2,
    top_p=0.9,
    stop=["\n\nUser:"],
    seed=7,
    reasoning=ir.Reasoning(effort="low"),
    json_schema={"type": "object"},
    stream=True,
    include_usage=True,
    user="u-1",
)


def test_decode_rich_request() -> None:
    assert openai_chat.decode_request(RICH, model="ignored", stream=False) == RICH_IR


def test_round_trip_keeps_the_meaning_of_a_rich_request() -> None:
    call = openai_chat.encode_request(openai_chat.decode_request(RICH), "upstream-model")
    assert (call.path, call.headers) == ("/chat/completions", [])
    again = openai_chat.decode_request(orjson.loads(call.body))
    assert again == dataclasses.replace(RICH_IR, model="upstream-model")


def test_encode_rich_request_body() -> None:
    body = orjson.loads(openai_chat.encode_request(RICH_IR, "up").body)
    assert [m["role"] for m in body["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "user",
        "assistant",
        "user",
    ]
    assistant = body["messages"][2]
    assert assistant["reasoning_content"] == "Two cities: two calls."
    assert assistant["tool_calls"][1]["function"]["arguments"] == '{"city":"Tōkyō"}'  # compact JSON
    assert body["messages"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
    }
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False and "strict" not in body["tools"][0]["function"]
    assert body["max_completion_tokens"] == 256 and "max_tokens" not in body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}},
    }
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})


def test_encode_request_from_another_protocols_ir() -> None:
    """An Anthropic-style turn: signed thinking, error results, an image in a result, a budget."""
    req = ir.ChatRequest(
        model="claude-ish",
        messages=[
            ir.Message("user", [ir.Text("go")]),
            ir.Message(
                "assistant",
                [
                    ir.Thinking("plan", signature="sig"),
                    ir.Thinking("", redacted="xx"),
                    ir.ToolCall("toolu_1", "f", {}),
                    ir.ToolCall("toolu_2", "g", {"_raw": "{bad"}, signature="gem"),
                ],
            ),
            ir.Message(
                "user",
                [
                    ir.ToolResult("toolu_1", "boom", is_error=True),
                    ir.ToolResult("toolu_2", [ir.Text("see"), ir.Image("image/jpeg", "AAAA")]),
                    ir.Text("continue"),
                ],
            ),
            ir.Message("assistant", []),
        ],
        tool_choice=ir.ToolChoice("required", parallel=False),
        reasoning=ir.Reasoning(budget_tokens=2048),
        json_mode=True,
        top_k=40,
        stop=["a", "b", "c", "d", "e"],
    )
    body = orjson.loads(openai_chat.encode_request(req, "up").body)
    assert body == {
        "model": "up",
        "messages": [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "plan",
                "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "g", "arguments": "{bad"}},
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: boom"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "see"},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                    {"type": "text", "text": "continue"},
                ],
            },
            {"role": "assistant", "content": ""},
        ],
        "stop": ["a", "b", "c", "d"],
        "reasoning_effort": "medium",
        "response_format": {"type": "json_object"},
    }


@pytest.mark.parametrize(
    ("reasoning", "effort"),
    [
        (ir.Reasoning(budget_tokens=1024), "low"),
        (ir.Reasoning(budget_tokens=1025), "medium"),
        (ir.Reasoning(budget_tokens=8192), "medium"),
        (ir.Reasoning(budget_tokens=8193), "high"),
        (ir.Reasoning(budget_tokens=0), None),
        (ir.Reasoning(budget_tokens=-1), None),
        (ir.Reasoning(effort="minimal", budget_tokens=99999), "minimal"),
        (None, None),
    ],
)
def test_reasoning_budget_maps_to_an_effort(reasoning: ir.Reasoning | None, effort: str | None) -> None:
    req = ir.ChatRequest("m", [ir.Message("user", [ir.Text("x")])], reasoning=reasoning)
    assert orjson.loads(openai_chat.encode_request(req, "m").body).get("reasoning_effort") == effort


def test_tool_choice_modes_round_trip() -> None:
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b", "c")]
    for choice in ("none", "auto", "required"):
        req = openai_chat.decode_request({**OK, "tools": tools, "tool_choice": choice})
        assert req.tool_choice == ir.ToolChoice(choice)
        assert orjson.loads(openai_chat.encode_request(req, "m").body)["tool_choice"] == choice
    allowed = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "required",
            "tools": [{"type": "function", "function": {"name": "c"}}, {"type": "function", "function": {"name": "a"}}],
        },
    }
    req = openai_chat.decode_request({**OK, "tools": tools, "tool_choice": allowed})
    assert ([t.name for t in req.tools], req.tool_choice) == (["a", "c"], ir.ToolChoice("required"))
    lone = openai_chat.decode_request({**OK, "parallel_tool_calls": False, "parallel_tool_calls_": 1})
    assert lone.tool_choice == ir.ToolChoice("auto", parallel=False)
    assert "tool_choice" not in orjson.loads(openai_chat.encode_request(lone, "m").body)  # no tools: nothing


def test_tool_folding_and_invalid_arguments() -> None:
    body = {
        "model": "m",
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}},
                    {"id": "c2", "function": {"name": "f", "arguments": "[1]"}},
                    {"id": "c3", "function": {"name": "f", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r1"}]},
            {"role": "system", "content": "mid-conversation system text"},
            {"role": "tool", "tool_call_id": "c2", "content": None},
            {"role": "user", "content": "next"},
            {"role": "user", "content": "again"},
            {"role": "tool", "tool_call_id": "zz", "content": "orphan"},
        ],
    }
    req = openai_chat.decode_request(body)
    assert req.system == "mid-conversation system text"
    assert req.messages == [
        ir.Message(
            "assistant",
            [
                ir.ToolCall("c1", "f", {"_raw": "{not json"}),
                ir.ToolCall("c2", "f", {"_raw": "[1]"}),
                ir.ToolCall("c3", "f", {}),
            ],
        ),
        ir.Message(
            "user", [ir.ToolResult("c1", [ir.Text("r1")], name="f"), ir.ToolResult("c2", [], name="f"), ir.Text("next")]
        ),
        ir.Message("user", [ir.Text("again")]),
        ir.Message("user", [ir.ToolResult("zz", "orphan")]),
    ]
    sent = orjson.loads(openai_chat.encode_request(req, "m").body)["messages"]
    assert [c["function"]["arguments"] for c in sent[1]["tool_calls"]] == ["{not json", "[1]", "{}"]


def test_gemini_signature_folded_in_the_id_comes_back_unfolded() -> None:
    resp = ir.ChatResponse(
        "r", "m", [ir.ToolCall("call_9", "f", {"a": 1}, signature="c2ln+/=")], ir.FinishReason.TOOL_CALLS
    )
    call = openai_chat.encode_response(resp, "m")["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == "call_9~c2ln+/="
    history = {
        "model": "m",
        "messages": [
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "ok"},
        ],
    }
    req = openai_chat.decode_request(history)
    assert req.messages[0].parts == [ir.ToolCall("call_9", "f", {"a": 1}, signature="c2ln+/=")]
    assert req.messages[1].parts == [ir.ToolResult("call_9", "ok", name="f")]
    sent = orjson.loads(openai_chat.encode_request(req, "m").body)["messages"]
    assert sent[0]["tool_calls"][0]["id"] == sent[1]["tool_call_id"] == "call_9"  # OpenAI upstreams: no signature


def test_decode_request_details() -> None:
    req = openai_chat.decode_request(
        {
            **OK,
            "stop": "END",
            "safety_identifier": "s-1",
            "max_tokens": 9,
            "response_format": {"type": "json_object"},
            "temperature": 1,
        }
    )
    assert (req.stop, req.user, req.max_output_tokens, req.json_mode, req.temperature) == (["END"], "s-1", 9, True, 1.0)
    assert openai_chat.decode_request({**OK, "response_format": {"type": "text"}}).json_mode is False
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/webp;charset=x;base64,QQ=="}}],
        },
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}], "refusal": "No!"},
    ]
    req = openai_chat.decode_request({"model": "m", "messages": msgs})
    assert req.messages == [
        ir.Message("user", [ir.Image("image/webp", "QQ==")]),
        ir.Message("assistant", [ir.Text("No."), ir.Text("No!")]),
    ]


def msg(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}, fields]}


def part(p: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": [p]}]}


TOOL = {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (part({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}), "messages[0].content[0]"),
        (part({"type": "file", "file": {"file_id": "f"}}), "messages[0].content[0]"),
        (part({"type": "video"}), "messages[0].content[0].type"),
        (part("text"), "messages[0].content[0]"),
        (part({"type": "text"}), "messages[0].content[0].text"),
        (part({"type": "image_url", "image_url": "https://x"}), "messages[0].content[0].image_url"),
        (part({"type": "image_url", "image_url": {"url": "ftp://x"}}), "messages[0].content[0].image_url.url"),
        (
            part({"type": "image_url", "image_url": {"url": "data:image/png,abc"}}),
            "messages[0].content[0].image_url.url",
        ),
        (msg(role="function", name="f", content="x"), "messages[1].role"),
        (msg(role="system", content=[{"type": "image_url"}]), "messages[1].content[0]"),
        (msg(role="tool", content="x"), "messages[1].tool_call_id"),
        (msg(role="assistant", tool_calls={}), "messages[1].tool_calls"),
        (msg(role="assistant", tool_calls=[1]), "messages[1].tool_calls[0]"),
        (msg(role="assistant", tool_calls=[{"type": "custom"}]), "messages[1].tool_calls[0].type"),
        (msg(role="assistant", tool_calls=[{"function": {"name": "f"}}]), "messages[1].tool_calls[0].id"),
        (msg(role="assistant", tool_calls=[{"id": "c", "function": {}}]), "messages[1].tool_calls[0].function.name"),
        (
            msg(role="assistant", tool_calls=[{"id": "c", "function": {"name": "f", "arguments": 5}}]),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (msg(role="assistant", content=[{"type": "image_url"}]), "messages[1].content[0]"),
        ({**OK, "tools": {}}, "tools"),
        ({**OK, "tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({**OK, "tools": [{"type": "function"}]}, "tools[0].function"),
        ({**OK, "tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
        (
            {**OK, "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
        ),
        ({**OK, "tools": [TOOL], "tool_choice": "maybe"}, "tool_choice"),
        ({**OK, "tools": [TOOL], "tool_choice": 1}, "tool_choice"),
        ({**OK, "tools": [TOOL], "tool_choice": {"type": "custom"}}, "tool_choice.type"),
        (
            {**OK, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice.function.name",
        ),
        (
            {**OK, "tools": [TOOL], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "any"}}},
            "tool_choice.allowed_tools",
        ),
        (
            {**OK, "tools": [TOOL], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}},
            "tool_choice.allowed_tools.tools",
        ),
        (
            {
                **OK,
                "tools": [TOOL],
                "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{}]}},
            },
            "tool_choice.allowed_tools.tools[0]",
        ),
        ({**OK, "parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({**OK, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**OK, "stop": [1]}, "stop"),
        ({**OK, "top_p": 1.5}, "top_p"),
        ({**OK, "seed": "7"}, "seed"),
        ({**OK, "reasoning_effort": "extreme"}, "reasoning_effort"),
        ({**OK, "response_format": {"type": "xml"}}, "response_format.type"),
        ({**OK, "response_format": "json"}, "response_format.type"),
        (
            {**OK, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
        ({**OK, "functions": [{"name": "f"}]}, "functions"),
        ({**OK, "function_call": "auto"}, "function_call"),
        ({**OK, "user": 5}, "user"),
    ],
)
def test_decode_request_rejects_with_field_path(body: Any, path: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        openai_chat.decode_request(body)
    assert info.value.path == path
    assert info.value.message.startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ([], None),
        ({"model": "m"}, "messages"),
        ({**OK, "n": 2}, "n"),
        ({**OK, "temperature": 3}, "temperature"),
        ({**OK, "stream_options": {"include_usage": "y"}}, "stream_options.include_usage"),
    ],
)
def test_decode_request_keeps_the_check_request_paths(body: Any, path: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        openai_chat.decode_request(body)
    assert info.value.path == path


# Integers stay within 64 bits: bodies come from orjson.loads, which reads bigger ones as floats.
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
JSON = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=25,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        out += [p for k, v in value.items() for p in _paths(v, (*prefix, k))]
    elif isinstance(value, list):
        out += [p for i, v in enumerate(value) for p in _paths(v, (*prefix, i))]
    return out


RICH_PATHS = _paths(RICH)[1:]


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_decode_request_only_raises_invalid_request_on_any_json(body: Any) -> None:
    _decode_or_error(body)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(RICH_PATHS), JSON)
def test_decode_request_only_raises_invalid_request_on_a_mutated_rich_body(path: tuple[Any, ...], new: Any) -> None:
    """Invariant: replacing any field of a valid body by any JSON gives a request or InvalidRequest."""
    out = _decode_or_error(_replace(RICH, path, new))
    if isinstance(out, InvalidRequest):
        assert out.path is None or out.message.startswith(out.path)
    else:
        orjson.loads(openai_chat.encode_request(out, "m").body)  # whatever decodes, encodes


def _decode_or_error(body: Any) -> ir.ChatRequest | InvalidRequest:
    try:
        return openai_chat.decode_request(body)
    except InvalidRequest as err:
        return err


def test_prepare_passthrough_copies_the_body_and_forces_usage() -> None:
    body = {**OK, "stream": True, "stream_options": {"include_obfuscation": False}, "metadata": {"a": "b"}}
    req = openai_chat.decode_request(body)
    call = openai_chat.prepare_passthrough(body, req, "real-model")
    assert call.path == "/chat/completions" and call.headers == []
    assert orjson.loads(call.body) == {
        **body,
        "model": "real-model",
        "stream_options": {"include_obfuscation": False, "include_usage": True},
    }
    assert body["model"] == "m"  # the client's dict is left alone


# -- responses ------------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str | None = "stop", **top: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "logprobs": None, "finish_reason": finish}
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up", "choices": [choice], **top}


def test_decode_response_openai_tools() -> None:
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"type": "function", "function": {"name": "get_weather", "arguments": "{oops"}},
        "junk",
    ]
    usage = {"prompt_tokens": 88, "completion_tokens": 61, "prompt_tokens_details": {"cached_tokens": 64}}
    resp = openai_chat.decode_response(
        completion({"content": "Checking.", "tool_calls": calls}, "tool_calls", usage=usage)
    )
    assert (resp.id, resp.model, resp.finish, resp.usage) == (
        "chatcmpl-1",
        "up",
        ir.FinishReason.TOOL_CALLS,
        Usage(88, 64, 61, 0),
    )
    assert resp.parts[:2] == [ir.Text("Checking."), ir.ToolCall("call_a", "get_weather", {"city": "Paris"})]
    synthesized = resp.parts[2]
    assert isinstance(synthesized, ir.ToolCall) and synthesized.id.startswith("call_")
    assert synthesized.arguments == {"_raw": "{oops"} and len(resp.parts) == 3


def test_decode_response_deepseek_moonshot_and_minimax_shapes() -> None:
    deepseek = completion(
        {"content": "9.8", "reasoning_content": "1 < 8"},
        usage={
            "prompt_tokens": 14,
            "completion_tokens": 61,
            "prompt_cache_hit_tokens": 8,
            "completion_tokens_details": {"reasoning_tokens": 52},
        },
    )
    resp = openai_chat.decode_response(deepseek)
    assert resp.parts == [ir.Thinking("1 < 8"), ir.Text("9.8")] and resp.usage == Usage(14, 8, 61, 52)
    moonshot = completion({"content": "hi"})
    moonshot["choices"][0]["usage"] = {"prompt_tokens": 5, "completion_tokens": 2, "cached_tokens": 4}
    assert openai_chat.decode_response(moonshot).usage == Usage(5, 4, 2, 0)
    minimax = completion({"content": "<think>hmm</think>Hi", "reasoning_details": [{"text": "split"}]})
    assert openai_chat.decode_response(minimax).parts == [ir.Thinking("split"), ir.Text("<think>hmm</think>Hi")]


def test_decode_response_refusal_legacy_function_call_and_forced_tool() -> None:
    refusal = openai_chat.decode_response(completion({"content": None, "refusal": "I can't."}))
    assert refusal.parts == [ir.Text("I can't.")] and refusal.finish is ir.FinishReason.STOP
    legacy = openai_chat.decode_response(
        completion({"function_call": {"name": "f", "arguments": '{"a":1}'}}, "function_call")
    )
    assert legacy.finish is ir.FinishReason.TOOL_CALLS and legacy.parts[0].arguments == {"a": 1}  # type: ignore[union-attr]
    forced = completion({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]}, "stop")
    assert openai_chat.decode_response(forced).finish is ir.FinishReason.TOOL_CALLS
    parts = completion({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, None, id=None)
    resp = openai_chat.decode_response(parts)
    assert resp.parts == [ir.Text("ab")] and resp.finish is ir.FinishReason.STOP and resp.id.startswith("chatcmpl-")


@pytest.mark.parametrize("body", [[], {}, {"choices": []}, {"choices": [{"message": "x"}]}, {"choices": ["x"]}])
def test_decode_response_rejects_what_is_not_a_completion(body: Any) -> None:
    with pytest.raises(UpstreamProtocolError):
        openai_chat.decode_response(body)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {"choices": st.lists(st.fixed_dictionaries({"message": JSON, "finish_reason": JSON}), max_size=2)},
        optional={"usage": JSON, "id": JSON},
    )
    | JSON
)
def test_decode_response_only_raises_upstream_protocol_error(body: Any) -> None:
    try:
        resp = openai_chat.decode_response(body)
    except UpstreamProtocolError:
        return
    openai_chat.encode_response(resp, "m")


RESPONSE = ir.ChatResponse(
    "msg_01",
    "claude",
    [
        ir.Thinking("plan", signature="s"),
        ir.Text("I'll check "),
        ir.Text("both."),
        ir.ToolCall("toolu_1", "get_weather", {"city": "Paris"}),
        ir.ToolCall("toolu_2", "get_weather", {"city": "Tōkyō"}),
    ],
    ir.FinishReason.TOOL_CALLS,
    Usage(412, 256, 96, 10),
)


def test_encode_response_shape() -> None:
    out = openai_chat.encode_response(RESPONSE, "client-model")
    assert out == {
        "id": "chatcmpl-msg_01",
        "object": "chat.completion",
        "created": 0,
        "model": "client-model",
        "choices": [
            {
                "index": 0,
                "logprobs": None,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "I'll check both.",
                    "refusal": None,
                    "reasoning_content": "plan",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "toolu_2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Tōkyō"}'},
                        },
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": 412,
            "completion_tokens": 96,
            "total_tokens": 508,
            "prompt_tokens_details": {"cached_tokens": 256},
            "completion_tokens_details": {"reasoning_tokens": 10},
        },
    }
    empty = openai_chat.encode_response(ir.ChatResponse("chatcmpl-x", "m", []), "m")
    assert empty["id"] == "chatcmpl-x" and empty["choices"][0]["message"]["content"] is None
    assert empty["usage"]["total_tokens"] == 0


def sdk_client(status: int, body: Any) -> openai.OpenAI:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, json=body)

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai.OpenAI(base_url="http://relay.test/v1", api_key="k", max_retries=0, http_client=http)


def test_sdk_reads_the_encoded_response() -> None:
    with sdk_client(200, openai_chat.encode_response(RESPONSE, "client-model")) as client:
        out = client.chat.completions.create(model="client-model", messages=[{"role": "user", "content": "x"}])
    message = out.choices[0].message
    assert (out.id, out.model, out.choices[0].finish_reason) == ("chatcmpl-msg_01", "client-model", "tool_calls")
    assert message.content == "I'll check both." and (message.model_extra or {})["reasoning_content"] == "plan"
    calls = [(c.id, c.function.name, orjson.loads(c.function.arguments)) for c in message.tool_calls or []]  # type: ignore[union-attr]
    assert calls == [("toolu_1", "get_weather", {"city": "Paris"}), ("toolu_2", "get_weather", {"city": "Tōkyō"})]
    assert out.usage is not None and out.usage.prompt_tokens_details is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (412, 96, 508)
    assert out.usage.prompt_tokens_details.cached_tokens == 256


# -- errors, read back by the SDK -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "status", "cls", "etype"),
    [
        (
            InvalidRequest("expected a string", "messages[2].content"),
            400,
            openai.BadRequestError,
            "invalid_request_error",
        ),
        (Unauthorized(), 401, openai.AuthenticationError, "invalid_request_error"),
        (InsufficientBalance("top up"), 402, openai.APIStatusError, "insufficient_quota"),
        (UnknownModel("nope"), 404, openai.NotFoundError, "invalid_request_error"),
        (PayloadTooLarge("too big"), 413, openai.APIStatusError, "invalid_request_error"),
        (RateLimited("slow down", 3), 429, openai.RateLimitError, "rate_limit_error"),
        (GatewayError("bug"), 500, openai.InternalServerError, "server_error"),
        (UpstreamStatusError(500, "boom"), 502, openai.InternalServerError, "server_error"),
        (ProviderUnavailable("no key"), 503, openai.InternalServerError, "service_unavailable_error"),
        (UpstreamTimeout("slow"), 504, openai.InternalServerError, "timeout_error"),
    ],
)
def test_sdk_raises_its_own_class_for_each_error(
    err: RelayError, status: int, cls: type[openai.APIStatusError], etype: str
) -> None:
    got_status, body = openai_chat.encode_error(err)
    assert got_status == status
    with sdk_client(status, body) as client, pytest.raises(cls) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == status and info.value.type == etype
    assert info.value.message == f"Error code: {status} - {err.message}"
    assert info.value.body == body["error"]


def test_error_param_names_the_field() -> None:
    _, body = openai_chat.encode_error(InvalidRequest("expected a string", "messages[2].content"))
    assert body["error"]["param"] == "messages[2].content" and body["error"]["code"] == "invalid_request"


# -- token counting and the module shape ----------------------------------------------------------


def test_token_counting_is_not_an_openai_capability() -> None:
    assert openai_chat.encode_count_request(RICH_IR, "m") is None
    with pytest.raises(UpstreamProtocolError):
        openai_chat.decode_count_response({"input_tokens": 3})
    assert openai_chat.encode_count_response(42) == {"object": "count", "input_tokens": 42}
    assert openai_chat.auth_headers("sk-1") == [(b"authorization", b"Bearer sk-1")]


def _params(fn: Any) -> list[tuple[str, Any, bool]]:
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default is inspect.Parameter.empty) for p in sig.parameters.values() if p.name != "self"]


@pytest.mark.parametrize("protocol", sorted(CODECS))
@pytest.mark.parametrize("name", [n for n in dir(Codec) if not n.startswith("_")])
def test_every_codec_matches_the_codec_protocol(protocol: str, name: str) -> None:
    """Every registered codec module has every Codec name, with the same parameters, in __all__."""
    module = CODECS[protocol]
    assert _params(getattr(module, name)) == _params(getattr(Codec, name))
    assert name in module.__all__  # type: ignore[attr-defined]
