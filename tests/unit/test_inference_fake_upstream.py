"""gateway.inference and gateway.streaming over a fake upstream: a Pool seam that hands out
responses fed canned bytes (as httpcore's AsyncMockStream does), and a store that keeps what it
is asked to settle. No socket, no subprocess: the composition alone."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from relayproxy.config.settings import Config, parse_config
from relayproxy.errors import UpstreamStatusError
from relayproxy.gateway.exchange import Exchange, Recorder
from relayproxy.gateway.inference import Inference
from relayproxy.http_types import Headers, HttpRequest, HttpResponse
from relayproxy.policy.router import Endpoint, EndpointKind
from relayproxy.records import UsageRecord
from relayproxy.store.facade import Store
from relayproxy.telemetry.metrics import GatewayMetrics
from relayproxy.upstream import Pool

pytestmark = pytest.mark.anyio
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TEXT_SSE = (FIXTURES / "openai" / "text.sse").read_bytes()

RAW: dict[str, Any] = {
    "providers": {"oa": {"protocol": "openai", "base_url": "https://oa.example/v1", "api_key_env": "RP_T_FAKE_OA"}},
    "models": {"gpt": {"provider": "oa", "input_price": 1, "output_price": 2}},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeResponse:
    """An UpstreamResponse whose body is canned chunks."""

    def __init__(self, status: int, chunks: list[bytes], headers: Headers | None = None) -> None:
        self.status = status
        self.headers: Headers = headers or []
        self._chunks = chunks
        self.closed = False

    async def aiter_body(self, heartbeat_s: float | None = None) -> AsyncGenerator[bytes, None]:
        for chunk in self._chunks:
            yield chunk

    async def aread(self, max_bytes: int = 16 * 1024 * 1024) -> bytes:
        return b"".join(self._chunks)

    async def aclose(self) -> None:
        self.closed = True


class FakePool:
    def __init__(self, *responses: FakeResponse) -> None:
        self._responses = list(responses)
        self.sent: list[tuple[str, str, Headers, bytes]] = []

    async def request(self, method: str, url: str, headers: Headers, body: bytes, **timeouts: float) -> FakeResponse:
        self.sent.append((method, url, headers, body))
        return self._responses.pop(0)


class FakeStore:
    def __init__(self) -> None:
        self.settled: list[tuple[UsageRecord, int]] = []

    def settle_soon(self, rec: UsageRecord, charge_microusd: int) -> None:
        self.settled.append((rec, charge_microusd))


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("RP_T_FAKE_OA", "sk-fake-upstream")
    return parse_config(RAW, Path("config.toml"))


def setup(config: Config, *responses: FakeResponse) -> tuple[Inference, FakePool, FakeStore]:
    pool, store, metrics = FakePool(*responses), FakeStore(), GatewayMetrics()
    recorder = Recorder(cast(Store, store), config.billing.discount, metrics, frozenset(config.models))
    return Inference(config, cast(Pool, pool), recorder, metrics), pool, store


async def run(inference: Inference, protocol: str, body: dict[str, Any]) -> tuple[Exchange, HttpResponse]:
    path = "/v1/chat/completions" if protocol == "openai" else "/v1/messages"
    ex = Exchange(HttpRequest("POST", path, "", [], orjson.dumps(body)), protocol)
    ex.tracked = True
    ep = Endpoint(EndpointKind.INFERENCE, protocol)
    plans = inference.prepare(ex, ep)
    return ex, await inference.run(ex, plans, held=inference.hold_amount(plans))


async def drain(response: HttpResponse) -> bytes:
    out = b""
    async for chunk in cast(Any, response.body):
        out += chunk
    return out


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], **extra}


def unary_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
        }
    )


async def test_unary_passthrough_answers_the_upstream_bytes_and_charges_once_sent(config: Config) -> None:
    raw = unary_body()
    inference, pool, store = setup(config, FakeResponse(200, [raw[:10], raw[10:]]))
    ex, response = await run(inference, "openai", chat())
    assert response.status == 200 and response.body == raw
    assert ex.id_header in response.headers
    [(method, url, headers, sent)] = pool.sent
    assert (method, url) == ("POST", "https://oa.example/v1/chat/completions")
    assert (b"authorization", b"Bearer sk-fake-upstream") in headers
    assert orjson.loads(sent)["model"] == "gpt"
    assert store.settled == []  # settled only when the server has handed the bytes over
    assert response.sent is not None
    response.sent(True)
    [(rec, cost)] = store.settled
    assert (rec.outcome, rec.billed, rec.reason) == ("completed", True, "charged")
    assert (rec.input_tokens, rec.output_tokens) == (1000, 500)
    assert cost == rec.cost_microusd > 0
    assert (rec.provider, rec.upstream_protocol, rec.model) == ("oa", "openai", "gpt")


async def test_unary_translated_for_an_anthropic_client(config: Config) -> None:
    inference, _, store = setup(config, FakeResponse(200, [unary_body()]))
    body = {"model": "gpt", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    _, response = await run(inference, "anthropic", body)
    answer = orjson.loads(cast(bytes, response.body))
    assert answer["type"] == "message" and answer["content"] == [{"type": "text", "text": "Hello"}]
    assert answer["usage"]["input_tokens"] == 1000
    assert response.sent is not None
    response.sent(False)  # the client went away before the bytes were handed over
    [(rec, cost)] = store.settled
    assert (rec.outcome, rec.billed, cost) == ("client_disconnected", False, 0)


async def test_an_upstream_error_status_is_raised_before_any_client_byte(config: Config) -> None:
    error = orjson.dumps({"error": {"message": "bad thing", "type": "invalid_request_error"}})
    failed = FakeResponse(400, [error])
    inference, _, _ = setup(config, failed)
    with pytest.raises(UpstreamStatusError) as info:
        await run(inference, "openai", chat())
    assert info.value.status == 400 and "bad thing" in info.value.message
    assert failed.closed


@pytest.mark.parametrize("size", [1, 7, 100, len(TEXT_SSE)])
async def test_stream_passthrough_relays_the_upstream_bytes_and_bills_on_done(config: Config, size: int) -> None:
    chunks = [TEXT_SSE[i : i + size] for i in range(0, len(TEXT_SSE), size)]
    upstream = FakeResponse(200, chunks)
    inference, _, store = setup(config, upstream)
    ex, response = await run(inference, "openai", chat(stream=True, stream_options={"include_usage": True}))
    assert response.status == 200
    assert await drain(response) == TEXT_SSE
    [(rec, cost)] = store.settled
    assert rec.request_id == ex.request_id
    assert (rec.outcome, rec.billed, rec.stream) == ("completed", True, True)
    assert (rec.input_tokens, rec.output_tokens) == (19, 11)
    assert cost > 0 and upstream.closed


async def test_stream_translated_to_anthropic_events(config: Config) -> None:
    inference, _, store = setup(config, FakeResponse(200, [TEXT_SSE]))
    body = {"model": "gpt", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    _, response = await run(inference, "anthropic", body)
    out = await drain(response)
    assert out.startswith(b"event: message_start")
    assert b"event: content_block_delta" in out and b"Hello" in out
    assert out.rstrip().endswith(b'data: {"type":"message_stop"}')
    [(rec, _)] = store.settled
    assert rec.outcome == "completed" and rec.output_tokens == 11


async def test_a_stream_cut_before_its_usage_chunk_is_dropped_and_not_billed(config: Config) -> None:
    # A clean end after the finish and usage chunks completes an OpenAI stream even without
    # [DONE]; one before the usage chunk does not.
    cut = TEXT_SSE[: TEXT_SSE.rindex(b"data: {", 0, TEXT_SSE.index(b"data: [DONE]"))]
    assert b'"finish_reason":"stop"' in cut.replace(b" ", b"") and b'"prompt_tokens"' not in cut
    inference, _, store = setup(config, FakeResponse(200, [cut]))
    _, response = await run(inference, "openai", chat(stream=True, stream_options={"include_usage": True}))
    out = await drain(response)
    assert out.startswith(cut) and b'"error"' in out[len(cut) :]  # the in-band error, after the bytes
    [(rec, cost)] = store.settled
    assert (rec.outcome, rec.billed, cost) == ("upstream_dropped", False, 0)
