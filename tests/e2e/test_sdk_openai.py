"""The official openai SDK, sync and async, through a running relayproxy to a fake OpenAI upstream."""

from __future__ import annotations

import http.client as httplib
import json
import socket
import time
from typing import Any

import openai
import pytest

from tests.e2e.conftest import UPSTREAM_KEY, Gateway
from tests.fakes.upstream import FIXTURES, openai_unary, sse_events

pytestmark = pytest.mark.e2e

MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]


def expected_stream(name: str) -> dict[str, Any]:
    """Text, tool calls and usage as an SDK should see them, computed from the fixture itself."""
    text, calls, usage, finish = "", {}, None, None
    for event in sse_events(FIXTURES / "openai" / name):
        data = event.strip()[len(b"data: ") :]
        if data == b"[DONE]":
            continue
        chunk = json.loads(data)
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            text += choice["delta"].get("content") or ""
            finish = choice.get("finish_reason") or finish
            for tc in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] += tc.get("id") or ""
                call["name"] += tc.get("function", {}).get("name") or ""
                call["arguments"] += tc.get("function", {}).get("arguments") or ""
    return {"text": text, "calls": [calls[i] for i in sorted(calls)], "usage": usage, "finish": finish}


_clients: list[openai.OpenAI] = []


def client(gw: Gateway, key: str | None = None) -> openai.OpenAI:
    c = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key or gw.key, max_retries=0)
    _clients.append(c)
    return c


@pytest.fixture(autouse=True)
def _close_clients() -> Any:
    yield
    while _clients:
        _clients.pop().close()


def aclient(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=gw.key, max_retries=0)


