"""gemini_generate codec: requests both ways, responses, errors, token counts; google-genai parses our bytes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayproxy import ir
from relayproxy.codecs import gemini_generate as gem
from relayproxy.codecs.gemini_generate._vocab import SKIP_SIGNATURE, call_id, parse_call_id
from relayproxy.errors import (
    GatewayError,
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

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gemini"
ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
SIG = "CiIBcE0HvWxOfmKL85KWBEQTduRmAFNDtqRSSnqcMbNySu+4GSNTo5grT+esmh8rGkfPb8nySorAwL8+ojo="


def sdk_client(status: int, body: bytes, seen: list[httpx2.Request] | None = None) -> genai.Client:
    """A google-genai client whose HTTP transport answers every call with ``body``."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if seen is not None:
            seen.append(request)
        return httpx2.Response(status, content=body, headers={"content-type": "application/json"})

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    options = types.HttpOptions(base_url="http://gateway.test", api_version="v1beta", httpx_client=http)
    return genai.Client(api_key="k", http_options=options)


def body(**extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **extra}


# -- decode_request ---------------------------------------------------------------------------------


def test_decode_request_of_what_google_genai_sends() -> None:
    """tests/fixtures/gemini/sdk_request.json was captured from google-genai 3.4.0 (mixed key case)."""
    req = gem.decode_request(json.loads((FIXTURES / "sdk_request.json").read_text()), model="models/gemini-2.5-flash")
    first_call = "gcall_c1p1_" + "c2lnYnl0ZXM"  # position tag + the signature as unpadded base64url
    assert req.model == "gemini-2.5-flash"
    assert req.stream is False
    assert req.system == "Be terse."
    assert req.messages == [
        ir.Message(
            "user",
            [
                ir.Text("hi"),
                ir.Image(mime_type="image/png", data="iVBORw=="),
                ir.Image(mime_type="image/png", url="https://x/y.png"),
            ],
        ),
        ir.Message(
            "assistant",
            [
                ir.Thinking("thinking.."),
                ir.ToolCall(first_call, "get_weather", {"city": "Paris"}, signature="c2lnYnl0ZXM="),
                ir.ToolCall("gcall_c1p2", "get_weather", {"city": "Tokyo", "max_tokens": 1}),
            ],
        ),
        ir.Message(
            "user",
            [
                ir.ToolResult(first_call, '{"temp_c":18}', "get_weather"),
                ir.ToolResult("gcall_c1p2", "city not found", "get_weather", is_error=True),
            ],
        ),
    ]
    weather, t2 = req.tools
    assert weather.name == "get_weather" and weather.description == "Get weather."
    assert weather.parameters["properties"]["unit"] == {"type": "string", "default": "celsius"}
    assert t2.parameters == {"type": "object", "properties": {"a": {"type": ["string", "null"]}}}
    assert req.tool_choice == ir.ToolChoice("tool", "get_weather")
    assert (req.temperature, req.top_p, req.top_k, req.max_output_tokens, req.stop, req.seed) == (
        0.2,
        0.9,
        40,
        256,
        ["X"],
        3,
    )
    assert isinstance(req.top_k, int)
    assert req.json_schema == {"type": "object"} and not req.json_mode
    assert req.reasoning == ir.Reasoning(budget_tokens=1024, include_thoughts=True)


def test_decode_request_takes_model_and_stream_from_the_url() -> None:
    req = gem.decode_request(body(), model="gemini-2.5-pro", stream=True)
    assert (req.model, req.stream, req.messages) == ("gemini-2.5-pro", True, [ir.Message("user", [ir.Text("hi")])])


def test_user_data_keys_are_never_normalised() -> None:
    args = {"max_tokens": 1, "topK": {"inner_key": True}}
    schema = {"type": "OBJECT", "properties": {"max_output_tokens": {"type": "INTEGER"}, "type": {"type": "STRING"}}}
    req = gem.decode_request(
        {
            "contents": [
                {"role": "model", "parts": [{"function_call": {"name": "f", "args": args}}]},
                {"role": "user", "parts": [{"function_response": {"name": "f", "response": {"snake_key": 1}}}]},
            ],
            "tools": [{"function_declarations": [{"name": "f", "parameters": schema}]}],
            "system_instruction": "plain string system",
        },
        model="m",
    )
    call = req.messages[0].parts[0]
    assert isinstance(call, ir.ToolCall) and call.arguments == args
    result = req.messages[1].parts[0]
    assert isinstance(result, ir.ToolResult) and result.content == '{"snake_key":1}'
    assert req.tools[0].parameters == {
        "type": "object",
        "properties": {"max_output_tokens": {"type": "integer"}, "type": {"type": "string"}},
    }
    assert req.system == "plain string system"


