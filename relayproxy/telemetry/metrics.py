"""A tiny Prometheus registry: counters, gauges and fixed-bucket histograms, rendered as text 0.0.4.

Theory of operation. Pure: no asyncio, no I/O, no clock, no locks (one event loop per process
calls it). Each metric keeps one dict from a tuple of label values to its number(s), so the hot
path is a dict lookup and an add; no string is formatted until ``render()``. A histogram keeps
per-bucket (not cumulative) counts and makes them cumulative at render time.

Label values come from outside (a model name a client sent, say). A metric holds at most
``max_series`` label sets; past that, new label sets are counted under the value ``__overflow__``
for every label, so a client inventing names cannot grow memory or the scrape without bound.
Callers should still pass only known values (configured model names, enum members).

One registry per process: with ``[server] workers = N`` each worker has its own, and
``/metrics`` shows the view of the worker that answered the scrape.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS_S",
    "OVERFLOW",
    "TTFB_BUCKETS_S",
    "Counter",
    "GatewayMetrics",
    "Gauge",
    "Histogram",
    "Registry",
]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
OVERFLOW = "__overflow__"
MAX_SERIES = 2000

#: Whole requests: LLM calls run from well under a second to many minutes.
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Time to the first byte sent to the client (reasoning models can think for minutes).
TTFB_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Labels = tuple[str, ...]


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (), max_series: int = MAX_SERIES):
        if not _valid_name(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _valid_name(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for {name}")
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self.max_series = max_series
        self._overflow: Labels = (OVERFLOW,) * len(self.labelnames)

    def _new_key(self, labels: Labels, size: int) -> Labels:
        """The key for a label set seen for the first time (checked here, off the hot path)."""
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels!r}")
        if not all(isinstance(v, str) for v in labels):
            raise TypeError(f"{self.name}: label values must be str, got {labels!r}")
        return labels if size < self.max_series else self._overflow

    def render_lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        yield from self._samples()

    def _samples(self) -> Iterator[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A number that only goes up (requests, micro-USD charged). ``inc(*labels, by=1)``."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (), max_series: int = MAX_SERIES):
        super().__init__(name, help_text, labelnames, max_series)
        self._values: dict[Labels, float] = {} if self.labelnames else {(): 0}

    def inc(self, *labels: str, by: float = 1) -> None:
        values = self._values
        if labels in values:
            values[labels] += by if by >= 0 else _negative(self.name)
        else:
            key = self._new_key(labels, len(values))
            values[key] = values.get(key, 0) + (by if by >= 0 else _negative(self.name))

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0)

    def _samples(self) -> Iterator[str]:
        for labels, value in self._values.items():
            yield f"{self.name}{_label_text(self.labelnames, labels)} {_number(value)}"


class Gauge(_Metric):
    """A number that goes up and down (active streams). ``inc``, ``dec``, ``set``."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (), max_series: int = MAX_SERIES):
        super().__init__(name, help_text, labelnames, max_series)
        self._values: dict[Labels, float] = {} if self.labelnames else {(): 0}

    def inc(self, *labels: str, by: float = 1) -> None:
        values = self._values
        if labels in values:
            values[labels] += by
        else:
            key = self._new_key(labels, len(values))
            values[key] = values.get(key, 0) + by

    def dec(self, *labels: str, by: float = 1) -> None:
        self.inc(*labels, by=-by)

    def set(self, value: float, *labels: str) -> None:
        key = labels if labels in self._values else self._new_key(labels, len(self._values))
        self._values[key] = value

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0)

    def _samples(self) -> Iterator[str]:
        for labels, value in self._values.items():
            yield f"{self.name}{_label_text(self.labelnames, labels)} {_number(value)}"


