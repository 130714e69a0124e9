"""`serve --workers N`: one supervisor, N worker processes on one listening socket.

Rules under test: the first-start key is printed once and one `default` account is created
whatever N is; a worker that dies is replaced; SIGTERM to the supervisor drains every worker
and exits 0; workers do not outlive a killed supervisor; a crash loop makes the supervisor give
up (exit 1) instead of restarting forever.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from relayproxy.workers import RestartPolicy, Supervisor, bind_listener
from tests.integration.procs import (
    DripUpstream,
    GatewayProcess,
    http_get,
    run_cli,
    start_gateway,
    stream_in_thread,
    usage_rows,
    write_config,
)
from tests.integration.test_pg_store import PRICED, _post

FAST = "drip-6-100"


@pytest.fixture
def upstream() -> Iterator[DripUpstream]:
    with DripUpstream() as up:
        yield up


def _start(
    tmp_path: Path, upstream: DripUpstream, workers: int, drain_s: float = 5, new_session: bool = False
) -> GatewayProcess:
    config = tmp_path / "config.toml"
    write_config(config, upstream.port, [FAST], timeouts={"drain_s": drain_s})
    ready = "".join(f"(?=.*worker {i} ready)" for i in range(workers))
    return start_gateway(config, "--workers", str(workers), ready_pattern=f"(?s){ready}", new_session=new_session)


def _worker_pids(log: str) -> dict[int, int]:
    """worker index -> pid of its latest process."""
    return {int(i): int(pid) for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", log)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_until(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_one_key_for_many_workers_and_a_dead_worker_is_replaced(tmp_path: Path, upstream: DripUpstream) -> None:
    gw = _start(tmp_path, upstream, workers=3)
    try:
        out = gw.stdout.read_text().split()
        # The first-start key and the dashboard's one-time setup link, once.
        assert len(out) == 2 and out[0].startswith("rp_") and "/setup?token=" in out[1], out
        with sqlite3.connect(gw.db) as db:
            assert db.execute("SELECT name FROM accounts").fetchall() == [("default",)]
        key = out[0]
        pids = _worker_pids(gw.log_text())
        assert sorted(pids) == [0, 1, 2]
        assert len(set(pids.values())) == 3
        assert gw.proc.pid not in pids.values()

        os.kill(pids[1], signal.SIGKILL)
        assert _wait_until(lambda: _worker_pids(gw.log_text())[1] != pids[1], 5), gw.log_text()
        assert f"worker 1 (pid {pids[1]}) was killed by SIGKILL; starting a new one in 0.5s" in gw.log_text()
        assert _wait_until(lambda: gw.log_text().count("worker 1 ready") == 2, 10), gw.log_text()
        for _ in range(12):  # whichever worker takes it, every request is answered
            assert b" 200 " in http_get(gw.port, "/healthz").split(b"\r\n")[0]
        thread, result = stream_in_thread(gw.port, key, FAST)
        thread.join(10)
        assert result.done  # the key created by the supervisor works in the workers
        new_pids = _worker_pids(gw.log_text())

        gw.signal(signal.SIGTERM)
        assert gw.wait(10) == 0
        assert not any(_alive(pid) for pid in new_pids.values())
    finally:
        gw.close()
    assert "Traceback" not in gw.log_text()
    assert gw.stdout.read_text().split() == out


@pytest.mark.parametrize("to_group", [False, True], ids=["sigterm-supervisor", "ctrl-c-group"])
def test_a_stop_drains_every_worker(tmp_path: Path, upstream: DripUpstream, to_group: bool) -> None:
    """SIGTERM to the supervisor, or SIGINT to the whole process group (a terminal's Ctrl-C: each
    worker gets the signal and the supervisor's word), drains; neither is taken for a second stop."""
    config = tmp_path / "config.toml"
    gw = _start(tmp_path, upstream, workers=2, new_session=to_group)
    try:
        key = gw.stdout.read_text().split()[0]
        streams = [stream_in_thread(gw.port, key, FAST) for _ in range(8)]
        for _, result in streams:
            assert result.started.wait(10)
        t0 = time.monotonic()
        if to_group:
            os.killpg(gw.proc.pid, signal.SIGINT)
        else:
            gw.signal(signal.SIGTERM)
        refused = _wait_until(lambda: _refused(gw.port), 2.0)
        assert refused and time.monotonic() - t0 < 1.0
        for thread, result in streams:
            thread.join(10)
            assert result.done, result.data[-200:]
        assert gw.wait(10) == 0
    finally:
        gw.close()
    assert config.exists()
    log = gw.log_text()
    assert ("SIGINT" if to_group else "SIGTERM") + ": workers drain and stop" in log
    assert "stopping now" not in log
    assert "again" not in log
    assert [r["outcome"] for r in usage_rows(gw.db)] == ["completed"] * 8


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path, upstream: DripUpstream) -> None:
    gw = _start(tmp_path, upstream, workers=2, drain_s=1)
    try:
        pids = _worker_pids(gw.log_text())
        gw.proc.kill()
        gw.proc.wait(5)
        assert _wait_until(lambda: not any(_alive(p) for p in pids.values()), 5), gw.log_text()
        assert _refused(gw.port)
    finally:
        gw.close()
    assert gw.log_text().count("the supervisor's control pipe closed") == 2


