"""The official openai SDK's Responses API (``client.responses``) through a running relayproxy to a
fake upstream of each protocol: unary and streamed text, a function-tool round trip (the call,
its output sent back, the model's answer after it), the stream helper's final response, a usage
record completed and billed with client_protocol openai_responses, and the stateless 400s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_matrix import CALLS, TEXT, TOOLS_TEXT, UNARY_CALLS, UNARY_TEXT, WEATHER_TOOL

pytestmark = pytest.mark.e2e

UPSTREAMS = ["oa", "an", "ge"]
TOOL = {"type": "function", **WEATHER_TOOL}


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.key, max_retries=0)
    yield c
    c.close()


def _calls(output: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(o.name, json.loads(o.arguments)) for o in output if o.type == "function_call"]


@pytest.mark.parametrize("up", UPSTREAMS)
def test_unary_text_is_completed_and_billed(gateway: Gateway, client: openai.OpenAI, up: str) -> None:
    seq = gateway.last_seq()
    r = client.responses.create(model=f"{up}-text", input="Hi", instructions="Be brief.")
    assert r.output_text == UNARY_TEXT
    assert r.status == "completed" and r.id.startswith("resp_") and r.object == "response"
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens >= 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    rec = gateway.record_after(seq, f"{up}-text")
    assert (rec["outcome"], rec["stream"], rec["client_protocol"]) == ("completed", 0, "openai_responses")
    assert rec["cost_microusd"] > 0


@pytest.mark.parametrize("up", UPSTREAMS)
def test_unary_function_calls(client: openai.OpenAI, up: str) -> None:
    r = client.responses.create(model=f"{up}-tools", input="Weather?", tools=[TOOL])  # type: ignore[list-item]
    assert _calls(r.output) == UNARY_CALLS
    assert all(o.call_id and o.id.startswith("fc_") for o in r.output if o.type == "function_call")


@pytest.mark.parametrize("up", UPSTREAMS)
def test_stream_events_in_order_and_billed(gateway: Gateway, client: openai.OpenAI, up: str) -> None:
    seq = gateway.last_seq()
    events = list(client.responses.create(model=f"{up}-text", input="Hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == TEXT
    done = events[-1].response  # type: ignore[union-attr]
    assert done.output_text == TEXT and done.usage is not None and done.usage.output_tokens > 0
    rec = gateway.record_after(seq, f"{up}-text")
    assert (rec["outcome"], rec["stream"], rec["client_protocol"]) == ("completed", 1, "openai_responses")
    assert rec["cost_microusd"] > 0


@pytest.mark.parametrize("up", UPSTREAMS)
def test_tool_round_trip_with_the_stream_helper(gateway: Gateway, client: openai.OpenAI, up: str) -> None:
    with client.responses.stream(model=f"{up}-tools", input="Weather?", tools=[TOOL]) as s:  # type: ignore[list-item]
        deltas = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
        first = s.get_final_response()
    assert deltas, "arguments arrive as they stream"
    assert first.output_text == TOOLS_TEXT
    calls = [o for o in first.output if o.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == CALLS
    history: list[Any] = [{"role": "user", "content": "Weather?"}]
    history += [o.model_dump(exclude_none=True) for o in first.output]
    history += [{"type": "function_call_output", "call_id": c.call_id, "output": '{"temp_c": 18}'} for c in calls]
    with client.responses.stream(model=f"{up}-text", input=history, tools=[TOOL]) as s:  # type: ignore[list-item]
        answer = s.get_final_response()
    assert answer.output_text == TEXT
    sent = gateway.upstream.requests[-1].json()
    assert json.dumps(sent).count("temp_c") == 2, "both call outputs reached the upstream"


def test_previous_response_id_is_a_400_saying_to_resend(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="oa-text", input="Hi", previous_response_id="resp_123")
    assert "resend the whole conversation" in exc.value.message


@pytest.mark.parametrize("up", UPSTREAMS)
def test_web_search_is_dropped_on_translated_upstreams(gateway: Gateway, client: openai.OpenAI, up: str) -> None:
    """Codex declares web_search by default: a translated upstream cannot run it, so the request
    goes without it and the response says so; the upstream never sees it."""
    raw = client.responses.with_raw_response.create(
        model=f"{up}-text", input="Hi", tools=[{"type": "web_search", "external_web_access": False}, TOOL]
    )
    assert raw.headers["x-relayproxy-dropped-tools"] == "web_search"
    assert raw.parse().output_text == UNARY_TEXT
    assert "web_search" not in gateway.upstream.requests[-1].body.decode()


@pytest.mark.parametrize("kind", ["file_search", "computer_use_preview", "code_interpreter"])
def test_other_builtin_tools_are_a_400_naming_them(client: openai.OpenAI, kind: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="an-text", input="Hi", tools=[{"type": kind}])  # type: ignore[list-item]
    assert repr(kind) in exc.value.message


def test_bare_path_is_served_too(gateway: Gateway) -> None:
    c = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0)
    try:
        assert c.responses.create(model="an-text", input="Hi").output_text == UNARY_TEXT
    finally:
        c.close()


@pytest.mark.parametrize("up", UPSTREAMS)
def test_midstream_upstream_error_is_response_failed(gateway: Gateway, client: openai.OpenAI, up: str) -> None:
    seq = gateway.last_seq()
    events = list(client.responses.create(model=f"{up}-midstream-error", input="Hi", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    assert events[-1].response.error is not None and events[-1].response.error.message  # type: ignore[union-attr]
    rec = gateway.record_after(seq, f"{up}-midstream-error")
    assert rec["client_protocol"] == "openai_responses" and rec["outcome"] != "completed"


@pytest.mark.parametrize("up", UPSTREAMS)
def test_reasoning_streams_as_a_reasoning_item_and_round_trips(
    gateway: Gateway, client: openai.OpenAI, up: str
) -> None:
    with client.responses.stream(
        model=f"{up}-thinking", input="Hi", reasoning={"effort": "low", "summary": "auto"}
    ) as s:
        kinds = [e.type for e in s]
        first = s.get_final_response()
    assert "response.reasoning_summary_text.delta" in kinds
    assert first.output[0].type == "reasoning" and first.usage is not None
    assert first.usage.output_tokens_details.reasoning_tokens > 0
    history: list[Any] = [{"role": "user", "content": "Hi"}, *[o.model_dump(exclude_none=True) for o in first.output]]
    history += [{"role": "user", "content": "And then?"}]
    assert client.responses.create(model=f"{up}-text", input=history).output_text == UNARY_TEXT
    if up == "an":  # the thinking block goes back with its signature, as Anthropic requires
        sent = gateway.upstream.requests[-1].json()
        blocks = [b for m in sent["messages"] if m["role"] == "assistant" for b in m["content"]]
        assert any(b.get("type") == "thinking" and b.get("signature") for b in blocks)


@pytest.mark.parametrize("up", UPSTREAMS)
def test_prompt_cache_key_reaches_openai_chat_upstreams(gateway: Gateway, client: openai.OpenAI, up: str) -> None:
    """Codex sends its thread id as prompt_cache_key: Chat Completions takes it too; Anthropic
    (breakpoints) and Gemini (implicit caching) have no such field and do not get it."""
    client.responses.create(model=f"{up}-text", input="Hi", prompt_cache_key="thread-7")
    sent = gateway.upstream.requests[-1].json()
    assert sent.get("prompt_cache_key") == ("thread-7" if up == "oa" else None)
