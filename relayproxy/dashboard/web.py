"""HTTP plumbing for the pages: forms, cookies, security headers, templates, redirects.

Every page answer carries the same security headers: a strict Content-Security-Policy (no inline
script, no third-party origin except Stripe Checkout as a form target, for the Top up redirect),
``frame-ancestors 'none'``, ``Referrer-Policy``, ``X-Content-Type-Options`` and ``Cache-Control:
no-store`` (pages are per user, never for shared caches).
"""

from __future__ import annotations

from importlib import resources
from typing import Any
from urllib.parse import parse_qsl

import jinja2

from relayproxy.http_types import Headers, HttpRequest, HttpResponse, header

__all__ = ["CHECKOUT_ORIGIN", "PageError", "cookies", "form", "page_headers", "redirect", "render", "static_file"]

CHECKOUT_ORIGIN = "https://checkout.stripe.com"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    f"form-action 'self' {CHECKOUT_ORIGIN}; frame-ancestors 'none'; base-uri 'none'"
).encode()
_SECURITY = [
    (b"content-security-policy", _CSP),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]
_STATIC_TYPES = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8"}


class PageError(Exception):
    """An error answered as an HTML page with this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _load(name: str) -> str:
    return resources.files("relayproxy.dashboard").joinpath("templates", name).read_text(encoding="utf-8")


_ENV = jinja2.Environment(
    loader=jinja2.FunctionLoader(_load), autoescape=True, undefined=jinja2.StrictUndefined, auto_reload=False
)
_ENV.filters["when"] = lambda iso, seconds=False: _when(str(iso), seconds)
_ENV.filters["usd"] = lambda micro: f"${int(micro) / 1_000_000:,.6f}".rstrip("0").rstrip(".")


def _when(iso: str, seconds: bool) -> str:
    """``2026-12-07T11:31:48.731Z`` as ``2026-12-07 11:31`` (UTC; ``seconds``: ``…11:31:48``); a day as is."""
    if len(iso) < 16 or iso[10] != "T":
        return iso
    return iso[:10] + " " + iso[11 : 19 if seconds else 16]


def page_headers(content_type: bytes = b"text/html; charset=utf-8") -> Headers:
    return [(b"content-type", content_type), *_SECURITY]


def render(template: str, status: int = 200, extra: Headers | None = None, **context: Any) -> HttpResponse:
    html = _ENV.get_template(template).render(**context).encode()
    return HttpResponse(status, page_headers() + (extra or []), html)


def redirect(location: str, extra: Headers | None = None) -> HttpResponse:
    """A 303 (after a POST the browser GETs the new location)."""
    return HttpResponse(303, [*page_headers(), (b"location", location.encode()), *(extra or [])], b"")


def static_file(name: str) -> HttpResponse | None:
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix not in _STATIC_TYPES or "/" in name or name.startswith("."):
        return None
    try:
        body = resources.files("relayproxy.dashboard").joinpath("static", name).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    headers = [(b"content-type", _STATIC_TYPES[suffix]), (b"x-content-type-options", b"nosniff")]
    return HttpResponse(200, [*headers, (b"cache-control", b"public, max-age=3600")], body)


def form(req: HttpRequest) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (first value wins)."""
    out: dict[str, str] = {}
    for key, value in parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True):
        out.setdefault(key, value)
    return out


def form_all(req: HttpRequest, name: str) -> list[str]:
    return [v for k, v in parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True) if k == name]


def cookies(req: HttpRequest) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in req.headers:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, sep, val = part.strip().partition("=")
                if sep:
                    out.setdefault(key, val)
    return out


def origin_of(req: HttpRequest) -> str | None:
    """The request's Origin header (or, lacking it, the origin of its Referer)."""
    value = header(req.headers, b"origin")
    if value is not None:
        return value.decode("latin-1")
    referer = header(req.headers, b"referer")
    if referer is None:
        return None
    text = referer.decode("latin-1")
    scheme, sep, rest = text.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if sep else None
