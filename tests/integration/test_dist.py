"""`make dist`: dist/relayproxy.pyz runs on a bare Python >= 3.11, with no installed packages.

Built here into a temporary folder (pip fetches the pinned dependency wheels: the registry or
pip's cache must be reachable), then run with `-I -S`: isolated mode and no site-packages at all,
so every import must come from the archive. Deselect with `-m "not dist"`; `make test-dist` runs
only this module.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from relayproxy import __version__
from tests.integration.procs import http_get

pytestmark = pytest.mark.dist
ROOT = Path(__file__).resolve().parent.parent.parent


def bare_python() -> str:
    """A system interpreter rather than the venv's (its site-packages are not used either way)."""
    for candidate in ("/usr/bin/python3", getattr(sys, "_base_executable", ""), sys.executable):
        if candidate and os.path.exists(candidate):
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info >= (3, 11))"], capture_output=True, text=True
            )
            if probe.stdout.strip() == "True":
                return candidate
    pytest.skip("no Python >= 3.11 interpreter outside the venv")


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "relayproxy.pyz"
    build = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "build_pyz.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    return out


def run_pyz(pyz: Path, cache: Path, *args: str, stderr: IO[bytes] | int) -> subprocess.Popen[bytes]:
    """Run the archive on a bare interpreter: isolated mode, no site-packages, a minimal environment."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RELAYPROXY_CACHE_DIR": str(cache)}
    return subprocess.Popen(
        [bare_python(), "-I", "-S", str(pyz), *args], env=env, stdout=subprocess.PIPE, stderr=stderr
    )


def test_version_from_a_bare_interpreter(pyz: Path, tmp_path: Path) -> None:
    proc = run_pyz(pyz, tmp_path / "cache", "--version", stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.decode().strip() == f"relayproxy {__version__}"
    (site,) = (tmp_path / "cache").glob("site-*")
    assert (site / ".complete").exists()
    assert (site / "orjson").is_dir()
    assert (site / "uvloop").is_dir()


def test_serve_with_workers_answers_healthz_then_stops(pyz: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[server]\nlisten = "127.0.0.1:0"\ndatabase = "relay.db"\n\n'
        '[providers.p]\nprotocol = "openai"\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "RP_DIST_UNSET"\n\n'
        '[models.m]\nprovider = "p"\ninput_price = 1.0\noutput_price = 2.0\n\n[timeouts]\ndrain_s = 1\n'
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = run_pyz(pyz, tmp_path / "cache", "serve", "--config", str(config), "--workers", "2", stderr=err)
    try:
        deadline = time.monotonic() + 30
        while not re.search(r"(?s)(?=.*worker 0 ready)(?=.*worker 1 ready)", log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text()).group(1))  # type: ignore[union-attr]
        for _ in range(4):
            assert b'{"status":"ok"}' in http_get(port, "/healthz")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.decode().split()[0].startswith("rp_")  # the first-start key, from the supervisor
    assert "Traceback" not in log.read_text()
    assert log.read_text().count("event loop: uvloop\n") == 2  # the compiled loop, bundled, in each worker
