"""A small closed-loop HTTP/1.1 load generator on plain asyncio (the fallback for wrk, and the stream client).

    python bench/loadgen.py unary  URL -c 32 -d 5 --body-file F [-H 'name: value' ...]
    python bench/loadgen.py stream URL -c 32 -d 5 --body-file F --expect '[DONE]'
    python bench/loadgen.py hold   URL -c 1000 --body-file F

``unary`` and ``stream``: ``-c`` keep-alive connections, each sending its next request as soon as
the previous response is complete, until ``-d`` seconds have passed; requests in flight then are
finished (never abandoned), and the connections close. Prints one JSON line: completed requests,
the rate, and percentiles (ms) of the whole-response latency and of the time to the first body
byte (for a stream: the first SSE event). A response counts as an error when its status is not
200, its connection drops mid-response, or (``--expect``) its body lacks the expected terminator.

``hold``: opens ``-c`` streams in batches of 100, waits until each has its first event, prints a
JSON line (``"phase": "open"``), keeps them open until a line (or EOF) arrives on stdin, then
closes them all and prints a final line.

Each connection is a ``Protocol`` whose ``data_received`` parses incrementally and sends the next
request from the callback: no task or future per request, so the client stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

perf = time.perf_counter

HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILER, DONE = range(7)


class Response:
    """Incremental parser of one HTTP/1.1 response (Content-Length or chunked)."""

    __slots__ = ("body", "buf", "first_byte", "keep_body", "left", "state", "status")

    def __init__(self, keep_body: bool) -> None:
        self.keep_body = keep_body
        self.reset()

    def reset(self) -> None:
        self.state = HEAD
        self.buf = b""
        self.status = 0
        self.left = 0
        self.first_byte = 0.0
        self.body: list[bytes] = []

    def _data(self, data: bytes, now: float) -> None:
        if not self.first_byte:
            self.first_byte = now
        if self.keep_body:
            self.body.append(data)

    def feed(self, data: bytes, now: float) -> bool:
        """Feed received bytes; True once the response is complete (extra bytes are dropped)."""
        buf = self.buf + data if self.buf else data
        self.buf = b""
        if self.state == HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return False
            head = buf[:end].lower()
            self.status = int(head[9:12])
            buf = buf[end + 4 :]
            if b"\r\ntransfer-encoding: chunked" in head:
                self.state = CHUNK_SIZE
            else:
                at = head.find(b"\r\ncontent-length:")
                stop = head.find(b"\r\n", at + 2) if at >= 0 else -1
                self.left = int(head[at + 17 : stop if stop > 0 else len(head)]) if at >= 0 else 0
                self.state = BODY
        if self.state == BODY:
            if buf and self.left:
                self._data(buf[: self.left], now)
                self.left -= len(buf)
            if self.left <= 0:
                self.state = DONE
            return self.state == DONE
        return self._chunks(buf, now)

    def _chunks(self, buf: bytes, now: float) -> bool:
        while True:
            if self.state == CHUNK_SIZE:
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                size = int(buf[:i].split(b";", 1)[0], 16)
                buf = buf[i + 2 :]
                self.left, self.state = size, (CHUNK_DATA if size else TRAILER)
            elif self.state == CHUNK_DATA:
                if not buf:
                    break
                take = buf[: self.left]
                self._data(take, now)
                self.left -= len(take)
                buf = buf[len(take) :]
                if not self.left:
                    self.state = CHUNK_CRLF
            elif self.state == CHUNK_CRLF:
                if len(buf) < 2:
                    break
                buf, self.state = buf[2:], CHUNK_SIZE
            elif self.state == TRAILER:
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                buf = buf[i + 2 :]
                if i == 0:
                    self.state = DONE
                    return True
            else:
                return True
        self.buf = buf
        return False


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds of values in seconds (nearest rank)."""
    if not values:
        return {}
    s = sorted(values)
    n = len(s)

    def rank(q: float) -> float:
        return round(s[min(n - 1, max(0, int(q * n + 0.999999) - 1))] * 1000, 4)

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": round(s[-1] * 1000, 4),
        "mean": round(sum(s) / n * 1000, 4),
    }


class Run:
    """Shared state of a closed-loop run."""

    def __init__(self, request: bytes, deadline: float, expect: bytes | None) -> None:
        self.request = request
        self.deadline = deadline
        self.expect = expect
        self.latency: list[float] = []
        self.ttfb: list[float] = []
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.open = 0
        self.first_sent = 0.0
        self.last_done = 0.0
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def closed(self) -> None:
        self.open -= 1
        if self.open <= 0 and not self.finished.done():
            self.finished.set_result(None)

    def result(self, mode: str, concurrency: int) -> dict[str, Any]:
        elapsed = max(self.last_done - self.first_sent, 1e-9)
        completed = len(self.latency)
        return {
            "mode": mode,
            "concurrency": concurrency,
            "completed": completed,
            "elapsed_s": round(elapsed, 4),
            "rate": round(completed / elapsed, 2),
            "latency_ms": percentiles(self.latency),
            "ttfb_ms": percentiles(self.ttfb),
            "errors": dict(self.errors),
            "statuses": {str(k): v for k, v in self.statuses.items()},
        }