def http(gw: Gateway, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP request with the test key, for what the SDK cannot send."""
    conn = httplib.HTTPConnection(gw.base_url.removeprefix("http://"), timeout=10)
    try:
        conn.request(method, path, body, {"authorization": f"Bearer {gw.key}", "content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def request_id(raw: Any) -> str:
    rid = raw.headers.get("x-request-id")
    assert rid and rid.startswith("req_")
    return str(rid)


# -- unary ----------------------------------------------------------------------------------------


def test_unary_sync_text_and_usage_record(gateway: Gateway) -> None:
    """A unary call returns the upstream's completion; the record holds the normalised usage."""
    raw = client(gateway).chat.completions.with_raw_response.create(model="text", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == openai_unary("text")["choices"][0]["message"]["content"]
    assert completion.usage is not None and completion.usage.prompt_tokens == 24
    rec = gateway.usage(request_id(raw))
    assert rec["outcome"] == "completed" and rec["http_status"] == 200
    assert (
        rec["input_tokens"],
        rec["cached_input_tokens"],
        rec["output_tokens"],
        rec["reasoning_tokens"],
    ) == (
        24,
        8,
        9,
        2,
    )
    # ((24 - 8) * $1.00 + 8 * $0.50 + 9 * $2.00) per 1M tokens, less the 30 % discount, rounded down.
    assert (rec["billed"], rec["reason"], rec["cost_microusd"]) == (1, "charged", 26)
    assert rec["account"] == "test" and rec["model"] == "text" and rec["provider"] == "fake"
    assert rec["client_protocol"] == "openai" and rec["upstream_protocol"] == "openai" and rec["stream"] == 0


@pytest.mark.anyio
async def test_unary_async_tool_calls(gateway: Gateway) -> None:
    async with aclient(gateway) as c:
        completion = await c.chat.completions.create(model="tools", messages=MESSAGES)
    calls = completion.choices[0].message.tool_calls
    assert calls is not None and [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert json.loads(calls[1].function.arguments) == {"city": "Tōkyō"}
    assert completion.choices[0].finish_reason == "tool_calls"


def test_unary_without_usage_is_completed_but_usage_unknown(gateway: Gateway) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(model="nousage", messages=MESSAGES)
    rec = gateway.usage(request_id(raw))
    assert (rec["outcome"], rec["billed"], rec["reason"]) == ("completed", 0, "usage_unknown")


# -- streaming ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["text", "text@7", "text@1", "text@cl"])
def test_stream_sync_text(gateway: Gateway, model: str) -> None:
    """Streamed text arrives whole whatever the upstream's TCP cuts; no usage chunk unless asked."""
    want = expected_stream("text.sse")
    raw = client(gateway).chat.completions.with_raw_response.create(model=model, messages=MESSAGES, stream=True)
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want["text"]
    assert all(c.choices for c in chunks), "the usage-only chunk must be removed when not asked for"
    sent = gateway.upstream.requests[-1].json()
    assert sent["stream_options"]["include_usage"] is True
    rec = gateway.usage(request_id(raw))
    assert rec["outcome"] == "completed" and rec["stream"] == 1
    assert rec["input_tokens"] == want["usage"]["prompt_tokens"]
    assert rec["output_tokens"] == want["usage"]["completion_tokens"]


def test_stream_with_usage_requested_passes_usage_chunk(gateway: Gateway) -> None:
    want = expected_stream("text.sse")
    stream = client(gateway).chat.completions.create(
        model="text", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == want["usage"]["prompt_tokens"]


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["tools", "tools@7"])
async def test_stream_async_parallel_tool_calls(gateway: Gateway, model: str) -> None:
    want = expected_stream("tools.sse")
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async with aclient(gateway) as c:
        stream = await c.chat.completions.create(model=model, messages=MESSAGES, stream=True)
        async for chunk in stream:
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for tc in choice.delta.tool_calls or []:
                    call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] += tc.id or ""
                    call["name"] += (tc.function and tc.function.name) or ""
                    call["arguments"] += (tc.function and tc.function.arguments) or ""
    assert [calls[i] for i in sorted(calls)] == want["calls"]
    assert finish == "tool_calls" == want["finish"]


def test_stream_helper(gateway: Gateway) -> None:
    """client.chat.completions.stream() accumulates deltas: repeated fields would corrupt it."""
    want = expected_stream("tools.sse")
    with client(gateway).chat.completions.stream(model="tools@7", messages=MESSAGES) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.role == "assistant"
    assert (message.content or "") == want["text"]
    got = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or []]
    assert got == want["calls"]
    assert "tool_calls.function.arguments.done" in kinds


def test_stream_helper_text(gateway: Gateway) -> None:
    with client(gateway).chat.completions.stream(model="text", messages=MESSAGES) as stream:
        text = "".join(e.delta for e in stream if e.type == "content.delta")
    assert text == expected_stream("text.sse")["text"]


# -- failures -------------------------------------------------------------------------------------


def test_midstream_upstream_error_raises_and_is_not_billed(gateway: Gateway) -> None:
    seen = ""
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="midstream-error", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            seen += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert seen, "the text before the error reaches the client"
    assert not isinstance(info.value, openai.APIStatusError)
    assert "server had an error" in info.value.message
    rec = gateway.usage(request_id(raw))
    assert (rec["outcome"], rec["billed"], rec["cost_microusd"]) == ("upstream_error", 0, 0)


@pytest.mark.parametrize("model", ["truncated", "reset", "stall", "cut"])
def test_broken_upstream_stream_is_an_error_never_a_clean_end(gateway: Gateway, model: str) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(model=model, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError):
        list(raw.parse())
    rec = gateway.usage(request_id(raw))
    assert (rec["outcome"], rec["billed"]) == ("upstream_dropped", 0)


def test_bad_key_is_401(gateway: Gateway) -> None:
    bad = client(gateway, "rp_" + "x" * 32)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="text", messages=MESSAGES)
    assert info.value.code == "invalid_api_key"
    assert info.value.response.headers["x-request-id"].startswith("req_")


