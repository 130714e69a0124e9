"""Stripe top-ups: the official library against a fake Stripe API, and locally signed webhooks.

Rules under test (hardening.md a.7, cases 36-37): a paid payment is credited exactly once whatever
the delivery order, duplication or concurrency; unpaid sessions wait for async success; refunds are
negative entries; livemode mismatches are ignored; a webhook is accepted only when a ``v1``
signature over the exact raw body matches and is at most 300 s old.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from relayproxy.billing.payments import PaymentProviderError, Payments, PaymentsDisabled, WebhookOutcome
from relayproxy.config.settings import BillingConfig
from relayproxy.errors import InvalidRequest
from relayproxy.store.facade import Store
from tests.fakes.stripe import API_KEY, WEBHOOK_SECRET, FakeStripe, charge_refunded, event, sign

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture
def billing(fake: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> BillingConfig:
    monkeypatch.setenv("STRIPE_SECRET_KEY", API_KEY)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    return BillingConfig(
        success_url="https://relay.example/paid", cancel_url="https://relay.example/cancel", stripe_api_base=fake.url
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "relay.db")
    yield s
    assert await s.ledger_check() == []
    await s.close()


@pytest.fixture
def payments(billing: BillingConfig, store: Store) -> Payments:
    return Payments(billing, store)


async def paid_session(payments: Payments, fake: FakeStripe, store: Store, usd: str = "12.50", **kw: Any) -> Any:
    """A session created through the API for account ``alice``, then paid."""
    account_id = await store.ensure_account("alice")
    url = await payments.create_checkout(account_id, "alice", usd)
    session_id = url.rsplit("/", 1)[1].split("#")[0]
    return fake.pay(session_id, **kw)


async def deliver(payments: Payments, body: bytes) -> WebhookOutcome:
    return await payments.handle_webhook(body, sign(body))


async def balance(store: Store) -> int:
    found = await store.balance("alice")
    assert found is not None
    return found[0]


# -- checkout -------------------------------------------------------------------------------------


async def test_checkout_session_is_created_through_the_library(payments: Payments, fake: FakeStripe, store: Store):
    """One USD line item in cents, the account in client_reference_id and metadata, mode payment."""
    account_id = await store.ensure_account("alice")
    url = await payments.create_checkout(account_id, "alice", Decimal("12.50"))
    assert url.startswith("https://checkout.stripe.com/c/pay/cs_test_")
    params = fake.requests[-1]["params"]
    assert params["mode"] == "payment"
    assert params["client_reference_id"] == str(account_id)
    assert params["line_items"]["0"]["price_data"] == {
        "currency": "usd",
        "unit_amount": "1250",
        "product_data": {"name": "relayproxy credit"},
    }
    assert params["metadata"]["relayproxy_account"] == "alice"
    assert params["payment_intent_data"]["metadata"]["relayproxy_account_id"] == str(account_id)
    assert params["success_url"] == "https://relay.example/paid"


@pytest.mark.parametrize("amount", ["4.99", "1000.01", "12.505", "-5", "ten", "NaN", True])
async def test_checkout_amount_out_of_bounds_is_refused_before_stripe(payments: Payments, fake: FakeStripe, amount):
    with pytest.raises(InvalidRequest, match=r"amount_usd: .*between 5 and 1000 USD"):
        await payments.create_checkout(1, "alice", amount)
    assert fake.requests == []


async def test_checkout_accepts_json_numbers_exactly(payments: Payments, fake: FakeStripe, store: Store):
    await payments.create_checkout(await store.ensure_account("alice"), "alice", 19.99)
    assert fake.requests[-1]["params"]["line_items"]["0"]["price_data"]["unit_amount"] == "1999"


async def test_stripe_refusal_becomes_payment_provider_error(payments: Payments, fake: FakeStripe):
    fake.fail_next = (400, {"error": {"type": "invalid_request_error", "message": "Invalid currency: usx"}})
    with pytest.raises(PaymentProviderError, match="Invalid currency"):
        await payments.create_checkout(1, "alice", 10)


async def test_topups_disabled_without_secrets(billing: BillingConfig, store: Store, monkeypatch):
    """No secret key: checkout is disabled with a message naming the variable; no webhook secret: same."""
    monkeypatch.delenv("STRIPE_SECRET_KEY")
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET")
    payments = Payments(billing, store)
    with pytest.raises(PaymentsDisabled, match="STRIPE_SECRET_KEY") as info:
        await payments.create_checkout(1, "alice", 10)
    assert info.value.status == 503
    with pytest.raises(PaymentsDisabled, match="STRIPE_WEBHOOK_SECRET"):
        await payments.handle_webhook(b"{}", "t=1,v1=00")


async def test_checkout_disabled_without_return_urls(billing: BillingConfig, store: Store):
    payments = Payments(replace(billing, success_url=None), store)
    with pytest.raises(PaymentsDisabled, match=r"\[billing\] success_url"):
        await payments.create_checkout(1, "alice", 10)


# -- webhooks: crediting exactly once -------------------------------------------------------------


async def test_paid_completed_session_is_credited_once(payments: Payments, fake: FakeStripe, store: Store):
    session = await paid_session(payments, fake, store)
    body = event("checkout.session.completed", session)
    first = await deliver(payments, body)
    assert (first.status, first.action, first.amount_microusd) == (200, "credited", 12_500_000)
    again = await deliver(payments, body)  # Stripe re-delivers: same event id
    assert (again.status, again.action) == (200, "duplicate")
    assert await balance(store) == 12_500_000


async def test_same_event_five_times_concurrently_credits_once(payments: Payments, fake: FakeStripe, store: Store):
    session = await paid_session(payments, fake, store)
    body = event("checkout.session.completed", session)
    outcomes = await asyncio.gather(*(deliver(payments, body) for _ in range(5)))
    assert sorted(o.action for o in outcomes) == ["credited", "duplicate", "duplicate", "duplicate", "duplicate"]
    assert await balance(store) == 12_500_000


async def test_same_payment_from_two_stores_credits_once(payments: Payments, fake: FakeStripe, store: Store, tmp_path):
    """Two worker processes (two connections) racing on one payment: the database decides."""
    other = await Store.open(tmp_path / "relay.db")
    try:
        second = Payments(payments._billing, other)
        session = await paid_session(payments, fake, store)
        bodies = [
            event("checkout.session.completed", session),
            event("checkout.session.async_payment_succeeded", session),
        ]
        outcomes = await asyncio.gather(*(deliver(p, b) for p in (payments, second) for b in bodies))
        assert [o.action for o in outcomes].count("credited") == 1
    finally:
        await other.close()
    assert await balance(store) == 12_500_000


@pytest.mark.parametrize("async_first", [True, False])
async def test_async_success_and_completed_for_one_session_credit_once(
    payments: Payments, fake: FakeStripe, store: Store, async_first: bool
):
    session = await paid_session(payments, fake, store)
    bodies = [event("checkout.session.completed", session), event("checkout.session.async_payment_succeeded", session)]
    actions = [(await deliver(payments, b)).action for b in (bodies[::-1] if async_first else bodies)]
    assert actions == ["credited", "duplicate"]
    assert await balance(store) == 12_500_000


async def test_unpaid_completed_waits_for_async_success(payments: Payments, fake: FakeStripe, store: Store):
    session = await paid_session(payments, fake, store, payment_status="unpaid")
    outcome = await deliver(payments, event("checkout.session.completed", session))
    assert (outcome.status, outcome.action) == (200, "ignored")
    assert await balance(store) == 0
    failed = await deliver(payments, event("checkout.session.async_payment_failed", session))
    assert failed.action == "ignored"
    paid = fake.pay(session["id"])
    assert (await deliver(payments, event("checkout.session.async_payment_succeeded", paid))).action == "credited"
    assert await balance(store) == 12_500_000


async def test_no_payment_required_is_credited(payments: Payments, fake: FakeStripe, store: Store):
    session = await paid_session(payments, fake, store, payment_status="no_payment_required")
    assert (await deliver(payments, event("checkout.session.completed", session))).action == "credited"


async def test_livemode_mismatch_is_ignored(payments: Payments, fake: FakeStripe, store: Store):
    session = await paid_session(payments, fake, store)
    outcome = await deliver(payments, event("checkout.session.completed", session, livemode=True))
    assert (outcome.status, outcome.action) == (200, "ignored")
    assert await balance(store) == 0


async def test_session_for_unknown_account_or_currency_is_ignored(payments: Payments, fake: FakeStripe, store: Store):
    session = await paid_session(payments, fake, store)
    for broken in (
        {**session, "client_reference_id": "999"},
        {**session, "currency": "eur"},
        {**session, "amount_total": -5},
    ):
        outcome = await deliver(payments, event("checkout.session.completed", broken))
        assert (outcome.status, outcome.action) == (200, "ignored"), outcome
    assert await balance(store) == 0


async def test_unhandled_event_types_are_acknowledged(payments: Payments):
    outcome = await deliver(payments, event("customer.created", {"id": "cus_1", "object": "customer"}))
    assert (outcome.status, outcome.action) == (200, "ignored")


# -- refunds ----------------------------------------------------------------------------------------


async def test_refunds_are_negative_entries_up_to_the_refunded_total(
    payments: Payments, fake: FakeStripe, store: Store
):
    session = await paid_session(payments, fake, store)
    await deliver(payments, event("checkout.session.completed", session))
    partial = event("charge.refunded", charge_refunded(session, 250))
    assert (await deliver(payments, partial)).action == "refunded"
    assert await balance(store) == 10_000_000
    assert (await deliver(payments, partial)).action == "duplicate"
    full = event("charge.refunded", charge_refunded(session, 1250))
    older = event("charge.refunded", charge_refunded(session, 250))  # delivered late, new event id
    assert (await deliver(payments, full)).action == "refunded"
    assert (await deliver(payments, older)).action == "duplicate"
    assert await balance(store) == 0


async def test_refund_before_credit_is_deferred_until_stripe_retries(
    payments: Payments, fake: FakeStripe, store: Store
):
    session = await paid_session(payments, fake, store)
    refund = event("charge.refunded", charge_refunded(session, 1250))
    early = await deliver(payments, refund)
    assert (early.status, early.action) == (409, "deferred")
    await deliver(payments, event("checkout.session.completed", session))
    assert (await deliver(payments, refund)).action == "refunded"  # Stripe's retry of the same event
    assert await balance(store) == 0


async def test_refund_of_a_foreign_charge_is_ignored(payments: Payments, fake: FakeStripe, store: Store):
    session = await paid_session(payments, fake, store)
    outcome = await deliver(payments, event("charge.refunded", charge_refunded(session, 1250, ours=False)))
    assert (outcome.status, outcome.action) == (200, "ignored")


async def test_refund_after_spending_can_leave_available_negative(payments: Payments, fake: FakeStripe, store: Store):
    """A refund of credit already spent is still booked; the invariant accepts it (a refund caused it)."""
    session = await paid_session(payments, fake, store)
    await deliver(payments, event("checkout.session.completed", session))
    account_id = await store.ensure_account("alice")
    assert await store.hold(account_id, "req-1", 12_000_000)
    await deliver(payments, event("charge.refunded", charge_refunded(session, 1250)))
    assert await store.balance("alice") == (0, 12_000_000)
    assert not await store.hold(account_id, "req-2", 0)  # nothing is available: 402


# -- signatures -------------------------------------------------------------------------------------


def _stale_header(body: bytes) -> str:
    return sign(body, timestamp=int(time.time()) - 301)


def _reserialised(body: bytes) -> tuple[bytes, str]:
    """Signed, then re-serialised (as a framework parsing and re-dumping JSON would)."""
    return json.dumps(json.loads(body), separators=(",", ":")).encode(), sign(body)


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        pytest.param(lambda b: (b, sign(b, "whsec_someone_else")), "No signatures found matching", id="bad-signature"),
        pytest.param(lambda b: (b, None), "No Stripe-Signature header", id="missing-header"),
        pytest.param(lambda b: (b, ""), "No Stripe-Signature header", id="empty-header"),
        pytest.param(lambda b: (b, "garbage"), "Unable to extract timestamp", id="malformed-header"),
        pytest.param(lambda b: (b, _stale_header(b)), "outside the tolerance zone", id="stale-301s"),
        pytest.param(_reserialised, "No signatures found matching", id="reserialised-body"),
        pytest.param(lambda b: (b.replace(b"1250", b"9250"), sign(b)), "No signatures found", id="amount-edited"),
        pytest.param(lambda b: (b"\xff" + b, sign(b)), "not a Stripe event", id="not-utf8"),
    ],
)
async def test_bad_signatures_are_rejected_without_credit(
    payments: Payments, fake: FakeStripe, store: Store, tamper, why: str
):
    session = await paid_session(payments, fake, store)
    body, header = tamper(event("checkout.session.completed", session))
    outcome = await payments.handle_webhook(body, header)
    assert (outcome.status, outcome.action) == (400, "rejected")
    assert why in outcome.detail
    assert await balance(store) == 0


async def test_secret_rotation_two_v1_entries_one_valid(payments: Payments, fake: FakeStripe, store: Store):
    session = await paid_session(payments, fake, store)
    body = event("checkout.session.completed", session)
    valid = sign(body)
    timestamp, good = valid.split(",")
    stale_secret = sign(body, "whsec_rotated_out").split(",")[1]
    outcome = await payments.handle_webhook(body, f"{timestamp},{stale_secret},{good}")
    assert (outcome.status, outcome.action) == (200, "credited")


# -- delivery in any order ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(25))
async def test_any_delivery_order_credits_once_and_refunds_once(
    payments: Payments, fake: FakeStripe, store: Store, seed: int
):
    """Random permutations with duplicates; deferred refunds are retried as Stripe would."""
    rnd = random.Random(seed)
    session = await paid_session(payments, fake, store)
    unpaid = {**session, "payment_status": "unpaid"}
    bodies = [
        event("checkout.session.completed", session),
        event("checkout.session.completed", unpaid),
        event("checkout.session.async_payment_succeeded", session),
        event("payment_intent.succeeded", {"id": session["payment_intent"], "object": "payment_intent"}),
        event("charge.refunded", charge_refunded(session, 500)),
        event("checkout.session.completed", session, livemode=True),
    ]
    queue = [b for b in bodies for _ in range(rnd.randint(1, 3))]
    rnd.shuffle(queue)
    while queue:
        body = queue.pop(0)
        if (await deliver(payments, body)).status == 409:
            queue.append(body)
    assert await balance(store) == 12_500_000 - 5_000_000


@pytest.mark.parametrize(
    ("env", "loaded"),
    [({}, False), ({"STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET}, True), ({"STRIPE_SECRET_KEY": API_KEY}, True)],
)
def test_stripe_library_loaded_only_with_a_secret(env: dict[str, str], loaded: bool) -> None:
    """Without top-ups the ~20 MB library stays out of the process; with them it loads at start-up,
    so neither a checkout nor a webhook pays for the import."""
    script = (
        "import sys\n"
        "from relayproxy.app import run_gateway\n"
        "from relayproxy.config.settings import BillingConfig\n"
        "from relayproxy.billing.payments import Payments\n"
        "assert 'stripe' not in sys.modules\n"
        "Payments(BillingConfig(), None)\n"
        "print('stripe' in sys.modules)\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(loaded)
