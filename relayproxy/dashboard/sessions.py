"""Who is asking: the session cookie, the CSRF checks and the login throttle.

The session cookie holds a random token; the store keeps only its SHA-256 (store/accounts.py).
It is ``HttpOnly`` and ``SameSite=Lax``, and ``Secure`` with the ``__Host-`` prefix when the
dashboard's ``public_url`` is https. Every POST must come from our own origin (``Origin``, or
``Referer`` when a browser sends no ``Origin``) and carry the CSRF token of its session in the
form (``csrf``); forms shown before login (login, sign-up, setup) use a double-submit token in a
cookie of its own instead. Login failures are counted per e-mail and per client address in the
store (store/throttle.py), so every worker and every gateway on one database counts together;
past the limit every attempt is refused until the window has passed.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from relayproxy.config.settings import DashboardConfig
from relayproxy.dashboard.web import PageError, cookies, origin_of
from relayproxy.http_types import HttpRequest, header
from relayproxy.store.accounts import SessionInfo
from relayproxy.store.throttle import Attempts

__all__ = ["ABSOLUTE_S", "IDLE_S", "Cookies", "Request", "Throttle", "check_origin", "check_token"]

IDLE_S = 2 * 3600.0
ABSOLUTE_S = 12 * 3600.0


class Cookies:
    """Names and attributes of the dashboard's two cookies."""

    def __init__(self, config: DashboardConfig) -> None:
        self.secure = config.secure
        prefix = "__Host-" if self.secure else ""
        self.session = prefix + "rp_session"
        self.csrf = prefix + "rp_csrf"
        self._attrs = "; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if self.secure else "")

    def set(self, name: str, value: str) -> tuple[bytes, bytes]:
        return b"set-cookie", f"{name}={value}{self._attrs}".encode()

    def clear(self, name: str) -> tuple[bytes, bytes]:
        return b"set-cookie", f"{name}={self._attrs}; Max-Age=0".encode()


@dataclass(slots=True)
class Request:
    """A page request with the caller's session (None: not logged in)."""

    req: HttpRequest
    token: str | None
    session: SessionInfo | None
    pre_csrf: str | None  # the double-submit token of the pre-login forms (cookie value)
    set_cookies: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def client(self) -> str:
        return self.req.client[0] if self.req.client else "-"


def check_origin(req: HttpRequest, config: DashboardConfig) -> None:
    """403 unless the POST comes from a page of ours (public_url, or the Host it was sent to)."""
    origin = origin_of(req)
    scheme = "https" if config.secure else "http"
    host = header(req.headers, b"host")
    public = urlsplit(config.public_url)
    allowed = {f"{public.scheme}://{public.netloc}".lower()}
    if host is not None:
        allowed.add(f"{scheme}://{host.decode('latin-1')}".lower())
    if origin is None or origin.lower() not in allowed:
        raise PageError(403, "This form was not sent from this site's own pages; reload the page and try again.")


def check_token(expected: str | None, sent: str | None) -> None:
    if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise PageError(403, "The form's security token is missing or stale; reload the page and try again.")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def read_cookie(req: HttpRequest, name: str) -> str | None:
    value = cookies(req).get(name)
    return value if value and len(value) <= 100 else None


class Throttle:
    """At most ``per_email`` failures per e-mail and ``per_client`` per client address in
    ``window_s``, counted in the store (``Attempts``) across workers and gateways."""

    def __init__(self, attempts: Attempts, per_email: int = 5, per_client: int = 20, window_s: float = 900.0) -> None:
        self._attempts = attempts
        self._limits = {"email": per_email, "ip": per_client}
        self._window = window_s

    @staticmethod
    def _keys(email: str, client: str) -> dict[str, str]:
        return {"email": f"login-email:{email}", "ip": f"login-ip:{client}"}

    async def blocked(self, email: str, client: str) -> bool:
        keys = self._keys(email, client)
        counts = await self._attempts.count(list(keys.values()), self._window)
        return any(counts[key] >= self._limits[kind] for kind, key in keys.items())

    async def failed(self, email: str, client: str) -> None:
        await self._attempts.record(list(self._keys(email, client).values()))

    async def succeeded(self, email: str) -> None:
        await self._attempts.clear(self._keys(email, "")["email"])
