"""Retries and fallback happen only before the first byte reaches the client, only for what
surely did not run or what the upstream said to retry, and a fallback serves the request in the
client's own protocol."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_matrix import UNARY_TEXT

pytestmark = pytest.mark.e2e

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def oa(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=gw.key, max_retries=0)


def test_an_overloaded_upstream_is_retried_once_before_the_first_byte(gateway: Gateway) -> None:
    before = gateway.upstream.seen.get("flaky", 0)
    seq = gateway.last_seq()
    with oa(gateway) as c:
        text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="oa-flaky", messages=MESSAGES, stream=True) if ch.choices)  # fmt: skip
    assert text == "Hello! 👋 How can I help you today?"
    assert gateway.upstream.seen["flaky"] - before == 2  # a 503, then the answer
    assert gateway.record_after(seq, "oa-flaky")["outcome"] == "completed"


def test_fallback_serves_in_the_clients_protocol_when_the_upstream_is_overloaded(gateway: Gateway) -> None:
    seq = gateway.last_seq()
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=gateway.key, max_retries=0) as c:
        msg = c.messages.create(model="fb-overloaded", max_tokens=64, messages=MESSAGES)
    assert msg.content[0].text == UNARY_TEXT
    rec = gateway.record_after(seq, "fb-overloaded")
    assert (rec["outcome"], rec["provider"], rec["upstream_protocol"]) == ("completed", "fake-gemini", "gemini")
    assert rec["billed"] == 1


def test_a_long_retry_after_goes_straight_to_the_fallback_skipping_unconfigured_ones(gateway: Gateway) -> None:
    before = gateway.upstream.seen.get("http429", 0)
    seq = gateway.last_seq()
    with oa(gateway) as c:
        stream = c.chat.completions.create(model="fb-ratelimited", messages=MESSAGES, stream=True)
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text == "Hello! 👋 How can I help you today?"
    assert gateway.upstream.seen["http429"] - before == 1  # Retry-After 7 s: not waited for here
    assert gateway.record_after(seq, "fb-ratelimited")["provider"] == "fake-anthropic"


def test_a_client_error_is_never_retried_nor_sent_to_a_fallback(gateway: Gateway) -> None:
    before = gateway.upstream.seen.get("http400", 0)
    with oa(gateway) as c, pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="fb-badrequest", messages=MESSAGES)
    assert gateway.upstream.seen["http400"] - before == 1
