"""The dashboard's entry point: which paths are pages, who is asking, and the POST checks.

``Dashboard.handle`` answers every page request: it finds the caller's session, refuses a POST
that is not from our own pages (403, nothing changed), sends a visitor without a session to the
login page, and turns a ``PageError`` into an HTML error page. No page error leaks a secret.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from relayproxy.config.settings import Config
from relayproxy.dashboard.account import ROUTES as ACCOUNT_ROUTES
from relayproxy.dashboard.admin import ROUTES as ADMIN_ROUTES
from relayproxy.dashboard.auth import ROUTES as AUTH_ROUTES
from relayproxy.dashboard.core import Site
from relayproxy.dashboard.docs import ROUTES as DOCS_ROUTES
from relayproxy.dashboard.email_flows import ROUTES as EMAIL_ROUTES
from relayproxy.dashboard.sessions import IDLE_S, Request, check_origin, check_token, read_cookie
from relayproxy.dashboard.web import PageError, form, redirect, render, static_file
from relayproxy.http_types import HttpRequest, HttpResponse
from relayproxy.store.facade import Store

__all__ = ["Dashboard"]

log = logging.getLogger("relayproxy.dashboard")

Page = Callable[..., Awaitable[HttpResponse]]
_ROUTES: dict[tuple[str, str], tuple[Page, bool]] = {
    **AUTH_ROUTES, **EMAIL_ROUTES, **ACCOUNT_ROUTES, **ADMIN_ROUTES, **DOCS_ROUTES,
}  # fmt: skip
_PATHS = frozenset(path for _, path in _ROUTES)
_STATIC = "/static/"
_OWN_PREFIXES = (_STATIC, "/dashboard/", "/admin/")  # an unknown page here is an HTML 404, not the API's


class Dashboard:
    """The pages, over the gateway's config and store."""

    def __init__(self, config: Config, store: Store) -> None:
        self._site = Site.build(config, store)

    @staticmethod
    def owns(path: str) -> bool:
        return path in _PATHS or path.startswith(_OWN_PREFIXES)

    async def handle(self, req: HttpRequest) -> HttpResponse:
        if req.path.startswith(_STATIC):
            if req.method == "GET":
                found = static_file(req.path.removeprefix(_STATIC))
                if found is not None:
                    return found
            return _error(404, "Not found.", None)
        r: Request | None = None
        try:
            r = await self._request(req)
            return await self._dispatch(r)
        except PageError as err:
            return _error(err.status, err.message, r)

    def price_page(self, prices: dict[str, Any]) -> HttpResponse:
        """``GET /models`` for a browser: the price list in the dashboard's style."""
        return render("prices.html", prices=prices, base=self._site.config.dashboard.public_url, user=None, csrf="")

    async def _request(self, req: HttpRequest) -> Request:
        site = self._site
        token = read_cookie(req, site.cookies.session)
        session = await site.accounts.session(token, idle_s=IDLE_S) if token else None
        return Request(req, token if session else None, session, read_cookie(req, site.cookies.csrf))

    async def _dispatch(self, r: Request) -> HttpResponse:
        route = _ROUTES.get((r.req.method, r.req.path))
        if route is None:
            raise PageError(405 if r.req.path in _PATHS else 404, "Not found.")
        page, needs_session = route
        if r.req.method == "POST":
            check_origin(r.req, self._site.config.dashboard)
            if needs_session:
                if r.session is None:
                    raise PageError(403, "Your session has ended; log in again.")
                check_token(r.session.csrf, form(r.req).get("csrf"))
        elif needs_session and r.session is None:
            return redirect("/login")
        return await page(self._site, r)


def _error(status: int, message: str, r: Request | None) -> HttpResponse:
    context: dict[str, Any] = {"user": None, "csrf": ""}
    if r is not None and r.session is not None:
        context = {"user": r.session.user, "csrf": r.session.csrf}
    return render("error.html", status, code=status, message=message, **context)
