"""Key options through a real `relayproxy serve`, with the official SDKs: an expired key is a 401,
a model outside the key's allow-list a 403, a key past its spend limit a 402, each in the caller's
own protocol, without an upstream call, and recorded `rejected` with its reason; and 200
concurrent requests on a key with a $1 limit and $10 of credit spend at most $1."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.e2e.conftest import Gateway, start_gateway
from tests.fakes.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

#: The model each protocol's SDK asks for, and one no test key allows.
MODELS = {"openai": "oa-text", "anthropic": "an-text", "gemini": "ge-text"}


def call(gw: Gateway, protocol: str, key: str) -> None:
    """One unary request through the protocol's SDK; the SDK's error propagates."""
    if protocol == "openai":
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0) as oa:
            oa.chat.completions.create(model=MODELS[protocol], messages=[{"role": "user", "content": "hi"}])
    elif protocol == "anthropic":
        with anthropic.Anthropic(base_url=gw.base_url, api_key=key, max_retries=0) as an:
            an.messages.create(model=MODELS[protocol], max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    else:
        options = genai_types.HttpOptions(base_url=gw.base_url, api_version="v1")
        client = genai.Client(api_key=key, http_options=options)
        try:
            client.models.generate_content(model=MODELS[protocol], contents="hi")
        finally:
            client.close()


def new_key(gw: Gateway, account: str, *options: str) -> str:
    created = gw.cli("keys", "create", "--account", account, *options)
    assert created.returncode == 0, created.stderr
    assert gw.cli("credits", "add", "--account", account, "--usd", "10").returncode == 0
    return created.stdout.strip()


def expired_key(gw: Gateway, account: str) -> str:
    key = new_key(gw, account, "--expires", "2999-12-31")
    with sqlite3.connect(gw.db) as db:  # the CLI refuses a past date: age the key in the store
        db.execute(
            "UPDATE api_keys SET expires = '2020-01-31' WHERE account_id = (SELECT id FROM accounts WHERE name = ?)",
            (account,),
        )
    return key


CASES = {
    # case: (make the key, status, OpenAI exception, Anthropic exception, Gemini status, reason, words in the message)
    "expired": (
        expired_key, 401, openai.AuthenticationError, anthropic.AuthenticationError, "UNAUTHENTICATED", "key_expired",
        "expired",
    ),
    "model": (
        lambda gw, account: new_key(gw, account, "--models", "oa-tools,an-tools"),
        403, openai.PermissionDeniedError, anthropic.PermissionDeniedError, "PERMISSION_DENIED", "model_not_allowed",
        "may not use the model",
    ),
    "limit": (
        lambda gw, account: new_key(gw, account, "--limit-usd", "0.000001"),
        402, openai.APIStatusError, anthropic.APIStatusError, "RESOURCE_EXHAUSTED", "key_spend_limit",
        "spend limit of $0.000001 is reached",
    ),
}  # fmt: skip


@pytest.mark.parametrize("protocol", list(MODELS))
@pytest.mark.parametrize("case", list(CASES))
def test_key_options_refuse_in_the_callers_protocol_without_an_upstream_call(
    gateway: Gateway, protocol: str, case: str
) -> None:
    make, status, oa_error, an_error, ge_status, reason, words = CASES[case]
    account = f"opt-{case}-{protocol}"
    key = make(gateway, account)  # type: ignore[operator]
    seen, seq = len(gateway.upstream.requests), gateway.last_seq()
    expected: Any = {"openai": oa_error, "anthropic": an_error, "gemini": genai_errors.ClientError}[protocol]
    with pytest.raises(expected) as info:
        call(gateway, protocol, key)
    err = info.value
    if protocol == "gemini":
        assert (err.code, err.status) == (status, ge_status)
        assert words in (err.message or "")
    else:
        assert err.status_code == status and words in err.message
    if protocol == "openai" and status == 403:
        assert err.type == "permission_denied"
    if protocol == "openai" and status == 402:
        assert err.type == "insufficient_quota"
    if protocol == "anthropic":
        body_type = {401: "authentication_error", 402: "billing_error", 403: "permission_error"}[status]
        assert err.body["error"]["type"] == body_type
    assert len(gateway.upstream.requests) == seen, "no upstream call for a refused request"
    rec = gateway.record_after(seq, MODELS[protocol])
    assert (rec["outcome"], rec["reason"], rec["http_status"], rec["billed"]) == ("rejected", reason, status, 0)
    assert gateway.balance(account) == (10_000_000, 0)


def test_an_allowed_model_and_a_limit_with_room_are_served_and_counted(gateway: Gateway) -> None:
    key = new_key(gateway, "opt-ok", "--models", "oa-text", "--limit-usd", "1", "--expires", "2999-12-31")
    call(gateway, "openai", key)
    listed = gateway.cli("keys", "list", "--account", "opt-ok", "--json")
    row = json.loads(listed.stdout.splitlines()[0])
    assert row["models"] == ["oa-text"] and row["spend_limit_microusd"] == 1_000_000
    assert row["expires"] == "2999-12-31" and row["last_used"] is not None
    balance, held = gateway.balance("opt-ok")
    assert held == 0 and row["spend_microusd"] == 10_000_000 - balance > 0


# -- the spend limit under concurrency ------------------------------------------------------------

PRICEY = (
    '[models."pricey"]\nprovider = "fake"\nupstream_model = "text"\n'
    "input_price = 1000.0\ncached_input_price = 500.0\noutput_price = 2000.0\nmax_output_tokens = 64\n"
)  # one request costs about $0.027: 200 would spend $5 without the key's limit


@pytest.fixture(scope="module")
def pricey_gateway(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("pricey"), upstream, extra=PRICEY, limits={"per_key_concurrency": 512})
    yield gw
    gw.process.terminate()
    gw.process.wait(10)


def test_200_concurrent_requests_on_a_1_usd_key_with_10_usd_of_credit_spend_at_most_1_usd(
    pricey_gateway: Gateway, tmp_path: Path
) -> None:
    gw = pricey_gateway
    created = gw.cli("keys", "create", "--account", "capped", "--limit-usd", "1")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert gw.cli("credits", "add", "--account", "capped", "--usd", "10").returncode == 0

    async def run_all() -> list[int]:
        async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, timeout=60) as oa:

            async def one() -> int:
                try:
                    await oa.chat.completions.create(
                        model="pricey", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
                    )
                except openai.APIStatusError as exc:
                    return exc.status_code
                return 200

            return await asyncio.gather(*(one() for _ in range(200)))

    statuses = asyncio.run(run_all())
    assert set(statuses) <= {200, 402}, statuses
    assert statuses.count(200) > 0 and statuses.count(402) > 0
    row = _key_row(gw.db, "capped")
    balance, held = gw.balance("capped")
    assert row["spend_microusd"] <= 1_000_000 and row["spend_microusd"] + row["held_microusd"] <= 1_000_000
    assert (held, row["held_microusd"]) == (0, 0)
    assert 10_000_000 - balance == row["spend_microusd"]
    checked = gw.cli("ledger", "check")
    assert checked.returncode == 0, checked.stdout
    with sqlite3.connect(gw.db) as db:
        reasons = dict(
            db.execute("SELECT reason, COUNT(*) FROM usage WHERE account = 'capped' GROUP BY reason").fetchall()
        )
    assert reasons.get("key_spend_limit") == statuses.count(402)


def _key_row(db_path: Path, account: str) -> dict[str, Any]:
    with sqlite3.connect(db_path) as db:
        db.row_factory = sqlite3.Row
        row = db.execute(
            "SELECT k.* FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE a.name = ?", (account,)
        ).fetchone()
    return dict(row)


def test_an_expired_key_is_refused_on_the_model_list_too(gateway: Gateway) -> None:
    key = expired_key(gateway, "opt-expired-models")
    with (
        openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0) as oa,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        oa.models.list()
    assert "expired" in info.value.message and "2020-01-31" in info.value.message