def test_function_responses_find_their_calls() -> None:
    """By id when given, else the oldest open call of that name; parallel same-name calls pair in order."""
    req = gem.decode_request(
        {
            "contents": [
                {"role": "user", "parts": [{"text": "go"}]},
                {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"name": "a", "args": {}}},
                        {"functionCall": {"name": "a", "args": {"n": 2}}},
                        {"functionCall": {"name": "b", "args": {}, "id": "own-id"}},
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {"functionResponse": {"name": "b", "id": "own-id", "response": {"output": "B"}}},
                        {"functionResponse": {"name": "a", "response": {"output": "A1"}}},
                        {"functionResponse": {"name": "a", "response": {"output": "A2"}}},
                        {"functionResponse": {"name": "zzz", "response": {"output": "orphan"}}},
                    ],
                },
            ]
        },
        model="m",
    )
    ids = [p.call_id for p in req.messages[2].parts if isinstance(p, ir.ToolResult)]
    assert ids == ["own-id", "gcall_c1p0", "gcall_c1p1", "gcall_c2p3"]
    assert [p.content for p in req.messages[2].parts if isinstance(p, ir.ToolResult)] == ["B", "A1", "A2", "orphan"]


def test_adjacent_streamed_fragments_join_up() -> None:
    """A client replaying streamed chunks sends thought fragments and text fragments as separate parts."""
    req = gem.decode_request(
        {
            "contents": [
                {"role": "user", "parts": [{"text": "q"}]},
                {
                    "role": "model",
                    "parts": [
                        {"text": "thin", "thought": True},
                        {"text": "king", "thought": True, "thoughtSignature": "c2ln"},
                        {"text": "", "thought": True, "thoughtSignature": "c2lnMg=="},
                        {"text": "Hel"},
                        {"text": "lo"},
                    ],
                },
            ]
        },
        model="m",
    )
    assert req.messages[1].parts == [
        ir.Thinking("thinking", signature="c2ln"),
        ir.Thinking("", signature="c2lnMg=="),
        ir.Text("Hello"),
    ]


def test_tools_other_kinds_skipped_and_allowed_names_filter() -> None:
    decls = [{"name": n, "parametersJsonSchema": {"type": "object"}} for n in ("a", "b", "c")]
    req = gem.decode_request(
        body(
            tools=[{"googleSearch": {}}, {"functionDeclarations": decls}, {"codeExecution": {}}],
            toolConfig={"functionCallingConfig": {"mode": "any", "allowedFunctionNames": ["a", "c"]}},
        ),
        model="m",
    )
    assert [t.name for t in req.tools] == ["a", "c"]
    assert req.tool_choice == ir.ToolChoice("required")


@pytest.mark.parametrize(
    ("config", "choice"),
    [
        ({"mode": "AUTO"}, ir.ToolChoice("auto")),
        ({"mode": "NONE"}, ir.ToolChoice("none")),
        ({"mode": "VALIDATED"}, ir.ToolChoice("auto")),
        ({"mode": "ANY"}, ir.ToolChoice("required")),
        ({"mode": "ANY", "allowed_function_names": ["a"]}, ir.ToolChoice("tool", "a")),
        ({}, ir.ToolChoice("auto")),
    ],
)
def test_tool_config_modes(config: dict[str, Any], choice: ir.ToolChoice) -> None:
    tools = [{"functionDeclarations": [{"name": "a"}]}]
    req = gem.decode_request(body(tools=tools, tool_config={"function_calling_config": config}), model="m")
    assert req.tool_choice == choice
    assert req.tools == [ir.Tool("a")]


@pytest.mark.parametrize(
    ("thinking", "reasoning"),
    [
        ({"thinkingBudget": 0}, ir.Reasoning(effort="none")),
        ({"thinking_budget": -1, "include_thoughts": True}, ir.Reasoning(effort="medium", include_thoughts=True)),
        ({"thinkingBudget": 2048}, ir.Reasoning(budget_tokens=2048)),
        ({"thinkingLevel": "HIGH"}, ir.Reasoning(effort="high")),
        ({"thinking_level": "low"}, ir.Reasoning(effort="low")),
        ({"includeThoughts": True}, ir.Reasoning(include_thoughts=True)),
    ],
)
def test_thinking_config(thinking: dict[str, Any], reasoning: ir.Reasoning) -> None:
    req = gem.decode_request(body(generationConfig={"thinkingConfig": thinking}), model="m")
    assert req.reasoning == reasoning


def test_output_formats() -> None:
    mode = gem.decode_request(body(generationConfig={"responseMimeType": "application/json"}), model="m")
    assert (mode.json_mode, mode.json_schema) == (True, None)
    schema = {"type": "OBJECT", "properties": {"x": {"type": "ARRAY", "items": {"type": "NUMBER"}}}}
    openapi = gem.decode_request(
        body(generation_config={"response_mime_type": "application/json", "response_schema": schema}), model="m"
    )
    assert openapi.json_schema == {
        "type": "object",
        "properties": {"x": {"type": "array", "items": {"type": "number"}}},
    }
    plain = gem.decode_request(body(generationConfig={"responseMimeType": "text/plain"}), model="m")
    assert (plain.json_mode, plain.json_schema) == (False, None)


def test_count_tokens_wrapper_and_skipped_parts() -> None:
    inner = body(systemInstruction={"parts": [{"text": "s1"}, {"text": "s2"}]})
    inner["contents"].append({"role": "model", "parts": [{"executableCode": {"code": "1"}}, {"text": "ok"}]})
    req = gem.decode_request({"generateContentRequest": inner}, model="m")
    assert req.system == "s1\ns2"
    assert req.messages[1].parts == [ir.Text("ok")]


