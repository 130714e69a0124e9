"""The upstream HTTP/1.1 client: a keep-alive connection pool and the responses it returns."""

from relayproxy.upstream.pool import Pool
from relayproxy.upstream.response import UpstreamResponse

__all__ = ["Pool", "UpstreamResponse"]