def test_unknown_model_is_404(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(gateway).chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    rec = gateway.usage(info.value.response.headers["x-request-id"])
    assert (rec["outcome"], rec["reason"], rec["http_status"]) == ("rejected", "model_not_found", 404)


def test_bad_field_is_400_with_param(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway).chat.completions.create(model="text", messages=[])
    assert info.value.param == "messages"


def test_bad_json_is_400(gateway: Gateway) -> None:
    status, headers, body = http(gateway, "POST", "/v1/chat/completions", b"{nope")
    assert status == 400 and headers["x-request-id"].startswith("req_")
    assert "not valid JSON" in json.loads(body)["error"]["message"]


def test_body_too_large_is_413(gateway: Gateway) -> None:
    big = [{"role": "user", "content": "x" * 1_100_000}]
    with pytest.raises(openai.APIStatusError) as info:
        client(gateway).chat.completions.create(model="text", messages=big)
    assert info.value.status_code == 413


def test_upstream_429_keeps_retry_after(gateway: Gateway) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client(gateway).chat.completions.create(model="http429", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "7"
    assert "Rate limit" in info.value.message


@pytest.mark.parametrize("model", ["http500", "badjson"])
def test_upstream_failure_is_502(gateway: Gateway, model: str) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client(gateway).chat.completions.create(model=model, messages=MESSAGES)
    assert info.value.status_code == 502
    rec = gateway.usage(info.value.response.headers["x-request-id"])
    assert (rec["outcome"], rec["billed"]) == ("upstream_error", 0)


def test_upstream_first_byte_timeout_is_504(gateway: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(gateway).chat.completions.create(model="noanswer", messages=MESSAGES)
    assert info.value.status_code == 504


def test_provider_without_key_is_503_naming_the_variable(gateway: Gateway) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client(gateway).chat.completions.create(model="needs-key", messages=MESSAGES)
    assert info.value.status_code == 503
    assert "RELAYPROXY_TEST_UNSET_KEY" in info.value.message


def test_upstream_gets_provider_key_never_the_callers(gateway: Gateway) -> None:
    client(gateway).chat.completions.create(model="text", messages=MESSAGES)
    seen = gateway.upstream.requests[-1]
    assert seen.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert seen.header("accept-encoding") == "identity"
    assert all(gateway.key not in v for _, v in seen.headers) and gateway.key.encode() not in seen.body


def test_models_list(gateway: Gateway) -> None:
    ids = {m.id for m in client(gateway).models.list()}
    assert {"text", "tools", "needs-key"} <= ids
    assert client(gateway).models.retrieve("tools").id == "tools"


def test_revocation_is_immediate(gateway: Gateway) -> None:
    key = gateway.cli("keys", "create", "--account", "revoke-me").stdout.strip()
    gateway.cli("credits", "add", "--account", "revoke-me", "--usd", "1")
    c = client(gateway, key)
    c.chat.completions.create(model="text", messages=MESSAGES)
    listed = [
        json.loads(line) for line in gateway.cli("keys", "list", "--account", "revoke-me", "--json").stdout.splitlines()
    ]
    assert gateway.cli("keys", "revoke", listed[0]["id"]).returncode == 0
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="text", messages=MESSAGES)


def disconnect_mid_stream(gw: Gateway, model: str) -> str:
    """Open a stream over a raw socket, read the first bytes, hang up; return the request id."""
    body = json.dumps({"model": model, "messages": MESSAGES, "stream": True}).encode()
    port = int(gw.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {gw.key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        rid = next(ln.split(b": ")[1] for ln in first.split(b"\r\n") if ln.lower().startswith(b"x-request-id"))
    return rid.decode()


def test_client_disconnect_mid_stream_is_recorded_and_upstream_cancelled(gateway: Gateway) -> None:
    """Repeated, because the hang-up races the gateway's own cleanup at different points."""
    for _ in range(15):
        rec = gateway.usage(disconnect_mid_stream(gateway, "slow"))
        assert (rec["outcome"], rec["billed"], rec["reason"]) == (
            "client_disconnected",
            0,
            "client_disconnected",
        )
    deadline = time.monotonic() + 1.0
    while gateway.upstream.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gateway.upstream.active == 0, "the upstream request must be cancelled within 1 s"
