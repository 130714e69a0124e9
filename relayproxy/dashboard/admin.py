"""The operator's page: accounts and balances, grant credit, users, disable a user, revoke any key.

Every action is a ledger entry (grants, with the admin's e-mail in its note) or an audit record
naming the admin who did it.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import relayproxy.dashboard.queries as queries
from relayproxy.dashboard.core import Site, nav, user_of
from relayproxy.dashboard.sessions import Request
from relayproxy.dashboard.web import PageError, form, redirect, render
from relayproxy.http_types import HttpResponse, query_params

__all__ = ["ROUTES"]


def _admin(r: Request) -> str:
    user = user_of(r)
    if not user.admin:
        raise PageError(403, "This page is for the gateway's operators.")
    return user.email


async def admin_page(site: Site, r: Request, error: str | None = None) -> HttpResponse:
    _admin(r)
    return render(
        "admin.html",
        400 if error else 200,
        error=error,
        accounts=await queries.accounts_with_balances(site.store),
        users=await site.accounts.list_users(),
        keys=[k for k in await site.store.list_keys() if k.revoked_at is None],
        audit=await site.accounts.audit_log(20),
        **nav(r),
    )


async def grant(site: Site, r: Request) -> HttpResponse:
    who, fields = _admin(r), form(r.req)
    account = fields.get("account", "")
    if await site.store.balance(account) is None:
        raise PageError(404, "No such account.")
    try:
        amount = Decimal(fields.get("amount_usd", "").strip().removeprefix("$"))
        if not amount.is_finite() or amount <= 0 or amount > 1_000_000 or amount != amount.quantize(Decimal("0.01")):
            raise InvalidOperation
    except InvalidOperation:
        return await admin_page(site, r, "Amount (USD): enter a positive amount in whole cents, such as 10 or 2.50.")
    micro = int(amount * 1_000_000)
    await site.store.grant(account, micro, f"granted by {who} on the admin page")
    await site.accounts.audit(who, "credit.grant", f"account:{account}", f"{amount} USD")
    return redirect("/admin")


async def disable(site: Site, r: Request) -> HttpResponse:
    who, text = _admin(r), form(r.req).get("user_id", "")
    target = await site.accounts.user_by_id(int(text)) if text.isdigit() else None
    if target is None:
        raise PageError(404, "No such user.")
    if target.email == who:
        return await admin_page(site, r, "You cannot disable yourself.")
    await site.accounts.disable_user(target.id)
    await site.accounts.audit(who, "user.disable", f"user:{target.id}", target.email)
    return redirect("/admin")


async def revoke_confirm(site: Site, r: Request) -> HttpResponse:
    """What revoking the key means, with the real Revoke (a POST) and Cancel."""
    _admin(r)
    key_id = query_params(r.req.query).get("key_id", "")
    key = next((k for k in await site.store.list_keys() if k.id == key_id and k.revoked_at is None), None)
    if key is None:
        raise PageError(404, "No such active key.")
    return render("revoke.html", key=key, owner=key.account, action="/admin/revoke", back="/admin", **nav(r))


async def revoke(site: Site, r: Request) -> HttpResponse:
    who, key_id = _admin(r), form(r.req).get("key_id", "")
    if not await site.store.revoke_key(key_id):
        raise PageError(404, "No such active key.")
    await site.accounts.audit(who, "key.revoke", f"key:{key_id}", "on the admin page")
    return redirect("/admin")


ROUTES = {
    ("GET", "/admin"): (admin_page, True),
    ("POST", "/admin/grant"): (grant, True),
    ("POST", "/admin/disable"): (disable, True),
    ("GET", "/admin/revoke"): (revoke_confirm, True),
    ("POST", "/admin/revoke"): (revoke, True),
}