class Client(asyncio.Protocol):
    """One keep-alive connection of a closed-loop run."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.response = Response(keep_body=run.expect is not None)
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.in_flight = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.run.open += 1
        if not self.run.first_sent:
            self.run.first_sent = perf()
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if perf() >= self.run.deadline:
            self.transport.close()
            return
        self.response.reset()
        self.in_flight = True
        self.sent_at = perf()
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        now = perf()
        if not self.in_flight or not self.response.feed(data, now):
            return
        self.in_flight = False
        run, resp = self.run, self.response
        run.statuses[resp.status] += 1
        run.last_done = now
        if resp.status != 200:
            run.errors[f"status_{resp.status}"] += 1
        elif run.expect is not None and run.expect not in b"".join(resp.body[-3:]):
            run.errors["no_terminator"] += 1
        else:
            run.latency.append(now - self.sent_at)
            run.ttfb.append((resp.first_byte or now) - self.sent_at)
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight:
            self.run.errors["connection_lost"] += 1
        self.in_flight = False
        self.run.closed()


def build_request(url: str, body: bytes, headers: list[str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", "content-type: application/json"]
    lines += [h for h in headers if h.strip()]
    lines.append(f"content-length: {len(body)}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def closed_loop(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    host, port, request = build_request(args.url, args.body, args.header)
    loop = asyncio.get_running_loop()
    run = Run(request, perf() + args.duration + 3600, args.expect.encode() if args.expect else None)
    run.open = 1  # held until every connection is made, so `finished` cannot fire early
    results = await asyncio.gather(
        *(loop.create_connection(lambda: Client(run), host, port) for _ in range(args.concurrency)),
        return_exceptions=True,
    )
    run.errors["connect"] += sum(isinstance(r, BaseException) for r in results)
    run.deadline = perf() + args.duration
    run.first_sent = perf()
    run.closed()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(run.finished), args.duration + args.grace)
    if not run.finished.done():
        run.errors["timeout"] += run.open
    if not run.errors["connect"]:
        del run.errors["connect"]
    return run.result(mode, args.concurrency)


class Holder(asyncio.Protocol):
    """One stream held open: records when its first event arrives."""

    def __init__(self, request: bytes, first: asyncio.Future[float], lost: Counter[str]) -> None:
        self.request = request
        self.first = first
        self.lost = lost
        self.response = Response(keep_body=False)
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sent_at = perf()
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        done = self.response.feed(data, perf())
        if self.response.first_byte and not self.first.done():
            ok = self.response.status == 200 and not done
            self.first.set_result(self.response.first_byte - self.sent_at if ok else -1.0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost["closed_early" if self.first.done() else "no_first_event"] += 1
        if not self.first.done():
            self.first.set_result(-1.0)


async def hold(args: argparse.Namespace) -> None:
    host, port, request = build_request(args.url, args.body, args.header)
    loop = asyncio.get_running_loop()
    holders: list[Holder] = []
    lost: Counter[str] = Counter()
    firsts: list[float] = []
    start = perf()
    for at in range(0, args.concurrency, args.batch):
        batch = [loop.create_future() for _ in range(min(args.batch, args.concurrency - at))]
        made = await asyncio.gather(
            *(loop.create_connection(lambda f=f: Holder(request, f, lost), host, port) for f in batch),
            return_exceptions=True,
        )
        for fut, res in zip(batch, made, strict=True):
            if isinstance(res, BaseException):
                fut.set_result(-1.0)
            else:
                holders.append(res[1])
        done, _ = await asyncio.wait(batch, timeout=args.grace)
        firsts += [f.result() for f in done]
        lost["no_first_event"] += len(batch) - len(done)
    ok = [t for t in firsts if t >= 0]
    report = {
        "phase": "open",
        "requested": args.concurrency,
        "open": len(ok),
        "failed": args.concurrency - len(ok),
        "open_s": round(perf() - start, 3),
        "ttfb_ms": percentiles(ok),
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    await loop.run_in_executor(None, sys.stdin.readline)
    still_open = sum(1 for h in holders if h.transport is not None and not h.transport.is_closing())
    for h in holders:
        if h.transport is not None:
            h.transport.abort()
    await asyncio.sleep(0.2)
    sys.stdout.write(json.dumps({"phase": "closed", "still_open_at_release": still_open, "lost": dict(lost)}) + "\n")


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("mode", choices=["unary", "stream", "hold"])
    parser.add_argument("url")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("-H", "--header", action="append", default=[], help="'name: value'")
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--expect", help="a stream body must contain this near its end (e.g. '[DONE]')")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds to wait for stragglers")
    parser.add_argument("--batch", type=int, default=100, help="hold: streams opened at a time")
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        args.body = f.read()
    raise_nofile()
    if args.mode == "hold":
        asyncio.run(hold(args))
        return
    result = asyncio.run(closed_loop(args, args.mode))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
