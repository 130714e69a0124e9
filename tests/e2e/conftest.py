"""A real relayproxy process (`python -m relayproxy serve`) in front of a FakeUpstream."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.stripe import API_KEY as STRIPE_API_KEY
from tests.fakes.stripe import WEBHOOK_SECRET, FakeStripe
from tests.fakes.upstream import FakeUpstream

UPSTREAM_KEY = "sk-upstream-provider-secret-0001"
# `make test` runs this suite twice: on the default loop (uvloop), then on asyncio's own.
EVENT_LOOP = os.environ.get("RELAYPROXY_TEST_EVENT_LOOP", "auto")
SCENARIOS = (
    "text", "tools", "nousage", "midstream-error", "truncated", "reset", "stall", "cut", "noanswer", "slow",
    "http429", "http500", "http400", "badjson", "text@7", "tools@7", "text@1", "text@cl",
)  # fmt: skip


@dataclass
class Gateway:
    base_url: str
    key: str
    config: Path
    db: Path
    upstream: FakeUpstream
    process: subprocess.Popen[bytes]
    log: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("--config", str(self.config), *args)

    def last_seq(self) -> int:
        with sqlite3.connect(self.db) as db:
            return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM usage").fetchone()[0])

    def record_after(self, seq: int, model: str) -> dict[str, Any]:
        """The record of the one request for ``model`` made after ``seq`` (tests run one at a time)."""
        deadline = time.monotonic() + 5
        while True:
            with sqlite3.connect(self.db) as db:
                db.row_factory = sqlite3.Row
                row = db.execute("SELECT * FROM usage WHERE seq > ? AND model = ?", (seq, model)).fetchone()
            if row is not None or time.monotonic() > deadline:
                assert row is not None, f"no usage record for {model} after {seq}"
                return dict(row)
            time.sleep(0.02)

    def balance(self, account: str = "test") -> tuple[int, int]:
        """(balance_microusd, held_microusd) of an account, read from the store."""
        with sqlite3.connect(self.db) as db:
            row = db.execute(
                "SELECT balance_microusd, held_microusd FROM accounts WHERE name = ?", (account,)
            ).fetchone()
        return int(row[0]), int(row[1])

    def usage(self, request_id: str) -> dict[str, Any]:
        """The usage record of a request, waiting briefly for it to be written."""
        deadline = time.monotonic() + 5
        while True:
            with sqlite3.connect(self.db) as db:
                db.row_factory = sqlite3.Row
                row = db.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)).fetchone()
            if row is not None or time.monotonic() > deadline:
                assert row is not None, f"no usage record for {request_id}"
                return dict(row)
            time.sleep(0.02)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relayproxy", *args], capture_output=True, text=True, timeout=60, env=env
    )


#: Model name prefixes routing to a fake upstream of each protocol; the rest is the scenario.
UPSTREAMS = {"oa": "fake", "an": "fake-anthropic", "ge": "fake-gemini"}
MATRIX_SCENARIOS = (
    "text", "tools", "nousage", "midstream-error", "truncated", "http429", "http500", "http400",
    "text@7", "tools@7", "slow", "late", "pause", "thinking", "runaway", "nodone", "agent",
    "tail40", "tail1000", "tailhang", "hang", "nousagehang",
)  # fmt: skip


def _model(name: str, provider: str, upstream_model: str) -> str:
    return (
        f'[models."{name}"]\nprovider = "{provider}"\nupstream_model = "{upstream_model}"\n'
        "input_price = 1.0\ncached_input_price = 0.5\noutput_price = 2.0\nmax_output_tokens = 4096\n"
    )


def write_config(
    path: Path, upstream: FakeUpstream, stripe_url: str = "http://127.0.0.1:9", extra: str = "", **overrides: Any
) -> None:
    """The e2e config; ``extra`` is TOML appended to it (more models, say)."""
    models = "\n".join(_model(name, "fake", name) for name in SCENARIOS)
    models += "\n".join(
        _model(f"{prefix}-{scenario}", provider, scenario)
        for prefix, provider in UPSTREAMS.items()
        for scenario in MATRIX_SCENARIOS
    )
    models += _model("mk-moonshot", "fake-moonshot", "moonshot")
    models += _model("mk-moonshot-passthrough", "fake", "moonshot")
    models += _model("oa-flaky", "fake", "flaky")
    models += "".join(_model(f"rs-{s}", "fake-responses", s) for s in ("text", "tools", "midstream-error", "http429"))
    # Fallbacks: an overloaded Anthropic upstream (529) falls back to Gemini; a rate-limited
    # OpenAI one (429, Retry-After 7 s: too long to wait here) falls back to Anthropic.
    models += _model("fb-overloaded", "fake-anthropic", "http529") + 'fallback = ["ge-text"]\n'
    models += _model("fb-ratelimited", "fake", "http429") + 'fallback = ["needs-key", "an-text"]\n'
    models += _model("fb-badrequest", "fake", "http400") + 'fallback = ["an-text"]\n'

    timeouts = {
        "upstream_first_byte_s": 2.5,
        "stream_idle_s": 2,
        "keepalive_ping_s": 0.7,
        "drain_s": 2,
        **overrides.get("timeouts", {}),
    }
    limits = {"max_body_bytes": 1048576, **overrides.get("limits", {})}
    path.write_text(
        f"""
