"""anthropic_messages codec: requests both ways, responses, usage, errors, token counts.

The error and response shapes are checked by the official ``anthropic`` SDK itself, through an
in-memory transport, so "the SDK raises its own class" is tested rather than assumed.
"""

from __future__ import annotations

import copy
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayproxy import ir
from relayproxy.codecs import anthropic_messages as am
from relayproxy.codecs.anthropic_messages._request_encode import _safe_id
from relayproxy.codecs.anthropic_messages._vocab import fold_call_id, unfold_call_id
from relayproxy.errors import (
    InsufficientBalance,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RelayError,
    Unauthorized,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)

OK: dict[str, Any] = {"model": "claude-x", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def body_of(call: Any) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(call.body)
    return result


def sdk_client(handler: Any) -> anthropic.Anthropic:
    transport = httpx2.MockTransport(handler)
    return anthropic.Anthropic(
        api_key="k", base_url="http://gw.test", http_client=httpx2.Client(transport=transport), max_retries=0
    )


# -- decode_request ------------------------------------------------------------------------------


def test_decode_minimal_request() -> None:
    req = am.decode_request({**OK, "stream": True})
    assert (req.model, req.max_output_tokens, req.stream, req.system) == ("claude-x", 64, True, None)
    assert req.messages == [ir.Message("user", [ir.Text("hi")])]
    assert am.decode_request(OK, model="ignored", stream=True).stream is False  # body wins


def test_decode_system_blocks_and_hoisted_system_turns() -> None:
    """SDK 2.x may put {"role": "system"} turns in messages: they join the top-level system."""
    body = {
        **OK,
        "system": [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "system", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "b"},
        ],
    }
    req = am.decode_request(body)
    assert req.system == "Be terse.\n\nAnswer in French."
    assert [m.role for m in req.messages] == ["user", "user"]  # consecutive same-role turns are kept


def test_decode_every_content_block_kind() -> None:
    folded = fold_call_id("call_g1", "c2lnbmF0dXJl+/=")
    body = {
        **OK,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "see"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "thinking", "thinking": "relayed", "signature": ""},
                    {"type": "redacted_thinking", "data": "ENC"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": folded, "name": "f", "input": {"a": 1}},
                    {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                    {"type": "tool_result", "tool_use_id": folded, "content": "42"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "boom"},
                            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "log"}},
                        ],
                    },
                    {"type": "tool_result", "tool_use_id": "toolu_3"},
                ],
            },
        ],
    }
    user, assistant, results = am.decode_request(body).messages
    assert user.parts == [
        ir.Text("see"),
        ir.Image(mime_type="image/png", data="iVBO"),
        ir.Image(url="https://x.test/a.jpg"),
        ir.Image(mime_type="application/pdf", data="JVBE"),
        ir.Text("notes"),
    ]
    assert assistant.parts == [
        ir.Thinking("hmm", "sig"),
        ir.Thinking("relayed", None),
        ir.Thinking("", redacted="ENC"),
        ir.Text("calling"),
        ir.ToolCall("call_g1", "f", {"a": 1}, signature="c2lnbmF0dXJl+/="),  # the Gemini signature comes back
    ]
    assert results.parts == [
        ir.ToolResult("call_g1", "42"),
        ir.ToolResult("toolu_2", [ir.Text("boom"), ir.Text("log")], is_error=True),
        ir.ToolResult("toolu_3", ""),
    ]


def test_decode_tools_choice_sampling_reasoning_format_user() -> None:
    body = {
        **OK,
        "tools": [
            {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}},
            {"type": "custom", "name": "noargs"},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},  # server tool: skipped
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["\n\nHuman:"],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}},
        "metadata": {"user_id": "u-1"},
    }
    req = am.decode_request(body)
    assert [t.name for t in req.tools] == ["get_weather", "noargs"]
    assert req.tools[1].parameters == {"type": "object", "properties": {}}
    assert req.tool_choice == ir.ToolChoice("required", None, parallel=False)
    assert (req.temperature, req.top_p, req.top_k, req.stop) == (0.5, 0.9, 40, ["\n\nHuman:"])
    assert req.reasoning == ir.Reasoning("high", 2048, include_thoughts=True)
    assert req.json_schema == {"type": "object"}
    assert req.user == "u-1"


