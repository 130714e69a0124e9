"""relayproxy: a self-hosted LLM gateway.

A request arrives at the h11 server (``server``), is composed by the ``gateway`` (auth, the
``policy`` decisions, the credit hold in the ``store``), goes out through the keep-alive client
(``upstream``) in the provider's protocol, and comes back through a ``relay`` (the upstream's own
bytes, or ``codecs`` decode -> ``ir`` -> encode) in the caller's; one usage record per inference
request settles the ledger. Imports point down only; docs/architecture.md has the layers and the
walk of one request.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
