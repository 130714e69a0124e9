"""The 3x3 matrix: each official SDK (openai, anthropic, google-genai) through a running relayproxy
to a fake up of each protocol (OpenAI, Anthropic, Gemini), streaming and unary, text, parallel
tool calls with multi-fragment arguments, a tool-result turn, a mid-stream up error, up
429/5xx before the stream, and a usage record with the right normalised counts for each request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

TEXT = "Hello! 👋 How can I help you today?"
TOOLS_TEXT = "I'll check the weather in Paris and Tōkyō 🌦️"
CALLS = [("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_weather", {"city": "Tōkyō", "unit": "celsius"})]
UNARY_TEXT = "Hello! The capital of France is Paris."
UNARY_CALLS = [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tōkyō"})]

#: Normalised usage (input, cached, output, reasoning) of each up fixture.
STREAM_USAGE = {
    ("oa", "text"): (19, 0, 11, 0),
    ("oa", "tools"): (88, 64, 61, 0),
    ("an", "text"): (21, 0, 14, 0),
    ("an", "tools"): (668, 256, 96, 0),
    ("ge", "text"): (9, 0, 38, 27),
    ("ge", "tools"): (71, 0, 95, 55),
}
UNARY_USAGE = {"oa": (24, 8, 9, 2), "an": (24, 8, 9, 0), "ge": (24, 8, 9, 2)}
UPSTREAMS = ["oa", "an", "ge"]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
}


class Result:
    def __init__(self, text: str = "", calls: list[tuple[str, dict[str, Any], str]] | None = None) -> None:
        self.text = text
        self.calls = calls or []  # (name, args, id)
        self.signatures: list[bytes | None] = []  # Gemini thought signatures, per call
        self.finish: str | None = None

    @property
    def named_calls(self) -> list[tuple[str, dict[str, Any]]]:
        return [(name, args) for name, args, _ in self.calls]


class OpenAIDriver:
    name = "openai"
    stream_error = openai.APIError

    def __init__(self, gw: Gateway) -> None:
        self.c = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=gw.key, max_retries=0)

    def close(self) -> None:
        self.c.close()

    def unary(self, model: str, messages: list[Any] | None = None, tools: bool = False) -> Result:
        r = self.c.chat.completions.create(model=model, messages=messages or _user(), **_oa_tools(tools))
        msg = r.choices[0].message
        res = Result(msg.content or "", [_oa_call(c) for c in msg.tool_calls or []])
        res.finish = r.choices[0].finish_reason
        return res

    def stream(self, model: str, tools: bool = False) -> Result:
        with self.c.chat.completions.stream(model=model, messages=_user(), **_oa_tools(tools)) as s:
            for _ in s:
                pass
            final = s.get_final_completion()
        msg = final.choices[0].message
        res = Result(msg.content or "", [_oa_call(c) for c in msg.tool_calls or []])
        res.finish = final.choices[0].finish_reason
        return res

    def tool_turn(self, model: str, prev: Result) -> Result:
        calls = prev.calls
        messages: list[Any] = [
            *_user(),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                    for name, args, cid in calls
                ],
            },
            *({"role": "tool", "tool_call_id": cid, "content": '{"temp_c": 18}'} for _, _, cid in calls),
        ]
        return self.unary(model, messages, tools=True)

    def http_error(self, model: str) -> tuple[int, type]:
        with pytest.raises(openai.APIStatusError) as info:
            self.c.chat.completions.create(model=model, messages=_user())
        return info.value.status_code, type(info.value)


class AnthropicDriver:
    name = "anthropic"
    stream_error = anthropic.APIStatusError

    def __init__(self, gw: Gateway) -> None:
        self.c = anthropic.Anthropic(base_url=gw.base_url, api_key=gw.key, max_retries=0)

    def close(self) -> None:
        self.c.close()

    def unary(self, model: str, messages: list[Any] | None = None, tools: bool = False) -> Result:
        r = self.c.messages.create(model=model, max_tokens=256, messages=messages or _user(), **_an_tools(tools))
        return _an_result(r)

    def raw_stream(self, model: str) -> Result:
        """The raw event iterator, without the stream helper's accumulator."""
        text = ""
        for event in self.c.messages.create(model=model, max_tokens=256, messages=_user(), stream=True):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
        return Result(text)

    def stream(self, model: str, tools: bool = False) -> Result:
        with self.c.messages.stream(model=model, max_tokens=256, messages=_user(), **_an_tools(tools)) as s:
            for _ in s:
                pass
            final = s.get_final_message()
        return _an_result(final)

    def tool_turn(self, model: str, prev: Result) -> Result:
        calls = prev.calls
        messages: list[Any] = [
            *_user(),
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": c, "name": n, "input": a} for n, a, c in calls],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": c, "content": '{"temp_c": 18}'} for _, _, c in calls
                ],
            },
        ]
        return self.unary(model, messages, tools=True)

    def http_error(self, model: str) -> tuple[int, type]:
        with pytest.raises(anthropic.APIStatusError) as info:
            self.c.messages.create(model=model, max_tokens=64, messages=_user())
        return info.value.status_code, type(info.value)


