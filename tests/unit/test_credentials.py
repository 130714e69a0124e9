"""Secrets come from the environment first, then from systemd's $CREDENTIALS_DIRECTORY."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayproxy.config.credentials import CredentialError, credential_name, read_secret


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("RP_TEST_KEY", raising=False)
    return tmp_path


def test_environment_wins_over_the_credential_file(creds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (creds / "rp_test_key").write_text("from-file\n")
    monkeypatch.setenv("RP_TEST_KEY", "from-env")
    assert read_secret("RP_TEST_KEY") == "from-env"


def test_credential_file_is_used_when_the_variable_is_unset_or_empty(
    creds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (creds / "rp_test_key").write_text("  sk-from-file\n")
    assert read_secret("RP_TEST_KEY") == "sk-from-file"
    monkeypatch.setenv("RP_TEST_KEY", "")
    assert read_secret("RP_TEST_KEY") == "sk-from-file"


def test_nothing_configured_is_none(creds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_secret("RP_TEST_KEY") is None
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert read_secret("RP_TEST_KEY") is None


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "empty"), (b"\n \n", "empty"), (b"\xff\xfe", "cannot be read"), (b"x" * 70000, "at most")],
)
def test_unusable_credential_files_fail_loudly(creds: Path, content: bytes, match: str) -> None:
    (creds / "rp_test_key").write_bytes(content)
    with pytest.raises(CredentialError, match=match):
        read_secret("RP_TEST_KEY")


def test_a_directory_is_not_a_credential(creds: Path) -> None:
    (creds / "rp_test_key").mkdir()
    with pytest.raises(CredentialError, match="regular file"):
        read_secret("RP_TEST_KEY")


@pytest.mark.parametrize("name", ["../etc/passwd", "A/B", ".hidden", "", "has-dash"])
def test_names_cannot_escape_the_directory(creds: Path, name: str) -> None:
    with pytest.raises(CredentialError, match="not an environment variable name"):
        read_secret(name)


def test_credential_name_is_the_lower_case_variable_name() -> None:
    assert credential_name("OPENAI_API_KEY") == "openai_api_key"
    assert credential_name("STRIPE_WEBHOOK_SECRET") == "stripe_webhook_secret"
