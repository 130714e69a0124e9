"""``serve --workers N``: a pre-fork supervisor and N worker processes sharing one listening socket.

Theory of operation. The supervisor (the process ``relayproxy serve`` started) runs the
once-per-service start-up (first-start account and key, printed once), binds the listening
socket once, and starts N workers. Each worker is a fresh interpreter, not a fork: the parent
has run asyncio and aiosqlite threads, and a fork would copy their locks in whatever state they
were. A worker gets:

- the listening socket, by file descriptor (``pass_fds``); all workers accept from the one
  kernel queue, so a worker that exits or restarts drops no queued connection;
- its stdin as a control pipe: first the config text the supervisor validated (so a respawned
  worker runs exactly the configuration the service started with, whatever happened to the file
  since), then the words ``drain`` / ``stop``; EOF means the supervisor is gone, and the worker
  drains and exits rather than keep the port;
- its own SQLite connection (the store is safe for several processes: WAL + BEGIN IMMEDIATE).

A worker that exits while the service runs is replaced after a backoff (0.5 s, doubling, at
most 10 s). A slot whose worker exited more than 5 times within 60 s is a crash loop: the
supervisor logs it, drains the other workers and exits 1 (systemd's ``Restart=`` then decides).

SIGTERM/SIGINT to the supervisor: it closes its copy of the listening socket, tells every worker
to drain, waits for them and exits 0. A second signal tells them to stop at once. Workers that
are still alive ``drain_s`` + 15 s after the first signal are killed (exit status 1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeAlias

from relayproxy.app import CLEANUP_GRACE_S, CONTROL_DRAIN, CONTROL_STOP, prepare_service, run, run_gateway
from relayproxy.config.settings import Config, ConfigError, parse_config
from relayproxy.telemetry.logsetup import configure_logging
from relayproxy.telemetry.metrics import MULTIPROC_ENV, mark_worker_dead

__all__ = ["RestartPolicy", "Supervisor", "bind_listener", "serve_workers", "worker_command", "worker_main"]

log = logging.getLogger("relayproxy.workers")

LOG_FORMAT = "%(asctime)s %(levelname)s [{who}] %(message)s"
_BACKLOG = 1024
_STOP_MARGIN_S = 15.0  # beyond drain_s: cleanups, closing the store, interpreter exit
_HEADER = struct.Struct("!I")
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
_Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None  # signal.signal's
# The worker's first lines: the parent's sys.path makes the child import the very same code (a
# venv, an editable checkout, or the extracted zipapp; `-I` ignores PYTHONPATH and user sites).
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from relayproxy.workers import worker_main; raise SystemExit(worker_main(sys.argv[2:]))"
)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart a worker that exited, and when to give up."""

    window_s: float = 60.0
    max_exits: int = 5  # per slot within window_s; one more is a crash loop
    first_delay_s: float = 0.5
    max_delay_s: float = 10.0

    def delay(self, exits: Sequence[float], now: float) -> float | None:
        """Seconds to wait before restarting a slot whose workers exited at ``exits`` (monotonic
        times, the latest included), or None: a crash loop, give up."""
        recent = sum(1 for t in exits if now - t < self.window_s)
        if recent > self.max_exits:
            return None
        return min(self.first_delay_s * 2.0 ** max(recent - 1, 0), self.max_delay_s)


@dataclass(slots=True)
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    exits: list[float] = field(default_factory=list)
    restart_at: float | None = None  # monotonic time of the next start, while waiting to restart


def worker_command(index: int, fd: int, config_path: Path) -> list[str]:
    """The command line of worker ``index`` serving the listening socket ``fd``."""
    flags = ["-I", "-S"] if sys.flags.no_site else ["-I"]
    return [sys.executable, *flags, "-c", _BOOT, json.dumps(sys.path), str(fd), str(index), str(config_path)]