@pytest.mark.parametrize(
    ("request_body", "path"),
    [
        ([], None),
        ({}, "contents"),
        ({"contents": []}, "contents"),
        ({"contents": ["x"]}, "contents[0]"),
        ({"contents": [{"role": "robot", "parts": []}]}, "contents[0].role"),
        ({"contents": [{"role": "user"}]}, "contents[0].parts"),
        ({"contents": [{"parts": [5]}]}, "contents[0].parts[0]"),
        ({"contents": [{"parts": [{"text": 5}]}]}, "contents[0].parts[0].text"),
        ({"contents": [{"parts": [{"unknownKind": {}}]}]}, "contents[0].parts[0]"),
        ({"contents": [{"parts": [{"inlineData": {"data": "x"}}]}]}, "contents[0].parts[0].inlineData.mimeType"),
        ({"contents": [{"parts": [{"fileData": {}}]}]}, "contents[0].parts[0].fileData.fileUri"),
        ({"contents": [{"parts": [{"functionCall": {"name": "f"}}]}]}, "contents[0].parts[0]"),
        (
            {"contents": [{"role": "model", "parts": [{"functionCall": {"name": "f", "args": [1]}}]}]},
            "contents[0].parts[0].functionCall.args",
        ),
        ({"contents": [{"role": "model", "parts": [{"functionCall": {}}]}]}, "contents[0].parts[0].functionCall.name"),
        ({"contents": [{"role": "model", "parts": [{"functionResponse": {"name": "f"}}]}]}, "contents[0].parts[0]"),
        (
            {"contents": [{"parts": [{"functionResponse": {"response": {}}}]}]},
            "contents[0].parts[0].functionResponse.name",
        ),
        (body(systemInstruction=5), "systemInstruction"),
        (body(systemInstruction={"parts": [{"inlineData": {}}]}), "systemInstruction.parts[0]"),
        (body(tools={}), "tools"),
        (body(tools=[5]), "tools[0]"),
        (body(tools=[{"functionDeclarations": [{}]}]), "tools[0].functionDeclarations[0].name"),
        (body(tools=[{"functionDeclarations": [{"name": "f", "parameters": 1}]}]), None),
        (body(toolConfig={"functionCallingConfig": {"mode": "SOMETIMES"}}), "toolConfig.functionCallingConfig.mode"),
        (body(generationConfig=[]), "generationConfig"),
        (body(generationConfig={"temperature": "hot"}), "generationConfig.temperature"),
        (body(generationConfig={"temperature": 3}), "generationConfig.temperature"),
        (body(generationConfig={"topK": True}), "generationConfig.topK"),
        (body(generationConfig={"candidateCount": 2}), "generationConfig.candidateCount"),
        (body(generationConfig={"maxOutputTokens": 0}), "generationConfig.maxOutputTokens"),
        (body(generationConfig={"maxOutputTokens": 1.5}), "generationConfig.maxOutputTokens"),
        (body(generationConfig={"stopSequences": [1]}), "generationConfig.stopSequences"),
        (body(generationConfig={"thinkingConfig": {"thinkingBudget": -7}}), None),
        (body(generationConfig={"thinkingConfig": {"includeThoughts": "yes"}}), None),
    ],
)
def test_decode_request_rejects_with_field_path(request_body: Any, path: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        gem.decode_request(request_body, model="m")
    if path is not None:
        assert info.value.path == path


def test_decode_request_needs_a_model() -> None:
    with pytest.raises(InvalidRequest) as info:
        gem.decode_request(body())
    assert info.value.path == "model"


JSON_KEYS = st.sampled_from(
    [
        "contents",
        "role",
        "parts",
        "text",
        "thought",
        "inlineData",
        "fileData",
        "functionCall",
        "functionResponse",
        "name",
        "args",
        "id",
        "response",
        "output",
        "error",
        "tools",
        "functionDeclarations",
        "parameters",
        "properties",
        "items",
        "type",
        "nullable",
        "toolConfig",
        "functionCallingConfig",
        "mode",
        "generationConfig",
        "thinkingConfig",
        "thinkingBudget",
        "systemInstruction",
        "topK",
        "maxOutputTokens",
        "responseMimeType",
        "responseSchema",
        "generateContentRequest",
    ]
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5)
    | st.sampled_from(["user", "model", "ANY", "application/json", "OBJECT"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(JSON_KEYS | st.text(max_size=3), children, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_decode_request_raises_only_invalid_request(value: Any) -> None:
    try:
        gem.decode_request(value, model="m")
    except InvalidRequest:
        pass


@settings(max_examples=300)
@given(JSON)
def test_decode_response_raises_only_protocol_errors(value: Any) -> None:
    try:
        gem.decode_response(value)
    except UpstreamProtocolError:
        pass
    gem.response_usage(value)
    gem.embedded_error(value)


# -- encode_request ---------------------------------------------------------------------------------


def rich_request(**extra: Any) -> ir.ChatRequest:
    gemini_call = call_id(None, SIG)
    return ir.ChatRequest(
        model="client-model",
        system="Be terse.",
        messages=[
            ir.Message("user", [ir.Text("Look"), ir.Image(url="data:image/png;base64,iVBORw=="), ir.Text("")]),
            ir.Message("user", [ir.Image(url="https://example.com/cat.jpg", mime_type="image/jpeg")]),
            ir.Message(
                "assistant",
                [
                    ir.Thinking("unsigned: dropped"),
                    ir.Thinking("signed", signature="c2ln"),
                    ir.Text("Checking."),
                    ir.ToolCall(gemini_call, "get_weather", {"city": "Paris"}),
                    ir.ToolCall(call_id(None, None), "get_weather", {"city": "Tokyo"}),
                ],
            ),
            ir.Message("user", [ir.ToolResult(gemini_call, '{"temp_c": 18}')]),
            ir.Message("user", [ir.ToolResult("gcall_x", "no such city", name="get_weather", is_error=True)]),
            ir.Message("assistant", [ir.ToolCall("call_openai1", "lookup", {"q": "x"})]),
            ir.Message(
                "user",
                [
                    ir.ToolResult(
                        "call_openai1",
                        [ir.Text("plain "), ir.Text("text"), ir.Image(mime_type="image/gif", data="R0lG")],
                    )
                ],
            ),
        ],
        tools=[
            ir.Tool("get_weather", "Weather", {"type": "object", "properties": {"city": {"type": ["string", "null"]}}}),
            ir.Tool("lookup"),
        ],
        tool_choice=ir.ToolChoice("tool", "lookup"),
        max_output_tokens=300,
        temperature=0.5,
        top_p=0.8,
        top_k=20,
        stop=["END"],
        seed=7,
        reasoning=ir.Reasoning(effort="low", include_thoughts=True),
        json_schema={"type": "object"},
        **extra,
    )


def test_encode_request_rich() -> None:
    call = gem.encode_request(rich_request(stream=True), "gemini-2.5-flash")
    assert call.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert call.headers == []
    sent = orjson.loads(call.body)
    user0, model1, user2, model3, user4 = sent["contents"]
    assert user0 == {
        "role": "user",
        "parts": [
            {"text": "Look"},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw=="}},
            {"fileData": {"fileUri": "https://example.com/cat.jpg", "mimeType": "image/jpeg"}},
        ],
    }
    assert model1 == {
        "role": "model",
        "parts": [
            {"text": "signed", "thought": True, "thoughtSignature": "c2ln"},
            {"text": "Checking."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG},
            {"functionCall": {"name": "get_weather", "args": {"city": "Tokyo"}}},
        ],
    }
    assert user2 == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"output": {"temp_c": 18}}}},
            {"functionResponse": {"name": "get_weather", "response": {"error": "no such city"}}},
        ],
    }
    assert model3 == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "lookup", "args": {"q": "x"}, "id": "call_openai1"},
                "thoughtSignature": SKIP_SIGNATURE,
            }
        ],
    }
    assert user4 == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "lookup", "response": {"output": "plain text"}, "id": "call_openai1"}},
            {"inlineData": {"mimeType": "image/gif", "data": "R0lG"}},
        ],
    }
    assert sent["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather",
                    "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": ["string", "null"]}}},
                },
                {"name": "lookup", "parametersJsonSchema": {"type": "object", "properties": {}}},
            ]
        }
    ]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}}
    assert sent["generationConfig"] == {
        "temperature": 0.5,
        "topP": 0.8,
        "topK": 20,
        "maxOutputTokens": 300,
        "seed": 7,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
        "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True},
    }


