"""Runs real client programs (Node scripts, Python scripts in .venv-clients, coding-agent CLIs)
against a `relayproxy serve` process, in parallel, one key per run so each run's usage records
can be told apart in `relayproxy usage --json`.

A run prints JSON lines; every stdout line is stamped with its arrival time here, so a client's
own output also shows whether the gateway streamed (its first delta well before its end)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relayproxy.app import create_key
from relayproxy.config.settings import load_config
from relayproxy.store.backends import open_store_for
from tests.e2e.conftest import Gateway, start_gateway
from tests.fakes.scripted import HOLD_S, TOOL_MARKER, TRIGGER, Holds
from tests.fakes.upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "tests" / "clients" / "js"
PY = ROOT / "tests" / "clients" / "py"
CLIENTS_VENV = ROOT / os.environ.get("RELAYPROXY_CLIENTS_VENV", ".venv-clients")
UPSTREAMS = {"oa": "openai", "an": "anthropic", "ge": "gemini"}
PROMPT = "Say hello."
TOOL_PROMPT = f"{TRIGGER} What is the weather in Paris?"
#: A buffering gateway delivers the first delta and the end together; the fake upstream holds its
#: finish event HOLD_S, so a streamed answer's first delta comes at least about that much earlier.
MIN_GAP_MS = HOLD_S * 1000 / 2
PARALLEL = int(os.environ.get("RELAYPROXY_CLIENTS_PARALLEL", "6"))


@dataclass
class Run:
    """One client program run: its JSON stdout lines with arrival times (ms), stderr, exit code."""

    name: str
    up: str
    key_id: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    returncode: int | None = None
    lines: list[tuple[float, Any]] = field(default_factory=list)
    stderr: str = ""

    def case(self, name: str) -> dict[str, Any]:
        """One case ("text" or "tool") of the JSON object a script printed last."""
        objects = [obj for _, obj in self.lines if isinstance(obj, dict)]
        assert objects, f"{self.name}/{self.up} printed no JSON (exit {self.returncode}): {self.stderr[-2000:]}"
        last: dict[str, Any] = objects[-1]
        assert "error" not in last, f"{self.name}/{self.up} failed: {last['error'][-3000:]}"
        found: dict[str, Any] = last[name]
        assert "error" not in found, f"{self.name}/{self.up} {name} case failed: {found['error'][-3000:]}"
        return found

    def assert_released(self, holds: int) -> None:
        """The fake upstream held `holds` streams for this run, each released by the client's
        first delta rather than by the hold's timeout: deltas reached the client before the end."""
        assert Holds.held.get(self.token, 0) == holds, Holds.held.get(self.token)
        assert Holds.timed_out.get(self.token, 0) == 0, "a held stream was not released: no delta before the end"


def need_node() -> str:
    """The node binary, with the matrix's packages installed (skipped outside CI when missing)."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node not found (apt-get install nodejs npm)"
    elif not (JS / "node_modules").is_dir():
        problem = "tests/clients/js/node_modules missing (make clients-install)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}: .ci/run and make install set these up")
        pytest.skip(problem)
    assert node is not None
    return node


def node_major() -> int:
    out = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.strip().lstrip("v").split(".")[0])


def need_clients_venv() -> Path:
    python = CLIENTS_VENV / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{python} missing under CI: make clients-install creates it")
        pytest.skip(f"{python} missing (make clients-install)")
    return python


@pytest.fixture(scope="module")
def matrix_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway and fake upstream for a module; its models route to all three protocols."""
    fake = FakeUpstream().start()
    # Held streams wait for their client (a Python client's first chunk can take a while on a
    # loaded machine): the e2e suite's 2 s upstream idle timeout would cut them.
    timeouts = {"upstream_first_byte_s": 30, "stream_idle_s": 30}
    gw = start_gateway(tmp_path_factory.mktemp("clients"), fake, timeouts=timeouts)
    yield gw
    gw.process.terminate()
    gw.process.wait(10)
    fake.stop()


