"""The openai SDK's Responses API through a running relayproxy to an OpenAI provider that serves
Responses itself (``responses = true``): the fake upstream's own bytes reach the client, the
upstream gets the client's body (``store`` forced false; ``prompt_cache_key``, ``include``,
``metadata``, reasoning items' ``encrypted_content`` and built-in tools untouched), and usage from
``response.completed`` (stream) or the body (unary) is billed with client_protocol openai_responses."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_matrix import TEXT, WEATHER_TOOL
from tests.fakes.upstream import FIXTURES

pytestmark = pytest.mark.e2e

REASONING_ITEM: Any = {
    "type": "reasoning",
    "id": "rs_1",
    "summary": [{"type": "summary_text", "text": "Thought."}],
    "encrypted_content": "gAAAAB-opaque-blob==",
}
INPUT: Any = [
    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
    REASONING_ITEM,
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Again"}]},
]


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.key, max_retries=0)
    yield c
    c.close()


def _usage(rec: dict[str, Any]) -> tuple[Any, ...]:
    return rec["outcome"], rec["client_protocol"], rec["input_tokens"], rec["cached_input_tokens"], rec["output_tokens"]


def test_stream_is_the_upstreams_own_and_the_body_goes_as_it_came(gateway: Gateway, client: openai.OpenAI) -> None:
    seq = gateway.last_seq()
    events = list(
        client.responses.create(
            model="rs-text",
            input=INPUT,
            stream=True,
            store=True,
            prompt_cache_key="thread-42",
            include=["reasoning.encrypted_content"],
            metadata={"ticket": "T-1"},
            tools=[{"type": "web_search"}],
        )
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    seen = gateway.upstream.requests[-1]
    assert seen.path == "/v1/responses"
    assert seen.header("authorization") == "Bearer sk-upstream-provider-secret-0001"
    sent = seen.json()
    assert sent["model"] == "text" and sent["store"] is False and sent["stream"] is True
    assert sent["prompt_cache_key"] == "thread-42" and sent["include"] == ["reasoning.encrypted_content"]
    assert sent["metadata"] == {"ticket": "T-1"} and sent["tools"] == [{"type": "web_search"}]
    assert sent["input"] == INPUT  # the reasoning item's encrypted_content byte for byte
    rec = gateway.record_after(seq, "rs-text")
    assert _usage(rec) == ("completed", "openai_responses", 21, 5, 12)
    assert rec["upstream_protocol"] == "openai" and rec["cost_microusd"] > 0


def test_stream_bytes_are_relayed_unchanged(gateway: Gateway) -> None:
    body = json.dumps({"model": "rs-text", "input": "Hi", "stream": True}).encode()
    headers = {"authorization": f"Bearer {gateway.key}", "content-type": "application/json"}
    req = urllib.request.Request(gateway.base_url + "/v1/responses", body, headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = r.read()
    assert got == (FIXTURES / "openai" / "responses_text.sse").read_bytes()


def test_unary_function_call_is_billed_from_the_body(gateway: Gateway, client: openai.OpenAI) -> None:
    seq = gateway.last_seq()
    r = client.responses.create(model="rs-tools", input="Weather?", tools=[{"type": "function", **WEATHER_TOOL}])  # type: ignore[list-item]
    [call] = [o for o in r.output if o.type == "function_call"]
    assert (call.name, json.loads(call.arguments), call.call_id) == (
        "get_weather",
        {"city": "Paris", "unit": "celsius"},
        "call_fake1",
    )
    assert r.id == "resp_fake1" and r.usage is not None and r.usage.total_tokens == 33
    assert gateway.upstream.requests[-1].json()["store"] is False
    rec = gateway.record_after(seq, "rs-tools")
    assert _usage(rec) == ("completed", "openai_responses", 21, 5, 12) and rec["stream"] == 0


def test_response_failed_mid_stream_is_an_unbilled_upstream_error(gateway: Gateway, client: openai.OpenAI) -> None:
    seq = gateway.last_seq()
    events = list(client.responses.create(model="rs-midstream-error", input="Hi", stream=True))
    assert events[-1].type == "response.failed"
    rec = gateway.record_after(seq, "rs-midstream-error")
    assert (rec["outcome"], rec["cost_microusd"]) == ("upstream_error", 0)


def test_upstream_429_is_the_sdks_rate_limit_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="rs-http429", input="Hi", stream=True)


def test_chat_clients_of_a_responses_provider_still_use_chat(gateway: Gateway, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="rs-text", messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].message.content
    assert gateway.upstream.requests[-1].path == "/v1/chat/completions"
