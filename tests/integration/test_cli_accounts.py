"""`relayproxy keys create|list` with key options and `relayproxy users …`, as subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relayproxy.store.accounts import Accounts
from relayproxy.store.backends import open_store
from relayproxy.store.passwords import verify
from tests.integration.procs import run_cli


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        '[server]\ndatabase = "relay.db"\n'
        '[providers.openai]\nprotocol = "openai"\nbase_url = "https://api.openai.com/v1"\napi_key_env = "K"\n'
        '[models."gpt-5.5"]\nprovider = "openai"\ninput_price = 1.25\noutput_price = 10.0\n'
        '[models."gpt-5.5-mini"]\nprovider = "openai"\ninput_price = 0.25\noutput_price = 2.0\n'
    )
    return path


def test_keys_create_with_options_and_list_shows_them(config: Path) -> None:
    made = run_cli(
        config, "keys", "create", "--account", "acme", "--label", "ci", "--limit-usd", "2.50",
        "--expires", "2999-01-31", "--models", "gpt-5.5,gpt-5.5-mini",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert len(made.stdout.splitlines()) == 1 and made.stdout.startswith("rp_")
    assert run_cli(config, "keys", "create", "--account", "acme").returncode == 0
    rows = [json.loads(line) for line in run_cli(config, "keys", "list", "--json").stdout.splitlines()]
    limited, plain = rows
    assert (limited["spend_limit_microusd"], limited["expires"], limited["models"]) == (
        2_500_000, "2999-01-31", ["gpt-5.5", "gpt-5.5-mini"],
    )  # fmt: skip
    assert (limited["spend_microusd"], limited["last_used"], limited["label"]) == (0, None, "ci")
    assert (plain["spend_limit_microusd"], plain["expires"], plain["models"]) == (None, None, None)
    table = run_cli(config, "keys", "list").stdout.splitlines()
    assert table[0].split() == [
        "id", "prefix", "account", "label", "created", "revoked", "limit_usd", "spend_usd", "expires", "models",
        "last_used",
    ]  # fmt: skip
    assert "2.500000" in table[1] and "gpt-5.5,gpt-5.5-mini" in table[1] and "2999-01-31" in table[1]


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--limit-usd", "abc", "not a USD amount"),
        ("--limit-usd", "0", "must be more than 0"),
        ("--expires", "2020-01-31", "already past"),
        ("--expires", "2027-13-01", "not a calendar date"),
        ("--expires", "31.01.2027", "YYYY-MM-DD"),
        ("--models", "gpt-5.5,nope", "not configured on this gateway: nope"),
        ("--models", ",", "one or more model ids"),
    ],
)
def test_keys_create_refuses_bad_options_with_exit_2(config: Path, option: str, value: str, words: str) -> None:
    done = run_cli(config, "keys", "create", "--account", "acme", option, value)
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert done.stdout == ""
    assert run_cli(config, "keys", "list", "--json").stdout == ""  # nothing created


def test_users_create_prints_a_generated_password_only(config: Path) -> None:
    made = run_cli(config, "users", "create", "--email", "Ann@Example.com", "--account", "acme", "--admin")
    assert made.returncode == 0, made.stderr
    assert len(made.stdout.splitlines()) == 1 and len(made.stdout.strip()) >= 16
    given = run_cli(config, "users", "create", "--email", "bob@example.com", "--account", "other", "--password-stdin",
                    stdin="correct horse battery\n")  # fmt: skip
    assert (given.returncode, given.stdout) == (0, "")
    again = run_cli(config, "users", "create", "--email", "ann@example.com", "--account", "acme")
    assert again.returncode == 1 and "already exists" in again.stderr
    short = run_cli(config, "users", "create", "--email", "c@example.com", "--account", "acme", "--password-stdin",
                    stdin="short\n")  # fmt: skip
    assert short.returncode == 2 and "at least 8" in short.stderr
    assert run_cli(config, "users", "create", "--email", "nobody", "--account", "acme").returncode == 2
    rows = [json.loads(line) for line in run_cli(config, "users", "list", "--json").stdout.splitlines()]
    assert [(r["email"], r["account"], r["admin"], r["disabled"]) for r in rows] == [
        ("ann@example.com", "acme", True, False), ("bob@example.com", "other", False, False),
    ]  # fmt: skip
    assert set(rows[0]) == {"id", "email", "account", "admin", "created", "disabled"}
    only = run_cli(config, "users", "list", "--account", "other").stdout.splitlines()
    assert only[0].split() == ["id", "email", "account", "admin", "created", "disabled"] and len(only) == 2


@pytest.mark.anyio
async def test_users_disable_and_reset_password_end_every_session(config: Path) -> None:
    first = run_cli(config, "users", "create", "--email", "ann@example.com", "--account", "acme").stdout.strip()
    store = await open_store(config.parent / "relay.db")
    try:
        accounts = Accounts(store)
        user = await accounts.user_by_email("ann@example.com")
        assert user is not None and verify(user.password_hash, first)[0]
        for token in ("t1", "t2"):
            await accounts.start_session(user.id, token, "csrf", idle_s=3600, absolute_s=7200)
        reset = run_cli(config, "users", "reset-password", "--email", "ann@example.com")
        assert reset.returncode == 0 and len(reset.stdout.splitlines()) == 1
        second = reset.stdout.strip()
        changed = await accounts.user_by_email("ann@example.com")
        assert changed is not None and verify(changed.password_hash, second)[0]
        assert not verify(changed.password_hash, first)[0]
        assert await accounts.session("t1", idle_s=3600) is None and await accounts.session("t2", idle_s=3600) is None

        await accounts.start_session(user.id, "t3", "csrf", idle_s=3600, absolute_s=7200)
        disabled = run_cli(config, "users", "disable", "--email", "ann@example.com")
        assert disabled.returncode == 0 and "disabled ann@example.com" in disabled.stdout
        assert await accounts.session("t3", idle_s=3600) is None
        assert [u.disabled for u in await accounts.list_users()] == [True]
        assert [a[2] for a in await accounts.audit_log()] == ["user.disable", "user.reset-password", "user.create"]
    finally:
        await store.close()
    missing = run_cli(config, "users", "disable", "--email", "who@example.com")
    assert missing.returncode == 1 and "no user" in missing.stderr
    assert run_cli(config, "users", "reset-password", "--email", "who@example.com").returncode == 1
