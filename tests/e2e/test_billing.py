"""The billing contract end to end, for every (client SDK, upstream protocol) pair: a completed
request with upstream-reported usage is charged exactly its cost and nothing stays held; every
failed, errored or dropped request leaves the balance untouched; insufficient credit is a 402 in
each protocol before any upstream call; the price list; a Stripe top-up is credited exactly once."""

from __future__ import annotations

import http.client as httplib
import json
import urllib.request
from typing import Any

import anthropic
import openai
import pytest
from google.genai import errors as genai_errors

from tests.e2e.conftest import Gateway
from tests.e2e.test_matrix import DRIVERS, UPSTREAMS, GeminiDriver
from tests.e2e.test_sdk_openai import disconnect_mid_stream, http
from tests.fakes.stripe import FakeStripe, event, sign

pytestmark = pytest.mark.e2e


@pytest.fixture(params=list(DRIVERS))
def driver(request: pytest.FixtureRequest, gateway: Gateway) -> Any:
    d = DRIVERS[request.param](gateway)
    yield d
    d.close()


def settled(gw: Gateway, seq: int, model: str) -> dict[str, Any]:
    """The request's record; the ledger is settled in the same transaction as the record."""
    return gw.record_after(seq, model)


@pytest.mark.parametrize("up", UPSTREAMS)
def test_completed_stream_is_charged_exactly_its_cost(gateway: Gateway, driver: Any, up: str) -> None:
    before, _ = gateway.balance()
    seq = gateway.last_seq()
    driver.stream(f"{up}-tools", tools=True)
    rec = settled(gateway, seq, f"{up}-tools")
    assert rec["outcome"] == "completed" and rec["billed"] == 1 and rec["cost_microusd"] > 0
    inp, cached, out = rec["input_tokens"], rec["cached_input_tokens"], rec["output_tokens"]
    # The INTERFACE.md formula with the test prices ($1.00 / $0.50 / $2.00 per 1M) and 30 % off.
    assert rec["cost_microusd"] == int(((inp - cached) * 1.0 + cached * 0.5 + out * 2.0) * 0.7)
    after, held = gateway.balance()
    assert (before - after, held) == (rec["cost_microusd"], 0)


def test_openai_upstream_ending_cleanly_without_done_after_the_answer_is_completed_and_billed(
    gateway: Gateway, driver: Any
) -> None:
    """Issue 12 defect 1: EOF after the finish and usage chunks, no ``data: [DONE]``, is the end
    (passthrough for the OpenAI client, translated for the others); the client gets its terminator."""
    before, _ = gateway.balance()
    seq = gateway.last_seq()
    driver.stream("oa-nodone")  # the SDKs raise on an in-band error or a stream without its end
    rec = settled(gateway, seq, "oa-nodone")
    assert (rec["outcome"], rec["billed"], rec["reason"]) == ("completed", 1, "charged")
    inp, cached, out = rec["input_tokens"], rec["cached_input_tokens"], rec["output_tokens"]
    assert out > 0 and rec["cost_microusd"] == int(((inp - cached) * 1.0 + cached * 0.5 + out * 2.0) * 0.7)
    after, held = gateway.balance()
    assert (before - after, held) == (rec["cost_microusd"], 0)


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize("scenario", ["midstream-error", "truncated", "http429", "nousage"])
def test_failed_requests_leave_the_balance_untouched(gateway: Gateway, driver: Any, up: str, scenario: str) -> None:
    before = gateway.balance()
    seq = gateway.last_seq()
    try:
        if (driver.name, up, scenario) == ("anthropic", "an", "nousage"):
            driver.raw_stream(f"{up}-{scenario}")  # see test_matrix: the SDK helper needs usage
        else:
            driver.stream(f"{up}-{scenario}")
    except (openai.APIError, anthropic.APIError, genai_errors.APIError):
        pass
    rec = settled(gateway, seq, f"{up}-{scenario}")
    assert (rec["billed"], rec["cost_microusd"]) == (0, 0)
    assert rec["reason"] != "charged"
    assert gateway.balance() == before


def test_client_disconnect_mid_stream_is_not_billed(gateway: Gateway) -> None:
    before = gateway.balance()
    for model in ("oa-slow", "an-slow", "ge-slow"):
        rec = gateway.usage(disconnect_mid_stream(gateway, model))
        assert (rec["outcome"], rec["billed"], rec["cost_microusd"]) == ("client_disconnected", 0, 0)
    assert gateway.balance() == before


@pytest.fixture
def poor_key(gateway: Gateway) -> str:
    key = gateway.cli("keys", "create", "--account", "poor").stdout.strip()
    gateway.cli("credits", "add", "--account", "poor", "--usd", "0.0001")
    return key