@pytest.mark.parametrize(
    ("reasoning", "config"),
    [
        (ir.Reasoning(effort="none"), {"thinkingBudget": 0}),
        (ir.Reasoning(effort="minimal"), {"thinkingBudget": 512}),
        (ir.Reasoning(effort="medium"), {"thinkingBudget": 8192}),
        (ir.Reasoning(effort="high"), {"thinkingBudget": 24576}),
        (ir.Reasoning(effort="xhigh"), {"thinkingBudget": 32768}),
        (ir.Reasoning(effort="max"), {"thinkingBudget": 32768}),
        (ir.Reasoning(effort="high", budget_tokens=3000), {"thinkingBudget": 3000}),
        (ir.Reasoning(), None),
    ],
)
def test_encode_request_thinking_budgets(reasoning: ir.Reasoning, config: dict[str, Any] | None) -> None:
    req = ir.ChatRequest("m", [ir.Message("user", [ir.Text("q")])], reasoning=reasoning)
    sent = orjson.loads(gem.encode_request(req, "g").body)
    assert sent.get("generationConfig", {}).get("thinkingConfig") == config


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        (ir.ToolChoice("auto"), {"mode": "AUTO"}),
        (ir.ToolChoice("none"), {"mode": "NONE"}),
        (ir.ToolChoice("required"), {"mode": "ANY"}),
        (ir.ToolChoice("tool", "a"), {"mode": "ANY", "allowedFunctionNames": ["a"]}),
    ],
)
def test_encode_request_tool_choice(choice: ir.ToolChoice, config: dict[str, Any]) -> None:
    req = ir.ChatRequest("m", [ir.Message("user", [ir.Text("q")])], tools=[ir.Tool("a")], tool_choice=choice)
    sent = orjson.loads(gem.encode_request(req, "g").body)
    assert sent["toolConfig"] == {"functionCallingConfig": config}