class _Series:
    """One label set of a histogram: per-bucket counts (the last one is +Inf), sum."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.total = 0.0


class Histogram(_Metric):
    """Observations sorted into fixed buckets (upper bounds, inclusive). ``observe(value, *labels)``."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Iterable[float] = DURATION_BUCKETS_S,
        max_series: int = MAX_SERIES,
    ):
        super().__init__(name, help_text, labelnames, max_series)
        bounds = tuple(float(b) for b in buckets if b != math.inf)
        if not bounds or list(bounds) != sorted(set(bounds)) or any(math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be distinct, increasing numbers")
        self.buckets = bounds
        self._series: dict[Labels, _Series] = {} if self.labelnames else {(): _Series(len(bounds))}

    def observe(self, value: float, *labels: str) -> None:
        series = self._series.get(labels)
        if series is None:
            key = self._new_key(labels, len(self._series))
            series = self._series.setdefault(key, _Series(len(self.buckets)))
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        series.counts[bisect_left(self.buckets, value)] += 1
        series.total += value

    def count(self, *labels: str) -> int:
        series = self._series.get(labels)
        return sum(series.counts) if series else 0

    def _samples(self) -> Iterator[str]:
        names = (*self.labelnames, "le")
        bounds = [*(_number(b) for b in self.buckets), "+Inf"]
        for labels, series in self._series.items():
            cumulative = 0
            for bound, n in zip(bounds, series.counts, strict=True):
                cumulative += n
                yield f"{self.name}_bucket{_label_text(names, (*labels, bound))} {cumulative}"
            text = _label_text(self.labelnames, labels)
            yield f"{self.name}_sum{text} {_number(series.total)}"
            yield f"{self.name}_count{text} {cumulative}"


class Registry:
    """Metrics in registration order; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: _Metric) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, labelnames)
        self.register(metric)
        return metric

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help_text, labelnames)
        self.register(metric)
        return metric

    def histogram(
        self, name: str, help_text: str, labelnames: Sequence[str] = (), buckets: Iterable[float] = DURATION_BUCKETS_S
    ) -> Histogram:
        metric = Histogram(name, help_text, labelnames, buckets)
        self.register(metric)
        return metric

    def render(self) -> bytes:
        lines = [line for metric in self._metrics.values() for line in metric.render_lines()]
        return ("\n".join(lines) + "\n").encode() if lines else b""


class GatewayMetrics:
    """The gateway's metrics, in one registry owned by whoever builds the Gateway."""

    def __init__(self) -> None:
        reg = self.registry = Registry()
        self.requests = reg.counter(
            "relayproxy_requests_total",
            "Inference requests by client protocol, configured model and outcome (as in usage records).",
            ("protocol", "model", "outcome"),
        )
        self.request_duration = reg.histogram(
            "relayproxy_request_duration_seconds",
            "Inference request duration, from the request head to the last byte handed to the client.",
            ("protocol",),
            DURATION_BUCKETS_S,
        )
        self.time_to_first_byte = reg.histogram(
            "relayproxy_time_to_first_byte_seconds",
            "Time from the request head to the first response body byte handed to the client.",
            ("protocol",),
            TTFB_BUCKETS_S,
        )
        self.active_streams = reg.gauge("relayproxy_active_streams", "Streaming responses in progress.")
        self.upstream_errors = reg.counter(
            "relayproxy_upstream_errors_total",
            "Failures on the upstream leg, by provider and kind (connect, timeout, status, protocol, dropped).",
            ("provider", "kind"),
        )
        self.charged_microusd = reg.counter(
            "relayproxy_charged_microusd_total", "Micro-USD charged to accounts for completed requests."
        )

    def render(self) -> bytes:
        return self.registry.render()


# -- text format helpers ------------------------------------------------------------------------


def _valid_name(name: str) -> bool:
    if not name:
        return False
    head, rest = name[0], name[1:]
    return (head.isascii() and (head.isalpha() or head in "_:")) and all(
        c.isascii() and (c.isalnum() or c in "_:") for c in rest
    )


def _negative(name: str) -> float:
    raise ValueError(f"{name} is a counter: it cannot go down")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(names: tuple[str, ...], values: Labels) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
