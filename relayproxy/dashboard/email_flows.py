"""The pages behind the mailed links, when ``[email]`` is configured: sign-up verification and
the password reset ("Forgot password?" on /login).

- A sign-up gets a verification link (24 h, single use); until it is opened the user cannot log
  in (each login with the right password mails a new link instead), and the sign-up credit is
  granted when it is.
- ``/forgot`` answers the same page for every address, known or not, and at once: the reset mail
  (1 h, single use) is sent after the answer, so neither the page nor its timing tells whether
  an account exists. Requests are limited per address and per client, counted in the store.
- ``/reset?token=…`` sets a new password and ends every session of the user.

Links start with ``[dashboard] public_url``; only a hash of each token is stored
(store/email_tokens.py), and no token reaches a log (the access log drops query strings).
"""

from __future__ import annotations

import asyncio
import logging

from relayproxy.dashboard.core import MIN_PASSWORD, Site, public_form
from relayproxy.dashboard.mail import MailError
from relayproxy.dashboard.sessions import Request, check_token, new_token
from relayproxy.dashboard.web import PageError, form
from relayproxy.http_types import HttpResponse, query_params
from relayproxy.store import passwords
from relayproxy.store.accounts import User

__all__ = ["ROUTES", "confirm_mailbox", "mail_allowed", "send_verification"]

log = logging.getLogger("relayproxy.dashboard")

VERIFY_S = 24 * 3600.0
RESET_S = 3600.0
MAIL_WINDOW_S = 3600.0
MAILS_PER_ADDRESS = 3  # per MAIL_WINDOW_S, reset and verification mails together
MAILS_PER_CLIENT = 20
_GONE = "This link is unknown, already used or expired."
_GONE_RESET = f"{_GONE} Ask for a new one with “Forgot password?” on the login page."
_SENT = "If an account uses this address, a link to reset its password is on its way. It works for one hour."


def _link(site: Site, path: str, token: str) -> str:
    return f"{site.config.dashboard.public_url}{path}?token={token}"


async def mail_allowed(site: Site, email: str, client: str) -> bool:
    """Count one mail request for ``email`` from ``client``; False past either limit."""
    keys = [f"mail-email:{email}", f"mail-ip:{client}"]
    counts = await site.attempts.count(keys, MAIL_WINDOW_S)
    if counts[keys[0]] >= MAILS_PER_ADDRESS or counts[keys[1]] >= MAILS_PER_CLIENT:
        return False
    await site.attempts.record(keys)
    return True


async def send_verification(site: Site, user: User) -> None:
    """Mail ``user`` a new verification link; PageError 503 when the mail cannot be sent."""
    assert site.mailer is not None
    token = new_token()
    await site.tokens.issue(user.id, "verify", token, valid_s=VERIFY_S)
    body = (
        f"Someone (we hope you) signed up at {site.config.dashboard.public_url} with this address.\n\n"
        f"Open this link to confirm it (it works once, for 24 hours):\n\n{_link(site, '/verify', token)}\n\n"
        "If it was not you, ignore this mail: without the link the account stays unusable.\n"
    )
    try:
        await site.mailer.send(user.email, "Confirm your e-mail address", body)
    except MailError:
        raise PageError(
            503,
            "We could not send the mail with your confirmation link just now (the operator's log says why)."
            " Try again later: logging in with your e-mail and password sends a new link.",
        ) from None


async def confirm_mailbox(site: Site, user_id: int) -> None:
    """The user proved they read mail at their address: verified, and the sign-up credit granted
    (once, by the call that verified)."""
    if not await site.accounts.mark_verified(user_id):
        return
    user = await site.accounts.user_by_id(user_id)
    credit = int(site.config.dashboard.signup_credit_usd * 1_000_000)
    if user is not None and credit > 0:
        await site.store.grant(user.account, credit, "sign-up credit ([dashboard] signup_credit_usd)")


def _mail_only(site: Site) -> None:
    if site.mailer is None:
        raise PageError(404, "This gateway sends no mail; ask its operator to reset your password.")