def test_encode_request_minimal_and_errors() -> None:
    req = ir.ChatRequest("m", [ir.Message("user", [ir.Text("q")])], json_mode=True)
    call = gem.encode_request(req, "models/gemini-2.5-flash")
    assert call.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert orjson.loads(call.body) == {
        "contents": [{"role": "user", "parts": [{"text": "q"}]}],
        "generationConfig": {"responseMimeType": "application/json"},
    }
    with pytest.raises(InvalidRequest) as info:
        gem.encode_request(ir.ChatRequest("m", req.messages, stop=list("abcdef")), "g")
    assert info.value.path == "stop"
    orphan = [ir.Message("user", [ir.ToolResult("call_unknown", "x")])]
    with pytest.raises(InvalidRequest) as info:
        gem.encode_request(ir.ChatRequest("m", orphan), "g")
    assert info.value.path == "messages[0].parts[0]"


def test_round_trip_keeps_the_meaning() -> None:
    req = rich_request()
    again = gem.decode_request(orjson.loads(gem.encode_request(req, "g").body), model="client-model")
    assert again.system == req.system
    assert again.tools == req.tools
    assert again.tool_choice == req.tool_choice
    assert (again.max_output_tokens, again.temperature, again.top_p, again.top_k, again.stop, again.seed) == (
        300,
        0.5,
        0.8,
        20,
        ["END"],
        7,
    )
    assert again.reasoning == ir.Reasoning(budget_tokens=1024, include_thoughts=True)
    assert again.json_schema == {"type": "object"}
    model1 = again.messages[1].parts
    assert model1[0] == ir.Thinking("signed", signature="c2ln")
    assert model1[1] == ir.Text("Checking.")
    paris, tokyo = model1[2], model1[3]
    assert isinstance(paris, ir.ToolCall) and isinstance(tokyo, ir.ToolCall)
    assert (paris.name, paris.arguments, paris.signature) == ("get_weather", {"city": "Paris"}, SIG)
    assert parse_call_id(paris.id).signature == SIG
    results = again.messages[2].parts
    assert [(r.call_id, r.content, r.is_error) for r in results if isinstance(r, ir.ToolResult)] == [
        (paris.id, '{"temp_c":18}', False),
        (tokyo.id, "no such city", True),
    ]
    assert again.messages[3].parts == [ir.ToolCall("call_openai1", "lookup", {"q": "x"}, signature=SKIP_SIGNATURE)]


def test_prepare_passthrough_changes_only_the_path() -> None:
    client_body = body(generationConfig={"thinking_config": {"thinking_budget": 0}}, tools=[{"googleSearch": {}}])
    req = gem.decode_request(client_body, model="alias", stream=True)
    call = gem.prepare_passthrough(client_body, req, "gemini-2.5-flash")
    assert call.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert orjson.loads(call.body) == client_body
    assert gem.auth_headers("sekrit") == [(b"x-goog-api-key", b"sekrit")]


# -- call ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream_id", "sig"),
    [
        (None, None),
        (None, SIG),
        (None, "c2lnYnl0ZXM"),  # unpadded
        (None, "-_-_"),  # url-safe alphabet
        ("fc-9/ä", SIG),
        ("fc_1", None),
    ],
)
def test_call_ids_carry_the_signature_statelessly(upstream_id: str | None, sig: str | None) -> None:
    cid = call_id(upstream_id, sig)
    assert ANTHROPIC_ID.match(cid)
    ref = parse_call_id(cid)
    assert ref.upstream_id == upstream_id
    if sig is None:
        assert ref.signature is None
    else:
        import base64

        def raw(s: str) -> bytes:
            return base64.urlsafe_b64decode(s.replace("+", "-").replace("/", "_") + "=" * (-len(s) % 4))

        assert ref.signature is not None and raw(ref.signature) == raw(sig)


def test_call_ids_foreign_and_odd() -> None:
    assert parse_call_id("call_abc") == parse_call_id("call_abc").__class__("call_abc", None)
    assert parse_call_id("gcid_zz_x").upstream_id == "gcid_zz_x"  # not hex: a foreign id after all
    assert parse_call_id(call_id(None, "not base64!")).signature is None
    assert call_id(None, None) != call_id(None, None)


# -- responses ------------------------------------------------------------------------------------

TOOL_RESPONSE = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "thought", "thought": True, "thoughtSignature": "c2ln"},
                    {"text": "Hello "},
                    {"text": "there", "thoughtSignature": "dropped"},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Tokyo"}, "id": "fc1"}},
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 71,
        "candidatesTokenCount": 40,
        "thoughtsTokenCount": 55,
        "cachedContentTokenCount": 64,
        "totalTokenCount": 166,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "resp-1",
}