class GeminiDriver:
    name = "gemini"
    stream_error = genai_errors.APIError

    def __init__(self, gw: Gateway, api_version: str = "v1") -> None:
        options = genai_types.HttpOptions(base_url=gw.base_url, api_version=api_version)
        self.c = genai.Client(api_key=gw.key, http_options=options)

    def close(self) -> None:
        self.c.close()

    def _config(self, tools: bool) -> genai_types.GenerateContentConfig | None:
        if not tools:
            return None
        decl = genai_types.FunctionDeclaration(
            name=WEATHER_TOOL["name"], description=WEATHER_TOOL["description"],
            parameters_json_schema=WEATHER_TOOL["parameters"],
        )  # fmt: skip
        return genai_types.GenerateContentConfig(tools=[genai_types.Tool(function_declarations=[decl])])

    def unary(self, model: str, contents: Any = None, tools: bool = False) -> Result:
        r = self.c.models.generate_content(
            model=model, contents=contents or "What is the weather?", config=self._config(tools)
        )
        return _ge_result(r.text or "", r.function_calls or [], r.candidates[0].finish_reason if r.candidates else None)

    def stream(self, model: str, tools: bool = False) -> Result:
        text, calls, sigs, finish = "", [], [], None
        config = self._config(tools)
        for chunk in self.c.models.generate_content_stream(model=model, contents="What is the weather?", config=config):
            text += chunk.text or ""
            content = chunk.candidates[0].content if chunk.candidates else None
            parts = (content.parts if content else None) or []
            calls += [p.function_call for p in parts if p.function_call]
            sigs += [p.thought_signature for p in parts if p.function_call]
            finish = (chunk.candidates[0].finish_reason if chunk.candidates else None) or finish
        res = _ge_result(text, calls, finish)
        res.signatures = sigs
        return res

    def tool_turn(self, model: str, prev: Result) -> Result:
        calls, sigs = prev.calls, prev.signatures or [None] * len(prev.calls)
        contents = [
            genai_types.Content(role="user", parts=[genai_types.Part(text="What is the weather?")]),
            genai_types.Content(
                role="model",
                parts=[
                    genai_types.Part(
                        function_call=genai_types.FunctionCall(name=n, args=a, id=c), thought_signature=sig
                    )
                    for (n, a, c), sig in zip(calls, sigs, strict=True)
                ],
            ),
            genai_types.Content(
                role="user",
                parts=[
                    genai_types.Part(
                        function_response=genai_types.FunctionResponse(
                            name=n, id=c, response={"output": {"temp_c": 18}}
                        )
                    )
                    for n, _, c in calls
                ],
            ),
        ]
        return self.unary(model, contents, tools=True)

    def http_error(self, model: str) -> tuple[int, type]:
        with pytest.raises(genai_errors.APIError) as info:
            self.c.models.generate_content(model=model, contents="hi")
        return info.value.code, type(info.value)