async def verify_get(site: Site, r: Request) -> HttpResponse:
    _mail_only(site)
    user_id = await site.tokens.consume(query_params(r.req.query).get("token", ""), "verify")
    if user_id is None:
        raise PageError(404, f"{_GONE} Log in to get a new one.")
    await confirm_mailbox(site, user_id)
    return public_form(site, r, "login.html", error=None, notice="Your e-mail address is confirmed; log in.")


async def forgot_get(site: Site, r: Request) -> HttpResponse:
    _mail_only(site)
    return public_form(site, r, "forgot.html", error=None)


async def forgot_post(site: Site, r: Request) -> HttpResponse:
    _mail_only(site)
    fields = form(r.req)
    check_token(r.pre_csrf, fields.get("csrf"))
    email = fields.get("email", "").strip().lower()
    if not email or len(email) > 254:
        return public_form(site, r, "forgot.html", 400, error="Enter your e-mail address.")
    if not await mail_allowed(site, email, r.client):
        return public_form(site, r, "forgot.html", 429, error="Too many reset requests; wait an hour.")
    site.spawn(_mail_reset(site, email))
    return public_form(site, r, "forgot.html", error=None, notice=_SENT)


async def _mail_reset(site: Site, email: str) -> None:
    assert site.mailer is not None
    user = await site.accounts.user_by_email(email)
    if user is None or user.disabled:
        return
    token = new_token()
    await site.tokens.issue(user.id, "reset", token, valid_s=RESET_S)
    body = (
        f"Someone (we hope you) asked to reset the password of your account at {site.config.dashboard.public_url}.\n\n"
        f"Open this link to choose a new one (it works once, for one hour):\n\n{_link(site, '/reset', token)}\n\n"
        "If it was not you, ignore this mail: your password stays as it is.\n"
    )
    try:
        await site.mailer.send(user.email, "Reset your password", body)
    except MailError:
        pass  # logged by the mailer; the page said the same as for an unknown address
    except Exception:  # a task of its own: nothing above would see it
        log.exception("the reset mail failed")


async def reset_get(site: Site, r: Request) -> HttpResponse:
    _mail_only(site)
    token = query_params(r.req.query).get("token", "")
    if not token or await site.tokens.peek(token, "reset") is None:
        raise PageError(404, _GONE_RESET)
    return public_form(site, r, "reset.html", token=token, error=None)


async def reset_post(site: Site, r: Request) -> HttpResponse:
    _mail_only(site)
    fields = form(r.req)
    check_token(r.pre_csrf, fields.get("csrf"))
    token, password = fields.get("token", ""), fields.get("password", "")
    if len(password) < MIN_PASSWORD:
        error = f"Choose a password of at least {MIN_PASSWORD} characters."
        return public_form(site, r, "reset.html", 400, token=token, error=error)
    if await site.tokens.peek(token, "reset") is None:  # no hashing work for a dead link
        raise PageError(404, _GONE_RESET)
    pw_hash = await asyncio.to_thread(passwords.hash_password, password)
    user_id = await site.tokens.consume(token, "reset")
    if user_id is None:
        raise PageError(404, _GONE_RESET)
    await site.accounts.set_password(user_id, pw_hash)  # ends every session of the user
    await confirm_mailbox(site, user_id)
    await site.accounts.audit("self", "reset-password", f"user:{user_id}", "password set with a mailed link")
    notice = "Your password is set and every session of your account has ended; log in."
    response = public_form(site, r, "login.html", error=None, notice=notice)
    response.headers.append(site.cookies.clear(site.cookies.session))
    return response


#: (method, path) -> (handler, needs a session)
ROUTES = {
    ("GET", "/verify"): (verify_get, False),
    ("GET", "/forgot"): (forgot_get, False),
    ("POST", "/forgot"): (forgot_post, False),
    ("GET", "/reset"): (reset_get, False),
    ("POST", "/reset"): (reset_post, False),
}
