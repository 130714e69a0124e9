"""``GET /docs``: the customers' documentation, with this gateway's own base URLs and prices."""

from __future__ import annotations

from relayproxy.billing.pricing import price_list
from relayproxy.dashboard.core import Site
from relayproxy.dashboard.sessions import Request
from relayproxy.dashboard.web import render
from relayproxy.http_types import HttpResponse

__all__ = ["ROUTES"]


async def docs(site: Site, r: Request) -> HttpResponse:
    user = r.session.user if r.session else None
    csrf = r.session.csrf if r.session else ""
    b = site.config.billing
    return render(
        "docs.html",
        base=site.config.dashboard.public_url,
        prices=price_list(site.config),
        low=b.topup_min_usd,
        high=b.topup_max_usd,
        limits=site.config.limits,
        user=user,
        csrf=csrf,
        path=r.req.path,
    )


ROUTES = {("GET", "/docs"): (docs, False)}
