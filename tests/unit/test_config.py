"""config.toml parsing: the shipped file loads; every error names the TOML key path."""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from relayproxy.codecs.catalog import MODEL_ENTRY
from relayproxy.config.settings import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent.parent
BASE: dict[str, Any] = {
    "providers": {"p": {"protocol": "openai", "base_url": "https://x/v1", "api_key_env": "K"}},
    "models": {"m": {"provider": "p", "input_price": 1, "output_price": 2}},
}


def test_shipped_config_loads() -> None:
    config = load_config(ROOT / "config.toml")
    assert {"gpt-5.5", "claude-opus-4-8", "claude-fable-5", "gemini-3.5-flash"} <= set(config.models)
    providers = {m.provider for m in config.models.values()}
    assert {"openai", "anthropic", "gemini", "deepseek", "minimax", "moonshot"} <= providers
    assert config.billing.discount >= Fraction(3, 10)
    assert config.server.database == ROOT / "relayproxy.db"
    assert config.providers["openai"].responses and not config.providers["moonshot"].responses


def test_defaults() -> None:
    config = parse_config(BASE, Path("/etc/relay/config.toml"))
    model = config.models["m"]
    assert (model.upstream_model, model.cached_input_price, model.max_output_tokens) == ("m", 1.0, 32768)
    assert config.server.database == Path("/etc/relay/relayproxy.db")
    assert config.timeouts.upstream_first_byte_s == 300
    assert config.server.event_loop == "auto"
    assert config.providers["p"].responses is False
    assert parse_config(with_("providers/p/responses", True), Path("/c.toml")).providers["p"].responses is True


def with_(path: str, value: Any) -> dict[str, Any]:
    import copy

    raw = copy.deepcopy(BASE)
    node = raw
    keys = path.split("/")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (with_("billing/discount", 0.2), "[billing] discount"),
        (with_("providers/p/protocol", "grpc"), "[providers.p] protocol"),
        (with_("providers/p/base_url", "ftp://x"), "[providers.p] base_url"),
        (with_("models/m/provider", "opanai"), '[models."m"] provider'),
        (with_("models/m/input_price", "cheap"), '[models."m"] input_price'),
        (with_("models/m/fallback", ["ghost"]), '[models."m"] fallback[0]'),
        (with_("models/m/colour", 1), '[models."m"] colour: unknown key'),
        (with_("server/listen", "localhost"), "[server] listen"),
        (with_("server/workers", 0), "[server] workers"),
        (with_("server/event_loop", "trio"), "[server] event_loop: must be one of auto, uvloop, asyncio"),
        (with_("timeouts/header_read_s", -1), "[timeouts] header_read_s"),
        (with_("limits/max_headers", "many"), "[limits] max_headers"),
        (with_("surprise", {}), "[surprise]: unknown table"),
        (with_("providers/p/responses", "yes"), "[providers.p] responses"),
        (
            {
                **with_("providers/p/responses", True),
                "providers": {"p": {**BASE["providers"]["p"], "protocol": "gemini", "responses": True}},
            },
            "[providers.p] responses: only an openai provider",
        ),
    ],
)
def test_errors_name_the_key_path(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, Path("config.toml"))
    assert needle in str(info.value)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_event_loop_uvloop_must_be_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked for by name, a missing uvloop fails the start with the fix; "auto" falls back."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"uvloop is not installed \(pip install uvloop\)"):
        parse_config(with_("server/event_loop", "uvloop"), Path("config.toml"))
    assert parse_config(with_("server/event_loop", "auto"), Path("config.toml")).server.event_loop == "auto"


def test_context_length_reaches_the_model_lists() -> None:
    assert parse_config(BASE, Path("/c.toml")).models["m"].context_length is None
    raw = with_("models/m/context_length", 400000)
    model = parse_config(raw, Path("/c.toml")).models["m"]
    entry = MODEL_ENTRY["openai"](model)
    assert (entry["context_length"], entry["max_output_tokens"]) == (400000, 32768)
    assert MODEL_ENTRY["gemini"](model)["inputTokenLimit"] == 400000
    with pytest.raises(ConfigError, match="context_length"):
        parse_config(with_("models/m/context_length", 0), Path("/c.toml"))


def test_dashboard_defaults_and_public_url_from_listen() -> None:
    config = parse_config({**BASE, "server": {"listen": "0.0.0.0:9000"}}, Path("/etc/relay/config.toml"))
    dash = config.dashboard
    assert (dash.signup, dash.signup_credit_usd, dash.public_url, dash.secure) == (
        "closed",
        0,
        "http://0.0.0.0:9000",
        False,
    )
    ipv6 = parse_config({**BASE, "server": {"listen": "[::1]:8080"}}, Path("c.toml")).dashboard
    assert ipv6.public_url == "http://[::1]:8080"
    dash = parse_config({**BASE, "dashboard": {"public_url": "https://relay.example.com/"}}, Path("c.toml")).dashboard
    assert (dash.public_url, dash.secure) == ("https://relay.example.com", True)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"signup": "maybe"}, '[dashboard] signup: must be "open" or "closed"'),
        ({"signup_credit_usd": -1}, "[dashboard] signup_credit_usd: must be zero or a positive"),
        ({"signup_credit_usd": "lots"}, "[dashboard] signup_credit_usd: expected a USD amount"),
        ({"public_url": "relay.example.com"}, "[dashboard] public_url: must be a base URL"),
        ({"smtp": "x"}, "[dashboard] smtp: unknown key"),
    ],
)
def test_dashboard_errors_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "dashboard": table}, Path("c.toml"))
    assert message in str(info.value)
