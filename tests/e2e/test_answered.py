"""A client that has the whole answer is a completed request: raw clients (a plain socket and h11)
read a stream until the event that completes the answer in their protocol and close, while the
fake upstream holds back its final framing (OpenAI ``[DONE]``, Anthropic ``message_stop``, the end
of a Gemini body) for 40 ms, 1 s, or until the gateway hangs up -> one record, ``completed``,
billed at the exact price. A client that leaves one event earlier (the upstream has sent
everything but the answer-completing event) -> ``client_disconnected``, not billed."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import pytest

from tests.e2e.conftest import Gateway, start_gateway
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

Event = tuple[str | None, Any]  # (event name, data: parsed JSON, or the raw text)

#: The fake upstream's text fixtures: normalised (input, cached, output) usage.
USAGE = {"oa": (19, 0, 11), "an": (21, 0, 14), "ge": (9, 0, 38)}
#: The e2e config's prices (USD per 1M tokens: input 1.0, cached 0.5, output 2.0) and discount 0.30.
PRICES, DISCOUNT = (Fraction(1), Fraction(1, 2), Fraction(2)), Fraction(3, 10)
CLIENTS = ["openai", "anthropic", "gemini", "openai_responses"]
PAIRS = [(client, up) for client in CLIENTS for up in ("oa", "an", "ge")]


def cost(up: str) -> int:
    inp, cached, out = USAGE[up]
    p_in, p_cached, p_out = PRICES
    return int(((inp - cached) * p_in + cached * p_cached + out * p_out) * (1 - DISCOUNT))


def _request(client: str, model: str, key: str) -> tuple[str, dict[str, Any], list[tuple[str, str]]]:
    messages = [{"role": "user", "content": "Hello"}]
    if client == "openai":
        body = {"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
        return "/v1/chat/completions", body, [("authorization", f"Bearer {key}")]
    if client == "anthropic":
        body = {"model": model, "max_tokens": 256, "messages": messages, "stream": True}
        return "/v1/messages", body, [("x-api-key", key), ("anthropic-version", "2023-06-01")]
    if client == "gemini":
        body = {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]}
        return f"/v1beta/models/{model}:streamGenerateContent?alt=sse", body, [("x-goog-api-key", key)]
    return "/v1/responses", {"model": model, "input": "Hello", "stream": True}, [("authorization", f"Bearer {key}")]


def answer_complete(client: str, ev: Event) -> bool:
    """The client's view of where its answer is complete (what a real SDK may stop reading at)."""
    name, data = ev
    if not isinstance(data, dict):
        return False
    if client == "openai":
        return bool(data.get("usage"))  # the usage chunk asked for; it follows the finish chunk
    if client == "anthropic":
        return name == "message_delta"
    if client == "gemini":
        candidates = data.get("candidates") or [{}]
        return bool(candidates[0].get("finishReason")) and "usageMetadata" in data
    return data.get("type") == "response.completed"


def first_content(client: str, ev: Event) -> bool:
    name, data = ev
    if not isinstance(data, dict):
        return False
    if client == "openai":
        return bool((data.get("choices") or [{}])[0].get("delta", {}).get("content"))
    if client == "anthropic":
        return name == "content_block_delta"
    if client == "gemini":
        return bool(data.get("candidates"))
    return data.get("type") == "response.output_text.delta"


def stream_until(gw: Gateway, client: str, model: str, stop: Callable[[Event], bool]) -> list[Event]:
    """POST a streaming request on a raw socket, read SSE events until ``stop`` says so and close."""
    return _stream(gw, client, model, stop, before_close=None)