def bind_listener(host: str, port: int) -> socket.socket:
    """The one listening socket all workers share (SO_REUSEADDR; no SO_REUSEPORT: one queue)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"[server] listen: cannot resolve host {host!r} ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    return socket.create_server(address[:2], family=family, backlog=_BACKLOG)


class Supervisor:
    """Starts, watches and stops the worker processes; ``run()`` returns the exit status."""

    def __init__(
        self,
        sock: socket.socket,
        workers: int,
        *,
        drain_s: float,
        config_text: bytes = b"",
        config_path: Path = Path("config.toml"),
        policy: RestartPolicy | None = None,
        command: Callable[[int, int, Path], list[str]] = worker_command,
        metrics_dir: str | None = None,
    ) -> None:
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._slots = [_Slot(i) for i in range(workers)]
        self._stop_after_s = drain_s + CLEANUP_GRACE_S + _STOP_MARGIN_S
        self._config_text = config_text
        self._config_path = config_path
        self._policy = policy or RestartPolicy()
        self._command = command
        # Every worker writes its metrics there (prometheus_client's multi-process mode), so any
        # worker's /metrics shows the whole service.
        self._metrics_dir = metrics_dir
        self._env = {**os.environ, MULTIPROC_ENV: metrics_dir} if metrics_dir is not None else None
        self._stops = 0  # stop requests so far: 1 drain, 2 stop at once
        self._stop_deadline = 0.0
        self._status = 0
        self._wake_r = self._wake_w = -1

    def run(self) -> int:
        previous = self._install_signals()
        try:
            for slot in self._slots:
                if not self._stops:
                    self._start(slot)
            address = self._sock.getsockname()[:2] if self._sock is not None else ("?", 0)
            log.info("relayproxy listening on http://%s:%s (%d workers)", address[0], address[1], len(self._slots))
            while not self._done():
                for signum in self._wait(self._timeout()):
                    self._on_signal(signum)
                self._reap()
                self._restart_due()
            log.info("all workers stopped")
            return self._status
        finally:
            self._restore_signals(previous)
            self._close_listener()
            for slot in self._slots:
                if slot.proc is not None:
                    _close_pipe(slot.proc)

    # -- workers ------------------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        slot.restart_at = None
        cmd = self._command(slot.index, self._fd, self._config_path)
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, pass_fds=(self._fd,), env=self._env)
        except OSError as exc:  # fork refused (TasksMax, memory): counts as a crash of this slot
            self._on_exit(slot, f"could not be started ({exc})")
            return
        slot.proc = proc
        log.info("worker %d started (pid %d)", slot.index, proc.pid)
        self._tell(slot, _HEADER.pack(len(self._config_text)) + self._config_text)

    def _tell(self, slot: _Slot, data: bytes) -> None:
        proc = slot.proc
        if proc is None or proc.stdin is None or proc.stdin.closed:
            return
        try:
            proc.stdin.write(data)
            proc.stdin.flush()
        except OSError:  # BrokenPipeError: it has exited; _reap will see it
            pass

    def _reap(self) -> None:
        for slot in self._slots:
            proc = slot.proc
            if proc is None or proc.poll() is None:
                continue
            slot.proc = None
            _close_pipe(proc)
            if self._metrics_dir is not None:
                mark_worker_dead(proc.pid, self._metrics_dir)  # its streams no longer count as active
            how = f"(pid {proc.pid}) {_describe_exit(proc.returncode)}"
            if self._stops:
                log.log(logging.INFO if proc.returncode == 0 else logging.WARNING, "worker %d %s", slot.index, how)
            else:
                self._on_exit(slot, how)

    def _on_exit(self, slot: _Slot, how: str) -> None:
        """A worker ended while the service runs: schedule its replacement, or give up."""
        now = time.monotonic()
        slot.exits = [t for t in slot.exits if now - t < self._policy.window_s] + [now]
        delay = self._policy.delay(slot.exits, now)
        if delay is None:
            log.error(
                "worker %d %s: it ended %d times within %gs; a crash loop, giving up: stopping the service",
                slot.index,
                how,
                len(slot.exits),
                self._policy.window_s,
            )
            self._status = 1
            self._request_stop("crash loop")
            return
        log.error("worker %d %s; starting a new one in %gs", slot.index, how, delay)
        slot.restart_at = now + delay

    def _restart_due(self) -> None:
        if self._stops:
            return
        now = time.monotonic()
        for slot in self._slots:
            if slot.proc is None and slot.restart_at is not None and slot.restart_at <= now:
                self._start(slot)

    # -- stopping -----------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._request_stop(signal.Signals(signum).name)

    def _request_stop(self, why: str) -> None:
        self._stops += 1
        if self._stops == 1:
            # Ours is the last copy of the listening socket once the workers close theirs:
            # without it, new connections are refused at once instead of queueing unanswered.
            self._close_listener()
            self._stop_deadline = time.monotonic() + self._stop_after_s
            log.info("%s: workers drain and stop", why)
            word = CONTROL_DRAIN
        elif self._stops == 2:
            log.warning("%s again: workers stop at once", why)
            word = CONTROL_STOP
        else:
            return
        for slot in self._slots:
            slot.restart_at = None
            self._tell(slot, word + b"\n")

    def _done(self) -> bool:
        if not self._stops:
            return False
        alive = [s.proc for s in self._slots if s.proc is not None]
        if alive and time.monotonic() >= self._stop_deadline:
            log.error("%d workers did not stop within %gs: killing them", len(alive), self._stop_after_s)
            for proc in alive:
                proc.kill()
                proc.wait()
            for slot in self._slots:
                slot.proc = None
            self._status = 1
            return True
        return not alive

    def _close_listener(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- signals ------------------------------------------------------------------------------

    def _install_signals(self) -> tuple[int, dict[signal.Signals, _Handler]]:
        """Signals wake select() through a pipe (``set_wakeup_fd``), SIGCHLD included."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        wakeup_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        return wakeup_fd, {sig: signal.signal(sig, _ignore_signal) for sig in _HANDLED}

    def _restore_signals(self, previous: tuple[int, dict[signal.Signals, _Handler]]) -> None:
        wakeup_fd, handlers = previous
        signal.set_wakeup_fd(wakeup_fd)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _timeout(self) -> float:
        now = time.monotonic()
        due = [s.restart_at for s in self._slots if s.restart_at is not None and s.proc is None]
        if self._stops:
            due.append(self._stop_deadline)
        return max(0.0, min([now + 1.0, *due]) - now)

    def _wait(self, timeout: float) -> list[int]:
        """Sleep until a signal arrives or ``timeout``; return the signals that arrived."""
        ready, _, _ = select.select([self._wake_r], [], [], timeout)
        if not ready:
            return []
        try:
            return list(os.read(self._wake_r, 512))
        except BlockingIOError:
            return []


