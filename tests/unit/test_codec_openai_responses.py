"""openai_responses: request decode (input items, tools, format, the stateless and built-in-tool
400s), the unary Response object, and the stream encoder's exact event sequence, fed whole and in
small fragments, read back as the openai SDK's own event types."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from relayproxy import ir
from relayproxy.codecs import openai_responses as codec
from relayproxy.errors import InvalidRequest, UpstreamStatusError
from relayproxy.sse import SSEEvent, SSEFramer
from tests.fakes.upstream import FIXTURES

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def _req(**body: Any) -> ir.ChatRequest:
    return codec.decode_request({"model": "m", "input": "Hi", **body})


# -- request decode -------------------------------------------------------------------------------


def test_string_input_and_instructions() -> None:
    req = _req(instructions="Be brief.", max_output_tokens=50, temperature=0.5, stream=True)
    assert req.system == "Be brief." and req.messages == [ir.Message("user", [ir.Text("Hi")])]
    assert (req.max_output_tokens, req.temperature, req.stream) == (50, 0.5, True)


def test_items_fold_into_turns() -> None:
    items = [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}],
         "encrypted_content": "sig"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1~gsig", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1~gsig", "output": '{"temp_c": 18}'},
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
    ]  # fmt: skip
    req = _req(input=items, instructions="Be brief.")
    assert req.system == "Be brief.\n\nRules."
    assert [m.role for m in req.messages] == ["user", "assistant", "user"]
    assert req.messages[1].parts == [
        ir.Thinking("think", signature="sig"),
        ir.Text("Checking."),
        ir.ToolCall("call_1", "get_weather", {"city": "Paris"}, signature="gsig"),
    ]
    result, image = req.messages[2].parts
    assert result == ir.ToolResult("call_1", '{"temp_c": 18}', name="get_weather")
    assert image == ir.Image(mime_type="image/png", data="AAAA")


def test_tools_choice_reasoning_and_format() -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    req = _req(
        tools=[tool],
        tool_choice={"type": "function", "name": "f"},
        parallel_tool_calls=False,
        reasoning={"effort": "low", "summary": "auto"},
        text={"format": {"type": "json_schema", "name": "x", "schema": schema}},
        metadata={"k": "v"},
        store=True,
    )
    assert [t.name for t in req.tools] == ["f"]
    assert req.tool_choice == ir.ToolChoice("tool", "f", parallel=False)
    assert req.reasoning == ir.Reasoning(effort="low", include_thoughts=True)
    assert req.json_schema == schema
    assert _req(text={"format": {"type": "json_object"}}).json_mode


def test_namespace_tools_are_flattened_and_untyped_messages_accepted() -> None:
    fn = {"type": "function", "name": "spawn", "parameters": {"type": "object", "properties": {}}}
    req = _req(
        tools=[{"type": "namespace", "name": "multi_agent_v1", "tools": [fn]}], input=[{"role": "user", "content": "x"}]
    )
    assert [t.name for t in req.tools] == ["spawn"] and req.messages == [ir.Message("user", [ir.Text("x")])]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"previous_response_id": "resp_1"}, "resend the whole conversation"),
        ({"input": []}, "input"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "setting store: false"),
        ({"reasoning": {"effort": "huge"}}, "reasoning.effort"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format.schema"),
        ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_bad_requests_name_the_cause(body: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        _req(**body)
    assert needle in exc.value.message
    status, err = codec.encode_error(exc.value)
    assert status == 400 and err["error"]["type"] == "invalid_request_error"


# -- unary ----------------------------------------------------------------------------------------


def test_unary_response_validates_as_the_sdks_type() -> None:
    parts: list[ir.Part] = [
        ir.Thinking("hmm", signature="s"),
        ir.Text("Hello"),
        ir.ToolCall("call_1", "f", {"a": 1}),
    ]
    body = codec.encode_response(ir.ChatResponse("x", "m", parts, ir.FinishReason.TOOL_CALLS, ir.Usage(10, 4, 5)), "m")
    r = Response.model_validate(body)
    assert [o.type for o in r.output] == ["reasoning", "message", "function_call"]
    assert r.output_text == "Hello" and r.status == "completed" and r.id == "resp_x"
    assert r.output[2].arguments == '{"a":1}'  # type: ignore[union-attr]
    assert r.usage is not None and r.usage.model_dump() == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0, "cache_write_tokens_details": None},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15,
    }
    cut = codec.encode_response(ir.ChatResponse("x", "m", [ir.Text("Hel")], ir.FinishReason.LENGTH), "m")
    assert Response.model_validate(cut).status == "incomplete"


# -- stream encoder -------------------------------------------------------------------------------


def _parse(raw: bytes) -> list[Any]:
    events = []
    for frame in raw.decode().split("\n\n"):
        if not frame:
            continue
        head, data = frame.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert head == "event: " + payload["type"]
        events.append(EVENTS.validate_python(payload))
    return events


def _stream(fragment: int) -> list[ir.StreamEvent]:
    def pieces(text: str) -> list[str]:
        return [text[i : i + fragment] for i in range(0, len(text), fragment)]

    evs: list[ir.StreamEvent] = [ir.MessageStart("up1", "m", ir.Usage(7))]
    evs += [ir.ThinkingDelta(t) for t in pieces("Let me see.")] + [ir.ThinkingSignature("sig")]
    evs += [ir.TextDelta(t) for t in pieces("Checking 🌦️")]
    evs += [ir.ToolCallStart(0, "call_a", "get_weather")]
    evs += [ir.ToolCallDelta(0, t) for t in pieces('{"city": "Paris"}')]
    evs += [ir.UsageUpdate(ir.Usage(7, 0, 20, 3)), ir.MessageStop(ir.FinishReason.TOOL_CALLS)]
    return evs


EXPECTED = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.reasoning_summary_part.added",
    "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.done",
    "response.output_item.done",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.mark.parametrize("fragment", [1000, 1])
def test_stream_event_sequence(fragment: int) -> None:
    enc = codec.stream_encoder(_req(stream=True), "m")
    events = _parse(b"".join(enc.encode(ev) for ev in _stream(fragment)) + enc.finish())
    kinds = [e.type for e in events]
    deduped = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1] or not k.endswith(".delta")]
    assert deduped == EXPECTED
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Checking 🌦️"
    assert [e.output_index for e in events if e.type == "response.output_item.added"] == [0, 1, 2]
    final = events[-1].response
    assert final.id == "resp_up1" and final.status == "completed"
    assert [o.type for o in final.output] == ["reasoning", "message", "function_call"]
    assert final.output[0].encrypted_content == "sig" and final.output[0].summary[0].text == "Let me see."
    assert final.output_text == "Checking 🌦️"
    assert (final.output[2].call_id, final.output[2].arguments) == ("call_a", '{"city": "Paris"}')
    assert final.usage.output_tokens_details.reasoning_tokens == 3 and final.usage.input_tokens == 7
    assert enc.encode(ir.TextDelta("late")) == b"", "nothing after response.completed"


def test_stream_failure_is_response_failed_and_last() -> None:
    enc = codec.stream_encoder(_req(stream=True), "m")
    raw = enc.encode(ir.MessageStart("u", "m")) + enc.encode(ir.TextDelta("Hi"))
    raw += enc.encode(ir.StreamFailed(529, "overloaded"))
    events = _parse(raw)
    assert events[-1].type == "response.failed" and events[-1].response.status == "failed"
    assert events[-1].response.error.message == "overloaded"
    assert enc.error(UpstreamStatusError(500, "again")) == b"" and enc.encode(ir.TextDelta("x")) == b""


def test_length_finish_is_response_incomplete() -> None:
    enc = codec.stream_encoder(_req(stream=True), "m")
    raw = b"".join(enc.encode(ev) for ev in [ir.TextDelta("Hel"), ir.MessageStop(ir.FinishReason.LENGTH)])
    last = _parse(raw)[-1]
    assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"


def test_builtin_tools_stay_out_of_the_ir_and_are_named() -> None:
    """The canonical model cannot carry them; the plan decides (passthrough forwards, translation
    drops web search and refuses the rest)."""
    fn = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    req = _req(tools=[{"type": "web_search", "external_web_access": False}, fn, {"type": "file_search"}])
    assert [t.name for t in req.tools] == ["f"] and req.builtin_tools == ["web_search", "file_search"]


def test_prompt_cache_key_is_kept_in_the_ir() -> None:
    assert _req(prompt_cache_key="thread-1").prompt_cache_key == "thread-1"
    assert _req().prompt_cache_key is None


@pytest.mark.parametrize("event_lines", [True, False])
def test_passthrough_tap_reads_usage_and_the_end_from_response_completed(event_lines: bool) -> None:
    """With or without ``event:`` lines (some compatible servers send only ``data:``), every event
    passes untouched and usage comes from ``response.completed``."""
    raw = (FIXTURES / "openai" / "responses_text.sse").read_bytes()
    if not event_lines:
        raw = b"".join(line + b"\n" for line in raw.split(b"\n")[:-1] if not line.startswith(b"event: "))
    tap = codec.stream_tap(_req())
    events = SSEFramer().feed(raw)
    assert [tap.feed(ev) for ev in events] == [True] * len(events) and tap.close() == b""
    assert tap.done and tap.error is None and tap.usage == ir.Usage(21, 5, 12, 0)


def test_passthrough_tap_reads_response_failed_and_error_events() -> None:
    error = {"code": "server_error", "message": "boom"}
    failed = orjson.dumps(
        {"type": "response.failed", "sequence_number": 3, "response": {"status": "failed", "error": error}}
    )
    tap = codec.stream_tap(_req())
    assert tap.feed(SSEEvent("response.failed", failed, b"")) is True
    assert tap.error == {"code": "server_error", "message": "boom"} and not tap.done
    tap = codec.stream_tap(_req())
    tap.feed(
        SSEEvent(None, b'{"type":"error","sequence_number":0,"code":"rate_limit_exceeded","message":"slow down"}', b"")
    )
    assert tap.error == {"message": "slow down", "code": "rate_limit_exceeded"}


def test_passthrough_call_forces_store_false_and_keeps_the_rest() -> None:
    body = {
        "model": "alias",
        "input": "x",
        "store": True,
        "prompt_cache_key": "k",
        "include": ["reasoning.encrypted_content"],
    }
    call = codec.prepare_passthrough(body, _req(), "gpt-5")
    assert call.path == "/responses"
    assert orjson.loads(call.body) == {**body, "model": "gpt-5", "store": False}
    assert body["store"] is True  # the client's dict is not changed
    assert codec.response_usage({"usage": {"input_tokens": 3, "output_tokens": 2}}) == ir.Usage(3, 0, 2, 0)
    err = codec.decode_error(429, b'{"error":{"message":"Rate limit","type":"requests"}}', "7")
    assert (err.status, err.message, err.retry_after) == (429, "Rate limit", "7")