def _stream(
    gw: Gateway,
    client: str,
    model: str,
    stop: Callable[[Event], bool],
    before_close: Callable[[], None] | None,
) -> list[Event]:
    url = urlsplit(gw.base_url)
    path, body, headers = _request(client, model, gw.key)
    data = json.dumps(body).encode()
    conn = h11.Connection(h11.CLIENT)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    try:
        head = [("host", url.netloc), ("content-type", "application/json"), ("content-length", str(len(data)))]
        sock.sendall(conn.send(h11.Request(method="POST", target=path, headers=head + headers)))
        sock.sendall(conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
        return _read_events(sock, conn, stop, before_close)
    finally:
        sock.close()


def _read_events(
    sock: socket.socket, conn: h11.Connection, stop: Callable[[Event], bool], before_close: Callable[[], None] | None
) -> list[Event]:
    events: list[Event] = []
    buf = b""
    while True:
        got = conn.next_event()
        if got is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(got, h11.Response):
            assert got.status_code == 200, got
        elif isinstance(got, h11.Data):
            buf += bytes(got.data).replace(b"\r\n", b"\n")
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                if not block.strip() or block.startswith(b":"):
                    continue  # a keep-alive
                events.append(_parse(block))
                if stop(events[-1]):
                    if before_close is not None:
                        before_close()
                    return events
        else:
            raise AssertionError(f"the stream ended before the client's stop point: {got!r} after {events}")


def _parse(block: bytes) -> Event:
    name, data = None, []
    for line in block.decode().split("\n"):
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    text = "\n".join(data)
    try:
        return name, json.loads(text)
    except json.JSONDecodeError:
        return name, text


def wait_hanging(upstream: FakeUpstream, before: int) -> None:
    """Wait until the fake upstream has sent everything but the answer-completing event."""
    deadline = time.monotonic() + 30
    while upstream.hanging <= before:
        assert time.monotonic() < deadline, "the fake upstream never reached its hang point"
        time.sleep(0.005)


def check_completed(gw: Gateway, client: str, up: str, scenario: str) -> None:
    model, seq = f"{up}-{scenario}", gw.last_seq()
    events = stream_until(gw, client, model, lambda ev: answer_complete(client, ev))
    assert events and answer_complete(client, events[-1])
    rec = gw.record_after(seq, model)
    inp, cached, out = USAGE[up]
    assert (rec["outcome"], rec["billed"], rec["reason"]) == ("completed", 1, "charged"), rec
    assert (rec["input_tokens"], rec["cached_input_tokens"], rec["output_tokens"]) == (inp, cached, out)
    assert rec["cost_microusd"] == cost(up)
    assert rec["upstream_protocol"] == {"oa": "openai", "an": "anthropic", "ge": "gemini"}[up]
    assert rec["client_protocol"] == client


def check_left_early(gw: Gateway, client: str, up: str) -> None:
    model, seq, hung = f"{up}-hang", gw.last_seq(), gw.upstream.hanging
    events = _stream(gw, client, model, lambda ev: first_content(client, ev), lambda: wait_hanging(gw.upstream, hung))
    assert not any(answer_complete(client, ev) for ev in events)
    rec = gw.record_after(seq, model)
    assert (rec["outcome"], rec["billed"], rec["cost_microusd"]) == ("client_disconnected", 0, 0), rec


@pytest.mark.parametrize("scenario", ["tail40", "tail1000", "tailhang"])
@pytest.mark.parametrize(("client", "up"), PAIRS)
def test_client_leaving_after_the_answer_is_completed_and_billed(
    gateway: Gateway, client: str, up: str, scenario: str
) -> None:
    check_completed(gateway, client, up, scenario)


@pytest.mark.parametrize(("client", "up"), PAIRS)
def test_client_leaving_one_event_before_the_answer_is_disconnected_and_unbilled(
    gateway: Gateway, client: str, up: str
) -> None:
    check_left_early(gateway, client, up)


@pytest.mark.parametrize("client", ["anthropic", "openai"])
def test_client_leaving_after_an_answer_without_usage_is_completed_unbilled_and_says_why(
    gateway: Gateway, client: str
) -> None:
    model, seq = "an-nousagehang", gateway.last_seq()
    stream_until(gateway, client, model, lambda ev: answer_complete(client, ev))
    rec = gateway.record_after(seq, model)
    assert (rec["outcome"], rec["billed"], rec["cost_microusd"]) == ("completed", 0, 0), rec
    assert rec["reason"] == "usage_unknown"


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("answered-workers"), upstream, serve_args=("--workers", "2"))
    yield gw
    gw.process.terminate()
    gw.process.wait(10)


@pytest.mark.parametrize(("client", "up"), [("anthropic", "an"), ("openai", "an"), ("gemini", "oa")])
def test_the_same_with_two_workers(two_workers: Gateway, client: str, up: str) -> None:
    for scenario in ("tail40", "tailhang"):
        check_completed(two_workers, client, up, scenario)
    check_left_early(two_workers, client, up)


def test_forty_clients_leaving_after_the_answer_spend_no_free_aborts(tmp_path: Path, upstream: FakeUpstream) -> None:
    gw = start_gateway(tmp_path, upstream, limits={"free_aborts_per_hour": 2})
    try:
        for _ in range(40):  # each one would be an abort under the old rule: the third would be a 429
            check_completed(gw, "anthropic", "an", "tail40")
        check_left_early(gw, "anthropic", "an")  # a real abort still counts
    finally:
        gw.process.terminate()
        gw.process.wait(10)
