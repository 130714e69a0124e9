"""The upstream HTTP/1.1 client: a keep-alive connection pool and the responses it returns."""

from relayproxy.upstream.connection import UpstreamResponse
from relayproxy.upstream.pool import Pool

__all__ = ["Pool", "UpstreamResponse"]