def _ignore_signal(signum: int, frame: object) -> None:
    """The handler only has to exist: the wakeup fd carries the signal number to select()."""


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


# -- entry points ---------------------------------------------------------------------------------


def serve_workers(config: Config, host: str, port: int, workers: int) -> int:
    """The supervisor's side of ``relayproxy serve --workers N`` (N >= 2); returns the exit status."""
    config, text = _snapshot(config)
    sock = bind_listener(host, port)  # first: a taken port fails the start before anything else
    asyncio.run(prepare_service(config))  # exactly one first-start key, before any worker exists
    metrics_dir = tempfile.mkdtemp(prefix="relayproxy-metrics-")  # fresh per service start
    try:
        supervisor = Supervisor(
            sock,
            workers,
            drain_s=config.timeouts.drain_s,
            config_text=text,
            config_path=config.path.resolve(),
            metrics_dir=metrics_dir,
        )
        return supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _snapshot(config: Config) -> tuple[Config, bytes]:
    """The config file's bytes and the Config they give: what every worker will run."""
    try:
        text = config.path.read_bytes()
        return parse_config(tomllib.loads(text.decode("utf-8")), config.path), text
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{config.path}: cannot be read again to start the workers ({exc})") from None


def worker_main(argv: Sequence[str]) -> int:
    """A worker: ``FD INDEX CONFIG_PATH``; the config text comes first on stdin (see the module docstring)."""
    fd, index, config_path = int(argv[0]), int(argv[1]), Path(argv[2])
    configure_logging(sys.stderr, LOG_FORMAT.format(who=f"worker {index} pid {os.getpid()}"), worker=index)
    try:
        text = _read_exactly(0, _HEADER.unpack(_read_exactly(0, _HEADER.size))[0])
        config = parse_config(tomllib.loads(text.decode("utf-8")), config_path)
    except (EOFError, ConfigError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        log.error("worker %d: no usable configuration from the supervisor (%s)", index, exc)
        return 2
    sock = socket.socket(fileno=fd)

    def ready(addresses: list[tuple[str, int]]) -> None:
        log.info("worker %d ready", index)

    run(
        run_gateway(config, host="", port=0, sock=sock, ready=ready, startup=False, control_fd=0),
        config.server.event_loop,
    )
    return 0


def _read_exactly(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError("the control pipe closed early")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _close_pipe(proc: subprocess.Popen[bytes]) -> None:
    """Close a worker's control pipe. A worker that died before reading it leaves our buffered
    bytes unflushable: close() would raise BrokenPipeError again (failure prevented: the
    supervisor crashing in a worker crash loop instead of counting it)."""
    if proc.stdin is None:
        return
    try:
        proc.stdin.close()
    except OSError:
        pass
