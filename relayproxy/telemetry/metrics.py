"""The gateway's Prometheus metrics, kept by ``prometheus_client`` and rendered as text 0.0.4.

``prometheus_client`` holds the numbers: in one process, in memory; with ``[server] workers = N``
in its multi-process mode, where every worker writes its values to files in the directory
``PROMETHEUS_MULTIPROC_DIR`` names (the supervisor makes a fresh one per service start, marks
each dead worker, and removes it at the end), so a scrape answered by any worker shows the whole
service: counters and histograms summed over every worker that ran, ``active_streams`` over the
live ones.

This module adds what the gateway needs on top: label sets are capped (a metric holds at most
``max_series`` of them; past that, new ones are counted under the value ``__overflow__`` for every
label, so a client inventing model names cannot grow memory or the scrape without bound), names,
labels and buckets are checked when a metric is made, and the text is written with integral
numbers as integers (``6``, not ``6.0``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS_S",
    "MULTIPROC_ENV",
    "OVERFLOW",
    "TTFB_BUCKETS_S",
    "Counter",
    "GatewayMetrics",
    "Gauge",
    "Histogram",
    "Registry",
    "mark_worker_dead",
]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
OVERFLOW = "__overflow__"
MAX_SERIES = 2000
#: The variable ``prometheus_client`` reads at import to select its multi-process mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Whole requests: LLM calls run from well under a second to many minutes.
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Time to the first byte sent to the client (reasoning models can think for minutes).
TTFB_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Labels = tuple[str, ...]


def mark_worker_dead(pid: int, directory: str) -> None:
    """A worker of the service ended: its live gauges leave the sums (its counters stay)."""
    mark_process_dead(pid, directory)


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
        self.impl: Any = self._make()  # the prometheus_client metric (registered by Registry)
        self._children: dict[Labels, Any] = {} if self.labelnames else {(): self.impl}

    def _make(self) -> Any:
        raise NotImplementedError

    def _child(self, labels: Labels) -> Any:
        """The series for ``labels`` (the hot path: one dict lookup once it exists)."""
        child = self._children.get(labels)
        if child is None:
            key = self._new_key(labels, len(self._children))
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.impl.labels(*key)
        return child

    def _new_key(self, labels: Labels, size: int) -> Labels:
        """The key for a label set seen for the first time (checked here, off the hot path)."""
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels!r}")
        if not all(isinstance(v, str) for v in labels):
            raise TypeError(f"{self.name}: label values must be str, got {labels!r}")
        return labels if size < self.max_series else self._overflow

    def _read(self, labels: Labels, sample_name: str) -> float:
        """This process's value of one series (0 when it was never touched)."""
        child = self._children.get(labels)
        if child is None:
            return 0
        for family in child.collect():
            for sample in family.samples:
                if sample.name == sample_name:
                    return float(sample.value)
        return 0


class Counter(_Metric):
    """A number that only goes up (requests, micro-USD charged). ``inc(*labels, by=1)``."""

    kind = "counter"

    def _make(self) -> Any:
        return prometheus_client.Counter(self.name, self.help, self.labelnames, registry=None)

    def inc(self, *labels: str, by: float = 1) -> None:
        if by < 0:
            raise ValueError(f"{self.name} is a counter: it cannot go down")
        self._child(labels).inc(by)

    def value(self, *labels: str) -> float:
        return self._read(labels, self.name.removesuffix("_total") + "_total")


class Gauge(_Metric):
    """A number that goes up and down (active streams). ``inc``, ``dec``, ``set``. With workers,
    the scrape shows the sum over the live workers."""

    kind = "gauge"

    def _make(self) -> Any:
        return prometheus_client.Gauge(
            self.name, self.help, self.labelnames, registry=None, multiprocess_mode="livesum"
        )

    def inc(self, *labels: str, by: float = 1) -> None:
        self._child(labels).inc(by)

    def dec(self, *labels: str, by: float = 1) -> None:
        self._child(labels).dec(by)

    def set(self, value: float, *labels: str) -> None:
        self._child(labels).set(value)

    def value(self, *labels: str) -> float:
        return self._read(labels, self.name)


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
        bounds = tuple(float(b) for b in buckets if b != math.inf)
        if not bounds or list(bounds) != sorted(set(bounds)) or any(math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be distinct, increasing numbers")
        self.buckets = bounds
        super().__init__(name, help_text, labelnames, max_series)

    def _make(self) -> Any:
        return prometheus_client.Histogram(
            self.name, self.help, self.labelnames, registry=None, buckets=(*self.buckets, math.inf)
        )

    def observe(self, value: float, *labels: str) -> None:
        self._child(labels).observe(value)

    def count(self, *labels: str) -> int:
        return int(self._read(labels, self.name + "_count"))


class Registry:
    """Metrics by name; ``render()`` is the body of ``GET /metrics``: this process's numbers, or
    in multi-process mode (``PROMETHEUS_MULTIPROC_DIR`` set when the process started) every
    worker's, merged by ``prometheus_client``."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._local = CollectorRegistry(auto_describe=True)
        self._multiproc_dir = os.environ.get(MULTIPROC_ENV) or None

    def register(self, metric: _Metric) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        self._local.register(metric.impl)

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

    def collect(self) -> Iterable[Metric]:
        if self._multiproc_dir is not None:
            merged: Iterable[Metric] = MultiProcessCollector(None, self._multiproc_dir).collect()
            return merged
        return self._local.collect()

    def render(self) -> bytes:
        lines = [line for family in self.collect() for line in _family_lines(family)]
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


def _family_lines(family: Metric) -> Iterator[str]:
    """One family in text format 0.0.4 (``_created`` samples left out: nothing here uses them)."""
    name = family.name + "_total" if family.type == "counter" else family.name
    yield f"# HELP {name} {_escape_help(family.documentation)}"
    yield f"# TYPE {name} {family.type}"
    for sample in family.samples:
        if sample.name.endswith("_created"):
            continue
        labels = {k: _bound(v) if k == "le" else v for k, v in sample.labels.items()}
        yield f"{sample.name}{_label_text(tuple(labels), tuple(labels.values()))} {_number(sample.value)}"


def _bound(le: str) -> str:
    return "+Inf" if le == "+Inf" else _number(float(le))


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