[server]
listen = "127.0.0.1:0"
database = "relay.db"
event_loop = "{EVENT_LOOP}"

[billing]
discount = 0.30
stripe_api_base = "{stripe_url}"
success_url = "https://example.test/paid"
cancel_url = "https://example.test/cancelled"

[providers.fake]
protocol = "openai"
base_url = "{upstream.base_url}/v1"
api_key_env = "RELAYPROXY_TEST_UPSTREAM_KEY"

[providers.fake-responses]
protocol = "openai"
base_url = "{upstream.base_url}/v1"
api_key_env = "RELAYPROXY_TEST_UPSTREAM_KEY"
responses = true

[providers.fake-anthropic]
protocol = "anthropic"
base_url = "{upstream.base_url}"
api_key_env = "RELAYPROXY_TEST_UPSTREAM_KEY"

[providers.fake-gemini]
protocol = "gemini"
base_url = "{upstream.base_url}"
api_key_env = "RELAYPROXY_TEST_UPSTREAM_KEY"

[providers.fake-moonshot]
protocol = "openai"
base_url = "{upstream.base_url}/v1"
api_key_env = "RELAYPROXY_TEST_UPSTREAM_KEY"
passthrough = false

[providers.refused]
protocol = "anthropic"
base_url = "http://127.0.0.1:9"
api_key_env = "RELAYPROXY_TEST_UPSTREAM_KEY"

[models."refused"]
provider = "refused"
input_price = 1.0
output_price = 2.0

[providers.nokey]
protocol = "openai"
base_url = "{upstream.base_url}/v1"
api_key_env = "RELAYPROXY_TEST_UNSET_KEY"

[models."needs-key"]
provider = "nokey"
input_price = 1.0
output_price = 2.0

{models}
{extra}
[timeouts]
{chr(10).join(f"{k} = {v}" for k, v in timeouts.items())}

[limits]
{chr(10).join(f"{k} = {v}" for k, v in limits.items())}
"""
    )


def start_gateway(
    tmp: Path,
    upstream: FakeUpstream,
    stripe: FakeStripe | None = None,
    extra: str = "",
    serve_args: tuple[str, ...] = (),
    **overrides: Any,
) -> Gateway:
    config = tmp / "config.toml"
    write_config(config, upstream, stripe.url if stripe else "http://127.0.0.1:9", extra, **overrides)
    created = run_cli("--config", str(config), "keys", "create", "--account", "test", "--label", "e2e")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    funded = run_cli("--config", str(config), "credits", "add", "--account", "test", "--usd", "1000")
    assert funded.returncode == 0, funded.stderr
    env = {
        **os.environ,
        "RELAYPROXY_TEST_UPSTREAM_KEY": UPSTREAM_KEY,
        "STRIPE_SECRET_KEY": STRIPE_API_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    env.pop("RELAYPROXY_TEST_UNSET_KEY", None)
    log = tmp / "gateway.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relayproxy", "serve", "--config", str(config), *serve_args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    port = _wait_port(log, proc)
    return Gateway(f"http://127.0.0.1:{port}", key, config, tmp / "relay.db", upstream, proc, log)


def _wait_port(log: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {log.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"gateway did not start: {log.read_text()}")


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def stripe_fake() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, stripe_fake: FakeStripe
) -> Iterator[Gateway]:
    # Many tests here leave streams early on this one key on purpose; the free-abort cap has tests
    # of its own gateways (test_ops, test_answered), so it is out of the way here.
    gw = start_gateway(
        tmp_path_factory.mktemp("gateway"), upstream, stripe_fake, limits={"free_aborts_per_hour": 100_000}
    )
    yield gw
    gw.process.terminate()
    gw.process.wait(10)