def test_crash_loop_makes_the_supervisor_give_up(caplog: pytest.LogCaptureFixture) -> None:
    """Workers that die at once are restarted with backoff, then the supervisor exits 1."""
    policy = RestartPolicy(window_s=60, max_exits=3, first_delay_s=0.01, max_delay_s=0.05)
    started: list[int] = []

    def command(index: int, fd: int, config_path: Path) -> list[str]:
        started.append(index)
        return [sys.executable, "-c", "raise SystemExit(3)"]

    caplog.set_level(logging.INFO, "relayproxy.workers")
    sock = bind_listener("127.0.0.1", 0)
    t0 = time.monotonic()
    status = Supervisor(sock, 2, drain_s=1, policy=policy, command=command).run()
    assert status == 1
    assert time.monotonic() - t0 < 10
    assert sock.fileno() == -1  # closed: nothing listens any more
    assert started.count(0) >= 4 or started.count(1) >= 4
    assert "a crash loop, giving up" in caplog.text
    assert "exited with status 3; starting a new one in 0.01s" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


@pytest.mark.parametrize(
    ("exits", "now", "delay"),
    [
        ([100.0], 100.0, 0.5),
        ([99.0, 100.0], 100.0, 1.0),
        ([97.0, 98.0, 99.0, 100.0], 100.0, 4.0),
        ([96.0, 97.0, 98.0, 99.0, 100.0], 100.0, 8.0),
        ([95.0, 96.0, 97.0, 98.0, 99.0, 100.0], 100.0, None),  # 6 within 60 s: a crash loop
        ([10.0, 20.0, 30.0, 39.0, 40.0, 100.0], 100.0, 0.5),  # old exits do not count
        ([float(t) for t in range(100, 105)], 104.0, 8.0),
    ],
)
def test_restart_policy_backs_off_then_gives_up(exits: list[float], now: float, delay: float | None) -> None:
    assert RestartPolicy().delay(exits, now) == delay


def test_restart_delay_is_capped() -> None:
    policy = RestartPolicy(max_exits=100, max_delay_s=10.0)
    assert policy.delay([float(t) for t in range(50)], 50.0) == 10.0


def test_bad_workers_value_is_a_usage_error(tmp_path: Path, upstream: DripUpstream) -> None:
    config = tmp_path / "config.toml"
    write_config(config, upstream.port, [FAST])
    result = run_cli(config, "serve", "--workers", "0")
    assert result.returncode == 2
    assert "--workers: must be 1 or more" in result.stderr


def test_two_workers_on_sqlite_hold_a_1_usd_key_limit_with_10_usd_of_credit(
    tmp_path: Path, upstream: DripUpstream
) -> None:
    """The key's limit is guarded in the database, so workers sharing it cannot pass it together."""
    config = tmp_path / "config.toml"
    write_config(config, upstream.port, [], billing={"discount": 0.5}, limits={"per_key_concurrency": 1000})
    config.write_text(
        config.read_text()
        + f'[models."{PRICED}"]\nprovider = "drip"\ninput_price = 0.0\noutput_price = 2000.0\n'
        + "max_output_tokens = 1000\n"
    )
    created = run_cli(config, "keys", "create", "--account", "capped", "--limit-usd", "1")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert run_cli(config, "credits", "add", "--account", "capped", "--usd", "10").returncode == 0
    gw = start_gateway(config, "--workers", "2", ready_pattern="(?s)(?=.*worker 0 ready)(?=.*worker 1 ready)")
    try:
        with ThreadPoolExecutor(max_workers=100) as pool:
            statuses = list(pool.map(lambda _: _post(gw.port, key), range(200)))
    finally:
        gw.signal(signal.SIGTERM)
        gw.wait(30)
    assert sorted(set(statuses)) == [200, 402], statuses
    assert statuses.count(200) == 10  # the key's $1.00 / $0.10 each, though the account has $10
    with sqlite3.connect(tmp_path / "relay.db") as db:
        spend, held = db.execute("SELECT spend_microusd, held_microusd FROM api_keys").fetchone()
        pids = {r[0] for r in db.execute("SELECT DISTINCT owner_pid FROM holds")}
    assert (spend, held, pids) == (1_000_000, 0, set())
    checked = run_cli(config, "ledger", "check")
    assert checked.returncode == 0, checked.stdout
