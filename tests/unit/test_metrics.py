"""The metrics registry renders Prometheus text 0.0.4 that an independent parser reads back exactly."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relayproxy.telemetry.metrics import (
    CONTENT_TYPE,
    OVERFLOW,
    TTFB_BUCKETS_S,
    Counter,
    GatewayMetrics,
    Gauge,
    Histogram,
    Registry,
)


def parse(text: bytes) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """family name -> [(sample name, labels, value)], via prometheus_client's own parser."""
    families = text_string_to_metric_families(text.decode())
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in families}


def test_content_type_is_text_format_0_0_4() -> None:
    assert CONTENT_TYPE == b"text/plain; version=0.0.4; charset=utf-8"


def test_gateway_metrics_are_predefined_and_parse() -> None:
    """Every metric the gateway reports is there from the start, with HELP and TYPE lines."""
    m = GatewayMetrics()
    text = m.render()
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert {name: f.type for name, f in families.items()} == {
        "relayproxy_requests": "counter",
        "relayproxy_request_duration_seconds": "histogram",
        "relayproxy_time_to_first_byte_seconds": "histogram",
        "relayproxy_active_streams": "gauge",
        "relayproxy_upstream_errors": "counter",
        "relayproxy_charged_microusd": "counter",
    }
    assert all(f.documentation for f in families.values())
    # Unlabelled metrics show 0 before anything happened; labelled ones show no sample yet.
    assert parse(text)["relayproxy_active_streams"] == [("relayproxy_active_streams", {}, 0.0)]
    assert parse(text)["relayproxy_charged_microusd"] == [("relayproxy_charged_microusd_total", {}, 0.0)]
    assert parse(text)["relayproxy_requests"] == []
    assert text.endswith(b"\n")


def test_counters_gauges_histograms_round_trip() -> None:
    m = GatewayMetrics()
    m.requests.inc("openai", "gpt-5.5", "completed")
    m.requests.inc("openai", "gpt-5.5", "completed")
    m.requests.inc("anthropic", "claude", "client_disconnected")
    m.upstream_errors.inc("openai", "timeout")
    m.charged_microusd.inc(by=1234)
    m.charged_microusd.inc(by=6)
    m.active_streams.inc()
    m.active_streams.inc()
    m.active_streams.dec()
    m.time_to_first_byte.observe(0.3, "openai")
    m.time_to_first_byte.observe(0.025, "openai")  # on a bound: counted in that bucket (le)
    m.time_to_first_byte.observe(1000.0, "openai")  # past the last bound: +Inf only
    out = parse(m.render())
    assert sorted(out["relayproxy_requests"], key=lambda s: s[2]) == [
        (
            "relayproxy_requests_total",
            {"protocol": "anthropic", "model": "claude", "outcome": "client_disconnected"},
            1,
        ),
        ("relayproxy_requests_total", {"protocol": "openai", "model": "gpt-5.5", "outcome": "completed"}, 2),
    ]
    assert out["relayproxy_upstream_errors"] == [
        ("relayproxy_upstream_errors_total", {"provider": "openai", "kind": "timeout"}, 1)
    ]
    assert out["relayproxy_charged_microusd"] == [("relayproxy_charged_microusd_total", {}, 1240)]
    assert out["relayproxy_active_streams"] == [("relayproxy_active_streams", {}, 1)]
    samples = out["relayproxy_time_to_first_byte_seconds"]
    buckets = {float(s[1]["le"]): s[2] for s in samples if s[0].endswith("_bucket")}
    assert list(buckets) == [*TTFB_BUCKETS_S, math.inf]
    assert buckets[0.025] == 1
    assert buckets[0.25] == 1
    assert buckets[0.5] == 2
    assert buckets[300.0] == 2
    assert buckets[math.inf] == 3
    rest = {s[0]: s[2] for s in samples if not s[0].endswith("_bucket")}
    assert rest == {
        "relayproxy_time_to_first_byte_seconds_sum": pytest.approx(1000.325),
        "relayproxy_time_to_first_byte_seconds_count": 3,
    }
    assert all(s[1].get("protocol") == "openai" for s in samples)


