"""FakeStripe: a stdlib HTTP server on loopback answering the Stripe API calls relayproxy makes,
plus helpers that build and sign webhook events the way Stripe does.

The official ``stripe`` library talks to it through ``[billing] stripe_api_base``: it sends real
form-encoded requests (``line_items[0][price_data][unit_amount]=1250``) and gets back objects
shaped like Stripe's own. Webhook bodies are signed with the library's own
``WebhookSignature.generate_signature_header``, so no network and no Stripe account are needed.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import stripe

__all__ = ["API_KEY", "WEBHOOK_SECRET", "FakeStripe", "charge_refunded", "event", "sign"]

API_KEY = "sk_test_relayproxy_fake_0001"
WEBHOOK_SECRET = "whsec_relayproxy_fake_0001"


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (``a[b][0][c]=v``) back into nested dicts (list indexes stay keys)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


@dataclass
class FakeStripe:
    """Answers ``POST /v1/checkout/sessions``; remembers every request and every session."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_next: tuple[int, dict[str, Any]] | None = None  # (status, error body) for the next call
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
                status, reply = fake.answer(self.path, dict(self.headers), _nest(parse_qsl(body)))
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_{secrets.token_hex(7)}")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def answer(self, path: str, headers: dict[str, str], params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.requests.append({"path": path, "headers": headers, "params": params})
        if headers.get("Authorization") != f"Bearer {API_KEY}":
            return 401, _error("invalid_request_error", "Invalid API Key provided.")
        if self.fail_next is not None:
            (status, reply), self.fail_next = self.fail_next, None
            return status, reply
        if path != "/v1/checkout/sessions":
            return 404, _error("invalid_request_error", f"Unrecognized request URL (POST: {path}).")
        return 200, self._create_session(params)

    def _create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        item = params["line_items"]["0"]
        cents = int(item["price_data"]["unit_amount"]) * int(item.get("quantity", 1))
        session_id = f"cs_test_{secrets.token_hex(12)}"
        now = int(time.time())
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": cents,
            "amount_total": cents,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": now,
            "currency": item["price_data"]["currency"],
            "customer": None,
            "expires_at": now + 86400,
            "livemode": False,
            "metadata": params.get("metadata", {}),
            "mode": params.get("mode"),
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params.get("success_url"),
            "url": f"https://checkout.stripe.com/c/pay/{session_id}#fidkdWxOYHwnPyd1blpxYHZxWjA0",
        }
        self.sessions[session_id] = session
        return session

    def pay(self, session_id: str, payment_status: str = "paid") -> dict[str, Any]:
        """The session as Stripe reports it once the customer has paid (or started paying)."""
        session = dict(self.sessions[session_id])
        session.update(
            status="complete",
            payment_status=payment_status,
            payment_intent=session["payment_intent"] or f"pi_{secrets.token_hex(12)}",
        )
        self.sessions[session_id] = session
        return session


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def event(event_type: str, obj: dict[str, Any], *, livemode: bool = False, event_id: str | None = None) -> bytes:
    """A webhook body as Stripe sends it (snapshot event, API version of the library)."""
    body = {
        "id": event_id or f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": stripe.api_version,
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
    return json.dumps(body, indent=2).encode()  # Stripe pretty-prints: whitespace matters to signatures


def charge_refunded(session: dict[str, Any], refunded_cents: int, *, ours: bool = True) -> dict[str, Any]:
    """The charge of a paid session after refunds totalling ``refunded_cents``."""
    metadata = {"relayproxy_account_id": session["client_reference_id"]} if ours else {}
    return {
        "id": f"ch_{session['payment_intent'][3:]}",
        "object": "charge",
        "amount": session["amount_total"],
        "amount_captured": session["amount_total"],
        "amount_refunded": refunded_cents,
        "currency": "usd",
        "livemode": False,
        "metadata": metadata,
        "paid": True,
        "payment_intent": session["payment_intent"],
        "refunded": refunded_cents == session["amount_total"],
        "status": "succeeded",
    }


def sign(body: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header for ``body``, made by the library's own test helper."""
    return str(stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp))
