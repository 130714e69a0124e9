"""The gateway: the one place that knows everything, composing the layers below into a handler.

``handler`` authenticates, routes and dispatches each request (``Gateway``); ``inference`` runs
one model call (plan, hold, upstream, retries, unary answer); ``streaming`` relays a stream and
decides its outcome; ``opening`` unwraps an upstream opening run as a task; ``exchange`` is the
per-request state and the one place its usage record is written. It may import every layer below
it (server, upstream, store, policy, billing, telemetry, codecs, relay, sse, config and the
plain-data modules); only ``app`` and ``cli`` import it.
"""
