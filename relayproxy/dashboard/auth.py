"""Setup (the first admin), sign-up, login, logout and the settings page."""

from __future__ import annotations

import asyncio

from relayproxy.dashboard.core import Site, nav, user_of
from relayproxy.dashboard.sessions import Request, check_token, new_token
from relayproxy.dashboard.web import PageError, form, redirect, render
from relayproxy.http_types import HttpResponse, query_params
from relayproxy.store import passwords
from relayproxy.store.accounts import token_hash

__all__ = ["ROUTES"]

MIN_PASSWORD = 10


def _credentials(r: Request) -> tuple[str, str]:
    fields = form(r.req)
    check_token(r.pre_csrf, fields.get("csrf"))
    email, password = fields.get("email", "").strip().lower(), fields.get("password", "")
    return email, password


def _valid_new(email: str, password: str) -> str | None:
    if "@" not in email or len(email) > 254 or any(c.isspace() for c in email):
        return "Enter a valid e-mail address."
    if len(password) < MIN_PASSWORD:
        return f"Choose a password of at least {MIN_PASSWORD} characters."
    return None


def _public_form(site: Site, r: Request, template: str, status: int = 200, **ctx: object) -> HttpResponse:
    """A pre-login form with its double-submit CSRF token (a fresh cookie when there is none)."""
    token = r.pre_csrf or new_token()
    extra = [] if r.pre_csrf else [site.cookies.set(site.cookies.csrf, token)]
    signup_open = site.config.dashboard.signup == "open"
    return render(template, status, extra, csrf=token, user=None, signup_open=signup_open, **ctx)


async def setup_get(site: Site, r: Request) -> HttpResponse:
    token = query_params(r.req.query).get("token", "")
    if not token or not await site.accounts.setup_token_valid(token):
        raise PageError(404, "This setup link is unknown, already used or expired.")
    return _public_form(site, r, "setup.html", token=token, error=None)


async def setup_post(site: Site, r: Request) -> HttpResponse:
    email, password = _credentials(r)
    token = form(r.req).get("token", "")
    problem = _valid_new(email, password)
    if problem:
        return _public_form(site, r, "setup.html", 400, token=token, error=problem)
    if not await site.accounts.consume_setup_token(token):
        raise PageError(404, "This setup link is unknown, already used or expired.")
    pw_hash = await asyncio.to_thread(passwords.hash_password, password)
    user = await site.accounts.create_user(email, "default", pw_hash, admin=True)
    if user is None:
        raise PageError(409, "A user with this e-mail exists already.")
    await site.accounts.audit(email, "setup", f"user:{user.id}", "admin user created with the setup link")
    return await site.log_in(r, user)


async def signup_get(site: Site, r: Request) -> HttpResponse:
    if site.config.dashboard.signup != "open":
        raise PageError(404, "Sign-up is closed on this gateway; ask its operator for an account.")
    return _public_form(site, r, "signup.html", error=None)


async def signup_post(site: Site, r: Request) -> HttpResponse:
    if site.config.dashboard.signup != "open":
        raise PageError(404, "Sign-up is closed on this gateway; ask its operator for an account.")
    email, password = _credentials(r)
    problem = _valid_new(email, password)
    if problem is None and await site.accounts.user_by_email(email) is not None:
        problem = "This e-mail has an account already; log in instead."
    if problem:
        return _public_form(site, r, "signup.html", 400, error=problem)
    account = email
    if await site.store.balance(account) is not None:  # an operator's account of that name: never join it
        account = f"{email}-{new_token()[:6]}"
    pw_hash = await asyncio.to_thread(passwords.hash_password, password)
    user = await site.accounts.create_user(email, account, pw_hash)
    if user is None:
        return _public_form(site, r, "signup.html", 400, error="This e-mail has an account already; log in instead.")
    credit = int(site.config.dashboard.signup_credit_usd * 1_000_000)
    if credit > 0:
        await site.store.grant(account, credit, "sign-up credit ([dashboard] signup_credit_usd)")
    return await site.log_in(r, user)


async def login_get(site: Site, r: Request) -> HttpResponse:
    return _public_form(site, r, "login.html", error=None)


async def login_post(site: Site, r: Request) -> HttpResponse:
    email, password = _credentials(r)
    if site.throttle.blocked(email, r.client):
        return _public_form(site, r, "login.html", 429, error="Too many failed attempts; wait 15 minutes.")
    user = await site.accounts.user_by_email(email) if email else None
    if user is None or user.disabled:
        await asyncio.to_thread(passwords.verify_dummy, password)
        ok, rehash = False, False
    else:
        ok, rehash = await asyncio.to_thread(passwords.verify, user.password_hash, password)
    if not ok or user is None:
        site.throttle.failed(email, r.client)
        return _public_form(site, r, "login.html", 401, error="Wrong e-mail or password.")
    site.throttle.succeeded(email)
    if rehash:
        await site.accounts.rehash(user.id, await asyncio.to_thread(passwords.hash_password, password))
    return await site.log_in(r, user)


async def logout_post(site: Site, r: Request) -> HttpResponse:
    if r.token is not None:
        await site.accounts.end_session(r.token)
    return redirect("/login", [site.cookies.clear(site.cookies.session)])


async def settings_get(site: Site, r: Request, message: str | None = None, status: int = 200) -> HttpResponse:
    return render("settings.html", status, message=message, **nav(r))


async def password_post(site: Site, r: Request) -> HttpResponse:
    user, fields = user_of(r), form(r.req)
    ok, _ = await asyncio.to_thread(passwords.verify, user.password_hash, fields.get("current", ""))
    new = fields.get("password", "")
    if not ok:
        return await settings_get(site, r, "The current password is wrong.", 400)
    if len(new) < MIN_PASSWORD:
        return await settings_get(site, r, f"Choose a password of at least {MIN_PASSWORD} characters.", 400)
    assert r.token is not None
    pw_hash = await asyncio.to_thread(passwords.hash_password, new)
    await site.accounts.set_password(user.id, pw_hash, keep_session=token_hash(r.token))
    return await settings_get(site, r, "Password changed; your other sessions were ended.")


async def sessions_post(site: Site, r: Request) -> HttpResponse:
    assert r.token is not None
    await site.accounts.end_other_sessions(user_of(r).id, r.token)
    return await settings_get(site, r, "Your other sessions were ended.")


#: (method, path) -> (handler, needs a session)
ROUTES = {
    ("GET", "/setup"): (setup_get, False),
    ("POST", "/setup"): (setup_post, False),
    ("GET", "/signup"): (signup_get, False),
    ("POST", "/signup"): (signup_post, False),
    ("GET", "/login"): (login_get, False),
    ("POST", "/login"): (login_post, False),
    ("POST", "/logout"): (logout_post, True),
    ("GET", "/dashboard/settings"): (settings_get, True),
    ("POST", "/dashboard/settings/password"): (password_post, True),
    ("POST", "/dashboard/settings/sessions"): (sessions_post, True),
}