DRIVERS = {"openai": OpenAIDriver, "anthropic": AnthropicDriver, "gemini": GeminiDriver}


def _user() -> list[Any]:
    return [{"role": "user", "content": "What is the weather?"}]


def _oa_tools(tools: bool) -> dict[str, Any]:
    return {"tools": [{"type": "function", "function": WEATHER_TOOL}]} if tools else {}


def _oa_call(c: Any) -> tuple[str, dict[str, Any], str]:
    return c.function.name, json.loads(c.function.arguments), c.id


def _an_tools(tools: bool) -> dict[str, Any]:
    if not tools:
        return {}
    t = WEATHER_TOOL
    return {"tools": [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}]}


def _an_result(msg: Any) -> Result:
    text = "".join(b.text for b in msg.content if b.type == "text")
    res = Result(text, [(b.name, dict(b.input), b.id) for b in msg.content if b.type == "tool_use"])
    res.finish = msg.stop_reason
    return res


def _ge_result(text: str, calls: list[Any], finish: Any) -> Result:
    res = Result(text, [(c.name, dict(c.args or {}), c.id) for c in calls])
    res.finish = str(finish.value if hasattr(finish, "value") else finish)
    return res


FINISH_TOOLS = {"openai": "tool_calls", "anthropic": "tool_use", "gemini": "STOP"}
FINISH_TEXT = {"openai": "stop", "anthropic": "end_turn", "gemini": "STOP"}


@pytest.fixture(params=list(DRIVERS))
def driver(request: pytest.FixtureRequest, gateway: Gateway) -> Iterator[Any]:
    d = DRIVERS[request.param](gateway)
    yield d
    d.close()


def usage_of(rec: dict[str, Any]) -> tuple[int, int, int, int]:
    return rec["input_tokens"], rec["cached_input_tokens"], rec["output_tokens"], rec["reasoning_tokens"]


def record(gw: Gateway, seq: int, model: str, driver: Any, up: str) -> dict[str, Any]:
    rec = gw.record_after(seq, model)
    assert rec["client_protocol"] == driver.name
    assert rec["upstream_protocol"] == {"oa": "openai", "an": "anthropic", "ge": "gemini"}[up]
    return rec


# -- the matrix -----------------------------------------------------------------------------------


@pytest.mark.parametrize("up", UPSTREAMS)
def test_unary_text(gateway: Gateway, driver: Any, up: str) -> None:
    seq = gateway.last_seq()
    res = driver.unary(f"{up}-text")
    assert res.text == UNARY_TEXT and not res.calls
    assert res.finish == FINISH_TEXT[driver.name]
    rec = record(gateway, seq, f"{up}-text", driver, up)
    assert (rec["outcome"], rec["stream"]) == ("completed", 0)
    assert usage_of(rec) == UNARY_USAGE[up]


@pytest.mark.parametrize("up", UPSTREAMS)
def test_unary_tool_calls(gateway: Gateway, driver: Any, up: str) -> None:
    res = driver.unary(f"{up}-tools", tools=True)
    assert res.named_calls == UNARY_CALLS
    assert res.finish == FINISH_TOOLS[driver.name]
    if (driver.name, up) != ("gemini", "ge"):  # Gemini's own calls carry no id, and pass through as they are
        assert all(cid for _, _, cid in res.calls), "every call has an id the client can answer"


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize("cut", ["", "@7"])
def test_stream_text(gateway: Gateway, driver: Any, up: str, cut: str) -> None:
    seq = gateway.last_seq()
    res = driver.stream(f"{up}-text{cut}")
    assert res.text == TEXT and res.finish == FINISH_TEXT[driver.name]
    rec = record(gateway, seq, f"{up}-text{cut}", driver, up)
    assert (rec["outcome"], rec["stream"]) == ("completed", 1)
    assert usage_of(rec) == STREAM_USAGE[(up, "text")]


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize("cut", ["", "@7"])
def test_stream_parallel_tool_calls(gateway: Gateway, driver: Any, up: str, cut: str) -> None:
    seq = gateway.last_seq()
    res = driver.stream(f"{up}-tools{cut}", tools=True)
    assert res.text == TOOLS_TEXT
    assert res.named_calls == CALLS
    if (driver.name, up) != ("gemini", "ge"):
        assert len({cid for _, _, cid in res.calls}) == 2
    assert res.finish == FINISH_TOOLS[driver.name]
    rec = record(gateway, seq, f"{up}-tools{cut}", driver, up)
    assert usage_of(rec) == STREAM_USAGE[(up, "tools")]


