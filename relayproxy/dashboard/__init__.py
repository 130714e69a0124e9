"""The customers' web dashboard: sign-up, login, keys, usage, billing, settings and the operator's
admin page, server-rendered (Jinja2, autoescaped) and served by the gateway's own HTTP server."""

from relayproxy.dashboard.site import Dashboard

__all__ = ["Dashboard"]
