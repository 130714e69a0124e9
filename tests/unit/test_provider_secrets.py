"""Provider secrets are read once, when the config is loaded; a missing or unusable one disables
the provider: its models answer 503 naming the variable, and start-up logs why."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from relayproxy.app import _report_missing_keys
from relayproxy.config.settings import ConfigError, parse_config
from relayproxy.errors import ProviderUnavailable
from relayproxy.policy.router import resolve_model

ENV = "RP_TEST_PROVIDER_KEY"


def raw(env: str = ENV) -> dict[str, Any]:
    return {
        "providers": {"p": {"protocol": "openai", "base_url": "https://x/v1", "api_key_env": env}},
        "models": {"m": {"provider": "p", "input_price": 1, "output_price": 2}},
    }


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def test_the_key_is_read_once_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "sk-at-load")
    config = parse_config(raw(), Path("config.toml"))
    monkeypatch.setenv(ENV, "sk-changed-later")
    assert resolve_model(config, "m").api_key == "sk-at-load"
    monkeypatch.delenv(ENV)
    assert resolve_model(config, "m").api_key == "sk-at-load"  # no read per request
    assert config.missing_keys() == []


def test_the_key_never_shows_in_a_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "sk-secret-value-123")
    config = parse_config(raw(), Path("config.toml"))
    assert "sk-secret-value-123" not in repr(config)


def test_a_credential_file_is_read_at_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / ENV.lower()).write_text("sk-from-file\n")
    config = parse_config(raw(), Path("config.toml"))
    (tmp_path / ENV.lower()).unlink()
    assert resolve_model(config, "m").api_key == "sk-from-file"


def test_a_missing_key_disables_the_provider_with_a_503() -> None:
    config = parse_config(raw(), Path("config.toml"))
    assert [p.name for p in config.missing_keys()] == ["p"]
    assert config.providers["p"].key_problem == ""
    with pytest.raises(ProviderUnavailable, match=f"set the environment variable {ENV}") as info:
        resolve_model(config, "m")
    assert info.value.status == 503


def test_an_unreadable_credential_file_disables_the_provider(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / ENV.lower()).mkdir()  # exists, but is no regular file (root reads any mode)
    config = parse_config(raw(), Path("config.toml"))  # loading does not fail
    assert config.providers["p"].api_key is None
    assert "regular file" in config.providers["p"].key_problem
    with pytest.raises(ProviderUnavailable) as info:  # the clear 503, never a generic 500
        resolve_model(config, "m")
    assert info.value.status == 503
    with caplog.at_level(logging.WARNING, logger="relayproxy"):
        _report_missing_keys(config)
    [line] = [r.getMessage() for r in caplog.records if "provider p is disabled" in r.getMessage()]
    assert "regular file" in line and ENV in line and "m" in line


def test_an_empty_credential_file_disables_the_provider(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / ENV.lower()).write_text("\n")
    config = parse_config(raw(), Path("config.toml"))
    assert "empty" in config.providers["p"].key_problem
    with pytest.raises(ProviderUnavailable):
        resolve_model(config, "m")


def test_missing_key_start_up_line(caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config(raw(), Path("config.toml"))
    with caplog.at_level(logging.WARNING, logger="relayproxy"):
        _report_missing_keys(config)
    assert any(f"provider p is disabled: set {ENV} to serve m" in r.getMessage() for r in caplog.records)


def test_a_bad_variable_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\[providers.p\] api_key_env"):
        parse_config(raw("NOT-A-NAME"), Path("config.toml"))