@pytest.mark.parametrize("up", UPSTREAMS)
def test_tool_result_turn_reaches_the_upstream_in_its_own_shape(gateway: Gateway, driver: Any, up: str) -> None:
    first = driver.stream(f"{up}-tools", tools=True)
    driver.tool_turn(f"{up}-text", first)
    sent = gateway.upstream.requests[-1].json()
    ids = [cid for _, _, cid in first.calls]
    if up == "oa":
        assistant = next(m for m in sent["messages"] if m["role"] == "assistant")
        assert [tc["id"] for tc in assistant["tool_calls"]] == ids
        assert [json.loads(tc["function"]["arguments"]) for tc in assistant["tool_calls"]] == [a for _, a in CALLS]
        assert [m["tool_call_id"] for m in sent["messages"] if m["role"] == "tool"] == ids
    elif up == "an":
        uses = [
            b for m in sent["messages"] if m["role"] == "assistant" for b in m["content"] if b["type"] == "tool_use"
        ]
        results = [
            b
            for m in sent["messages"]
            if m["role"] == "user"
            for b in m["content"]
            if isinstance(b, dict) and b.get("type") == "tool_result"
        ]
        assert [b["input"] for b in uses] == [a for _, a in CALLS]
        assert [b["tool_use_id"] for b in results] == [b["id"] for b in uses]
    else:
        model_parts = [p for c in sent["contents"] if c["role"] == "model" for p in c["parts"]]
        user_parts = [p for c in sent["contents"] if c["role"] == "user" for p in c["parts"]]
        assert [p["functionCall"]["args"] for p in model_parts if "functionCall" in p] == [a for _, a in CALLS]
        responses = [p["functionResponse"] for p in user_parts if "functionResponse" in p]
        assert [r["name"] for r in responses] == ["get_weather", "get_weather"]
        # Gemini 3 rejects replayed calls without their thought signature: it must survive the round trip.
        assert model_parts[0].get("thoughtSignature")


@pytest.mark.parametrize("up", UPSTREAMS)
def test_midstream_upstream_error_raises_the_sdks_error(gateway: Gateway, driver: Any, up: str) -> None:
    seq = gateway.last_seq()
    with pytest.raises(driver.stream_error):
        driver.stream(f"{up}-midstream-error")
    rec = record(gateway, seq, f"{up}-midstream-error", driver, up)
    assert (rec["outcome"], rec["billed"]) == ("upstream_error", 0)


@pytest.mark.parametrize("up", UPSTREAMS)
def test_truncated_upstream_stream_is_an_error_never_a_clean_end(gateway: Gateway, driver: Any, up: str) -> None:
    seq = gateway.last_seq()
    with pytest.raises(driver.stream_error):
        driver.stream(f"{up}-truncated")
    rec = record(gateway, seq, f"{up}-truncated", driver, up)
    assert (rec["outcome"], rec["billed"]) == ("upstream_dropped", 0)


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize(("scenario", "status"), [("http429", 429), ("http500", 502), ("http400", 400)])
def test_upstream_http_error_keeps_its_class(
    gateway: Gateway, driver: Any, up: str, scenario: str, status: int
) -> None:
    got, cls = driver.http_error(f"{up}-{scenario}")
    assert got == status
    expected = {
        ("openai", 429): openai.RateLimitError,
        ("openai", 502): openai.InternalServerError,
        ("openai", 400): openai.BadRequestError,
        ("anthropic", 429): anthropic.RateLimitError,
        ("anthropic", 502): anthropic.InternalServerError,
        ("anthropic", 400): anthropic.BadRequestError,
        ("gemini", 429): genai_errors.ClientError,
        ("gemini", 502): genai_errors.ServerError,
        ("gemini", 400): genai_errors.ClientError,
    }[(driver.name, status)]
    assert issubclass(cls, expected)