def test_decode_response_with_calls() -> None:
    resp = gem.decode_response(TOOL_RESPONSE)
    assert (resp.id, resp.model, resp.finish) == ("resp-1", "gemini-2.5-flash", ir.FinishReason.TOOL_CALLS)
    assert resp.usage == ir.Usage(71, 64, 95, 55)
    thinking, text, paris, tokyo = resp.parts
    assert thinking == ir.Thinking("thought", signature="c2ln")
    assert text == ir.Text("Hello there")
    assert isinstance(paris, ir.ToolCall) and isinstance(tokyo, ir.ToolCall)
    assert paris.id.startswith("gcall_") and paris.signature == SIG and parse_call_id(paris.id).signature == SIG
    assert parse_call_id(tokyo.id) == parse_call_id(call_id("fc1", None))
    assert ANTHROPIC_ID.match(paris.id) and ANTHROPIC_ID.match(tokyo.id)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", ir.FinishReason.STOP),
        ("MAX_TOKENS", ir.FinishReason.LENGTH),
        ("SAFETY", ir.FinishReason.CONTENT_FILTER),
        ("RECITATION", ir.FinishReason.CONTENT_FILTER),
        ("BLOCKLIST", ir.FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", ir.FinishReason.CONTENT_FILTER),
        ("SPII", ir.FinishReason.CONTENT_FILTER),
        ("IMAGE_SAFETY", ir.FinishReason.CONTENT_FILTER),
        ("MODEL_ARMOR", ir.FinishReason.CONTENT_FILTER),
        ("OTHER", ir.FinishReason.STOP),
        ("MALFORMED_FUNCTION_CALL", ir.FinishReason.STOP),
        ("LANGUAGE", ir.FinishReason.STOP),
        (None, ir.FinishReason.STOP),
    ],
)
def test_decode_response_finish_reasons(reason: str | None, finish: ir.FinishReason) -> None:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": "x"}]}}
    if reason:
        candidate["finishReason"] = reason
    assert gem.decode_response({"candidates": [candidate]}).finish == finish


def test_decode_response_blocked_prompt_and_bad_shapes() -> None:
    blocked = gem.decode_response(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}
    )
    assert (blocked.parts, blocked.finish, blocked.usage) == ([], ir.FinishReason.CONTENT_FILTER, ir.Usage(3, 0, 0, 0))
    assert blocked.id.startswith("gen-")
    bad: Any
    for bad in ([], "x", {"candidates": {}}):
        with pytest.raises(UpstreamProtocolError):
            gem.decode_response(bad)


def test_response_usage_normalises() -> None:
    meta = {
        "promptTokenCount": 10,
        "cachedContentTokenCount": 99,
        "candidatesTokenCount": -4,
        "thoughtsTokenCount": True,
    }
    assert gem.response_usage({"usageMetadata": meta}) == ir.Usage(10, 10, 0, 0)
    assert gem.response_usage({"usage_metadata": {"prompt_token_count": 2, "toolUsePromptTokenCount": 3}}) == ir.Usage(
        5, 0, 0, 0
    )
    assert gem.response_usage({}) is None
    assert gem.response_usage([]) is None


def test_encode_response_read_by_google_genai() -> None:
    resp = ir.ChatResponse(
        "resp-9",
        "upstream-model",
        [
            ir.Thinking("pondering", signature="c2ln"),
            ir.Text("Checking both."),
            ir.ToolCall("call_1", "get_weather", {"city": "Paris"}),
            ir.ToolCall("toolu_2", "get_weather", {"city": "Tōkyō"}),
        ],
        ir.FinishReason.TOOL_CALLS,
        ir.Usage(88, 64, 61, 20),
    )
    wire = gem.encode_response(resp, "client-model")
    assert wire["usageMetadata"] == {
        "promptTokenCount": 88,
        "candidatesTokenCount": 41,
        "thoughtsTokenCount": 20,
        "totalTokenCount": 149,
        "cachedContentTokenCount": 64,
    }
    got = sdk_client(200, orjson.dumps(wire)).models.generate_content(model="client-model", contents="hi")
    assert got.candidates is not None and got.candidates[0].content is not None
    parts = got.candidates[0].content.parts or []
    assert [(p.text, p.thought) for p in parts if p.text] == [("pondering", True), ("Checking both.", None)]
    assert [(c.name, c.args, c.id) for c in got.function_calls or []] == [
        ("get_weather", {"city": "Paris"}, "call_1"),
        ("get_weather", {"city": "Tōkyō"}, "toolu_2"),
    ]
    assert got.candidates[0].finish_reason == types.FinishReason.STOP
    assert got.usage_metadata is not None
    usage = got.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.thoughts_token_count) == (88, 41, 20)
    assert (got.model_version, got.response_id) == ("client-model", "resp-9")


@pytest.mark.parametrize(
    ("finish", "name"),
    [
        (ir.FinishReason.STOP, "STOP"),
        (ir.FinishReason.TOOL_CALLS, "STOP"),
        (ir.FinishReason.LENGTH, "MAX_TOKENS"),
        (ir.FinishReason.CONTENT_FILTER, "SAFETY"),
    ],
)
def test_encode_response_finish(finish: ir.FinishReason, name: str) -> None:
    wire = gem.encode_response(ir.ChatResponse("r", "m", [ir.Text("x")], finish), "m")
    assert wire["candidates"][0]["finishReason"] == name
    assert "usageMetadata" not in wire


# -- errors -----------------------------------------------------------------------------------------