def test_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    h = Histogram("h_seconds", "h", buckets=(1, 2, 5))
    for v in (0.5, 1.5, 1.7, 4, 9, 9):
        h.observe(v)
    lines = Registry()
    lines.register(h)
    text = lines.render().decode()
    assert 'h_seconds_bucket{le="1"} 1\n' in text
    assert 'h_seconds_bucket{le="2"} 3\n' in text
    assert 'h_seconds_bucket{le="5"} 4\n' in text
    assert 'h_seconds_bucket{le="+Inf"} 6\n' in text
    assert "h_seconds_count 6\n" in text
    assert "h_seconds_sum 25.7\n" in text
    assert h.count() == 6


@pytest.mark.parametrize(
    "value",
    ['quote " here', "back\\slash", "new\nline", 'all \\ " \n at once', "ünïcødé ✓", "", "{}=,"],
)
def test_label_values_are_escaped(value: str) -> None:
    """Any label value survives the text format: the parser gives back the exact string."""
    reg = Registry()
    c = reg.counter("c_total", 'help with "quotes", back\\slash and\nnewline', ("model",))
    c.inc(value)
    out = parse(reg.render())
    assert out["c"] == [("c_total", {"model": value}, 1)]
    (family,) = text_string_to_metric_families(reg.render().decode())
    assert family.documentation == 'help with "quotes", back\\slash and\nnewline'


def test_series_are_capped_then_counted_as_overflow() -> None:
    """A client sending endless model names cannot grow the registry without bound."""
    c = Counter("c_total", "c", ("model",), max_series=3)
    for i in range(10):
        c.inc(f"m{i}")
    assert c.value("m0") == c.value("m1") == c.value("m2") == 1
    assert c.value("m5") == 0
    assert c.value(OVERFLOW) == 7
    h = Histogram("h", "h", ("p",), buckets=(1,), max_series=1)
    h.observe(0.5, "a")
    h.observe(0.5, "b")
    h.observe(0.5, "c")
    assert h.count("a") == 1
    assert h.count(OVERFLOW) == 2


def test_wrong_label_count_and_negative_counter_are_refused() -> None:
    c = Counter("c_total", "c", ("a", "b"))
    with pytest.raises(ValueError, match="takes labels"):
        c.inc("only-one")
    with pytest.raises(ValueError, match="cannot go down"):
        c.inc("x", "y", by=-1)
    c.inc("x", "y")
    with pytest.raises(ValueError, match="cannot go down"):
        c.inc("x", "y", by=-1)
    assert c.value("x", "y") == 1


@pytest.mark.parametrize("name", ["", "1abc", "has-dash", "sp ace", "é"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        Counter(name, "x")
    with pytest.raises(ValueError, match="invalid"):
        Counter("ok_total", "x", (name,))


def test_reserved_label_names_and_bad_buckets_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid label"):
        Histogram("h", "h", ("le",))
    with pytest.raises(ValueError, match="invalid label"):
        Counter("c", "c", ("__name",))
    with pytest.raises(ValueError, match="buckets"):
        Histogram("h", "h", buckets=(2, 1))
    with pytest.raises(ValueError, match="buckets"):
        Histogram("h", "h", buckets=())
    with pytest.raises(ValueError, match="already registered"):
        reg = Registry()
        reg.counter("c", "c")
        reg.counter("c", "c")


def test_gauge_set_and_special_values_render() -> None:
    reg = Registry()
    g = reg.gauge("g", "g", ("k",))
    g.set(2.5, "a")
    g.set(math.inf, "b")
    g.set(-math.inf, "c")
    g.set(math.nan, "d")
    text = reg.render().decode()
    assert 'g{k="a"} 2.5\n' in text
    assert 'g{k="b"} +Inf\n' in text
    assert 'g{k="c"} -Inf\n' in text
    assert 'g{k="d"} NaN\n' in text
    values = {s[1]["k"]: s[2] for s in parse(reg.render())["g"]}
    assert values["a"] == 2.5
    assert values["b"] == math.inf
    assert math.isnan(values["d"])


def test_empty_registry_renders_nothing() -> None:
    assert Registry().render() == b""
    assert Gauge("g", "g").value() == 0
