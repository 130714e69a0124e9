"""Claude Code fidelity with the official anthropic SDK through a running relayproxy: the caller's
``anthropic-version`` and ``anthropic-beta`` reach an Anthropic upstream on passthrough (the beta
client's ``?beta=true`` path included) and nothing else; an OpenAI client going to an Anthropic
upstream gets the default version; Claude Code's billing attribution block stays out of the
system prompt a translated upstream receives, so its prefix is the same in every conversation."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_matrix import TEXT
from tests.fakes.upstream import ANTHROPIC_TEXT

pytestmark = pytest.mark.e2e

BETAS = ["claude-code-20250219", "interleaved-thinking-2025-05-14", "context-management-2025-06-27"]
# The three system blocks Claude Code 2.1.197 sends (captured; the main prompt shortened).
CLAUDE_CODE_SYSTEM: list[Any] = [
    {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.e38; cc_entrypoint=sdk-cli;"},
    {
        "type": "text",
        "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
        "cache_control": {"type": "ephemeral"},
    },
    {"type": "text", "text": "\nYou are an interactive agent.", "cache_control": {"type": "ephemeral"}},
]
USER: Any = [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}]


def _anthropic(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.base_url, api_key=gateway.key, max_retries=0)


def test_passthrough_forwards_the_callers_version_and_betas(gateway: Gateway) -> None:
    with _anthropic(gateway) as c:
        with c.beta.messages.stream(
            model="an-text", max_tokens=64, system=CLAUDE_CODE_SYSTEM, messages=USER, betas=BETAS
        ) as s:
            text = s.get_final_text()
        sdk_version = c.default_headers["anthropic-version"]
    assert text == TEXT
    seen = gateway.upstream.requests[-1]
    assert seen.path == "/v1/messages"
    assert seen.header("anthropic-beta") == ",".join(BETAS)
    assert seen.header("anthropic-version") == sdk_version  # the SDK's own, sent once
    assert [k for k, _ in seen.headers].count("anthropic-version") == 1
    sent = seen.json()  # the client's body: breakpoints and the billing block as they came
    assert sent["system"] == CLAUDE_CODE_SYSTEM and sent["messages"] == USER


def test_passthrough_forwards_a_newer_version(gateway: Gateway) -> None:
    """A caller's version (newer SDKs send 2026-10-21) reaches the upstream in place of ours."""
    with _anthropic(gateway) as c:
        r = c.messages.create(
            model="an-text", max_tokens=64, messages=USER, extra_headers={"anthropic-version": "2099-01-01"}
        )
    assert r.content[0].type == "text" and r.content[0].text == ANTHROPIC_TEXT
    seen = gateway.upstream.requests[-1]
    assert seen.header("anthropic-version") == "2099-01-01" and seen.header("anthropic-beta") is None


def test_translated_upstreams_get_no_anthropic_headers(gateway: Gateway) -> None:
    with _anthropic(gateway) as c:
        c.beta.messages.create(model="oa-text", max_tokens=64, messages=USER, betas=BETAS)
    seen = gateway.upstream.requests[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.header("anthropic-beta") is None and seen.header("anthropic-version") is None


def test_openai_client_to_anthropic_gets_the_default_version(gateway: Gateway) -> None:
    with openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.key, max_retries=0) as c:
        c.chat.completions.create(
            model="an-text",
            messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"anthropic-beta": "context-1m-2025-08-07"},
        )
    seen = gateway.upstream.requests[-1]
    assert seen.path == "/v1/messages"
    assert seen.header("anthropic-version") == "2023-06-01" and seen.header("anthropic-beta") is None


def test_billing_block_stays_out_of_a_translated_prompt(gateway: Gateway) -> None:
    """Two conversations whose billing line differs (cc_version=...e38 / ...1c0): the OpenAI
    upstream gets the same system message for both, without the line."""
    systems = []
    for suffix in ("e38", "1c0"):
        system = [
            {**CLAUDE_CODE_SYSTEM[0], "text": CLAUDE_CODE_SYSTEM[0]["text"].replace("e38", suffix)},
            *CLAUDE_CODE_SYSTEM[1:],
        ]
        with (
            _anthropic(gateway) as c,
            c.messages.stream(model="oa-text", max_tokens=64, system=system, messages=USER) as s,
        ):
            assert s.get_final_text() == TEXT
        sent = gateway.upstream.requests[-1].json()
        systems.append([m for m in sent["messages"] if m["role"] == "system"])
    assert systems[0] == systems[1]
    text = str(systems[0])
    assert "x-anthropic-billing-header" not in text and "Claude Agent SDK" in text


def test_count_tokens_on_the_beta_path(gateway: Gateway) -> None:
    """``client.beta.messages.count_tokens`` posts to ``/v1/messages/count_tokens?beta=true``; the
    caller's betas and version reach the upstream as they do for /v1/messages (a count under other
    betas than the request it sizes would be another count)."""
    with _anthropic(gateway) as c:
        counted = c.beta.messages.count_tokens(
            model="an-text", messages=USER, betas=BETAS, extra_headers={"anthropic-version": "2099-01-01"}
        )
    assert counted.input_tokens == 42
    seen = gateway.upstream.requests[-1]
    assert seen.path == "/v1/messages/count_tokens"
    assert set(BETAS) <= set(str(seen.header("anthropic-beta")).split(","))  # with the SDK's token-counting beta
    assert [v for k, v in seen.headers if k == "anthropic-version"] == ["2099-01-01"]


def test_a_passthrough_count_sends_the_callers_own_body(gateway: Gateway) -> None:
    """Claude Code sizes its context with count_tokens over the very body it will send (cache
    breakpoints, tools, beta fields): on an Anthropic passthrough the upstream counts that body,
    with only the model named for the upstream, not one rebuilt from the canonical model."""
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    tools = [
        {
            "name": "ls",
            "description": "list",
            "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral"},
        }
    ]
    edits = {"edits": [{"type": "clear_tool_uses_20250919"}]}
    with _anthropic(gateway) as c:
        counted = c.messages.count_tokens(
            model="an-text",
            system=system,
            messages=USER,
            tools=tools,
            extra_body={"context_management": edits},  # type: ignore[arg-type]
        )
    assert counted.input_tokens == 42
    sent = gateway.upstream.requests[-1].json()
    assert {k: v for k, v in sent.items() if k != "model"} == {
        "system": system,
        "messages": USER,
        "tools": tools,
        "context_management": edits,
    }


def test_a_translated_count_gets_the_default_version_and_no_betas(gateway: Gateway) -> None:
    """An OpenAI Responses client counting on an Anthropic upstream: the gateway's own version."""
    with openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=gateway.key, max_retries=0) as c:
        if not hasattr(c.responses, "input_tokens"):
            pytest.skip("this openai SDK generation has no responses.input_tokens")
        assert c.responses.input_tokens.count(model="an-text", input="Hi").input_tokens == 42
    seen = gateway.upstream.requests[-1]
    assert seen.path == "/v1/messages/count_tokens" and seen.header("anthropic-beta") is None
    assert [v for k, v in seen.headers if k == "anthropic-version"] == ["2023-06-01"]
