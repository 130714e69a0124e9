"""The router and the planner as plain values: a path and headers in, an Endpoint out; a config, an
endpoint and a body in, Plans out. No I/O, no server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relayproxy.config.settings import Config, parse_config
from relayproxy.errors import InvalidRequest, ProviderUnavailable, UnknownModel
from relayproxy.policy.plan import count_call, decode, output_limit, parse_json, plan
from relayproxy.policy.router import Endpoint, EndpointKind, match_endpoint, protocol_for, resolve_model

RAW: dict[str, Any] = {
    "providers": {
        "oa": {"protocol": "openai", "base_url": "https://oa.example/v1", "api_key_env": "RP_T_OA"},
        "an": {"protocol": "anthropic", "base_url": "https://an.example", "api_key_env": "RP_T_AN"},
        "kimi": {
            "protocol": "openai",
            "base_url": "https://kimi.example/v1",
            "api_key_env": "RP_T_KIMI",
            "passthrough": False,
        },
        "off": {"protocol": "gemini", "base_url": "https://g.example", "api_key_env": "RP_T_OFF"},
    },
    "models": {
        "gpt": {"provider": "oa", "input_price": 1, "output_price": 2, "fallback": ["gone", "claude"]},
        "claude": {"provider": "an", "upstream_model": "claude-x", "input_price": 3, "output_price": 4},
        "kimi": {"provider": "kimi", "input_price": 1, "output_price": 1, "max_output_tokens": 77},
        "gone": {"provider": "off", "input_price": 1, "output_price": 1},
    },
}


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch) -> Config:
    for name in ("RP_T_OA", "RP_T_AN", "RP_T_KIMI"):
        monkeypatch.setenv(name, f"sk-{name.lower()}")
    monkeypatch.delenv("RP_T_OFF", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return parse_config(RAW, Path("config.toml"))


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize(
    ("method", "path", "headers", "query", "expected"),
    [
        ("POST", "/v1/chat/completions", [], "", Endpoint(EndpointKind.INFERENCE, "openai")),
        ("POST", "/v1/messages", [], "", Endpoint(EndpointKind.INFERENCE, "anthropic")),
        (
            "POST",
            "/v1beta/models/gpt:streamGenerateContent",
            [],
            "alt=sse",
            Endpoint(EndpointKind.INFERENCE, "gemini", "gpt", True, True),
        ),
        (
            "POST",
            "/v1beta/models/gpt:streamGenerateContent",
            [],
            "",
            Endpoint(EndpointKind.INFERENCE, "gemini", "gpt", True, False),
        ),
        ("POST", "/v1beta/models/gpt:countTokens", [], "", Endpoint(EndpointKind.COUNT_TOKENS, "gemini", "gpt")),
        ("POST", "/v1/responses/input_tokens", [], "", Endpoint(EndpointKind.COUNT_TOKENS, "openai_responses")),
        ("POST", "/responses/input_tokens", [], "", Endpoint(EndpointKind.COUNT_TOKENS, "openai_responses")),
        ("GET", "/v1/models", [(b"anthropic-version", b"2023-06-01")], "", Endpoint(EndpointKind.MODELS, "anthropic")),
        ("GET", "/v1/models", [(b"x-goog-api-key", b"k")], "", Endpoint(EndpointKind.MODELS, "gemini")),
        ("GET", "/v1/models/gpt", [], "", Endpoint(EndpointKind.MODEL, "openai", "gpt")),
        ("GET", "/metrics", [], "", Endpoint(EndpointKind.METRICS, "openai")),
        ("GET", "/nope", [], "", None),
        ("DELETE", "/v1/chat/completions", [], "", None),
        ("POST", "/v1beta/models/gpt:embedContent", [], "", None),
    ],
)
def test_match_endpoint(
    method: str, path: str, headers: list[tuple[bytes, bytes]], query: str, expected: Endpoint | None
) -> None:
    assert match_endpoint(method, path, headers, query) == expected


def test_protocol_for_error_bodies() -> None:
    assert protocol_for("/v1/messages", []) == "anthropic"
    assert protocol_for("/v1beta/models/x:generateContent", []) == "gemini"
    assert protocol_for("/v1/models", [], "key=abc") == "gemini"
    assert protocol_for("/v1/chat/completions", []) == "openai"


def test_resolve_model_routes_with_the_key_read_at_load(config: Config) -> None:
    route = resolve_model(config, "models/claude")  # Gemini's prefix is accepted
    assert (route.model.name, route.provider.name, route.api_key) == ("claude", "an", "sk-rp_t_an")
    with pytest.raises(UnknownModel, match="'nope' does not exist"):
        resolve_model(config, "nope")
    with pytest.raises(ProviderUnavailable, match="RP_T_OFF"):
        resolve_model(config, "gone")


def test_same_protocol_plans_passthrough_then_fallbacks_with_a_key(config: Config) -> None:
    ep = Endpoint(EndpointKind.INFERENCE, "openai")
    body = chat("gpt", stream=True)
    req = decode(ep, body)
    plans = plan(config, ep, body, req)
    # "gone" is skipped (its provider has no key), "claude" is the one fallback
    assert [(p.route.model.name, p.passthrough) for p in plans] == [("gpt", True), ("claude", False)]
    first, second = plans
    assert first.call.path == "/chat/completions" and first.client is first.upstream
    assert second.call.path == "/v1/messages" and second.upstream is not second.client
    sent = parse_json(second.call.body)
    assert sent["model"] == "claude-x" and sent["stream"] is True
    assert sent["max_tokens"] == config.models["claude"].max_output_tokens  # the hold's limit goes upstream
    assert output_limit(second) == config.models["claude"].max_output_tokens


def test_cross_protocol_plan_translates(config: Config) -> None:
    ep = Endpoint(EndpointKind.INFERENCE, "anthropic")
    body = {"model": "gpt", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    [only, fallback] = plan(config, ep, body, decode(ep, body))
    assert not only.passthrough and only.route.provider.protocol == "openai"
    sent = parse_json(only.call.body)
    assert sent["model"] == "gpt" and sent["messages"][-1]["content"] in ("hi", [{"type": "text", "text": "hi"}])
    assert output_limit(only) == 50
    assert fallback.passthrough  # the Anthropic fallback speaks the client's protocol


def test_a_provider_with_passthrough_off_is_re_encoded(config: Config) -> None:
    ep = Endpoint(EndpointKind.INFERENCE, "openai")
    body = chat("kimi", stream=True)
    [p] = plan(config, ep, body, decode(ep, body))
    assert not p.passthrough
    assert output_limit(p) == 77


def test_gemini_array_framing_is_never_passthrough_for_streams(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {**RAW, "providers": {**RAW["providers"], "off": {**RAW["providers"]["off"]}}}
    monkeypatch.setenv("RP_T_OFF", "k")
    cfg = parse_config(raw, Path("config.toml"))
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    array = Endpoint(EndpointKind.INFERENCE, "gemini", "gone", True, False)
    [p] = plan(cfg, array, body, decode(array, body))
    assert not p.passthrough and not p.sse
    sse = Endpoint(EndpointKind.INFERENCE, "gemini", "gone", True, True)
    [q] = plan(cfg, sse, body, decode(sse, body))
    assert q.passthrough and q.sse


def test_bad_bodies_are_invalid_requests() -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        parse_json(b"")
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse_json(b"{")


def _responses_config(monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("RP_T_OA", "k")
    monkeypatch.setenv("RP_T_AN", "k")
    raw = {**RAW, "providers": {**RAW["providers"], "oa": {**RAW["providers"]["oa"], "responses": True}}}
    return parse_config(raw, Path("config.toml"))


def test_responses_clients_pass_through_to_a_responses_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """gpt's provider serves Responses: a Responses client reaches /responses with its own body
    (web_search included, store false); its Anthropic fallback gets the request translated,
    without web_search, and says so; a built-in tool the fallback cannot run drops the fallback."""
    config = _responses_config(monkeypatch)
    ep = Endpoint(EndpointKind.INFERENCE, "openai_responses")
    body = {"model": "gpt", "input": "hi", "stream": True, "tools": [{"type": "web_search"}], "prompt_cache_key": "t"}
    native, fallback = plan(config, ep, body, decode(ep, body))
    assert native.passthrough and native.call.path == "/responses" and native.dropped_tools == []
    assert parse_json(native.call.body) == {**body, "store": False}
    assert not fallback.passthrough and fallback.dropped_tools == ["web_search"]
    assert "web_search" not in fallback.call.body.decode() and "prompt_cache_key" not in fallback.call.body.decode()
    other = {**body, "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}
    assert [p.route.model.name for p in plan(config, ep, other, decode(ep, other))] == ["gpt"]
    chat_ep = Endpoint(EndpointKind.INFERENCE, "openai")
    [chat_plan, _] = plan(config, chat_ep, chat("gpt"), decode(chat_ep, chat("gpt")))
    assert chat_plan.call.path == "/chat/completions"  # Chat clients keep Chat Completions


def test_a_builtin_tool_on_a_translated_route_is_a_400(config: Config) -> None:
    ep = Endpoint(EndpointKind.INFERENCE, "openai_responses")
    body = {"model": "claude", "input": "hi", "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}
    with pytest.raises(InvalidRequest, match="'code_interpreter'"):
        plan(config, ep, body, decode(ep, body))


def test_anthropic_passthrough_takes_the_callers_version_and_betas(config: Config) -> None:
    ep = Endpoint(EndpointKind.INFERENCE, "anthropic")
    body = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    headers = [(b"anthropic-version", b"2026-10-21"), (b"anthropic-beta", b"x-1"), (b"x-api-key", b"rp_caller")]
    [p] = plan(config, ep, body, decode(ep, body), headers)
    assert p.passthrough and p.call.headers == [(b"anthropic-version", b"2026-10-21"), (b"anthropic-beta", b"x-1")]
    oa = Endpoint(EndpointKind.INFERENCE, "openai")
    [q] = plan(config, oa, chat("claude"), decode(oa, chat("claude")), headers)
    assert q.call.headers == [(b"anthropic-version", b"2023-06-01")]


def test_count_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anthropic count_tokens on a passthrough provider takes the caller's version and betas, and
    only there; a Responses count reaches a Responses provider's /responses/input_tokens as it came;
    an OpenAI Chat upstream has nothing to count with (the gateway estimates)."""
    config = _responses_config(monkeypatch)
    headers = [(b"anthropic-version", b"2026-10-21"), (b"anthropic-beta", b"x-1"), (b"x-api-key", b"rp_caller")]
    count = Endpoint(EndpointKind.COUNT_TOKENS, "anthropic")
    body = {"model": "claude", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    _, call = count_call(count, body, decode(count, body), resolve_model(config, "claude"), headers)
    assert call is not None and call.path == "/v1/messages/count_tokens"
    assert call.headers == [(b"anthropic-version", b"2026-10-21"), (b"anthropic-beta", b"x-1")]
    responses = Endpoint(EndpointKind.COUNT_TOKENS, "openai_responses")
    rbody = {"model": "claude", "input": "hi"}
    _, translated = count_call(responses, rbody, decode(responses, rbody), resolve_model(config, "claude"), headers)
    assert translated is not None and translated.headers == [(b"anthropic-version", b"2023-06-01")]
    gbody = {"model": "gpt", "input": "hi", "truncation": "auto"}
    _, native = count_call(responses, gbody, decode(responses, gbody), resolve_model(config, "gpt"), headers)
    assert native is not None and native.path == "/responses/input_tokens" and parse_json(native.body) == gbody
    monkeypatch.setenv("RP_T_KIMI", "k")
    kimi = parse_config(RAW, Path("config.toml"))
    _, none = count_call(responses, {**gbody, "model": "kimi"}, decode(responses, gbody), resolve_model(kimi, "kimi"))
    assert none is None
