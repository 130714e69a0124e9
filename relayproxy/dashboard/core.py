"""What every page handler gets: the configuration and the store's services, plus page helpers."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from relayproxy.billing.payments import Payments
from relayproxy.config.settings import Config
from relayproxy.dashboard.sessions import ABSOLUTE_S, IDLE_S, Cookies, Request, Throttle, new_token
from relayproxy.dashboard.web import PageError, redirect
from relayproxy.http_types import HttpResponse
from relayproxy.store.accounts import Accounts, User
from relayproxy.store.facade import Store

__all__ = ["Site"]


@dataclass
class Site:
    config: Config
    store: Store
    accounts: Accounts
    payments: Payments
    cookies: Cookies
    throttle: Throttle = field(default_factory=Throttle)

    @classmethod
    def build(cls, config: Config, store: Store) -> Site:
        base = config.dashboard.public_url
        billing = replace(
            config.billing,
            success_url=config.billing.success_url or f"{base}/dashboard/billing?topup=done",
            cancel_url=config.billing.cancel_url or f"{base}/dashboard/billing",
        )
        return cls(config, store, Accounts(store), Payments(billing, store), Cookies(config.dashboard))

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
