"""The upstream HTTP/1.1 client: a keep-alive connection pool and the responses it returns.

``pool`` assigns idle connections per origin or opens new ones (``Pool``, the public face);
``connection`` runs one request/response on one connection over ``protocol`` (the asyncio
buffered protocol); ``head`` and ``body`` are the sans-IO parsers of the response head and body;
``response`` is what the caller reads (``UpstreamResponse``). It knows HTTP and nothing of LLMs: it
imports only ``errors``, ``http_types`` and the standard library (``asyncio``, ``ssl``).
"""

from relayproxy.upstream.pool import Pool
from relayproxy.upstream.response import UpstreamResponse

__all__ = ["Pool", "UpstreamResponse"]
