"""The caller-facing HTTP/1.1 server: an h11 connection loop, its limits and timeouts.

``listener`` accepts sockets and owns the connections' task group and drain; ``connection`` runs
one h11 connection (keep-alive, backpressure, timeouts) and calls the handler once per request;
``writer`` writes its responses (whole or streamed, with backpressure); ``host`` is the small
interface between the listener and its connections, both ways; ``limits`` holds the
byte-level request checks. It knows HTTP and nothing of LLMs, providers or
billing: it imports only ``http_types``, ``errors`` (the error each refusal means), ``config`` (the
defaults of its limits) and ``h11``.
"""
