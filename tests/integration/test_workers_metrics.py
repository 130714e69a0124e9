"""With `serve --workers 2` one scrape of /metrics shows the whole service, not one worker's view."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.procs import DripUpstream, http_get, start_gateway, stream_in_thread, write_config

FAST = "drip-6-100"


def _served_by(log: str) -> dict[str, int]:
    """worker index -> inference requests it answered (from the access lines' ``worker`` field)."""
    counts: dict[str, int] = {}
    for line in log.splitlines():
        if line.startswith("{"):
            entry = orjson.loads(line)
            if entry["path"] == "/v1/chat/completions":
                counts[str(entry["worker"])] = counts.get(str(entry["worker"]), 0) + 1
    return counts


def _completed(scrape: bytes) -> float:
    body = scrape.partition(b"\r\n\r\n")[2].decode()
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == "relayproxy_requests_total" and s.labels == {
                "protocol": "openai",
                "model": FAST,
                "outcome": "completed",
            }:
                return s.value
    return 0.0


def test_one_scrape_shows_the_requests_of_every_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # where the supervisor makes its metrics directory
    with DripUpstream() as upstream:
        config = tmp_path / "config.toml"
        write_config(config, upstream.port, [FAST])
        gw = start_gateway(config, "--workers", "2", ready_pattern="(?s)(?=.*worker 0 ready)(?=.*worker 1 ready)")
        try:
            key = gw.stdout.read_text().split()[0]
            total = 0
            for _ in range(10):  # concurrent streams on fresh connections land on both workers
                batch = [stream_in_thread(gw.port, key, FAST) for _ in range(4)]
                for thread, result in batch:
                    thread.join(20)
                    assert result.done, result
                total += len(batch)
                if len(_served_by(gw.log_text())) == 2:
                    break
            served = _served_by(gw.log_text())
            assert sorted(served) == ["0", "1"], gw.log_text()
            assert sum(served.values()) == total
            assert all(n < total for n in served.values())  # neither worker saw them all
            for _ in range(6):  # whichever worker answers the scrape, it shows every request
                assert _completed(http_get(gw.port, "/metrics")) == total
            [metrics_dir] = temp.glob("relayproxy-metrics-*")  # one, fresh for this start
            assert list(metrics_dir.glob("*.db"))  # the workers' values, in files
            gw.signal(signal.SIGTERM)
            assert gw.wait(15) == 0
        finally:
            gw.close()
    assert "Traceback" not in gw.log_text()
    assert list(temp.iterdir()) == []  # removed when the service stopped
