"""Anthropic thinking signatures reaching the official google-genai SDK through the gateway (issue 12,
defect 2): the SDK reads ``thoughtSignature`` as strict base64 bytes, so a signature it could not parse
made it raise before the caller saw the answer; and the signature it sends back must reach Anthropic
unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google import genai
from google.genai import types as genai_types

from tests.e2e.conftest import Gateway
from tests.fakes.upstream import ANTHROPIC_SIGNATURE

STREAM_SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxSmMkcLhBq7Jg=="  # tests/fixtures/anthropic/thinking_tools.sse
QUESTION = genai_types.Content(role="user", parts=[genai_types.Part(text="What is the weather?")])


@pytest.fixture
def client(gateway: Gateway) -> Iterator[genai.Client]:
    options = genai_types.HttpOptions(base_url=gateway.base_url, api_version="v1beta")
    c = genai.Client(api_key=gateway.key, http_options=options)
    yield c
    c.close()


def _config() -> genai_types.GenerateContentConfig:
    decl = genai_types.FunctionDeclaration(
        name="get_weather", description="Weather for a city",
        parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )  # fmt: skip
    return genai_types.GenerateContentConfig(
        tools=[genai_types.Tool(function_declarations=[decl])],
        thinking_config=genai_types.ThinkingConfig(include_thoughts=True),
    )


def _second_turn(gateway: Gateway, client: genai.Client, parts: list[genai_types.Part]) -> list[dict[str, Any]]:
    """Send the model's parts back with the tool's result; the assistant blocks Anthropic received."""
    calls = [p.function_call for p in parts if p.function_call]
    answers = [
        genai_types.Part(function_response=genai_types.FunctionResponse(name=c.name, id=c.id, response={"t": 18}))
        for c in calls
    ]
    history = [
        QUESTION,
        genai_types.Content(role="model", parts=parts),
        genai_types.Content(role="user", parts=answers),
    ]
    assert client.models.generate_content(model="an-text", contents=history, config=_config()).text
    sent = gateway.upstream.requests[-1].json()
    return [b for m in sent["messages"] if m["role"] == "assistant" for b in m["content"]]


def test_unary_thinking_signature_parses_and_round_trips(gateway: Gateway, client: genai.Client) -> None:
    r = client.models.generate_content(model="an-thinking", contents=[QUESTION], config=_config())
    assert [(c.name, c.args) for c in r.function_calls or []] == [("get_weather", {"city": "Paris"})]
    parts = r.candidates[0].content.parts if r.candidates and r.candidates[0].content else None
    assert parts and any(p.thought and p.thought_signature for p in parts)
    blocks = _second_turn(gateway, client, parts)
    assert [b["signature"] for b in blocks if b["type"] == "thinking"] == [ANTHROPIC_SIGNATURE]
    assert any(b["type"] == "tool_use" and b["name"] == "get_weather" for b in blocks)


def test_stream_thinking_signature_parses_and_round_trips(gateway: Gateway, client: genai.Client) -> None:
    parts: list[genai_types.Part] = []
    for chunk in client.models.generate_content_stream(model="an-thinking", contents=[QUESTION], config=_config()):
        content = chunk.candidates[0].content if chunk.candidates else None
        parts += (content.parts if content else None) or []
    calls = [p.function_call for p in parts if p.function_call]
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "Zürich"})]
    assert any(p.thought and p.thought_signature for p in parts)
    blocks = _second_turn(gateway, client, parts)
    assert STREAM_SIGNATURE in [b["signature"] for b in blocks if b["type"] == "thinking"]