ERROR_CASES: list[tuple[RelayError, int, str]] = [
    (InvalidRequest("bad", "contents"), 400, "INVALID_ARGUMENT"),
    (Unauthorized(), 401, "UNAUTHENTICATED"),
    (InsufficientBalance("top up"), 402, "RESOURCE_EXHAUSTED"),
    (UpstreamStatusError(403, "no", upstream_type="PERMISSION_DENIED"), 403, "PERMISSION_DENIED"),
    (NotFound("nope"), 404, "NOT_FOUND"),
    (PayloadTooLarge("big"), 413, "INVALID_ARGUMENT"),
    (RateLimited("slow down", retry_after_s=7), 429, "RESOURCE_EXHAUSTED"),
    (GatewayError("oops"), 500, "INTERNAL"),
    (UpstreamStatusError(500, "upstream broke"), 502, "INTERNAL"),
    (UpstreamStatusError(503, "overloaded", upstream_type="UNAVAILABLE"), 503, "UNAVAILABLE"),
    (UpstreamTimeout("slow upstream"), 504, "DEADLINE_EXCEEDED"),
    (UpstreamStatusError(400, "precondition", upstream_type="FAILED_PRECONDITION"), 400, "FAILED_PRECONDITION"),
    (UpstreamStatusError(400, "openai said", upstream_type="invalid_request_error"), 400, "INVALID_ARGUMENT"),
]


@pytest.mark.parametrize(("err", "status", "name"), ERROR_CASES)
def test_encode_error_raises_the_right_sdk_class(err: RelayError, status: int, name: str) -> None:
    code, wire = gem.encode_error(err)
    assert code == status
    assert list(wire) == ["error"]
    assert (wire["error"]["code"], wire["error"]["status"], wire["error"]["message"]) == (status, name, err.message)
    expected = genai_errors.ClientError if status < 500 else genai_errors.ServerError
    with pytest.raises(expected) as info:
        sdk_client(code, orjson.dumps(wire)).models.generate_content(model="m", contents="hi")
    assert (info.value.code, info.value.status, info.value.message) == (status, name, err.message)


def test_encode_error_retry_info() -> None:
    _, wire = gem.encode_error(RateLimited("slow", retry_after_s=7))
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"} in wire["error"]["details"]


def test_decode_error_shapes() -> None:
    google = {
        "error": {
            "code": 429,
            "message": "Quota exceeded",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "38.2s"}],
        }
    }
    err = gem.decode_error(429, orjson.dumps(google), None)
    assert (err.upstream_status, err.status, err.message, err.upstream_type, err.retry_after) == (
        429,
        429,
        "Quota exceeded",
        "RESOURCE_EXHAUSTED",
        "39",
    )
    assert gem.decode_error(429, orjson.dumps(google), "5").retry_after == "5"
    key = {
        "error": {
            "code": 400,
            "message": "API key not valid.",
            "status": "INVALID_ARGUMENT",
            "details": [{"reason": "API_KEY_INVALID"}],
        }
    }
    assert gem.decode_error(400, orjson.dumps(key), None).status == 400
    wrapped = gem.decode_error(503, orjson.dumps([{"error": {"message": "busy", "status": "UNAVAILABLE"}}]), None)
    assert (wrapped.status, wrapped.message, wrapped.upstream_type) == (503, "busy", "UNAVAILABLE")
    html = gem.decode_error(502, b"<html><body>\n  Bad   gateway </body></html>", None)
    assert html.message == "Gemini upstream returned HTTP 502: <html><body> Bad gateway </body></html>"
    assert gem.decode_error(500, b"", None).message == "Gemini upstream returned HTTP 500"
    assert gem.decode_error(404, b'{"error": "flat"}', None).message.startswith("Gemini upstream returned HTTP 404")