def make_keys(gw: Gateway, labels: list[str]) -> dict[str, tuple[str, str]]:
    """One key per label in the funded account `test`, created in one store session: {label: (id, secret)}."""

    async def go() -> dict[str, tuple[str, str]]:
        store = await open_store_for(load_config(gw.config))
        try:
            return {label: await create_key(store, "test", label) for label in labels}
        finally:
            await store.close()

    return asyncio.run(go())


Launch = Callable[[Gateway, str, str, Path], tuple[list[str], dict[str, str], Path]]


def run_all(gw: Gateway, cells: list[tuple[str, str, Launch]], tmp: Path, timeout_s: float = 180) -> dict[str, Run]:
    """Run every (client, upstream, launch) cell, PARALLEL at a time; {"client/up": Run}."""
    keys = make_keys(gw, [f"{name}/{up}" for name, up, _ in cells])

    def one(cell: tuple[str, str, Launch]) -> Run:
        name, up, launch = cell
        key_id, secret = keys[f"{name}/{up}"]
        run = Run(name, up, key_id)
        work = tmp / f"{name}-{up}".replace("/", "_")
        work.mkdir(parents=True, exist_ok=True)
        argv, env, cwd = launch(gw, secret, f"{up}-agent", work)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "ANTHROPIC", "GEMINI", "GOOGLE"))}
        env = {
            **base, "HOME": str(work), "RELAY_BASE_URL": gw.base_url, "RELAY_KEY": secret,
            "RELAY_MODEL": f"{up}-agent", "RELAY_TOOL_MARKER": TOOL_MARKER, "NO_COLOR": "1",
            "RELAY_PROMPT": f"{PROMPT} [run:{run.token}]", "RELAY_TOOL_PROMPT": f"{TOOL_PROMPT} [run:{run.token}]",
            "RELAY_RELEASE_URL": f"{gw.upstream.base_url}/release/{run.token}", **env,
        }  # fmt: skip
        return _execute(run, argv, env, cwd, timeout_s)

    with ThreadPoolExecutor(PARALLEL) as pool:
        runs = list(pool.map(one, cells))
    return {f"{r.name}/{r.up}": r for r in runs}


def _execute(run: Run, argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float) -> Run:
    err: list[bytes] = []
    pipes = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with subprocess.Popen(argv, cwd=cwd, env=env, **pipes) as proc:  # type: ignore[call-overload]
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        reader.start()
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            for raw in proc.stdout:
                now = time.monotonic() * 1000
                try:
                    run.lines.append((now, json.loads(raw)))
                except ValueError:
                    run.lines.append((now, raw.decode(errors="replace")))
            run.returncode = proc.wait()
        finally:
            timer.cancel()
            reader.join(10)
    run.stderr = b"".join(err).decode(errors="replace")
    return run


def usage_rows(gw: Gateway) -> list[dict[str, Any]]:
    """Every usage record, read the way an operator does: `relayproxy usage --json`."""
    out = gw.cli("usage", "--json", "--limit", "100000")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def assert_billed(rows: list[dict[str, Any]], run: Run, expected: int) -> None:
    """The run's requests (its own key) are `expected` streamed records, each completed and billed."""
    mine = [r for r in rows if r["key_id"] == run.key_id]
    assert len(mine) == expected, [(r["outcome"], r["http_status"], r["reason"]) for r in mine]
    for r in mine:
        assert (r["outcome"], r["billed"], r["stream"]) == ("completed", True, True), r
        assert r["cost_microusd"] > 0 and r["model"] == f"{run.up}-agent", r


def assert_streamed(first_ms: float | None, end_ms: float, what: str) -> None:
    assert first_ms is not None, f"{what}: no delta before the end"
    assert end_ms - first_ms >= MIN_GAP_MS, f"{what}: first delta {end_ms - first_ms:.0f} ms before the end (buffered?)"
