"""The customer's own pages: overview, keys, usage (with the CSV export) and billing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

import relayproxy.dashboard.queries as queries
from relayproxy.billing.payments import PaymentProviderError, PaymentsDisabled
from relayproxy.dashboard.chart import HEIGHT, WIDTH, spend_bars
from relayproxy.dashboard.core import Site, nav, user_of
from relayproxy.dashboard.sessions import Request
from relayproxy.dashboard.web import PageError, form, form_all, page_headers, redirect, render
from relayproxy.errors import InvalidRequest
from relayproxy.http_types import HttpResponse, query_params
from relayproxy.keys import display_prefix, hash_key, new_key, new_key_id
from relayproxy.records import KeyInfo
from relayproxy.store.facade import utc_iso

__all__ = ["ROUTES"]

REASONS = {
    "completed": "the answer was delivered; billed at the upstream's reported usage",
    "client_disconnected": "you closed the connection before the end; not billed",
    "rejected": "the gateway refused the request before any upstream call (see reason); not billed",
    "upstream_error": "the provider failed; not billed",
    "gateway_error": "the gateway failed; not billed",
}


def _key_names(keys: list[KeyInfo]) -> dict[str, str]:
    """How the usage tables name a key: its prefix and label, as on the keys page."""
    return {k.id: f"{k.prefix}… {k.label}".strip() for k in keys}


async def _balance(site: Site, account: str) -> tuple[int, int]:
    return await site.store.balance(account) or (0, 0)


async def overview(site: Site, r: Request) -> HttpResponse:
    user = user_of(r)
    balance, held = await _balance(site, user.account)
    since = utc_iso(datetime.now(UTC) - timedelta(days=30))
    outcomes = await queries.outcomes_since(site.store, user.account, since)
    recent, _ = await queries.usage_page(site.store, user.account, queries.UsageFilter(), 0)
    today = datetime.now(UTC).date()
    per_day = await queries.spend_per_day(site.store, user.account, (today - timedelta(days=29)).isoformat())
    return render(
        "overview.html",
        balance=balance,
        held=held,
        outcomes=outcomes,
        recent=recent[:10],
        key_names=_key_names(await site.store.list_keys(user.account)),
        bars=spend_bars(per_day, today),
        chart=(WIDTH, HEIGHT),
        spent=sum(per_day.values()),
        **nav(r),
    )


async def keys_page(site: Site, r: Request, new_secret: str | None = None, error: str | None = None) -> HttpResponse:
    user = user_of(r)
    keys = [k for k in await site.store.list_keys(user.account) if k.revoked_at is None]
    return render(
        "keys.html",
        400 if error else 200,
        keys=keys,
        new_secret=new_secret,
        error=error,
        models=sorted(site.config.models),
        **nav(r),
    )


def _limit(text: str) -> int | None:
    if not text.strip():
        return None
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError("Spend limit (USD): enter an amount such as 10 or 2.50.") from None
    if not amount.is_finite() or amount <= 0 or amount > 1_000_000:
        raise ValueError("Spend limit (USD): enter a positive amount.")
    return int(amount * 1_000_000)


def _expires(text: str) -> str | None:
    if not text.strip():
        return None
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError("Expires: enter a date as YYYY-MM-DD.") from None
    if day < datetime.now(UTC).date():
        raise ValueError("Expires: the date is in the past.")
    return day.isoformat()


async def keys_create(site: Site, r: Request) -> HttpResponse:
    user, fields = user_of(r), form(r.req)
    chosen = tuple(m for m in form_all(r.req, "models") if m)
    try:
        limit, expires = _limit(fields.get("limit_usd", "")), _expires(fields.get("expires", ""))
        unknown = [m for m in chosen if m not in site.config.models]
        if unknown:
            raise ValueError(f"Models: unknown model {unknown[0]!r}.")
    except ValueError as exc:
        return await keys_page(site, r, error=str(exc))
    secret = new_key()
    label = fields.get("label", "").strip()[:100]
    info = await site.store.add_key(
        user.account,
        new_key_id(),
        display_prefix(secret),
        hash_key(secret),
        label,
        spend_limit_microusd=limit,
        expires=expires,
        models=chosen or None,
    )
    await site.accounts.audit(user.email, "key.create", f"key:{info.id}", f"account {user.account}")
    return await keys_page(site, r, new_secret=secret)


async def _own_key(site: Site, r: Request, key_id: str) -> KeyInfo:
    """The caller's account's active key ``key_id``; 404 for any other (another account's too)."""
    for key in await site.store.list_keys(user_of(r).account):
        if key.id == key_id and key.revoked_at is None:
            return key
    raise PageError(404, "No such key in your account.")


async def keys_revoke_confirm(site: Site, r: Request) -> HttpResponse:
    """The row's Revoke button (a GET, so it works without JavaScript): what revoking means, then
    the real Revoke (a POST with the CSRF token) or Cancel."""
    key = await _own_key(site, r, query_params(r.req.query).get("key_id", ""))
    return render("revoke.html", key=key, owner=None, action="/dashboard/keys/revoke", back="/dashboard/keys", **nav(r))


async def keys_revoke(site: Site, r: Request) -> HttpResponse:
    user, key_id = user_of(r), form(r.req).get("key_id", "")
    await _own_key(site, r, key_id)
    if not await site.store.revoke_key(key_id):
        raise PageError(404, "No such key in your account.")
    await site.accounts.audit(user.email, "key.revoke", f"key:{key_id}", f"account {user.account}")
    return redirect("/dashboard/keys")


async def usage(site: Site, r: Request) -> HttpResponse:
    user, params = user_of(r), query_params(r.req.query)
    flt = queries.UsageFilter.from_query(params)
    page = int(params["page"]) if params.get("page", "").isdigit() else 0
    rows, more = await queries.usage_page(site.store, user.account, flt, min(page, 10_000))
    keys = await site.store.list_keys(user.account)
    return render(
        "usage.html",
        rows=rows,
        more=more,
        page=page,
        flt=flt,
        qs=flt.query_string(),
        keys=keys,
        key_names=_key_names(keys),
        models=sorted(site.config.models),
        outcomes=list(REASONS),
        legend=REASONS,
        **nav(r),
    )


async def usage_csv(site: Site, r: Request) -> HttpResponse:
    user = user_of(r)
    flt = queries.UsageFilter.from_query(query_params(r.req.query))
    headers = page_headers(b"text/csv; charset=utf-8")
    headers.append((b"content-disposition", b'attachment; filename="usage.csv"'))
    return HttpResponse(200, headers, queries.csv_rows(site.store, user.account, flt))


async def billing(site: Site, r: Request, error: str | None = None, status: int = 200) -> HttpResponse:
    user = user_of(r)
    balance, held = await _balance(site, user.account)
    history = await queries.ledger_history(site.store, user.account)
    b = site.config.billing
    return render(
        "billing.html",
        status,
        balance=balance,
        held=held,
        history=history,
        error=error,
        low=b.topup_min_usd,
        high=b.topup_max_usd,
        returned=query_params(r.req.query).get("topup") == "done",
        disabled=site.payments.checkout_disabled_reason(),
        **nav(r),
    )


async def topup(site: Site, r: Request) -> HttpResponse:
    user = user_of(r)
    amount = form(r.req).get("amount_usd", "").strip().removeprefix("$")
    account_id = await queries.account_id(site.store, user.account)
    if account_id is None:
        account_id = await site.store.ensure_account(user.account)
    try:
        url = await site.payments.create_checkout(account_id, user.account, amount)
    except InvalidRequest:
        b = site.config.billing
        return await billing(site, r, f"Amount (USD): enter between {b.topup_min_usd} and {b.topup_max_usd}.", 400)
    except (PaymentsDisabled, PaymentProviderError) as exc:
        return await billing(site, r, f"Top-ups are unavailable: {exc}", 503)
    return redirect(url)


ROUTES = {
    ("GET", "/dashboard"): (overview, True),
    ("GET", "/dashboard/keys"): (keys_page, True),
    ("POST", "/dashboard/keys"): (keys_create, True),
    ("GET", "/dashboard/keys/revoke"): (keys_revoke_confirm, True),
    ("POST", "/dashboard/keys/revoke"): (keys_revoke, True),
    ("GET", "/dashboard/usage"): (usage, True),
    ("GET", "/dashboard/usage.csv"): (usage_csv, True),
    ("GET", "/dashboard/billing"): (billing, True),
    ("POST", "/dashboard/billing"): (topup, True),
}
