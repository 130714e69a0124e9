"""Telemetry: what the gateway tells its operator.

``metrics`` (the ``/metrics`` numbers, on ``prometheus_client``, merged over the workers in its
multi-process mode), ``accesslog`` (one JSON line per request, and the redaction every log line
goes through) and ``logsetup`` (the batched stderr output). It may import ``records``,
``prometheus_client`` and the standard library; nothing here knows a protocol, a provider or the
store.
"""
