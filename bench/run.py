"""relayproxy benchmark suite: the issue-6 budget, measured against a fast fake upstream on loopback.

    .venv/bin/python bench/run.py            # what `make bench` runs
    .venv/bin/python bench/run.py --profile  # also profiles the gateway (py-spy) during unary c=32

Starts ``bench/fake_upstream.py``, a real ``python -m relayproxy serve`` (auth on, a usage record per
request, credit holds whenever the build has them) and runs each scenario twice with the same load:
straight at the fake upstream ("direct") and through the gateway. What the gateway adds is the
difference. Prints one table, marks each budget line PASS/FAIL and writes everything as JSON to
``bench/results/latest.json``. See bench/README.md for what every number means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import profiling

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
WORK = RESULTS / "run"
GIL_ONLY = False  # --profile-gil
PY = sys.executable
UPSTREAM_KEY = "sk-bench-upstream-0001"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The issue-6 budget, per gateway core, billing on.
BUDGET_RPS_C32 = 6000.0
BUDGET_ADDED_P50_MS = 0.35
BUDGET_ADDED_P99_MS = 1.5
BUDGET_TTFB_C1_MS = 0.5
BUDGET_TTFB_C32_MS = 2.0
BUDGET_CPU_PASSTHROUGH_MS = 0.6
BUDGET_CPU_TRANSLATED_MS = 1.5
BUDGET_RSS_IDLE_MB = 40.0
BUDGET_RSS_OPEN_MB = 100.0


def say(msg: str = "", stream: TextIO = sys.stderr) -> None:
    stream.write(msg + "\n")
    stream.flush()


# -- process facts (/proc) -----------------------------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) in seconds of a whole process (every thread), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # fields 14 and 15 of stat(5)


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    osname = platform.platform()
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        osname = next((ln.split("=", 1)[1].strip().strip('"') for ln in f if ln.startswith("PRETTY_NAME=")), osname)
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gb, 1),
        "os": osname,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "relayproxy"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


# -- pinning and tools ---------------------------------------------------------------------------


@dataclass
class Pinning:
    gateway: set[int] | None = None
    load: set[int] | None = None
    note: str = "not pinned"

    @classmethod
    def plan(cls, enabled: bool) -> Pinning:
        if not enabled:
            return cls(note="pinning disabled (--no-pin)")
        if not hasattr(os, "sched_getaffinity"):
            return cls(note="not pinned: no sched_setaffinity on this platform")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(note=f"not pinned: only {len(cpus)} core available")
        pin = cls({cpus[-1]}, set(cpus[:-1]))
        try:
            os.sched_setaffinity(0, pin.load)  # the fake upstream and load generators inherit this
        except OSError as exc:
            return cls(note=f"not pinned: {exc}")
        pin.note = f"gateway on core {cpus[-1]}; load generator, fake upstream and this script on {sorted(pin.load)}"
        return pin

    def gateway_preexec(self) -> Callable[[], None] | None:
        cpus = self.gateway
        if cpus is None:
            return None
        return lambda: os.sched_setaffinity(0, cpus)

    @property
    def load_threads(self) -> int:
        return len(self.load) if self.load else 1


def ensure_wrk(choice: str) -> str | None:
    """wrk's path, installing Debian's package when missing and root; None means the Python fallback."""
    if choice == "python":
        return None
    found = shutil.which("wrk")
    if found or choice == "python":
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("bench: wrk missing; installing Debian's package (apt-get install -y wrk)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "timeout": 180}
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if subprocess.run(cmd, **quiet).returncode != 0:  # type: ignore[call-overload]
                subprocess.run(["apt-get", "update", "-qq"], **quiet)  # type: ignore[call-overload]
                subprocess.run(cmd, **quiet)  # type: ignore[call-overload]
        found = shutil.which("wrk")
    if found is None:
        if choice == "wrk":
            raise SystemExit("bench: --loadgen wrk, but wrk is not installed and could not be installed")
        say("bench: wrk unavailable; using the Python load generator (bench/loadgen.py) for unary load")
    return found


def wrk_version(wrk: str | None) -> str:
    if wrk is None:
        return "bench/loadgen.py (Python fallback)"
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0].split(" Copyright")[0].strip() if text else "wrk"


# -- the system under test -----------------------------------------------------------------------


def config_text(upstream_port: int, event_loop: str = "auto") -> str:
    def model(name: str, provider: str, upstream: str) -> str:
        return (
            f'[models."{name}"]\nprovider = "{provider}"\nupstream_model = "{upstream}"\n'
            "input_price = 1.0\ncached_input_price = 0.5\noutput_price = 2.0\nmax_output_tokens = 4096\n"
        )

    base = f"http://127.0.0.1:{upstream_port}"
    return f"""# written by bench/run.py
