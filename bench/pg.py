"""The store rows of `make bench`: unary c=32 through one gateway on SQLite, one on PostgreSQL,
and two gateway processes on one PostgreSQL database (c=16 each, the requests/s added up).

It starts its own throwaway PostgreSQL cluster (tests/pgcluster.py: initdb in a temp directory,
as the unprivileged user ``relaypg`` when run as root; fsync on, as a real server runs) and the
fast fake upstream, and uses run.py's config, load generator (wrk, else bench/loadgen.py) and
credit set-up, so every request authenticates, holds credit, and settles with a usage record.
Nothing is pinned: two gateways, the load generator and PostgreSQL share the machine's cores.
Goals (issue 13): PostgreSQL one gateway >= 70 % of SQLite's requests/s; two gateways >= 1.7x one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import run as rb

sys.path.insert(0, str(rb.ROOT))
from tests.pgcluster import PgCluster, pg_bindir

WORK = rb.RESULTS / "pg"


def start_gateway(home: Path, fake_port: int, database: str) -> tuple[subprocess.Popen[bytes], int]:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.toml"
    text = rb.config_text(fake_port).replace('database = "relay.db"', f'database = "{database}"')
    config.write_text(text)
    log = home / "gateway.log"
    env = {**os.environ, "RELAYPROXY_BENCH_UPSTREAM_KEY": rb.UPSTREAM_KEY}
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [rb.PY, "-m", "relayproxy", "serve", "--config", str(config)],
            cwd=rb.ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    return proc, rb.wait_port(log, proc)


def make_key(config: Path) -> str:
    created = rb.cli(config, "keys", "create", "--account", "bench", "--label", "bench")
    if created.returncode != 0:
        raise SystemExit(f"bench: keys create failed: {created.stderr.strip()}")
    rb.grant_credits(config)
    return created.stdout.strip().splitlines()[-1]


def body_file() -> Path:
    path = WORK / "unary.json"
    path.write_bytes(rb.body("bench-oa", stream=False))
    return path


def measure(load: rb.Load, procs: list[subprocess.Popen[bytes]], ports: list[int], key: str, c: int) -> dict[str, Any]:
    """c connections split evenly over the gateways, all at once; requests/s added up, and where
    the machine's CPU went meanwhile (the gateways', PostgreSQL's, and how busy the whole machine was)."""
    target = [rb.Target(f"http://127.0.0.1:{p}/v1/chat/completions", body_file(), f"Bearer {key}") for p in ports]
    each = c // len(ports)
    for t in target:
        load.unary(t, each, load.warmup)
    results: list[dict[str, Any]] = [{} for _ in ports]

    def one(i: int) -> None:
        results[i] = load.unary(target[i], each, load.duration)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(ports))]
    before = cpu_now([p.pid for p in procs])
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    after = cpu_now([p.pid for p in procs])
    errors = sum(sum(r["errors"].values()) for r in results)
    rate = sum(r["rate"] for r in results)
    done = rate * load.duration or 1.0
    cpu = {
        "gateways_us_per_request": round((after[0] - before[0]) / done * 1e6),
        "postgres_us_per_request": round((after[1] - before[1]) / done * 1e6),
        "machine_busy": round((after[2] - before[2]) / ((after[3] - before[3]) or 1), 2),
    }
    return {"rate": round(rate, 1), "errors": errors, "cpu": cpu, "per_gateway": results}


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_now(pids: list[int]) -> tuple[float, float, float, float]:
    """CPU seconds so far of the processes ``pids`` and of every PostgreSQL server process, then the
    machine's busy and total CPU seconds (/proc: Linux only; zeros elsewhere)."""
    if not Path("/proc/stat").exists():
        return 0.0, 0.0, 0.0, 0.0
    ours = pg_total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        used = (int(fields[11]) + int(fields[12])) / _TICK
        if int(entry.name) in pids:
            ours += used
        elif name == "postgres":
            pg_total += used
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    return ours, pg_total, (sum(ticks) - idle) / _TICK, sum(ticks) / _TICK


def row(load: rb.Load, fake_port: int, database: str, gateways: int, name: str) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = []
        for n in range(gateways):
            proc, port = start_gateway(WORK / f"{name}-{n}", fake_port, database)
            procs.append(proc)
            ports.append(port)
        key = make_key(WORK / f"{name}-0" / "config.toml")
        return measure(load, procs, ports, key, 32)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def cpu_text(row: dict[str, Any]) -> str:
    cpu = row["cpu"]
    return (
        f"CPU/req gw {cpu['gateways_us_per_request']:>5} µs pg {cpu['postgres_us_per_request']:>5} µs"
        f"  busy {cpu['machine_busy']:.0%}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description="relayproxy bench: the SQLite and PostgreSQL store rows")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default=os.environ.get("BENCH_LOADGEN", "auto"))
    args, _ = p.parse_known_args()
    bindir = pg_bindir()
    if bindir is None:
        rb.say("bench: no PostgreSQL installed (apt-get install postgresql): store rows skipped", sys.stdout)
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    load = rb.Load(rb.ensure_wrk(args.loadgen), max(1, (os.cpu_count() or 2) - 1), args.duration, args.warmup)
    fake, fake_port = rb.start_fake()
    cluster = PgCluster(bindir, fsync=True)
    cluster.start()
    try:
        loadavg = os.getloadavg()[0]
        sqlite = row(load, fake_port, str(WORK / "sqlite.db"), 1, "sqlite")
        pg_one = row(load, fake_port, cluster.new_database(), 1, "pg-one")
        pg_two = row(load, fake_port, cluster.new_database(), 2, "pg-two")
    finally:
        cluster.stop()
        fake.terminate()
        fake.wait(10)
    ratio_one = pg_one["rate"] / sqlite["rate"] if sqlite["rate"] else 0.0
    ratio_two = pg_two["rate"] / pg_one["rate"] if pg_one["rate"] else 0.0
    out = sys.stdout
    rb.say(f"\nstore rows (unary c=32, not pinned; load average {loadavg:.1f} at start)", out)
    rb.say(
        f"  SQLite, 1 gateway          {sqlite['rate']:>9} req/s  errors {sqlite['errors']}  {cpu_text(sqlite)}", out
    )
    verdict_one = "PASS" if ratio_one >= 0.7 else "FAIL"
    rb.say(
        f"  PostgreSQL, 1 gateway      {pg_one['rate']:>9} req/s  errors {pg_one['errors']}  {cpu_text(pg_one)}"
        f"  {ratio_one:.2f}x SQLite (goal >= 0.70: {verdict_one})",
        out,
    )
    verdict_two = "PASS" if ratio_two >= 1.7 else "FAIL"
    rb.say(
        f"  PostgreSQL, 2 gateways     {pg_two['rate']:>9} req/s  errors {pg_two['errors']}  {cpu_text(pg_two)}"
        f"  {ratio_two:.2f}x one (goal >= 1.70: {verdict_two})",
        out,
    )
    rb.say(
        f"  (CPU: gateway and PostgreSQL µs per request, machine busy of {os.cpu_count()} cores; two gateways"
        " can add up only where the machine has cores to spare)",
        out,
    )
    errors = sqlite["errors"] + pg_one["errors"] + pg_two["errors"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
