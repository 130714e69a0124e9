"""Operations end to end: per-key limits answer 429 with Retry-After and never reach the upstream,
and no key, secret or prompt ever lands in the logs, the database or /metrics."""

from __future__ import annotations

import importlib.util
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from tests.e2e.conftest import EVENT_LOOP, UPSTREAM_KEY, Gateway, start_gateway
from tests.e2e.test_sdk_openai import disconnect_mid_stream
from tests.fakes.stripe import WEBHOOK_SECRET
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.e2e


@pytest.fixture
def limited(tmp_path: Path, upstream: FakeUpstream) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path, upstream, limits={"per_key_concurrency": 2})
    yield gw
    gw.process.terminate()
    gw.process.wait(10)


def open_stream(gw: Gateway, model: str) -> socket.socket:
    """A streaming request left open after its first bytes."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", int(gw.base_url.rsplit(":", 1)[1])))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {gw.key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    return sock


def test_the_gateway_runs_on_the_configured_event_loop(gateway: Gateway) -> None:
    """The suite runs once per loop (`make test`); this pins which one served it."""
    auto = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    expected = auto if EVENT_LOOP == "auto" else EVENT_LOOP
    assert f" INFO event loop: {expected}\n" in gateway.log.read_text()


def test_per_key_concurrency_limit_is_429_with_retry_after_and_no_upstream_call(limited: Gateway) -> None:
    streams = [open_stream(limited, "oa-pause") for _ in range(2)]
    try:
        seen = len(limited.upstream.requests)
        with openai.OpenAI(base_url=limited.base_url + "/v1", api_key=limited.key, max_retries=0) as c:
            with pytest.raises(openai.RateLimitError) as info:
                c.chat.completions.create(model="oa-text", messages=[{"role": "user", "content": "hi"}])
            assert int(info.value.response.headers["retry-after"]) >= 1
            assert len(limited.upstream.requests) == seen
            rec = limited.usage(info.value.response.headers["x-request-id"])
            assert (rec["outcome"], rec["reason"], rec["billed"]) == ("rejected", "rate_limited", 0)
    finally:
        for sock in streams:
            sock.close()
    with openai.OpenAI(base_url=limited.base_url + "/v1", api_key=limited.key, max_retries=2) as c:
        # The slots come back when the streams end (the SDK's own retry covers the moment it takes).
        assert c.chat.completions.create(model="oa-text", messages=[{"role": "user", "content": "hi"}]).choices


CANARY_PROMPT = "CANARY-7f3e-prompt-text"


def test_no_key_secret_or_prompt_in_logs_database_or_metrics(gateway: Gateway) -> None:
    with openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.key, max_retries=0) as c:
        c.chat.completions.create(model="oa-text", messages=[{"role": "user", "content": CANARY_PROMPT}])
        list(
            c.chat.completions.create(
                model="an-text", messages=[{"role": "user", "content": CANARY_PROMPT}], stream=True
            )
        )
    wrong = "rp_" + "Z" * 32
    with openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=wrong, max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
        assert wrong not in info.value.response.text
    with urllib.request.urlopen(gateway.base_url + "/metrics") as resp:
        metrics = resp.read()
    stored = b"".join(p.read_bytes() for p in gateway.db.parent.glob("relay.db*"))
    logged = gateway.log.read_bytes()
    for canary in (gateway.key, wrong, UPSTREAM_KEY, WEBHOOK_SECRET, CANARY_PROMPT):
        for name, blob in (("log", logged), ("database", stored), ("metrics", metrics)):
            assert canary.encode() not in blob, f"{canary[:12]}… found in the {name}"
    assert b'"path":"/v1/chat/completions"' in logged, "one JSON access line per request"


@pytest.fixture
def abort_capped(tmp_path: Path, upstream: FakeUpstream) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path, upstream, limits={"free_aborts_per_hour": 2})
    yield gw
    gw.process.terminate()
    gw.process.wait(10)


def test_free_aborts_are_capped_per_key_per_hour(abort_capped: Gateway) -> None:
    """Disconnects are never billed; past the per-key cap the key gets 429 until the hour passes."""
    for _ in range(2):
        rec = abort_capped.usage(disconnect_mid_stream(abort_capped, "oa-slow"))
        assert (rec["outcome"], rec["billed"]) == ("client_disconnected", 0)
    seen = len(abort_capped.upstream.requests)
    with (
        openai.OpenAI(base_url=abort_capped.base_url + "/v1", api_key=abort_capped.key, max_retries=0) as c,
        pytest.raises(openai.RateLimitError) as info,
    ):
        c.chat.completions.create(model="oa-text", messages=[{"role": "user", "content": "hi"}])
    assert int(info.value.response.headers["retry-after"]) > 0
    assert len(abort_capped.upstream.requests) == seen


def test_every_access_line_on_stderr_is_a_json_object_alone(gateway: Gateway) -> None:
    """INTERFACE.md "Logs": one JSON object per line on stderr, nothing before the `{`."""
    with openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.key, max_retries=0) as c:
        c.chat.completions.create(model="oa-text", messages=[{"role": "user", "content": "hi"}])
        list(c.chat.completions.create(model="an-text", messages=[{"role": "user", "content": "hi"}], stream=True))
        c.models.list()
    deadline = time.monotonic() + 5
    while True:
        lines = gateway.log.read_bytes().splitlines()
        access = [line for line in lines if b'"request_id"' in line]
        if sum(b'"path":"/v1/chat/completions"' in line for line in access) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(access) >= 3
    for line in access:
        assert line.startswith(b"{"), line[:60]
        parsed = orjson.loads(line)
        assert isinstance(parsed, dict) and parsed["request_id"].startswith("req_") and parsed["path"].startswith("/")
    assert any(b" INFO " in line for line in lines if not line.startswith(b"{")), "other lines stay text"