def test_decode_what_the_sdk_sends() -> None:
    """The body anthropic 2.x actually puts on the wire (captured through a mock transport)."""
    captured: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        captured.append(orjson.loads(request.content))
        return httpx2.Response(200, json=am.encode_response(ir.ChatResponse("msg_1", "m", [ir.Text("ok")]), "m"))

    sdk_client(handler).messages.create(
        model="claude-x",
        max_tokens=2000,
        system=[{"type": "text", "text": "Sys", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "P"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]},
        ],
        tools=[{"name": "w", "description": "weather", "input_schema": {"type": "object", "properties": {}}}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        thinking={"type": "enabled", "budget_tokens": 1024},
        stop_sequences=["END"],
        metadata={"user_id": "u-1"},
        extra_body={"temperature": 0.2, "top_k": 10},
    )
    req = am.decode_request(captured[0])
    assert (req.system, req.max_output_tokens, req.temperature, req.top_k, req.user) == ("Sys", 2000, 0.2, 10, "u-1")
    assert req.messages[1].parts == [ir.ToolCall("toolu_1", "w", {"c": "P"})]
    assert req.tool_choice == ir.ToolChoice("auto", parallel=False)
    assert req.reasoning == ir.Reasoning(None, 1024, include_thoughts=True)


@pytest.mark.parametrize(
    ("thinking", "effort", "expected"),
    [
        (None, None, None),
        (None, "low", ir.Reasoning("low")),
        ({"type": "adaptive"}, "max", ir.Reasoning("max", include_thoughts=True)),
        ({"type": "adaptive", "display": "omitted"}, None, ir.Reasoning(None, include_thoughts=False)),
        ({"type": "disabled"}, None, ir.Reasoning("none")),
        ({"type": "enabled", "budget_tokens": 1024, "display": "omitted"}, None, ir.Reasoning(None, 1024)),
    ],
)
def test_decode_thinking_variants(thinking: Any, effort: Any, expected: Any) -> None:
    body = dict(OK)
    if thinking is not None:
        body["thinking"] = thinking
    if effort is not None:
        body["output_config"] = {"effort": effort}
    assert am.decode_request(body).reasoning == expected


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ({"type": "auto"}, ir.ToolChoice("auto")),
        ({"type": "none"}, ir.ToolChoice("none")),
        ({"type": "tool", "name": "f"}, ir.ToolChoice("tool", "f")),
        ({"type": "auto", "disable_parallel_tool_use": False}, ir.ToolChoice("auto", parallel=True)),
    ],
)
def test_decode_tool_choice(tool_choice: Any, expected: ir.ToolChoice) -> None:
    assert am.decode_request({**OK, "tool_choice": tool_choice}).tool_choice == expected


