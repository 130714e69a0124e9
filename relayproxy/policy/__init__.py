"""Policy: the decisions a request needs, as plain values in and plain values out.

Owns routing (``router``: path and model name -> endpoint and route), planning (``plan``: a decoded
request, its route and hold -> a ``Plan``), retries before the first byte (``retries``), per-key
admission counters (``limits``) and the local token estimate (``tokens``). It does no I/O: it may
import ``errors``, ``ir``, ``http_types``, ``config`` and ``codecs``, never a socket, the store or
the upstream client.
"""