[server]
listen = "127.0.0.1:0"
workers = 1
database = "relay.db"
event_loop = "{event_loop}"

[providers.fake-openai]
protocol = "openai"
base_url = "{base}/v1"
api_key_env = "RELAYPROXY_BENCH_UPSTREAM_KEY"

[providers.fake-anthropic]
protocol = "anthropic"
base_url = "{base}"
api_key_env = "RELAYPROXY_BENCH_UPSTREAM_KEY"

{model("bench-oa", "fake-openai", "oa")}
{model("bench-an", "fake-anthropic", "an")}
{model("bench-hold", "fake-openai", "hold-open")}
[timeouts]
stream_idle_s = 600

[limits]
per_key_concurrency = 100000
per_key_rpm = 0
free_aborts_per_hour = 1000000
"""


def body(model: str, *, stream: bool, anthropic: bool = False) -> bytes:
    obj: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Say hello in one sentence."}]}
    if anthropic:
        obj["max_tokens"] = 256
    if stream:
        obj["stream"] = True
    return json.dumps(obj, separators=(",", ":")).encode()


def responses_body(model: str) -> bytes:
    """A streamed OpenAI Responses request (the same prompt), as the openai SDK and Codex send it."""
    obj = {"model": model, "input": "Say hello in one sentence.", "stream": True, "store": False}
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class Target:
    """Where one side of a scenario sends its load."""

    url: str
    body_file: Path
    auth: str  # the Authorization header value ('' for none)
    expect: str | None = None  # a stream's terminator


@dataclass
class System:
    fake: subprocess.Popen[bytes]
    gateway: subprocess.Popen[bytes]
    fake_port: int
    gateway_port: int
    key: str
    credits: str
    log: Path
    floor: subprocess.Popen[bytes] | None = None  # bench/floor.py: the bare forwarder, on the gateway's core
    floor_port: int = 0
    targets: dict[str, Target] = field(default_factory=dict)

    def stop(self) -> None:
        procs = [p for p in (self.gateway, self.fake, self.floor) if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "relayproxy", "--config", str(config), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def start_fake() -> tuple[subprocess.Popen[bytes], int]:
    return _start_child([str(BENCH / "fake_upstream.py"), "--port", "0"], "PORT ", "the fake upstream")


def start_floor(fake_port: int, pin: Pinning) -> tuple[subprocess.Popen[bytes], int]:
    # On the gateway's core: the same machine share as the gateway.
    args = [str(BENCH / "floor.py"), "--upstream-port", str(fake_port)]
    return _start_child(args, "listening ", "the floor forwarder", pin.gateway_preexec())


def _start_child(
    args: list[str], ready: str, what: str, preexec: Callable[[], None] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a helper process that prints ``<ready><port>`` once it listens; (process, port)."""
    proc = subprocess.Popen([PY, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=preexec)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith(ready):
        proc.kill()
        raise SystemExit(f"bench: {what} did not start: {line!r}")
    return proc, int(line.split()[1])


def grant_credits(config: Path) -> str:
    """Credit for the bench account when the build has the `credits` command (billing on or not)."""
    if cli(config, "credits", "--help").returncode != 0:
        return "no `credits` command in this build"
    added = cli(config, "credits", "add", "--account", "bench", "--usd", "1000000", "--note", "bench")
    if added.returncode != 0:
        raise SystemExit(f"bench: credits add failed: {added.stderr.strip()}")
    return "granted 1,000,000 USD to account 'bench'"


def start_system(pin: Pinning, event_loop: str = "auto") -> System:
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    fake, fake_port = start_fake()
    gateway: subprocess.Popen[bytes] | None = None
    try:
        config = WORK / "config.toml"
        config.write_text(config_text(fake_port, event_loop))
        created = cli(config, "keys", "create", "--account", "bench", "--label", "bench")
        if created.returncode != 0:
            raise SystemExit(f"bench: keys create failed: {created.stderr.strip()}")
        key = created.stdout.strip().splitlines()[-1]
        credits = grant_credits(config)
        log = WORK / "gateway.log"
        env = {**os.environ, "RELAYPROXY_BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
        with log.open("wb") as err:
            gateway = subprocess.Popen(
                [PY, "-m", "relayproxy", "serve", "--config", str(config)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                preexec_fn=pin.gateway_preexec(),  # the script is single-threaded: preexec is safe
            )
        port = wait_port(log, gateway)
    except BaseException:
        for proc in (gateway, fake):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        raise
    system = System(fake, gateway, fake_port, port, key, credits, log)
    system.floor, system.floor_port = start_floor(fake_port, pin)
    write_targets(system)
    return system


def wait_port(log: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"bench: the gateway exited:\n{log.read_text()}")
        time.sleep(0.05)
    raise SystemExit(f"bench: the gateway did not start:\n{log.read_text()}")


def gateway_event_loop(s: System) -> str:
    """The loop the gateway reported at start-up ("event loop: uvloop")."""
    found = re.search(r"event loop: (\w+)", s.log.read_text())
    return found.group(1) if found else "unknown"


def write_targets(s: System) -> None:
    fake, gw = f"http://127.0.0.1:{s.fake_port}", f"http://127.0.0.1:{s.gateway_port}"
    floor = f"http://127.0.0.1:{s.floor_port}"
    bodies = {
        "direct-unary": body("oa", stream=False),
        "direct-oa-stream": body("oa", stream=True),
        "direct-an-stream": body("an", stream=True, anthropic=True),
        "gw-unary": body("bench-oa", stream=False),
        "gw-oa-stream": body("bench-oa", stream=True),
        "gw-an-stream": body("bench-an", stream=True),
        "gw-rs-stream": responses_body("bench-an"),
        "gw-hold": body("bench-hold", stream=True),
    }
    for name, data in bodies.items():
        (WORK / f"{name}.json").write_bytes(data)
    bearer = f"Bearer {s.key}"
    fake_auth = f"Bearer {UPSTREAM_KEY}"
    s.targets = {
        "direct-unary": Target(f"{fake}/v1/chat/completions", WORK / "direct-unary.json", fake_auth),
        "gw-unary": Target(f"{gw}/v1/chat/completions", WORK / "gw-unary.json", bearer),
        "direct-oa-stream": Target(f"{fake}/v1/chat/completions", WORK / "direct-oa-stream.json", fake_auth, "[DONE]"),
        "gw-oa-stream": Target(f"{gw}/v1/chat/completions", WORK / "gw-oa-stream.json", bearer, "[DONE]"),
        "direct-an-stream": Target(f"{fake}/v1/messages", WORK / "direct-an-stream.json", fake_auth, "message_stop"),
        "gw-an-stream": Target(f"{gw}/v1/chat/completions", WORK / "gw-an-stream.json", bearer, "[DONE]"),
        "gw-rs-stream": Target(f"{gw}/v1/responses", WORK / "gw-rs-stream.json", bearer, "response.completed"),
        "gw-hold": Target(f"{gw}/v1/chat/completions", WORK / "gw-hold.json", bearer),
        "floor-unary": Target(f"{floor}/v1/chat/completions", WORK / "direct-unary.json", fake_auth),
        "floor-oa-stream": Target(f"{floor}/v1/chat/completions", WORK / "direct-oa-stream.json", fake_auth, "[DONE]"),
        "floor-an-stream": Target(f"{floor}/v1/messages", WORK / "direct-an-stream.json", fake_auth, "message_stop"),
    }


# -- load ----------------------------------------------------------------------------------------


@dataclass
class Load:
    wrk: str | None
    threads: int
    duration: float
    warmup: float

    def unary(self, t: Target, c: int, duration: float | None = None) -> dict[str, Any]:
        d = self.duration if duration is None else duration
        if self.wrk is None:
            return self.python("unary", t, c, d)
        env = {**os.environ, "BENCH_BODY_FILE": str(t.body_file), "BENCH_AUTH": t.auth}
        threads = max(1, min(self.threads, c))
        seconds = max(1, round(d))  # wrk takes whole seconds
        cmd = [self.wrk, "-t", str(threads), "-c", str(c), "-d", f"{seconds}s", "--timeout", "10s"]
        out = subprocess.run([*cmd, "-s", str(BENCH / "wrk.lua"), t.url], capture_output=True, text=True, env=env)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if line is None:
            raise SystemExit(f"bench: wrk failed:\n{out.stdout}\n{out.stderr}")
        raw = json.loads(line.split(" ", 1)[1])
        lat = {k: round(v / 1000, 4) for k, v in raw["latency_us"].items()}
        elapsed = raw["duration_us"] / 1e6
        errors = {k: v for k, v in raw["errors"].items() if v}
        return {
            "tool": "wrk",
            "concurrency": c,
            "completed": raw["completed"],
            "elapsed_s": elapsed,
            "rate": round(raw["completed"] / elapsed, 2),
            "latency_ms": lat,
            "ttfb_ms": {},
            "errors": errors,
        }

    def python(self, mode: str, t: Target, c: int, duration: float) -> dict[str, Any]:
        cmd = [PY, str(BENCH / "loadgen.py"), mode, t.url, "-c", str(c), "-d", str(duration)]
        cmd += ["--body-file", str(t.body_file)]
        if t.auth:
            cmd += ["-H", f"authorization: {t.auth}"]
        if t.expect:
            cmd += ["--expect", t.expect]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"bench: loadgen failed:\n{out.stderr}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        result["tool"] = "bench/loadgen.py"
        if mode == "unary":
            result["ttfb_ms"] = {}  # the whole body is one write: TTFB is the latency, so not shown
        return result

    def run(self, mode: str, t: Target, c: int, duration: float | None = None) -> dict[str, Any]:
        d = self.duration if duration is None else duration
        return self.unary(t, c, d) if mode == "unary" else self.python(mode, t, c, d)


@contextlib.contextmanager
def measure(pid: int, fake_pid: int, settle: float = 0.3) -> Iterator[dict[str, float]]:
    """Gateway (and fake upstream) CPU seconds and wall time across the block, plus a settle pause
    after it so work done after the last response (usage records) is counted."""
    m: dict[str, float] = {}
    (user0, sys0), fake0, t0 = cpu_times(pid), cpu_seconds(fake_pid), time.perf_counter()
    yield m
    wall = time.perf_counter() - t0
    time.sleep(settle)
    user1, sys1 = cpu_times(pid)
    m["user_s"], m["sys_s"] = user1 - user0, sys1 - sys0
    m["cpu_s"] = m["user_s"] + m["sys_s"]
    m["fake_cpu_s"] = cpu_seconds(fake_pid) - fake0
    m["wall_s"] = wall


# -- scenarios -----------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    mode: str  # unary | stream
    concurrency: int
    direct: str  # target names
    gateway: str
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def floor(self) -> str:
        return self.direct.replace("direct-", "floor-")


def scenarios() -> list[Scenario]:
    out = [Scenario(f"unary c={c}", "unary", c, "direct-unary", "gw-unary") for c in (1, 32, 128)]
    for label, direct, gw in (
        ("stream passthrough", "direct-oa-stream", "gw-oa-stream"),
        ("stream translated", "direct-an-stream", "gw-an-stream"),
        ("responses translated", "direct-an-stream", "gw-rs-stream"),  # /v1/responses -> Anthropic
    ):
        out += [Scenario(f"{label} c={c}", "stream", c, direct, gw) for c in (1, 32)]
    return out


def delta(a: dict[str, float], b: dict[str, float], key: str) -> float | None:
    return round(b[key] - a[key], 4) if key in a and key in b else None


def run_scenario(s: System, load: Load, sc: Scenario) -> None:
    direct_t, gw_t = s.targets[sc.direct], s.targets[sc.gateway]
    load.run(sc.mode, direct_t, sc.concurrency, load.warmup)
    direct = load.run(sc.mode, direct_t, sc.concurrency)
    load.run(sc.mode, gw_t, sc.concurrency, load.warmup)
    with measure(s.gateway.pid, s.fake.pid) as m:
        gw = load.run(sc.mode, gw_t, sc.concurrency)
    ops = max(gw["completed"], 1)
    sc.result = {
        "scenario": sc.name,
        "mode": sc.mode,
        "concurrency": sc.concurrency,
        "direct": direct,
        "gateway": gw,
        "added_ms": {
            "latency_p50": delta(direct["latency_ms"], gw["latency_ms"], "p50"),
            "latency_p99": delta(direct["latency_ms"], gw["latency_ms"], "p99"),
            "ttfb_p50": delta(direct["ttfb_ms"], gw["ttfb_ms"], "p50"),
            "ttfb_p99": delta(direct["ttfb_ms"], gw["ttfb_ms"], "p99"),
        },
        "gateway_cpu_s": round(m["cpu_s"], 3),
        "gateway_user_s": round(m["user_s"], 3),
        "gateway_sys_s": round(m["sys_s"], 3),
        "gateway_cpu_ms_per_op": round(m["cpu_s"] * 1000 / ops, 4),
        "gateway_core_busy": round(m["cpu_s"] / m["wall_s"], 3),
        "fake_upstream_core_busy": round(m["fake_cpu_s"] / m["wall_s"], 3),
        "rss_mb": round(rss_mb(s.gateway.pid), 1),
    }
    if s.floor is not None:  # the same load through the bare forwarder, on the same core
        floor_t = s.targets[sc.floor]
        load.run(sc.mode, floor_t, sc.concurrency, load.warmup)
        with measure(s.floor.pid, s.fake.pid) as fm:
            floor = load.run(sc.mode, floor_t, sc.concurrency)
        sc.result["floor"] = floor
        sc.result["floor_cpu_ms_per_op"] = round(fm["cpu_s"] * 1000 / max(floor["completed"], 1), 4)
        sc.result["floor_added_ms"] = {
            "latency_p50": delta(direct["latency_ms"], floor["latency_ms"], "p50"),
            "ttfb_p50": delta(direct["ttfb_ms"], floor["ttfb_ms"], "p50"),
        }
    errs = sum(gw["errors"].values()) + sum(direct["errors"].values())
    floor_cpu = sc.result.get("floor_cpu_ms_per_op")
    say(
        f"  {sc.name:<26} gateway {gw['rate']:>9.1f}/s  direct {direct['rate']:>9.1f}/s  "
        f"cpu/op {sc.result['gateway_cpu_ms_per_op']:.3f} ms"
        + (f"  (floor {floor_cpu:.3f} ms)" if floor_cpu is not None else "")
        + (f"  ERRORS {errs}" if errs else "")
    )


def run_open_streams(s: System, n: int) -> dict[str, Any]:
    """``n`` streams held open by the upstream; the gateway's RSS before, while open, and after."""
    t = s.targets["gw-hold"]
    before = rss_mb(s.gateway.pid)
    cmd = [PY, str(BENCH / "loadgen.py"), "hold", t.url, "-c", str(n), "--body-file", str(t.body_file)]
    cmd += ["-H", f"authorization: {t.auth}", "--grace", "30"]
    cpu0 = cpu_seconds(s.gateway.pid)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    opened = json.loads(proc.stdout.readline() or "{}")
    time.sleep(1.0)
    peak = rss_mb(s.gateway.pid)
    time.sleep(1.0)
    peak = max(peak, rss_mb(s.gateway.pid))
    cpu_open = cpu_seconds(s.gateway.pid) - cpu0
    proc.stdin.write("\n")
    proc.stdin.flush()
    closed = json.loads(proc.stdout.readline() or "{}")
    proc.wait(30)
    time.sleep(1.5)
    return {
        "streams": n,
        "open": opened.get("open", 0),
        "failed": opened.get("failed", n),
        "open_s": opened.get("open_s"),
        "ttfb_ms": opened.get("ttfb_ms", {}),
        "rss_before_mb": round(before, 1),
        "rss_open_mb": round(peak, 1),
        "rss_added_mb": round(peak - before, 1),
        "rss_after_close_mb": round(rss_mb(s.gateway.pid), 1),
        "gateway_cpu_ms_per_stream_opened": round(cpu_open * 1000 / max(opened.get("open", 0), 1), 4),
        "closed": closed,
    }


def warm_up(s: System, load: Load) -> None:
    warm = (("gw-unary", "unary"), ("gw-oa-stream", "stream"), ("gw-an-stream", "stream"), ("gw-rs-stream", "stream"))
    for name, mode in warm:
        r = load.python(mode, s.targets[name], 2, 0.5)
        if r["errors"] or not r["completed"]:
            raise SystemExit(f"bench: the gateway fails {name}: {r}\n(log: {s.log})\n{s.log.read_text()[-3000:]}")


def usage_summary(db: Path) -> dict[str, Any]:
    """Usage records the run left, by outcome (read-only, after the gateway stopped)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            rows = con.execute("SELECT outcome, COUNT(*) FROM usage GROUP BY outcome").fetchall()
            out: dict[str, Any] = {"by_outcome": dict(rows), "total": sum(n for _, n in rows)}
            with contextlib.suppress(sqlite3.Error):
                out["billed"] = con.execute("SELECT COUNT(*) FROM usage WHERE billed").fetchone()[0]
            return out
    except sqlite3.Error as exc:
        return {"error": str(exc)}


# -- budget and table ----------------------------------------------------------------------------


@dataclass
class Check:
    line: str
    value: float | None
    limit: float
    higher_is_better: bool = False

    @property
    def ok(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def cell(self, short: str) -> str:
        return f"{short} {'PASS' if self.ok else 'FAIL'}"

    def as_json(self) -> dict[str, Any]:
        op = ">=" if self.higher_is_better else "<="
        return {"line": self.line, "value": self.value, "limit": f"{op} {self.limit}", "pass": self.ok}


def budget(by_name: dict[str, dict[str, Any]], memory: dict[str, Any]) -> dict[str, list[tuple[str, Check]]]:
    """Budget checks keyed by the table row they belong to (short label, check)."""

    def added(name: str, key: str) -> float | None:
        return by_name[name]["added_ms"][key] if name in by_name else None

    def cpu(name: str) -> float | None:
        return by_name[name]["gateway_cpu_ms_per_op"] if name in by_name else None

    rps = by_name["unary c=32"]["gateway"]["rate"] if "unary c=32" in by_name else None
    checks: dict[str, list[tuple[str, Check]]] = {
        "unary c=1": [
            (
                f"+p50≤{BUDGET_ADDED_P50_MS:g}",
                Check("added latency p50, unary c=1 (ms)", added("unary c=1", "latency_p50"), BUDGET_ADDED_P50_MS),
            ),
            (
                f"+p99≤{BUDGET_ADDED_P99_MS:g}",
                Check("added latency p99, unary c=1 (ms)", added("unary c=1", "latency_p99"), BUDGET_ADDED_P99_MS),
            ),
        ],
        "unary c=32": [
            (f"≥{BUDGET_RPS_C32:g}/s", Check("requests/s, unary c=32", rps, BUDGET_RPS_C32, higher_is_better=True))
        ],
    }
    for label, cpu_limit in (("passthrough", BUDGET_CPU_PASSTHROUGH_MS), ("translated", BUDGET_CPU_TRANSLATED_MS)):
        for c, ttfb_limit in ((1, BUDGET_TTFB_C1_MS), (32, BUDGET_TTFB_C32_MS)):
            name = f"stream {label} c={c}"
            checks[name] = [
                (f"+TTFB≤{ttfb_limit:g}", Check(f"added TTFB p50, {name} (ms)", added(name, "ttfb_p50"), ttfb_limit)),
                (f"CPU≤{cpu_limit:g}", Check(f"gateway CPU per 20-chunk stream, {name} (ms)", cpu(name), cpu_limit)),
            ]
    checks["idle"] = [
        (f"≤{BUDGET_RSS_IDLE_MB:g}MB", Check("gateway RSS idle (MB)", memory.get("rss_idle_mb"), BUDGET_RSS_IDLE_MB)),
    ]
    checks["open streams"] = [
        (
            f"+≤{BUDGET_RSS_OPEN_MB:g}MB",
            Check(
                f"gateway RSS added by {memory.get('streams', 0):,} open streams (MB)",
                memory.get("rss_added_mb"),
                BUDGET_RSS_OPEN_MB,
            ),
        ),
    ]
    return checks


def fmt(v: float | None, width: int, digits: int = 3) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"


def verdicts(checks: list[tuple[str, Check]]) -> str:
    """The budget cell of a row: each line's short label and its verdict."""
    return "  ".join(f"{label} {'PASS' if c.ok else 'FAIL'}" for label, c in checks)


def render_table(results: list[dict[str, Any]], memory: dict[str, Any], checks: dict[str, list[Any]]) -> str:
    head = (
        f"{'scenario':<26}{'req/s':>9}{'direct/s':>10}{'p50':>8}{'p99':>8}{'+p50':>8}{'+p99':>8}"
        f"{'TTFB50':>8}{'+TTFB50':>9}{'+TTFB99':>9}{'CPU/op':>8}{'floor/s':>9}{'floorCPU':>9}{'core%':>6}"
        f"{'RSS MB':>7}{'err':>5}  budget"
    )
    lines = [head, "-" * (len(head) + 30)]
    for r in results:
        gw, d, a = r["gateway"], r["direct"], r["added_ms"]
        errs = sum(gw["errors"].values()) + sum(d["errors"].values())
        busy = r["gateway_core_busy"] * 100
        lines.append(
            f"{r['scenario']:<26}{gw['rate']:>9.1f}{d['rate']:>10.1f}"
            f"{fmt(gw['latency_ms'].get('p50'), 8, 2)}{fmt(gw['latency_ms'].get('p99'), 8, 2)}"
            f"{fmt(a['latency_p50'], 8)}{fmt(a['latency_p99'], 8)}"
            f"{fmt(gw['ttfb_ms'].get('p50'), 8)}{fmt(a['ttfb_p50'], 9)}{fmt(a['ttfb_p99'], 9)}"
            f"{fmt(r['gateway_cpu_ms_per_op'], 8)}{fmt(r.get('floor', {}).get('rate'), 9, 1)}"
            f"{fmt(r.get('floor_cpu_ms_per_op'), 9)}{busy:>6.0f}{r['rss_mb']:>7.1f}{errs:>5}"
            f"  {verdicts(checks.get(r['scenario'], []))}"
        )
    pad = " " * (9 + 10 + 8 * 4 + 8 + 9 + 9 + 8 + 9 + 9 + 6)
    lines.append(
        f"{'idle (after warm-up)':<26}{pad}{fmt(memory.get('rss_idle_mb'), 7, 1)}{0:>5}  {verdicts(checks['idle'])}"
    )
    added = f"  (+{memory['rss_added_mb']:.1f} MB)" if "rss_added_mb" in memory else ""
    label = f"{memory.get('streams', 0):,} open streams"
    rss, failed = fmt(memory.get("rss_open_mb"), 7, 1), memory.get("failed", 0)
    lines.append(f"{label:<26}{pad}{rss}{failed:>5}  {verdicts(checks['open streams'])}{added}")
    return "\n".join(lines)


# -- profile -------------------------------------------------------------------------------------


def run_profile(s: System, load: Load, name: str) -> dict[str, Any]:
    """py-spy on the gateway during one scenario (a run of its own: the table's numbers are taken
    without the profiler). Writes bench/results/profile.txt for unary c=32, else profile-<name>.txt."""
    sc = next((x for x in scenarios() if x.name == name), None)
    if sc is None:
        raise SystemExit(f"bench: no scenario {name!r}; one of: {', '.join(x.name for x in scenarios())}")
    slug = "" if name == "unary c=32" else "-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    out, raw = RESULTS / f"profile{slug}.txt", RESULTS / f"profile{slug}.raw"
    py_spy = profiling.ensure_py_spy(PY)
    raw.unlink(missing_ok=True)
    t = s.targets[sc.gateway]
    load.run(sc.mode, t, sc.concurrency, load.warmup)
    duration = max(round(load.duration), 3)
    cmd = profiling.record_command(py_spy, s.gateway.pid, duration + 1, raw, gil=GIL_ONLY)
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    with measure(s.gateway.pid, s.fake.pid) as m:
        result = load.run(sc.mode, t, sc.concurrency, duration)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw.exists():
        out.write_text(f"py-spy failed (exit {spy.returncode}):\n{err}\n")
        return {"file": str(out.relative_to(ROOT)), "error": err.strip()[-500:]}
    unit = "request" if sc.mode == "unary" else "stream"
    cpu_ms = m["cpu_s"] * 1000 / max(result["completed"], 1)
    header = (
        f"relayproxy gateway profile: {name} through the gateway for {duration} s, {datetime_now()}, "
        f"commit {git_revision()}\n"
        f"profiler: py-spy {profiling.version(py_spy)} ({' '.join(cmd[1:2] + cmd[4:-2])})\n"
        f"load meanwhile: {result['rate']:.1f} {unit}s/s, gateway CPU {cpu_ms:.3f} ms/{unit} "
        f"(user {m['user_s']:.2f} s + sys {m['sys_s']:.2f} s over {result['completed']} {unit}s)"
    )
    out.write_text(profiling.summarise(raw, header))
    return {"file": str(out.relative_to(ROOT)), "scenario": name, "rate": result["rate"], "gateway_cpu_ms": cpu_ms}


def datetime_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- main ----------------------------------------------------------------------------------------


def main() -> int:  # noqa: PLR0915 - a linear script
    p = argparse.ArgumentParser(description="relayproxy benchmark suite (issue 6 budget)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of measured load per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load before each run")
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default=os.environ.get("BENCH_LOADGEN", "auto"))
    p.add_argument("--open-streams", type=int, default=1000)
    p.add_argument("--profile", action="store_true", help="also profile the gateway with py-spy")
    p.add_argument("--profile-only", action="store_true", help="only the profile (no table)")
    p.add_argument("--profile-gil", action="store_true", help="profile only the thread holding the GIL (CPU view)")
    p.add_argument("--profile-scenario", default="unary c=32", help="the scenario to profile (a table row name)")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated row-name prefixes to run (e.g. 'unary,stream passthrough'; 'open' for the open streams)",
    )
    p.add_argument("--no-pin", action="store_true")
    p.add_argument(
        "--event-loop", choices=["auto", "uvloop", "asyncio"], default="auto", help="the gateway's [server] event_loop"
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a budget line fails")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = p.parse_args()

    started = time.monotonic()
    global GIL_ONLY  # a flag for run_profile, set once
    GIL_ONLY = args.profile_gil
    info = machine()  # before any load of ours: its loadavg tells whether something else is running
    if info["loadavg_at_start"][0] > 0.5:
        say(f"bench: warning: load average {info['loadavg_at_start'][0]} before start; other work may skew results")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: below, stop the children
    pin = Pinning.plan(not args.no_pin)
    wrk = ensure_wrk(args.loadgen)
    load = Load(wrk, pin.load_threads, args.duration, args.warmup)
    RESULTS.mkdir(parents=True, exist_ok=True)
    say(f"bench: {pin.note}; unary load: {wrk_version(wrk)}; stream load: bench/loadgen.py")
    s = start_system(pin, args.event_loop)
    say(f"bench: gateway pid {s.gateway.pid} on :{s.gateway_port}, fake upstream on :{s.fake_port}; {s.credits}")
    report: dict[str, Any] = {}
    try:
        warm_up(s, load)
        if args.profile_only:
            prof = run_profile(s, load, args.profile_scenario)
            say(f"bench: profile of {args.profile_scenario}: {prof['file']}")
            return 0
        time.sleep(1.0)
        memory: dict[str, Any] = {"rss_idle_mb": round(rss_mb(s.gateway.pid), 1)}
        results = []
        only = tuple(x.strip() for x in args.only.split(",") if x.strip())
        for sc in scenarios():
            if only and not sc.name.startswith(only):
                continue
            run_scenario(s, load, sc)
            results.append(sc.result)
        time.sleep(1.0)
        memory["rss_idle_after_load_mb"] = round(rss_mb(s.gateway.pid), 1)
        if not only or "open".startswith(only):
            say(f"  {args.open_streams} open streams ...")
            memory.update(run_open_streams(s, args.open_streams))
        if args.profile:
            say(f"  profiling {args.profile_scenario} with py-spy ...")
            report["profile"] = run_profile(s, load, args.profile_scenario)
    finally:
        s.stop()
    report["usage_records"] = usage_summary(WORK / "relay.db")
    by_name = {r["scenario"]: r for r in results}
    checks = budget(by_name, memory)
    table = render_table(results, memory, checks)
    flat = [c for row in checks.values() for _, c in row]
    verdict = "PASS" if all(c.ok for c in flat) else "FAIL"
    errors = sum(sum(r["gateway"]["errors"].values()) for r in results) + memory.get("failed", 0)
    report = {
        "when": datetime_now(),
        "commit": git_revision(),
        "machine": info,
        "pinning": pin.note,
        "load_generator": {"unary": wrk_version(wrk), "streams": "bench/loadgen.py"},
        "event_loop": gateway_event_loop(s),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "credits": s.credits,
        "scenarios": results,
        "memory": memory,
        "budget": [c.as_json() for c in flat],
        "verdict": verdict,
        "gateway_errors": errors,
        "elapsed_s": round(time.monotonic() - started, 1),
        **report,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    say(f"\nrelayproxy bench {report['when']}, commit {report['commit']}", sys.stdout)
    python = f"Python {m['python']} on {report['event_loop']}"
    say(f"machine: {m['cpu']}, {m['cores']} cores, {m['os']}, {python}; {pin.note}", sys.stdout)
    say(f"load: {report['load_generator']['unary']} (unary), bench/loadgen.py (streams); times in ms\n", sys.stdout)
    say(table, sys.stdout)
    usage = report["usage_records"]
    say(f"\nusage records written: {usage.get('total')} {usage.get('by_outcome', usage)}", sys.stdout)
    passed = sum(c.ok for c in flat)
    say(f"budget: {passed}/{len(flat)} lines pass -> {verdict}; JSON: {args.out}", sys.stdout)
    if "profile" in report:
        say(f"profile ({args.profile_scenario}): {report['profile']['file']}", sys.stdout)
    if errors:
        say(f"bench: {errors} gateway requests failed; see {s.log}", sys.stdout)
        return 1
    return 1 if args.strict and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