def msgs(*content: Any, role: str = "user") -> dict[str, Any]:
    return {**OK, "messages": [{"role": role, "content": list(content)}]}


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ([], None),
        ({"max_tokens": 1, "messages": OK["messages"]}, "model"),
        ({"model": "m", "messages": OK["messages"]}, "max_tokens"),
        ({**OK, "max_tokens": 0}, "max_tokens"),
        ({**OK, "max_tokens": True}, "max_tokens"),
        ({**OK, "messages": []}, "messages"),
        ({**OK, "messages": [{"role": "system", "content": "only a system turn"}]}, "messages"),
        ({**OK, "messages": ["hi"]}, "messages[0]"),
        ({**OK, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({**OK, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({**OK, "system": 5}, "system"),
        ({**OK, "system": [{"type": "image"}]}, "system[0]"),
        (msgs({"type": "video"}), "messages[0].content[0].type"),
        (msgs({"text": "no type"}), "messages[0].content[0].type"),
        (msgs({"type": "text", "text": 3}), "messages[0].content[0].text"),
        (msgs({"type": "image", "source": {"type": "file", "file_id": "f"}}), "messages[0].content[0].source.type"),
        (
            msgs({"type": "image", "source": {"type": "base64", "data": "x"}}),
            "messages[0].content[0].source.media_type",
        ),
        (msgs({"type": "document", "source": {"type": "file"}}), "messages[0].content[0].source.type"),
        (msgs({"type": "tool_use", "id": "t", "name": "f", "input": {}}), "messages[0].content[0]"),
        (
            msgs({"type": "tool_use", "id": "t", "name": "f", "input": "{}"}, role="assistant"),
            "messages[0].content[0].input",
        ),
        (msgs({"type": "tool_use", "id": "", "name": "f", "input": {}}, role="assistant"), "messages[0].content[0].id"),
        (msgs({"type": "tool_result", "tool_use_id": "t"}, role="assistant"), "messages[0].content[0]"),
        (msgs({"type": "tool_result", "tool_use_id": "t", "content": 1}), "messages[0].content[0].content"),
        (
            msgs({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "x"}]}),
            "messages[0].content[0].content[0]",
        ),
        (msgs({"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}), "messages[0].content[0].is_error"),
        (msgs({"type": "thinking", "thinking": None}, role="assistant"), "messages[0].content[0].thinking"),
        (msgs({"type": "redacted_thinking"}, role="assistant"), "messages[0].content[0].data"),
        ({**OK, "tools": {}}, "tools"),
        ({**OK, "tools": [{"input_schema": {}}]}, "tools[0].name"),
        ({**OK, "tools": [{"name": "f", "input_schema": []}]}, "tools[0].input_schema"),
        ({**OK, "tools": [{"name": "f", "type": 7}]}, "tools[0].type"),
        ({**OK, "tool_choice": "auto"}, "tool_choice"),
        ({**OK, "tool_choice": {"type": "required"}}, "tool_choice.type"),
        ({**OK, "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        (
            {**OK, "tool_choice": {"type": "auto", "disable_parallel_tool_use": 1}},
            "tool_choice.disable_parallel_tool_use",
        ),
        ({**OK, "temperature": 1.5}, "temperature"),
        ({**OK, "top_p": "0.9"}, "top_p"),
        ({**OK, "top_k": 0}, "top_k"),
        ({**OK, "stop_sequences": "END"}, "stop_sequences"),
        ({**OK, "thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({**OK, "thinking": {"type": "on"}}, "thinking.type"),
        ({**OK, "output_config": {"effort": "extreme"}}, "output_config.effort"),
        ({**OK, "output_config": {"format": {"type": "json_object"}}}, "output_config.format.type"),
        ({**OK, "output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
        ({**OK, "output_config": []}, "output_config"),
        ({**OK, "metadata": {"user_id": 5}}, "metadata.user_id"),
        ({**OK, "stream": "yes"}, "stream"),
    ],
)
def test_decode_rejects_with_field_path(body: Any, path: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        am.decode_request(body)
    assert info.value.path == path
    assert "expected" in info.value.message or "required" in info.value.message or "support" in info.value.message


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(
    ["model", "max_tokens", "messages", "system", "tools", "tool_choice", "thinking", "output_config", "metadata"]
)
BLOCK_TYPES = st.sampled_from(
    ["text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking", "server_tool_use"]
)
BLOCK = st.fixed_dictionaries({"type": BLOCK_TYPES}, optional={"source": JSON, "text": JSON, "input": JSON, "id": JSON})
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "x"]), "content": st.lists(BLOCK, max_size=3) | JSON}
)
NEAR_VALID = st.fixed_dictionaries(
    {"model": st.just("m"), "max_tokens": st.just(5), "messages": st.lists(MESSAGE, min_size=1, max_size=3)},
    optional=dict.fromkeys(("system", "tools", "tool_choice", "thinking", "output_config", "temperature"), JSON),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, st.dictionaries(KEYS, JSON), NEAR_VALID))
def test_fuzz_decode_request_raises_only_invalid_request(body: Any) -> None:
    """Invariant: any JSON value decodes or raises InvalidRequest, never KeyError/TypeError/..."""
    try:
        req = am.decode_request(body)
    except InvalidRequest:
        return
    am.encode_request(req, "up")  # what decodes also encodes


# -- encode_request ------------------------------------------------------------------------------


def rich_request() -> ir.ChatRequest:
    return ir.ChatRequest(
        model="client-model",
        system="You are terse.",
        messages=[
            ir.Message(
                "user",
                [ir.Text("What is here?"), ir.Image("image/png", "iVBO"), ir.Image(url="https://x.test/cat.webp")],
            ),
            ir.Message(
                "assistant",
                [
                    ir.Thinking("Two lookups.", "sig-1"),
                    ir.Text("Checking."),
                    ir.ToolCall("call_1", "get_weather", {"city": "Paris"}),
                    ir.ToolCall("call.2/x", "get_time", {"tz": "CET"}),
                ],
            ),
            ir.Message("user", [ir.ToolResult("call_1", "18C")]),
            ir.Message("user", [ir.ToolResult("call.2/x", [ir.Text("12:00")], is_error=True), ir.Text("thanks")]),
            ir.Message("assistant", [ir.Text("Paris: 18C, 12:00.")]),
            ir.Message("user", [ir.Text("And tomorrow?")]),
        ],
        tools=[
            ir.Tool("get_weather", "Weather by city", {"type": "object", "properties": {"city": {"type": "string"}}}),
            ir.Tool("get_time", None, {"properties": {"tz": {"type": "string"}}}),
        ],
        tool_choice=ir.ToolChoice("auto", parallel=False),
        max_output_tokens=1000,
        stop=["END", ""],
        reasoning=ir.Reasoning(budget_tokens=2048),
        user="u-9",
        stream=True,
    )


def test_encode_request_wire_shape() -> None:
    call = am.encode_request(rich_request(), "claude-up")
    body = body_of(call)
    assert call.path == "/v1/messages"
    assert call.headers == [(b"anthropic-version", b"2023-06-01")]
    assert body["model"] == "claude-up"
    assert body["system"] == "You are terse."
    assert body["max_tokens"] == 3048  # raised above the thinking budget, keeping the 1000 asked for
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-9"}
    assert body["stream"] is True
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    tool_turn = body["messages"][2]["content"]
    assert [b["type"] for b in tool_turn] == ["tool_result", "tool_result", "text"]  # results first, merged
    tool_use_ids = [b["id"] for b in body["messages"][1]["content"] if b["type"] == "tool_use"]
    assert tool_use_ids[0] == "call_1"
    assert tool_use_ids[1] == tool_turn[1]["tool_use_id"]  # sanitized the same way in both places
    assert all(c.isalnum() or c in "_-" for c in tool_use_ids[1])
    assert tool_turn[1]["is_error"] is True
    assert body["tools"][1]["input_schema"]["type"] == "object"
    assert body["messages"][0]["content"][2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://x.test/cat.webp"},
    }


def test_round_trip_keeps_the_meaning() -> None:
    """decode_request(encode_request(x)) == x, up to the documented normalisations."""
    req = rich_request()
    back = am.decode_request(body_of(am.encode_request(req, "claude-up")))
    odd_id = body_of(am.encode_request(req, "m"))["messages"][1]["content"][3]["id"]
    expected = copy.deepcopy(req)
    expected.model = "claude-up"
    expected.max_output_tokens = 3048
    expected.stop = ["END"]
    expected.reasoning = ir.Reasoning(None, 2048, include_thoughts=True)
    expected.tools[1].parameters = {"type": "object", "properties": {"tz": {"type": "string"}}}
    expected.messages[1].parts[3] = ir.ToolCall(odd_id, "get_time", {"tz": "CET"})
    tool_turn = [
        ir.ToolResult("call_1", "18C"),
        ir.ToolResult(odd_id, [ir.Text("12:00")], is_error=True),
        ir.Text("thanks"),
    ]
    expected.messages[2:4] = [ir.Message("user", tool_turn)]
    assert back == expected


def test_round_trip_of_a_decoded_client_body() -> None:
    """An Anthropic body decoded then encoded comes out equivalent (signatures and ids intact)."""
    body = {
        "model": "m",
        "max_tokens": 5000,
        "system": "S",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "q"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "t", "signature": "s"},
                    {"type": "redacted_thinking", "data": "R"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": [1]}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {"x": {"type": "array"}}}}],
        "tool_choice": {"type": "tool", "name": "f"},
        "stop_sequences": ["Z"],
        "temperature": 0.3,
        "top_k": 5,
    }
    again = body_of(am.encode_request(am.decode_request(body), "m"))
    assert again == body


def test_first_turn_must_be_user_and_empty_turns_are_dropped() -> None:
    req = ir.ChatRequest("m", [ir.Message("assistant", [ir.Text("Hello")]), ir.Message("user", [ir.Text("  ")])])
    req.messages.append(ir.Message("user", [ir.Text("Hi")]))
    messages = body_of(am.encode_request(req, "m"))["messages"]
    assert messages == [
        {"role": "user", "content": [{"type": "text", "text": "(continue)"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]


def test_final_assistant_prefill_loses_trailing_whitespace() -> None:
    req = ir.ChatRequest("m", [ir.Message("user", [ir.Text("Hi")]), ir.Message("assistant", [ir.Text("Sure: \n")])])
    assert body_of(am.encode_request(req, "m"))["messages"][-1]["content"] == [{"type": "text", "text": "Sure:"}]


def test_thinking_without_signature_is_not_replayed() -> None:
    parts: list[ir.Part] = [ir.Thinking("deepseek reasoning"), ir.Text("answer")]
    req = ir.ChatRequest("m", [ir.Message("user", [ir.Text("q")]), ir.Message("assistant", parts)])
    assistant = body_of(am.encode_request(req, "m"))["messages"][1]
    assert assistant["content"] == [{"type": "text", "text": "answer"}]


@pytest.mark.parametrize(
    ("image", "block"),
    [
        (
            ir.Image(url="data:image/png;base64,AAAA"),
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
        ),
        (
            ir.Image("image/jpg", "BBBB"),
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "BBBB"}},
        ),
        (
            ir.Image("application/pdf", "JVBE"),
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
        ),
        (
            ir.Image("application/pdf", url="https://x.test/a.pdf"),
            {"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}},
        ),
    ],
)
def test_encode_images(image: ir.Image, block: dict[str, Any]) -> None:
    req = ir.ChatRequest("m", [ir.Message("user", [image])])
    assert body_of(am.encode_request(req, "m"))["messages"][0]["content"] == [block]


@pytest.mark.parametrize(
    "image", [ir.Image("image/heic", "x"), ir.Image(url="data:image/png,rawbytes"), ir.Image(), ir.Image(url="data:x")]
)
def test_encode_rejects_images_anthropic_cannot_take(image: ir.Image) -> None:
    with pytest.raises(InvalidRequest):
        am.encode_request(ir.ChatRequest("m", [ir.Message("user", [image])]), "m")


@pytest.mark.parametrize(
    ("effort", "budget"),
    [("minimal", 1024), ("low", 2048), ("medium", 8192), ("high", 16384), ("xhigh", 24576), ("max", 24576)],
)
def test_effort_maps_to_a_thinking_budget(effort: str, budget: int) -> None:
    req = ir.ChatRequest("m", [ir.Message("user", [ir.Text("q")])], reasoning=ir.Reasoning(effort))
    body = body_of(am.encode_request(req, "m"))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] > budget


@pytest.mark.parametrize(
    ("reasoning", "thinking"),
    [
        (ir.Reasoning("none"), {"type": "disabled"}),
        (ir.Reasoning(budget_tokens=0), {"type": "disabled"}),
        (ir.Reasoning(budget_tokens=100), {"type": "enabled", "budget_tokens": 1024}),
        (ir.Reasoning(budget_tokens=-1), {"type": "enabled", "budget_tokens": 8192}),
        (ir.Reasoning(include_thoughts=True), None),
    ],
)
def test_budget_edge_cases(reasoning: ir.Reasoning, thinking: Any) -> None:
    req = ir.ChatRequest("m", [ir.Message("user", [ir.Text("q")])], reasoning=reasoning, max_output_tokens=50000)
    assert body_of(am.encode_request(req, "m")).get("thinking") == thinking


def test_thinking_drops_sampling_and_yields_to_forced_tool_use() -> None:
    base = ir.ChatRequest("m", [ir.Message("user", [ir.Text("q")])], reasoning=ir.Reasoning("low"))
    base.temperature, base.top_k = 0.2, 3
    body = body_of(am.encode_request(base, "m"))
    assert "temperature" not in body and "top_k" not in body and body["thinking"]["type"] == "enabled"
    base.tools, base.tool_choice = [ir.Tool("f")], ir.ToolChoice("required")
    body = body_of(am.encode_request(base, "m"))
    assert "thinking" not in body and body["tool_choice"] == {"type": "any"}


def test_sampling_is_clamped_and_not_doubled() -> None:
    req = ir.ChatRequest("m", [ir.Message("user", [ir.Text("q")])], temperature=1.7, top_p=0.5)
    body = body_of(am.encode_request(req, "m"))
    assert body["temperature"] == 1.0 and "top_p" not in body
    req.temperature = None
    assert body_of(am.encode_request(req, "m"))["top_p"] == 0.5


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        (ir.ToolChoice("auto"), {"type": "auto"}),
        (ir.ToolChoice("none", parallel=False), {"type": "none"}),
        (ir.ToolChoice("required", parallel=False), {"type": "any", "disable_parallel_tool_use": True}),
        (ir.ToolChoice("tool", "f"), {"type": "tool", "name": "f"}),
        (ir.ToolChoice("tool"), {"type": "any"}),
    ],
)
def test_encode_tool_choice(choice: ir.ToolChoice, wire: dict[str, Any]) -> None:
    req = ir.ChatRequest("m", [ir.Message("user", [ir.Text("q")])], tools=[ir.Tool("f")], tool_choice=choice)
    assert body_of(am.encode_request(req, "m"))["tool_choice"] == wire


def test_tool_schemas_become_objects() -> None:
    tools = [ir.Tool("a", parameters={"type": "string"}), ir.Tool("b", parameters={}), ir.Tool("c")]
    req = ir.ChatRequest("m", [ir.Message("user", [ir.Text("q")])], tools=tools)
    schemas = [t["input_schema"] for t in body_of(am.encode_request(req, "m"))["tools"]]
    assert schemas == [{"type": "object", "properties": {}}, {"type": "object"}, {"type": "object", "properties": {}}]


def test_history_with_tool_calls_but_no_tools_declares_them() -> None:
    """Anthropic 400s "Requests which include tool_use or tool_result blocks must define tools"."""
    req = ir.ChatRequest(
        "m",
        [
            ir.Message("user", [ir.Text("q")]),
            ir.Message("assistant", [ir.ToolCall("c1", "f", {})]),
            ir.Message("user", [ir.ToolResult("c1", "r")]),
        ],
        tool_choice=ir.ToolChoice("auto"),
    )
    body = body_of(am.encode_request(req, "m"))
    assert body["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {"type": "none"}
    assert "tools" not in body_of(am.encode_request(ir.ChatRequest("m", [ir.Message("user", [ir.Text("q")])]), "m"))


def test_tool_id_sanitizing_is_deterministic_and_injective_enough() -> None:
    ids = ["a.b", "a/b", "a b", "é", ""]
    safe = [_safe_id(i) for i in ids]
    assert safe == [_safe_id(i) for i in ids]
    assert len(set(safe)) == len(ids)
    assert all(s and all(c.isascii() and (c.isalnum() or c in "_-") for c in s) for s in safe)
    assert _safe_id("toolu_01-ok") == "toolu_01-ok"


def test_json_schema_and_empty_tool_result() -> None:
    req = ir.ChatRequest("m", [ir.Message("user", [ir.ToolResult("c", "")])], json_schema={"type": "object"})
    body = body_of(am.encode_request(req, "m"))
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    assert body["messages"][0]["content"] == [{"type": "tool_result", "tool_use_id": "c"}]
    assert "stream" not in body


def test_prepare_passthrough_hoists_system_turns_and_sets_the_model() -> None:
    body = {
        **OK,
        "system": "Base.",
        "messages": [{"role": "system", "content": "Extra."}, {"role": "user", "content": "hi"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
    }
    req = am.decode_request(body)
    sent = body_of(am.prepare_passthrough(copy.deepcopy(body), req, "claude-up"))
    assert sent["model"] == "claude-up"
    assert sent["system"] == "Base.\n\nExtra."
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    assert sent["tools"] == body["tools"]  # server tools survive a passthrough
    cached = {**body, "system": [{"type": "text", "text": "Base.", "cache_control": {"type": "ephemeral"}}]}
    sent = body_of(am.prepare_passthrough(copy.deepcopy(cached), req, "up"))
    assert sent["system"] == [*cached["system"], {"type": "text", "text": "Extra."}]  # cache_control kept
    untouched = {**OK, "service_tier": "auto"}
    assert body_of(am.prepare_passthrough(dict(untouched), req, "claude-x")) == untouched


def test_auth_headers() -> None:
    assert am.auth_headers("sk-ant") == [(b"x-api-key", b"sk-ant")]


# -- responses and usage -------------------------------------------------------------------------

UPSTREAM_RESPONSE = {
    "id": "msg_01AbC",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "Let me see.", "signature": "sig=="},
        {"type": "redacted_thinking", "data": "ENC"},
        {"type": "text", "text": "Checking."},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 100,
        "output_tokens": 40,
        "output_tokens_details": {"thinking_tokens": 25},
        "service_tier": "standard",
    },
}


def test_decode_response() -> None:
    resp = am.decode_response(UPSTREAM_RESPONSE)
    assert resp == ir.ChatResponse(
        id="msg_01AbC",
        model="claude-sonnet-4-5-20250929",
        parts=[
            ir.Thinking("Let me see.", "sig=="),
            ir.Thinking("", redacted="ENC"),
            ir.Text("Checking."),
            ir.ToolCall("toolu_01", "get_weather", {"city": "Paris"}),
        ],
        finish=ir.FinishReason.TOOL_CALLS,
        usage=ir.Usage(126, 100, 40, 25),
    )
    assert am.response_usage(UPSTREAM_RESPONSE) == ir.Usage(126, 100, 40, 25)
    assert am.response_usage({"usage": {"input_tokens": -3, "output_tokens": "7"}}) == ir.Usage()
    assert am.response_usage([]) is None and am.response_usage({}) is None


@pytest.mark.parametrize("body", [None, [], {"type": "message"}, {"content": "text"}])
def test_decode_response_rejects_other_shapes(body: Any) -> None:
    with pytest.raises(UpstreamProtocolError):
        am.decode_response(body)


@pytest.mark.parametrize(
    ("stop", "finish", "sequence"),
    [
        ("end_turn", ir.FinishReason.STOP, None),
        ("stop_sequence", ir.FinishReason.STOP, "END"),
        ("pause_turn", ir.FinishReason.STOP, None),
        ("max_tokens", ir.FinishReason.LENGTH, None),
        ("model_context_window_exceeded", ir.FinishReason.LENGTH, None),
        ("refusal", ir.FinishReason.CONTENT_FILTER, None),
        (None, ir.FinishReason.STOP, None),
    ],
)
def test_stop_reasons(stop: Any, finish: ir.FinishReason, sequence: str | None) -> None:
    resp = am.decode_response({"content": [], "stop_reason": stop, "stop_sequence": sequence})
    assert (resp.finish, resp.stop_sequence) == (finish, sequence)


def test_encode_response_is_what_the_sdk_parses() -> None:
    resp = ir.ChatResponse(
        id="chatcmpl-9",
        model="gpt-up",
        parts=[
            ir.Thinking("reasoning without signature"),
            ir.Text("Hello"),
            ir.Text(""),
            ir.ToolCall("call_1", "f", {"a": [1, "é"]}, signature="gem/sig+=="),
        ],
        finish=ir.FinishReason.TOOL_CALLS,
        usage=ir.Usage(100, 40, 12, 3),
    )
    wire = am.encode_response(resp, "client-model")
    assert wire["id"] == "msg_chatcmpl-9"
    assert wire["usage"] == {
        "input_tokens": 60,
        "cache_read_input_tokens": 40,
        "cache_creation_input_tokens": 0,
        "output_tokens": 12,
    }
    client = sdk_client(lambda request: httpx2.Response(200, json=wire))
    message = client.messages.create(model="client-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    tool = message.content[2]
    assert tool.type == "tool_use" and tool.input == {"a": [1, "é"]}
    assert unfold_call_id(tool.id) == ("call_1", "gem/sig+==")
    assert (message.stop_reason, message.usage.input_tokens, message.usage.cache_read_input_tokens) == (
        "tool_use",
        60,
        40,
    )
    assert am.decode_response(wire).parts[2] == ir.ToolCall(tool.id, "f", {"a": [1, "é"]})


def test_encode_response_stop_sequence_and_no_usage() -> None:
    resp = ir.ChatResponse(id="", model="x", parts=[ir.Text("a")], stop_sequence="END")
    wire = am.encode_response(resp, "m")
    assert (wire["stop_reason"], wire["stop_sequence"]) == ("stop_sequence", "END")
    assert wire["id"].startswith("msg_") and len(wire["id"]) > 4
    assert wire["usage"]["input_tokens"] == 0 and wire["usage"]["output_tokens"] == 0
    resp.finish = ir.FinishReason.LENGTH
    assert am.encode_response(resp, "m")["stop_sequence"] is None


def test_fold_and_unfold_call_ids() -> None:
    assert fold_call_id("call_1", None) == "call_1"
    folded = fold_call_id("call_1", "skip_thought_signature_validator")
    assert unfold_call_id(folded) == ("call_1", "skip_thought_signature_validator")
    assert all(c.isalnum() or c in "_-" for c in folded)
    assert unfold_call_id("toolu_01") == ("toolu_01", None)
    # An id that already carries the signature as base64url (the Gemini codec's ids) is left alone.
    assert fold_call_id("gcall_c0p1_CiIB-_sig", "CiIB+/sig==") == "gcall_c0p1_CiIB-_sig"
    assert unfold_call_id("x__gts_%%%") == ("x__gts_%%%", None)


# -- errors --------------------------------------------------------------------------------------

SDK_CLASSES = [
    (InvalidRequest("bad field", "messages"), 400, "invalid_request_error", anthropic.BadRequestError),
    (Unauthorized(), 401, "authentication_error", anthropic.AuthenticationError),
    (InsufficientBalance("top up"), 402, "billing_error", anthropic.APIStatusError),
    (UpstreamStatusError(403, "nope"), 403, "permission_error", anthropic.PermissionDeniedError),
    (NotFound("no such model"), 404, "not_found_error", anthropic.NotFoundError),
    (PayloadTooLarge("too big"), 413, "request_too_large", anthropic.APIStatusError),
    (RateLimited("slow down"), 429, "rate_limit_error", anthropic.RateLimitError),
    (RelayError("bug"), 500, "api_error", anthropic.InternalServerError),
    (UpstreamStatusError(500, "upstream broke"), 502, "api_error", anthropic.InternalServerError),
    (UpstreamStatusError(529, "Overloaded"), 503, "overloaded_error", anthropic.InternalServerError),
    (UpstreamTimeout("slow upstream"), 504, "timeout_error", anthropic.InternalServerError),
]


@pytest.mark.parametrize(("err", "status", "etype", "sdk_class"), SDK_CLASSES)
def test_encode_error_makes_the_sdk_raise_its_class(
    err: RelayError, status: int, etype: str, sdk_class: type[Exception]
) -> None:
    got_status, body = am.encode_error(err)
    assert (got_status, body) == (status, {"type": "error", "error": {"type": etype, "message": err.message}})
    client = sdk_client(lambda request: httpx2.Response(got_status, json=body))
    with pytest.raises(sdk_class) as info:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert isinstance(info.value, anthropic.APIStatusError)
    assert info.value.status_code == status and info.value.type == etype


def test_encode_error_keeps_an_unlisted_4xx_upstream_type() -> None:
    assert am.encode_error(UpstreamStatusError(409, "c", upstream_type="conflict_error"))[1]["error"]["type"] == (
        "conflict_error"
    )
    assert am.encode_error(UpstreamStatusError(422, "c", upstream_type="weird"))[1]["error"]["type"] == (
        "invalid_request_error"
    )


@pytest.mark.parametrize(
    ("status", "body", "message", "etype", "relay_status"),
    [
        (
            529,
            b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}',
            "Overloaded",
            "overloaded_error",
            503,
        ),
        (
            400,
            b'{"type":"error","error":{"type":"bad_request_error","message":"bad","http_code":"400"}}',
            "bad",
            "invalid_request_error",
            400,
        ),
        (
            401,
            b'{"error":{"message":"Invalid key","type":"authentication_error"}}',
            "Invalid key",
            "authentication_error",
            401,
        ),
        (502, b"<html><body>Bad Gateway</body></html>", "upstream returned HTTP 502", None, 502),
        (503, b"upstream connect error", "upstream returned HTTP 503: upstream connect error", None, 503),
        (500, b"", "upstream returned HTTP 500", None, 502),
        (429, b'{"error":"slow down"}', "slow down", None, 429),
    ],
)
def test_decode_error(status: int, body: bytes, message: str, etype: str | None, relay_status: int) -> None:
    err = am.decode_error(status, body, "7")
    assert (err.upstream_status, err.message, err.upstream_type, err.retry_after) == (status, message, etype, "7")
    assert err.status == relay_status


def test_embedded_error() -> None:
    minimax = {"type": "error", "error": {"type": "bad_request_error", "message": "bad param", "http_code": "400"}}
    err = am.embedded_error(minimax)
    assert err is not None and (err.upstream_status, err.message, err.upstream_type) == (
        400,
        "bad param",
        "invalid_request_error",
    )
    err = am.embedded_error({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    assert err is not None and err.upstream_status == 503
    err = am.embedded_error({"base_resp": {"status_code": 1008, "status_msg": "insufficient balance"}})
    assert err is not None and (err.upstream_status, err.message) == (402, "insufficient balance")
    assert am.embedded_error(UPSTREAM_RESPONSE) is None
    assert am.embedded_error({"base_resp": {"status_code": 0}, **UPSTREAM_RESPONSE}) is None
    assert am.embedded_error("nope") is None


# -- token counting ------------------------------------------------------------------------------


def test_count_tokens() -> None:
    call = am.encode_count_request(rich_request(), "claude-up")
    assert call is not None and call.path == "/v1/messages/count_tokens"
    body = body_of(call)
    assert set(body) == {"model", "messages", "system", "tools", "tool_choice", "thinking"}
    assert am.decode_count_response({"input_tokens": 1234}) == 1234
    assert am.encode_count_response(1234) == {"input_tokens": 1234}
    for bad in ({}, {"input_tokens": "5"}, {"input_tokens": -1}, None):
        with pytest.raises(UpstreamProtocolError):
            am.decode_count_response(bad)


def test_claude_code_billing_block_is_left_out_of_the_ir_system() -> None:
    """Its cc_version differs between conversations; first in the prompt it would defeat the
    translated upstream's prefix cache. A system turn's text that merely mentions it is kept."""
    body = {
        "model": "m",
        "max_tokens": 8,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.0df; cc_entrypoint=sdk-cli;"},
            {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "Agent types: claude"}],
    }
    assert am.decode_request(body).system == "You are a Claude agent.\n\nAgent types: claude"


def test_caller_headers_are_anthropics_version_and_betas() -> None:
    headers = [
        (b"anthropic-version", b"2023-06-01"),
        (b"x-api-key", b"secret"),
        (b"anthropic-beta", b"a-1"),
        (b"anthropic-beta", b"b-2"),
    ]
    assert am.caller_headers(headers) == [headers[0], headers[2], headers[3]]
