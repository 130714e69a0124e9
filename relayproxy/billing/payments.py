"""Stripe top-ups through the official ``stripe`` library: Checkout Sessions out, signed webhooks in.

Top-up flow. ``create_checkout`` opens a Checkout Session (mode ``payment``, one USD line item,
``client_reference_id`` = our account id) and returns its URL. Stripe then calls the webhook:
``handle_webhook`` verifies the ``Stripe-Signature`` header on the RAW body with the library
(HMAC over ``t.body``, any ``v1=`` entry may match so secret rotation works, 300 s tolerance),
and books the event in ONE store transaction that deduplicates on the event id AND on the payment
(``checkout:<session id>``; the PaymentIntent id is unique among top-ups too), so at-least-once,
unordered, concurrent delivery credits each payment exactly once. The amount comes from the
server-side session (``amount_total``), never from client metadata.

- ``checkout.session.completed`` credits when ``payment_status`` is ``paid`` or
  ``no_payment_required``; delayed methods credit on ``checkout.session.async_payment_succeeded``.
- ``charge.refunded`` books a negative entry up to the charge's cumulative ``amount_refunded``.
  A refund that arrives before its payment was credited (no ordering guarantee) is answered 409 so
  Stripe retries it later; a refund of a charge that is not ours (no relayproxy metadata) is ignored.
- Events whose ``livemode`` differs from ``[billing] livemode`` are ignored (200, no change).

The webhook makes no network call, so it answers fast. The one Stripe API call (session creation)
runs the library's synchronous client in a worker thread, keeping the event loop free.

The library (with ``requests`` and ``urllib3``: ~20 MB of resident memory) is imported when a
Stripe secret is configured, at start-up, so no request pays for the import; a gateway without
top-ups never loads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from relayproxy.billing.pricing import MICROUSD_PER_USD, Booking
from relayproxy.config.settings import BillingConfig
from relayproxy.errors import InvalidRequest, RelayError, UpstreamError

if TYPE_CHECKING:
    import stripe

__all__ = [
    "ACCOUNT_METADATA_KEY",
    "PaymentProviderError",
    "Payments",
    "PaymentsDisabled",
    "TopupLedger",
    "WebhookOutcome",
]

ACCOUNT_METADATA_KEY = "relayproxy_account_id"
SIGNATURE_TOLERANCE_S = 300
_MICROUSD_PER_CENT = MICROUSD_PER_USD // 100
_PAID = ("paid", "no_payment_required")


class PaymentsDisabled(RelayError):
    """Top-ups are not configured on this gateway (a Stripe secret or URL is missing)."""

    status = 503
    kind = "payments_disabled"


class PaymentProviderError(UpstreamError):
    """Stripe could not be reached or refused the request."""

    kind = "payment_provider_error"


class TopupLedger(Protocol):
    """What payments needs from the store (``Store`` implements it)."""

    async def credit_topup(
        self,
        account_id: int,
        amount_microusd: int,
        *,
        event_id: str,
        event_type: str,
        payment_key: str,
        payment_ref: str,
    ) -> Booking: ...

    async def book_refund(
        self, payment_ref: str, refunded_total_microusd: int, *, event_id: str, event_type: str
    ) -> Booking: ...


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    """How a webhook delivery was handled; ``status`` is the HTTP status to answer Stripe with
    (2xx: done, never resent; 400: rejected; 409: not yet bookable, Stripe retries later)."""

    status: int
    action: str  # credited | refunded | duplicate | ignored | deferred | rejected
    detail: str
    event_id: str | None = None
    amount_microusd: int = 0  # credited by this delivery


def _ok(action: str, detail: str, event_id: str, amount: int = 0) -> WebhookOutcome:
    return WebhookOutcome(200, action, detail, event_id, amount)


class Payments:
    """Stripe Checkout top-ups for one gateway; secrets are read from the environment once."""

    def __init__(self, billing: BillingConfig, ledger: TopupLedger, *, http_timeout_s: float = 20.0) -> None:
        self._billing = billing
        self._ledger = ledger
        self._webhook_secret = billing.stripe_webhook_secret()
        api_key = billing.stripe_secret_key()
        self._client: stripe.StripeClient | None = None
        if api_key or self._webhook_secret:
            import stripe  # here, not at the top: see the module's docstring

            if api_key:
                self._client = stripe.StripeClient(
                    api_key,
                    base_addresses={"api": billing.stripe_api_base} if billing.stripe_api_base else None,
                    http_client=stripe.RequestsClient(timeout=http_timeout_s),
                    max_network_retries=2,  # the library adds an idempotency key, so retries never double-create
                )

    def checkout_disabled_reason(self) -> str | None:
        """Why ``create_checkout`` would fail with PaymentsDisabled, or None when it is configured."""
        b = self._billing
        if self._client is None:
            return (
                f"top-ups are disabled: set the environment variable {b.stripe_secret_key_env} to a Stripe secret key"
            )
        if not (b.success_url and b.cancel_url):
            return "top-ups are disabled: set [billing] success_url and cancel_url in config.toml"
        return None

    # -- checkout ---------------------------------------------------------------------------------

    async def create_checkout(self, account_id: int, account_name: str, amount_usd: Decimal | int | float | str) -> str:
        """Open a Checkout Session for ``amount_usd`` (within the configured bounds); returns its URL."""
        reason = self.checkout_disabled_reason()
        if reason is not None or self._client is None:
            raise PaymentsDisabled(reason or "top-ups are disabled")
        cents = self._cents(amount_usd)
        params = self._session_params(account_id, account_name, cents)
        import stripe  # loaded since __init__: a lookup in sys.modules

        try:
            session = await asyncio.to_thread(self._client.v1.checkout.sessions.create, params)
        except stripe.StripeError as exc:
            raise PaymentProviderError(
                f"Stripe did not create the checkout session: {exc.user_message or exc}"
            ) from exc
        if not session.url:
            raise PaymentProviderError("Stripe created a checkout session without a URL")
        return str(session.url)

    def _cents(self, amount_usd: Decimal | int | float | str) -> int:
        low, high = self._billing.topup_min_usd, self._billing.topup_max_usd
        bounds = f"between {low} and {high} USD, in whole cents"
        try:
            if isinstance(amount_usd, bool):
                raise InvalidOperation
            amount = Decimal(str(amount_usd))  # str(): a JSON float 12.5 is read as the decimal 12.5
        except InvalidOperation:
            raise InvalidRequest(f"expected a USD amount {bounds}, got {amount_usd!r}", path="amount_usd") from None
        if not amount.is_finite() or amount != amount.quantize(Decimal("0.01")) or not low <= amount <= high:
            raise InvalidRequest(f"must be {bounds}, got {amount_usd!r}", path="amount_usd")
        return int(amount * 100)

    def _session_params(self, account_id: int, account_name: str, cents: int) -> Any:
        metadata = {ACCOUNT_METADATA_KEY: str(account_id), "relayproxy_account": account_name}
        return {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": cents,
                        "product_data": {"name": "relayproxy credit"},
                    },
                }
            ],
            "client_reference_id": str(account_id),
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},  # copied to the charge: refunds find their way back
            "success_url": self._billing.success_url,
            "cancel_url": self._billing.cancel_url,
        }

    # -- webhooks ---------------------------------------------------------------------------------

    async def handle_webhook(self, raw_body: bytes, signature_header: str | None) -> WebhookOutcome:
        """Verify and book one Stripe event; safe to call several times, concurrently."""
        if self._webhook_secret is None:
            raise PaymentsDisabled(
                "Stripe webhooks are disabled: set the environment variable "
                f"{self._billing.stripe_webhook_secret_env} to the endpoint's signing secret (whsec_...)"
            )
        event = _verified_event(raw_body, signature_header, self._webhook_secret)
        if isinstance(event, WebhookOutcome):
            return event
        event_id, event_type = str(event.get("id", "")), str(event.get("type", ""))
        if bool(event.get("livemode")) != self._billing.livemode:
            return _ok("ignored", f"livemode {event.get('livemode')} does not match [billing] livemode", event_id)
        handler = self._handlers().get(event_type)
        obj = (event.get("data") or {}).get("object")
        if handler is None or not isinstance(obj, dict) or not event_id:
            return _ok("ignored", f"event type {event_type!r} is not handled", event_id)
        return await handler(event_id, event_type, obj)

    def _handlers(self) -> dict[str, Callable[[str, str, dict[str, Any]], Awaitable[WebhookOutcome]]]:
        return {
            "checkout.session.completed": self._on_session_completed,
            "checkout.session.async_payment_succeeded": self._credit,
            "charge.refunded": self._on_refund,
        }

    async def _on_session_completed(self, event_id: str, event_type: str, session: dict[str, Any]) -> WebhookOutcome:
        status = session.get("payment_status")
        if status not in _PAID:
            return _ok("ignored", f"payment_status {status!r}: waiting for async_payment_succeeded", event_id)
        return await self._credit(event_id, event_type, session)

    async def _credit(self, event_id: str, event_type: str, session: dict[str, Any]) -> WebhookOutcome:
        problem = _session_problem(session)
        if problem is not None:
            return _ok("ignored", problem, event_id)
        account_id, amount = int(session["client_reference_id"]), session["amount_total"] * _MICROUSD_PER_CENT
        booking = await self._ledger.credit_topup(
            account_id,
            amount,
            event_id=event_id,
            event_type=event_type,
            payment_key=f"checkout:{session['id']}",
            payment_ref=_object_id(session.get("payment_intent")) or str(session["id"]),
        )
        if booking is Booking.BOOKED:
            return _ok("credited", f"account {account_id} credited {amount} micro-USD", event_id, amount)
        if booking is Booking.UNKNOWN_ACCOUNT:
            return _ok("ignored", f"client_reference_id {account_id} is not an account here", event_id)
        return _ok("duplicate", f"session {session['id']} was already credited", event_id)

    async def _on_refund(self, event_id: str, event_type: str, charge: dict[str, Any]) -> WebhookOutcome:
        payment = _object_id(charge.get("payment_intent"))
        refunded = charge.get("amount_refunded")
        if payment is None or not _is_cents(refunded) or str(charge.get("currency", "")).lower() != "usd":
            return _ok("ignored", "charge.refunded without a USD payment_intent and amount_refunded", event_id)
        total = refunded * _MICROUSD_PER_CENT
        booking = await self._ledger.book_refund(payment, total, event_id=event_id, event_type=event_type)
        if booking is Booking.BOOKED:
            return _ok("refunded", f"payment {payment}: refunded total now {total} micro-USD", event_id)
        if booking is Booking.DUPLICATE:
            return _ok("duplicate", f"payment {payment}: refund already booked", event_id)
        if ACCOUNT_METADATA_KEY in (charge.get("metadata") or {}):
            detail = f"payment {payment} is not credited yet; Stripe will retry this refund"
            return WebhookOutcome(409, "deferred", detail, event_id)
        return _ok("ignored", f"payment {payment} is not a relayproxy top-up", event_id)


def _verified_event(raw_body: bytes, header: str | None, secret: str) -> dict[str, Any] | WebhookOutcome:
    """The event as plain data when the signature over the raw body checks out, else a rejection."""
    import stripe  # loaded since Payments.__init__ (a webhook secret is configured)

    try:
        event = stripe.Webhook.construct_event(raw_body, header, secret, tolerance=SIGNATURE_TOLERANCE_S)
    except stripe.SignatureVerificationError as exc:
        return WebhookOutcome(400, "rejected", f"bad Stripe-Signature: {exc.user_message or exc}")
    except (ValueError, TypeError, AttributeError) as exc:  # not UTF-8, not JSON, not a snapshot event
        return WebhookOutcome(400, "rejected", f"not a Stripe event: {exc}")
    data: dict[str, Any] = event.to_dict()
    return data


def _session_problem(session: dict[str, Any]) -> str | None:
    """Why a Checkout Session cannot be credited, or None."""
    if session.get("mode") != "payment" or str(session.get("currency", "")).lower() != "usd":
        return f"session {session.get('id')}: not a USD payment"
    if not _is_cents(session.get("amount_total")) or not session.get("id"):
        return f"session {session.get('id')}: no amount_total"
    if not str(session.get("client_reference_id") or "").isdigit():
        return f"session {session.get('id')}: client_reference_id is not a relayproxy account id"
    return None


def _is_cents(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _object_id(value: Any) -> str | None:
    """A Stripe reference as its id, whether it arrived as an id or as an expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None
