"""What every page handler gets: the configuration and the store's services, plus page helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from relayproxy.billing.payments import Payments
from relayproxy.config.settings import Config
from relayproxy.dashboard.mail import Mailer
from relayproxy.dashboard.sessions import ABSOLUTE_S, IDLE_S, Cookies, Request, Throttle, new_token
from relayproxy.dashboard.web import PageError, redirect, render
from relayproxy.http_types import HttpResponse
from relayproxy.store.accounts import Accounts, User
from relayproxy.store.email_tokens import EmailTokens
from relayproxy.store.facade import Store
from relayproxy.store.throttle import Attempts

__all__ = ["MIN_PASSWORD", "Site", "nav", "public_form", "user_of"]

MIN_PASSWORD = 10  # characters, for every password a user chooses


@dataclass
class Site:
    config: Config
    store: Store
    accounts: Accounts
    payments: Payments
    cookies: Cookies
    throttle: Throttle
    attempts: Attempts  # mails sent per address (email_flows.py)
    tokens: EmailTokens
    mailer: Mailer | None  # None: no [email] table, so no mail, no verification, no reset links
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def build(cls, config: Config, store: Store) -> Site:
        base = config.dashboard.public_url
        billing = replace(
            config.billing,
            success_url=config.billing.success_url or f"{base}/dashboard/billing?topup=done",
            cancel_url=config.billing.cancel_url or f"{base}/dashboard/billing",
        )
        accounts, payments, attempts = Accounts(store), Payments(billing, store), Attempts(store)
        mailer = Mailer(config.email) if config.email is not None else None
        return cls(
            config, store, accounts, payments, Cookies(config.dashboard), Throttle(attempts), attempts,
            EmailTokens(store), mailer,
        )  # fmt: skip

    def spawn(self, job: Coroutine[None, None, None]) -> None:
        """Run ``job`` after the answer (a reset mail: the page must not wait, or its timing would
        tell a known address from an unknown one); its failure is logged where it happens."""
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def log_in(self, r: Request, user: User) -> HttpResponse:
        """A new session for ``user`` (the one the request came with, if any, ends)."""
        if r.token is not None:
            await self.accounts.end_session(r.token)
        token = new_token()
        await self.accounts.start_session(user.id, token, new_token(), idle_s=IDLE_S, absolute_s=ABSOLUTE_S)
        cookies = [self.cookies.set(self.cookies.session, token), self.cookies.clear(self.cookies.csrf)]
        return redirect("/dashboard", cookies)


def user_of(r: Request) -> User:
    if r.session is None:
        raise PageError(401, "Log in first.")
    return r.session.user


def nav(r: Request) -> dict[str, Any]:
    """The context every logged-in page's layout needs."""
    user = user_of(r)
    assert r.session is not None
    return {"user": user, "csrf": r.session.csrf, "path": r.req.path}


def public_form(site: Site, r: Request, template: str, status: int = 200, **ctx: object) -> HttpResponse:
    """A pre-login form with its double-submit CSRF token (a fresh cookie when there is none)."""
    token = r.pre_csrf or new_token()
    extra = [] if r.pre_csrf else [site.cookies.set(site.cookies.csrf, token)]
    ctx.setdefault("notice", None)
    signup_open = site.config.dashboard.signup == "open"
    return render(
        template, status, extra, csrf=token, user=None, forgot=site.mailer is not None, signup_open=signup_open, **ctx
    )