def test_insufficient_credit_is_402_in_each_protocol_without_an_upstream_call(gateway: Gateway, poor_key: str) -> None:
    seen = len(gateway.upstream.requests)
    with openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=poor_key, max_retries=0) as oa:
        with pytest.raises(openai.APIStatusError) as info:
            oa.chat.completions.create(model="oa-text", messages=[{"role": "user", "content": "hi"}])
        assert (info.value.status_code, info.value.type) == (402, "insufficient_quota")
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=poor_key, max_retries=0) as an:
        with pytest.raises(anthropic.APIStatusError) as ainfo:
            an.messages.create(model="an-text", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
        assert ainfo.value.status_code == 402
        assert ainfo.value.body["error"]["type"] == "billing_error"

    class PoorGateway:
        base_url, key = gateway.base_url, poor_key

    gd = GeminiDriver(PoorGateway())  # type: ignore[arg-type]
    try:
        with pytest.raises(genai_errors.ClientError) as ginfo:
            gd.c.models.generate_content(model="ge-text", contents="hi")
        assert (ginfo.value.code, ginfo.value.status) == (402, "RESOURCE_EXHAUSTED")
    finally:
        gd.close()
    assert len(gateway.upstream.requests) == seen, "no upstream call for a request that is not covered"
    assert gateway.balance("poor") == (100, 0)


def test_the_key_is_judged_before_the_body_and_a_bad_body_holds_nothing(gateway: Gateway) -> None:
    """The key lookup and the credit hold share one database trip, so the request is planned first;
    a bad key must still win over a bad body (401, not 400), and a rejected body holds nothing."""
    conn = httplib.HTTPConnection(gateway.base_url.removeprefix("http://"), timeout=10)
    try:
        bad_key = "rp_" + "A" * 32
        conn.request("POST", "/v1/chat/completions", b"{not json", {"authorization": f"Bearer {bad_key}"})
        resp = conn.getresponse()
        assert resp.status == 401 and json.loads(resp.read())["error"]["code"] == "invalid_api_key"
    finally:
        conn.close()
    before = gateway.balance()
    for body in (b"{not json", b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}'):
        status, headers, raw = http(gateway, "POST", "/v1/chat/completions", body)
        assert status in (400, 404), raw
        assert gateway.usage(headers["x-request-id"])["outcome"] == "rejected"
    assert gateway.balance() == before


def test_price_list_json_and_html(gateway: Gateway) -> None:
    with urllib.request.urlopen(gateway.base_url + "/models") as resp:
        prices = json.loads(resp.read())
    assert (prices["object"], prices["currency"], prices["unit"], prices["discount"]) == (
        "list",
        "usd",
        "per_1m_tokens",
        0.3,
    )
    entry = next(m for m in prices["data"] if m["id"] == "oa-text")
    assert entry["provider"] == "fake" and entry["protocol"] == "openai"
    assert entry["list_price"] == {"input": 1.0, "cached_input": 0.5, "output": 2.0}
    assert entry["price"] == {"input": 0.7, "cached_input": 0.35, "output": 1.4}
    req = urllib.request.Request(gateway.base_url + "/models", headers={"accept": "text/html"})
    with urllib.request.urlopen(req) as resp:
        assert resp.headers["content-type"].startswith("text/html")
        assert b"oa-text" in resp.read()


def test_stripe_top_up_is_credited_exactly_once(gateway: Gateway, stripe_fake: FakeStripe) -> None:
    status, _, body = http(gateway, "POST", "/v1/billing/checkout", json.dumps({"amount_usd": 20}).encode())
    assert status == 200, body
    url = json.loads(body)["url"]
    session_id = next(sid for sid, s in stripe_fake.sessions.items() if s["url"] == url)
    paid = stripe_fake.pay(session_id)
    before, _ = gateway.balance()
    payload = event("checkout.session.completed", paid)
    for _ in range(3):  # Stripe delivers at least once: duplicates must not credit again
        code, _, answer = _webhook(gateway, payload, sign(payload))
        assert code == 200, answer
    assert gateway.balance()[0] - before == 20_000_000
    code, _, _ = _webhook(gateway, payload, "t=1,v1=deadbeef")
    assert code == 400
    assert gateway.balance()[0] - before == 20_000_000


def _webhook(gw: Gateway, body: bytes, signature: str) -> tuple[int, dict[str, str], bytes]:
    import http.client as httplib

    conn = httplib.HTTPConnection(gw.base_url.removeprefix("http://"), timeout=10)
    try:
        conn.request("POST", "/billing/stripe/webhook", body, {"stripe-signature": signature})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_metrics_count_requests_and_charges(gateway: Gateway) -> None:
    d = DRIVERS["openai"](gateway)
    try:
        d.stream("oa-text")
    finally:
        d.close()
    with urllib.request.urlopen(gateway.base_url + "/metrics") as resp:
        text = resp.read().decode()
    assert 'relayproxy_requests_total{protocol="openai",model="oa-text",outcome="completed"}' in text
    assert "relayproxy_charged_microusd_total" in text
    assert "relayproxy_time_to_first_byte_seconds_bucket" in text


def test_stream_past_its_hold_is_cut_in_band_and_not_billed(gateway: Gateway) -> None:
    """An upstream ignoring the output limit (hardening case 34): passthrough and translated."""
    before = gateway.balance()
    messages: Any = [{"role": "user", "content": "hi"}]
    seq = gateway.last_seq()
    with (
        openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.key, max_retries=0) as oa,
        pytest.raises(openai.APIError) as info,
    ):
        list(oa.chat.completions.create(model="oa-runaway", messages=messages, max_tokens=16, stream=True))
    assert not isinstance(info.value, openai.APIStatusError)
    rec = gateway.record_after(seq, "oa-runaway")
    assert (rec["outcome"], rec["reason"], rec["billed"]) == ("upstream_dropped", "over_hold", 0)
    seq = gateway.last_seq()
    with (
        anthropic.Anthropic(base_url=gateway.base_url, api_key=gateway.key, max_retries=0) as an,
        pytest.raises(anthropic.APIStatusError),
    ):
        list(an.messages.create(model="oa-runaway", max_tokens=16, messages=messages, stream=True))
    rec = gateway.record_after(seq, "oa-runaway")
    assert (rec["outcome"], rec["billed"], rec["cost_microusd"]) == ("upstream_dropped", 0, 0)
    assert gateway.balance() == before