@pytest.mark.parametrize("up", UPSTREAMS)
def test_missing_upstream_usage_completes_unbilled(gateway: Gateway, driver: Any, up: str) -> None:
    seq = gateway.last_seq()
    # Anthropic to Anthropic passes through, and the SDK's stream helper requires
    # message_delta.usage: the gateway's tap adds it there (the record still says unknown).
    driver.stream(f"{up}-nousage")
    rec = record(gateway, seq, f"{up}-nousage", driver, up)
    assert (rec["outcome"], rec["billed"], rec["reason"]) == ("completed", 0, "usage_unknown")


def test_gemini_v1beta_generation(gateway: Gateway) -> None:
    """google-genai 1.x calls /v1beta/...; 3.x calls /v1/...: both work."""
    d = GeminiDriver(gateway, api_version="v1beta")
    try:
        assert d.stream("oa-text").text == TEXT
        assert d.unary("an-text").text == UNARY_TEXT
    finally:
        d.close()


@pytest.mark.parametrize("up", ["oa", "ge"])
@pytest.mark.parametrize("scenario", ["late", "pause"])
def test_keepalive_pings_are_safe_for_each_sdk(gateway: Gateway, driver: Any, up: str, scenario: str) -> None:
    """A slow first byte (and a long pause mid-stream) get protocol-safe pings the SDK ignores."""
    seq = gateway.last_seq()
    res = driver.stream(f"{up}-{scenario}")
    assert res.text == TEXT
    assert record(gateway, seq, f"{up}-{scenario}", driver, up)["outcome"] == "completed"


@pytest.mark.parametrize("up", UPSTREAMS)
def test_count_tokens(gateway: Gateway, up: str) -> None:
    """Anthropic and Gemini upstreams count (the fake answers 42); OpenAI ones get the local estimate."""
    messages: Any = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=gateway.key, max_retries=0) as c:
        counted = c.messages.count_tokens(model=f"{up}-text", messages=messages).input_tokens
    d = GeminiDriver(gateway)
    try:
        total = d.c.models.count_tokens(model=f"{up}-text", contents="What is the weather like in Paris today?")
    finally:
        d.close()
    if up == "oa":
        assert 5 <= counted <= 40 and 5 <= (total.total_tokens or 0) <= 40
    else:
        assert counted == 42 and total.total_tokens == 42


def test_model_lists_in_each_protocols_shape(gateway: Gateway) -> None:
    """GET /v1/models is shared by the three SDKs; each gets its own shape (told apart by headers)."""
    with openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.key) as oa:
        assert "an-text" in {m.id for m in oa.models.list()}
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=gateway.key) as an:
        listed = list(an.models.list())
        assert "ge-text" in {m.id for m in listed} and listed[0].created_at.year >= 2025
        assert an.models.retrieve("oa-tools").id == "oa-tools"
    d = GeminiDriver(gateway)
    try:
        names = {m.name for m in d.c.models.list()}
        assert "models/oa-text" in names
        assert d.c.models.get(model="an-tools").name == "models/an-tools"
    finally:
        d.close()


THINKING = {  # (answer text, reasoning tokens) of each upstream's reasoning fixture
    "oa": ("9.8 is larger — ça va de soi 🙂.", 52),
    "an": ("Let me check the weather.", 120),
    "ge": ("The capital of France is Paris — café? ☕", 40),
}


