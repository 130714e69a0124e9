"""``client.responses.input_tokens.count`` (``POST /v1/responses/input_tokens``) with the official
openai SDK through a running relayproxy: an OpenAI provider serving Responses (``responses =
true``) gets the client's body on its own ``/responses/input_tokens``; every other upstream counts
through the canonical model as ``count_tokens`` does (Anthropic and Gemini upstreams count, the
fake answers 42; OpenAI chat upstreams have no count endpoint, so the gateway estimates)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_matrix import WEATHER_TOOL

pytestmark = pytest.mark.e2e

QUESTION = "What is the weather like in Paris today?"
INPUT: Any = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}]


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.key, max_retries=0)
    if not hasattr(c.responses, "input_tokens"):
        c.close()
        pytest.skip("this openai SDK generation has no responses.input_tokens")
    yield c
    c.close()


def test_a_responses_provider_counts_the_body_as_it_came(gateway: Gateway, client: openai.OpenAI) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER_TOOL["parameters"]}
    counted = client.responses.input_tokens.count(
        model="rs-text", input=INPUT, instructions="Be brief.", tools=[tool], truncation="auto"
    )
    assert (counted.object, counted.input_tokens) == ("response.input_tokens", 42)
    seen = gateway.upstream.requests[-1]
    assert seen.path == "/v1/responses/input_tokens"
    assert seen.json() == {
        "model": "text", "input": INPUT, "instructions": "Be brief.", "tools": [tool], "truncation": "auto"
    }  # fmt: skip
    assert seen.header("authorization") is not None and gateway.key not in str(seen.headers)


@pytest.mark.parametrize(("model", "path"), [("an-text", "/v1/messages/count_tokens"), ("ge-text", ":countTokens")])
def test_translated_upstreams_count(gateway: Gateway, client: openai.OpenAI, model: str, path: str) -> None:
    counted = client.responses.input_tokens.count(model=model, input=QUESTION, instructions="Be brief.")
    assert (counted.object, counted.input_tokens) == ("response.input_tokens", 42)
    assert gateway.upstream.requests[-1].path.endswith(path)


def test_an_openai_chat_upstream_gets_the_estimate(gateway: Gateway, client: openai.OpenAI) -> None:
    before = len(gateway.upstream.requests)
    counted = client.responses.input_tokens.count(model="oa-text", input=QUESTION)
    assert counted.object == "response.input_tokens" and 5 <= counted.input_tokens <= 40
    assert len(gateway.upstream.requests) == before  # nothing to ask: the gateway counted


def test_a_count_without_a_model_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.input_tokens.count(input=QUESTION)
    assert "model" in str(exc.value)
