"""Graceful drain (hardening test 39): SIGTERM stops accepting at once, closes idle keep-alive
connections, lets in-flight streams finish within drain_s, cuts the rest at the deadline (they
are recorded, unbilled, their holds released), then the process exits 0. A second signal stops
at once, still with exit status 0 and every request recorded."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.procs import (
    DripUpstream,
    GatewayProcess,
    held_microusd,
    http_get,
    run_cli,
    start_gateway,
    stream_in_thread,
    usage_rows,
    write_config,
)

FAST = "drip-8-100"  # about 0.8 s: finishes within the drain
ENDLESS = "drip-1000-100"  # about 100 s: cut at the drain deadline


@pytest.fixture
def upstream() -> Iterator[DripUpstream]:
    with DripUpstream() as up:
        yield up


def _gateway(tmp_path: Path, upstream: DripUpstream, drain_s: float) -> tuple[GatewayProcess, str]:
    config = tmp_path / "config.toml"
    write_config(config, upstream.port, [FAST, ENDLESS], timeouts={"drain_s": drain_s, "stream_idle_s": 5})
    created = run_cli(config, "keys", "create", "--account", "drain")
    assert created.returncode == 0, created.stderr
    funded = run_cli(config, "credits", "add", "--account", "drain", "--usd", "100")
    assert funded.returncode == 0, funded.stderr
    return start_gateway(config), created.stdout.strip()


def _refused_within(port: int, timeout_s: float) -> float:
    """Seconds until a new connection is refused."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except ConnectionRefusedError:
            return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.005)
    raise AssertionError(f"new connections still accepted {timeout_s}s after SIGTERM")


def test_sigterm_drains_streams_then_exits_0(tmp_path: Path, upstream: DripUpstream) -> None:
    drain_s = 2.5
    gw, key = _gateway(tmp_path, upstream, drain_s)
    try:
        idle = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        assert b" 200 " in http_get(gw.port, "/healthz", idle).split(b"\r\n")[0]
        fast = [stream_in_thread(gw.port, key, FAST) for _ in range(6)]
        endless = [stream_in_thread(gw.port, key, ENDLESS) for _ in range(3)]
        for _, result in fast + endless:
            assert result.started.wait(10)
        assert all(r.status == 200 for _, r in fast + endless)

        t0 = time.monotonic()
        gw.signal(signal.SIGTERM)
        assert _refused_within(gw.port, 2.0) < 0.5
        assert idle.recv(1) == b""  # the idle keep-alive connection was closed, not left to time out
        assert time.monotonic() - t0 < 1.0
        idle.close()

        for thread, result in fast:
            thread.join(10)
            assert result.done, result.data[-300:]
        for thread, result in endless:
            thread.join(10)
            assert not result.done
            assert drain_s - 0.3 < result.ended_at - t0 < drain_s + 2.0
            # Cut at the deadline with an in-band error in the client's dialect, never a clean end.
            assert b'data: {"error"' in result.data and b"shutting down" in result.data, result.data[-300:]
        assert gw.wait(10) == 0
        assert time.monotonic() - t0 < drain_s + 4
    finally:
        gw.close()
    log = gw.log_text()
    assert "SIGTERM received: stopped accepting; draining" in log
    assert "Traceback" not in log
    rows = usage_rows(gw.db)
    assert len(rows) == 9
    assert sorted(str(r["outcome"]) for r in rows if r["model"] == FAST) == ["completed"] * 6
    assert all(r["outcome"] != "completed" and not r["billed"] for r in rows if r["model"] == ENDLESS)
    assert {(r["outcome"], r["reason"]) for r in rows if r["model"] == ENDLESS} == {("gateway_error", "shutdown")}
    assert all(r["cost_microusd"] == 0 for r in rows if r["model"] == ENDLESS)
    assert held_microusd(gw.db) == 0
    assert upstream.wait_idle() == 0
    assert upstream.cut == 3  # the gateway closed the upstream streams it cut


def test_second_signal_stops_at_once_and_still_exits_0(tmp_path: Path, upstream: DripUpstream) -> None:
    gw, key = _gateway(tmp_path, upstream, drain_s=30)
    try:
        streams = [stream_in_thread(gw.port, key, ENDLESS) for _ in range(3)]
        for _, result in streams:
            assert result.started.wait(10)
        t0 = time.monotonic()
        gw.signal(signal.SIGINT)  # Ctrl-C drains like SIGTERM
        time.sleep(0.3)
        assert all(thread.is_alive() for thread, _ in streams)  # draining: streams go on
        gw.signal(signal.SIGTERM)
        assert gw.wait(5) == 0
        assert time.monotonic() - t0 < 3
        for thread, result in streams:
            thread.join(5)
            assert not result.done
    finally:
        gw.close()
    log = gw.log_text()
    assert "SIGINT received: stopped accepting" in log
    assert "SIGTERM received again: stopping now" in log
    rows = usage_rows(gw.db)
    assert len(rows) == 3
    assert not any(r["billed"] for r in rows)
    assert held_microusd(gw.db) == 0


class _FakeServer:
    active_requests = 0

    def __init__(self) -> None:
        self.shutdowns: list[float] = []

    async def shutdown(self, drain_s: float, *, before_cancel: Any = None) -> None:
        self.shutdowns.append(drain_s)


@pytest.mark.parametrize(
    ("events", "shutdowns", "state"),
    [
        (["SIGTERM"], [30.0], "DRAINING"),
        (["SIGTERM", "SIGINT"], [30.0, 0], "STOPPING"),
        (["drain", "SIGINT"], [30.0], "DRAINING"),  # Ctrl-C: the word may arrive before the signal
        (["SIGINT", "drain"], [30.0], "DRAINING"),
        (["drain", "SIGINT", "SIGINT"], [30.0, 0], "STOPPING"),
        (["drain", "drain", "stop"], [30.0, 0], "STOPPING"),
        (["stop", "SIGTERM", "drain"], [0], "STOPPING"),
    ],
)
def test_stop_requests(events: list[str], shutdowns: list[float], state: str) -> None:
    """Signals count (second = at once); the supervisor's `drain` is idempotent, `stop` is at once."""
    from relayproxy.app import _Stopper

    async def run() -> _FakeServer:
        server = _FakeServer()
        async with asyncio.TaskGroup() as tg:
            stopper = _Stopper(server, 30.0, tg)  # type: ignore[arg-type]
            for event in events:
                if event.startswith("SIG"):
                    stopper.on_signal(signal.Signals[event])
                elif event == "drain":
                    stopper.drain("supervisor")
                else:
                    stopper.stop_now("supervisor")
                await asyncio.sleep(0)
        assert stopper.state.name == state
        return server

    assert asyncio.run(run()).shutdowns == shutdowns