@pytest.mark.parametrize("up", UPSTREAMS)
def test_reasoning_stream_keeps_the_answer_and_counts_reasoning(gateway: Gateway, driver: Any, up: str) -> None:
    """DeepSeek reasoning_content, Anthropic thinking (with a signature and a tool call after it)
    and Gemini thoughts: the answer reaches every client intact; reasoning is counted as output."""
    seq = gateway.last_seq()
    res = driver.stream(f"{up}-thinking", tools=up == "an")
    text, reasoning = THINKING[up]
    assert res.text == text
    rec = record(gateway, seq, f"{up}-thinking", driver, up)
    assert rec["outcome"] == "completed" and rec["reasoning_tokens"] == reasoning
    assert rec["output_tokens"] >= reasoning


def test_reasoning_reaches_an_openai_client_as_reasoning_content(gateway: Gateway) -> None:
    with openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.key, max_retries=0) as c:
        chunks = list(c.chat.completions.create(model="an-thinking", messages=_user(), stream=True))
    reasoning = "".join(
        (ch.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for ch in chunks if ch.choices
    )
    assert reasoning == "The user wants the weather in Zürich; I should call the tool."


@pytest.mark.parametrize("model", ["mk-moonshot", "mk-moonshot-passthrough"])
def test_moonshot_quirks_are_repaired_for_the_openai_stream_helper(gateway: Gateway, model: str) -> None:
    """Moonshot sends tool deltas without `index`, the role on every delta and usage inside
    choices[0]: re-encoded (`passthrough = false`) or passed through (the tap rewrites just those
    chunks), the SDK's .stream() helper accumulates the stream correctly."""
    seq = gateway.last_seq()
    with (
        openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.key, max_retries=0) as c,
        c.chat.completions.stream(model=model, messages=_user(), stream_options={"include_usage": True}) as s,
    ):
        for _ in s:
            pass
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert all(json.loads(c.function.arguments) for c in calls)
    assert final.choices[0].message.role == "assistant"
    assert final.usage is not None and final.usage.prompt_tokens > 0
    rec = gateway.record_after(seq, model)
    assert rec["outcome"] == "completed" and rec["input_tokens"] == final.usage.prompt_tokens


@pytest.mark.parametrize("up", UPSTREAMS)
def test_gemini_stream_without_alt_sse_is_a_streamed_json_array(gateway: Gateway, up: str) -> None:
    """REST callers that omit alt=sse get one JSON array; ?key= authenticates and is never forwarded."""
    import http.client as httplib

    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "What is the weather?"}]}]})
    conn = httplib.HTTPConnection(gateway.base_url.removeprefix("http://"), timeout=10)
    try:
        conn.request(
            "POST",
            f"/v1beta/models/{up}-text:streamGenerateContent?key={gateway.key}",
            body,
            {"content-type": "application/json"},
        )
        resp = conn.getresponse()
        status, ctype, raw = resp.status, resp.getheader("content-type") or "", resp.read()
    finally:
        conn.close()
    assert status == 200 and ctype.startswith("application/json")
    chunks = json.loads(raw)
    assert isinstance(chunks, list)
    text = "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"]["parts"])
    assert text == TEXT
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    seen = gateway.upstream.requests[-1]
    assert gateway.key not in seen.path and all(gateway.key not in v for _, v in seen.headers)


def test_unreachable_upstream_is_502_in_the_callers_protocol(gateway: Gateway) -> None:
    seq = gateway.last_seq()
    with (
        anthropic.Anthropic(base_url=gateway.base_url, api_key=gateway.key, max_retries=0) as c,
        pytest.raises(anthropic.InternalServerError) as info,
    ):
        c.messages.create(model="refused", max_tokens=32, messages=_user())
    assert info.value.status_code == 502
    rec = gateway.record_after(seq, "refused")
    assert (rec["outcome"], rec["billed"]) == ("upstream_error", 0)