def test_embedded_error() -> None:
    err = gem.embedded_error({"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}})
    assert err is not None and (err.upstream_status, err.message, err.upstream_type) == (503, "busy", "UNAVAILABLE")
    odd = gem.embedded_error({"error": {"code": "x"}})
    assert odd is not None and odd.upstream_status == 502
    assert gem.embedded_error(TOOL_RESPONSE) is None
    assert gem.embedded_error({"candidates": [], "error": {}}) is None


# -- token counting ---------------------------------------------------------------------------------


def test_count_tokens() -> None:
    plain = ir.ChatRequest("m", [ir.Message("user", [ir.Text("q")])], stop=list("abcdefg"), temperature=1)
    call = gem.encode_count_request(plain, "gemini-2.5-flash")
    assert call is not None and call.path == "/v1beta/models/gemini-2.5-flash:countTokens"
    assert orjson.loads(call.body) == {"contents": [{"role": "user", "parts": [{"text": "q"}]}]}
    full = gem.encode_count_request(rich_request(), "gemini-2.5-flash")
    assert full is not None
    wrapped = orjson.loads(full.body)["generateContentRequest"]
    assert wrapped["model"] == "models/gemini-2.5-flash"
    assert set(wrapped) == {"model", "contents", "systemInstruction", "tools"}
    assert gem.decode_count_response({"totalTokens": 12, "promptTokensDetails": []}) == 12
    bad: Any
    for bad in ({}, {"totalTokens": "3"}, [], {"totalTokens": -1}):
        with pytest.raises(UpstreamProtocolError):
            gem.decode_count_response(bad)
    assert gem.encode_count_response(5) == {"totalTokens": 5}
    counted = sdk_client(200, orjson.dumps(gem.encode_count_response(5))).models.count_tokens(model="m", contents="hi")
    assert counted.total_tokens == 5


# -- odd corners ----------------------------------------------------------------------------------


def test_decode_request_odd_corners() -> None:
    huge = 2**70  # only a non-orjson parser produces it; it must still end as InvalidRequest
    with pytest.raises(InvalidRequest, match=r"contents\[0\]\.parts\[0\]\.text: expected a string, got 1180"):
        gem.decode_request({"contents": [{"parts": [{"text": huge}]}]}, model="m")
    bad_output = {"functionResponse": {"name": "f", "response": {"output": huge}}}
    with pytest.raises(InvalidRequest) as info:
        gem.decode_request({"contents": [{"parts": [bad_output]}]}, model="m")
    assert info.value.path == "contents[0].parts[0].functionResponse.response.output"
    with pytest.raises(InvalidRequest) as info:
        gem.decode_request(body(generationConfig={"temperature": float("inf")}), model="m")
    assert info.value.path == "generationConfig.temperature"
    with pytest.raises(InvalidRequest) as info:
        gem.decode_request(body(tools=[{"functionDeclarations": [5]}]), model="m")
    assert info.value.path == "tools[0].functionDeclarations[0]"
    deep: dict[str, Any] = {"type": "STRING"}
    for _ in range(5000):
        deep = {"type": "ARRAY", "items": deep}
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        gem.decode_request(body(tools=[{"functionDeclarations": [{"name": "f", "parameters": deep}]}]), model="m")
    assert gem.decode_request(body(generationConfig={"stopSequences": "END"}), model="m").stop == ["END"]
    assert gem.decode_request({"contents": [{"role": "USER", "parts": []}]}, model="m").messages == [
        ir.Message("user", [])
    ]


def test_openapi_schema_corners() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {"a": 5, "b": {"type": "TYPE_UNSPECIFIED", "nullable": True}},
        "anyOf": [{"type": "INTEGER", "nullable": True}, {"type": "STRING"}],
    }
    req = gem.decode_request(body(tools=[{"functionDeclarations": [{"name": "f", "parameters": schema}]}]), model="m")
    assert req.tools[0].parameters == {
        "type": "object",
        "properties": {"a": 5, "b": {}},
        "anyOf": [{"type": ["integer", "null"]}, {"type": "string"}],
    }


def test_encode_request_odd_corners() -> None:
    messages = [
        ir.Message("user", [ir.Image(url="data:text/plain,hello%20world")]),
        ir.Message("assistant", [ir.Thinking("unsigned only")]),  # nothing left: no content at all
        ir.Message("assistant", [ir.Thinking("", redacted="opaque", signature="s")]),
        ir.Message("user", [ir.ToolResult("x", "{not json", name="f"), ir.ToolResult("y", "[1]", name="f")]),
    ]
    sent = orjson.loads(gem.encode_request(ir.ChatRequest("m", messages), "g").body)
    assert sent["contents"] == [
        {
            "role": "user",
            "parts": [
                {"inlineData": {"mimeType": "text/plain", "data": "aGVsbG8gd29ybGQ="}},
                {"functionResponse": {"name": "f", "response": {"output": "{not json"}, "id": "x"}},
                {"functionResponse": {"name": "f", "response": {"output": "[1]"}, "id": "y"}},
            ],
        }
    ]


def test_encode_response_odd_parts() -> None:
    parts: list[ir.Part] = [
        ir.Thinking("", redacted="opaque"),
        ir.Image(mime_type="image/png", data="iVBO"),
        ir.ToolResult("x", "stray"),
    ]
    wire = gem.encode_response(ir.ChatResponse("r", "m", parts), "m")
    assert wire["candidates"][0]["content"]["parts"] == [{"inlineData": {"mimeType": "image/png", "data": "iVBO"}}]
    assert parse_call_id("gcall_x_A").signature is None  # not base64 after all


# -- signatures from other providers (issue 12, defect 2) -------------------------------------------


@pytest.mark.parametrize(
    "sig", ["EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxSmMkcLhBq7Jg==", "a+b/cd==", "sig-1", "Zm9v+/8=", "c2lnLTE="]
)
def test_a_signature_reaches_google_genai_as_bytes_and_comes_back_unchanged(sig: str) -> None:
    """Any signature we hand a Gemini client parses in google-genai's strict base64 field; what the SDK
    sends back (url-safe base64, snake_case) decodes to the original text for the upstream."""
    resp = ir.ChatResponse(
        "msg_1", "m", [ir.Thinking("hmm", signature=sig), ir.ToolCall("toolu_01", "f", {}, signature=sig)],
        ir.FinishReason.TOOL_CALLS, None,
    )  # fmt: skip
    parsed = types.GenerateContentResponse.model_validate(gem.encode_response(resp, "m"))
    parts = parsed.candidates[0].content.parts if parsed.candidates and parsed.candidates[0].content else []
    assert parts and all(p.thought_signature for p in parts)
    history = types.Content(role="model", parts=parts).model_dump(mode="json", exclude_none=True)
    req = gem.decode_request({"contents": [{"role": "user", "parts": [{"text": "hi"}]}, history]}, model="m")
    thought, call = req.messages[1].parts
    assert isinstance(thought, ir.Thinking) and thought.signature == sig
    assert isinstance(call, ir.ToolCall) and call.signature == sig
