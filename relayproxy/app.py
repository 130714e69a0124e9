"""Wiring and lifecycle: config, store, pool, gateway and server; signals and graceful drain.

Stopping, in one process (``workers = 1``) or in each worker of a pool (see ``workers.py``):

- the first SIGTERM or SIGINT (or the supervisor's ``drain``) drains: the listener closes at
  once (new connections are refused), idle keep-alive connections close, responses in flight
  get ``Connection: close`` and up to ``[timeouts] drain_s`` to finish; what is left then is
  cancelled, so the gateway records it and releases its holds;
- a second signal (or the supervisor's ``stop``) stops at once: in-flight requests are
  cancelled now;
- then the cleanups those cancellations started (usage records, shielded from a second
  cancel) get a bounded moment to finish, the upstream pool and the store close, and the
  process exits 0.

The supervisor's ``drain`` is idempotent and does not count as a signal: under a terminal's
Ctrl-C or systemd's ``KillMode=control-group`` a worker receives both the signal and the
supervisor's word, in either order, and must not take the pair for "stop at once".
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from relayproxy.config.settings import Config
from relayproxy.dashboard import Dashboard
from relayproxy.gateway.handler import Gateway
from relayproxy.gateway.opening import Answer
from relayproxy.keys import display_prefix, hash_key, new_key, new_key_id
from relayproxy.server.listener import Server, ServerLimits
from relayproxy.store.accounts import Accounts
from relayproxy.store.backends import open_store_for
from relayproxy.store.facade import Store
from relayproxy.upstream import Pool

__all__ = [
    "CLEANUP_GRACE_S",
    "CONTROL_DRAIN",
    "CONTROL_STOP",
    "create_key",
    "prepare_service",
    "run",
    "run_gateway",
    "server_limits",
]

log = logging.getLogger("relayproxy")
T = TypeVar("T")

#: Words the supervisor writes to a worker's control pipe (its stdin), one per line.
CONTROL_DRAIN = b"drain"
CONTROL_STOP = b"stop"
#: After the server stopped: how long shielded cleanups (usage records) may still run.
CLEANUP_GRACE_S = 3.0

Ready = Callable[[list[tuple[str, int]]], None]


def server_limits(config: Config) -> ServerLimits:
    t, lim = config.timeouts, config.limits
    return ServerLimits(
        max_header_bytes=lim.max_header_bytes,
        max_headers=lim.max_headers,
        max_body_bytes=lim.max_body_bytes,
        header_read_s=t.header_read_s,
        body_read_s=t.body_read_s,
        keepalive_idle_s=t.keepalive_idle_s,
        client_write_stall_s=t.client_write_stall_s,
    )


async def create_key(
    store: Store,
    account: str,
    label: str = "",
    *,
    spend_limit_microusd: int | None = None,
    expires: str | None = None,
    models: tuple[str, ...] | None = None,
) -> tuple[str, str]:
    """Create a key for ``account`` (creating the account), with its options (records.KeyInfo);
    returns (key id, secret)."""
    secret = new_key()
    info = await store.add_key(
        account,
        new_key_id(),
        display_prefix(secret),
        hash_key(secret),
        label,
        spend_limit_microusd=spend_limit_microusd,
        expires=expires,
        models=models,
    )
    return info.id, secret


async def _bootstrap(store: Store, config: Config) -> None:
    """On a store with no accounts, create account 'default' with its starting credit
    (``[billing] initial_credit_usd``) and print its key once."""
    if await store.account_count() == 0:
        key_id, secret = await create_key(store, "default", "created at first start")
        credit = int(config.billing.initial_credit_usd * 1_000_000)
        if credit > 0:
            await store.grant("default", credit, "starting credit ([billing] initial_credit_usd)")
        log.info(
            "created account 'default' with $%s of credit and key %s; its secret is printed once on stdout",
            config.billing.initial_credit_usd,
            key_id,
        )
        print(secret, flush=True)  # noqa: T201 - the one place a secret is shown: the operator's terminal
        if await Accounts(store).user_count() == 0:
            setup = secrets.token_urlsafe(32)
            await Accounts(store).issue_setup_token(setup, valid_s=24 * 3600)
            log.info("open the one-time setup link printed on stdout to create the dashboard's admin user (24 h)")
            print(f"{config.dashboard.public_url}/setup?token={setup}", flush=True)  # noqa: T201 - as the key above


def _report_missing_keys(config: Config) -> None:
    for provider in config.missing_keys():
        names = ", ".join(sorted(m.name for m in config.models.values() if m.provider == provider.name))
        if provider.key_problem:
            log.warning(
                "provider %s is disabled: %s; fix it or set %s to serve %s",
                provider.name,
                provider.key_problem,
                provider.api_key_env,
                names or "its models",
            )
            continue
        log.warning(
            "provider %s is disabled: set %s to serve %s",
            provider.name,
            provider.api_key_env,
            names or "its models",
        )


async def _startup_once(store: Store, config: Config) -> None:
    """Start-up that must run exactly once per service start, before any request is served:
    in the single process, or in the supervisor before it starts the workers (never in a worker:
    a respawned worker must not, say, release holds that live workers still own)."""
    await _bootstrap(store, config)
    released = await store.release_orphan_holds()
    if released:
        log.warning("released %d credit holds left by a previous run (never billed)", released)
    _report_missing_keys(config)


async def prepare_service(config: Config) -> None:
    """The once-per-service start-up, on its own store connection (the supervisor's)."""
    store = await open_store_for(config)
    try:
        await _startup_once(store, config)
    finally:
        await store.close()


def run(main: Coroutine[Any, Any, T], event_loop: str) -> T:
    """Run ``main`` to completion on a new event loop of the kind ``[server] event_loop`` names:
    ``uvloop`` (libuv, in C: less CPU per stream; the A/B is in bench/README.md and the README),
    ``asyncio`` (the standard library's), or ``auto``, uvloop when installed."""
    with asyncio.Runner(loop_factory=_loop_factory(event_loop)) as runner:
        return runner.run(main)


def _loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if event_loop == "asyncio":
        return None
    try:
        import uvloop  # optional: pyproject installs it where it builds (not on Windows)
    except ImportError:
        if event_loop == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


async def run_gateway(
    config: Config,
    *,
    host: str,
    port: int,
    ready: Ready | None = None,
    sock: socket.socket | None = None,
    startup: bool = True,
    control_fd: int | None = None,
) -> None:
    """Serve until stopped (see the module docstring), then close everything.

    ``sock``: an already listening socket (a worker's, inherited from the supervisor) instead
    of binding ``host:port``. ``startup``: run the once-per-service start-up (False in workers).
    ``control_fd``: the supervisor's control pipe (``drain`` / ``stop``; EOF means it is gone).
    """
    outside = asyncio.all_tasks()  # the caller's tasks: not ours to wait for when stopping
    log.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
    store = await open_store_for(config)
    pool = Pool()
    try:
        if startup:
            await _startup_once(store, config)
        spawner = _Spawner()
        gateway = Gateway(config, store, pool, spawn=spawner, pages=Dashboard(config, store))
        spawner.end_streams = gateway.end_streams
        server = Server(gateway.handle, limits=server_limits(config), render_error=gateway.render_server_error)
        # The store's background work (PostgreSQL's lease) lives and dies with the app: a failure
        # there ends the app visibly, and it stops before the store closes.
        async with asyncio.TaskGroup() as upkeep_group:
            upkeep = upkeep_group.create_task(store.maintain(), name="store upkeep")
            try:
                await _serve(server, config, host, port, sock, ready or _log_ready, control_fd, spawner)
                await _wait_cleanups(outside | {upkeep})
            finally:
                upkeep.cancel()
    finally:
        await pool.aclose()
        await store.close()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


class _Spawner:
    """Lets the gateway start short request-scoped tasks (an upstream opening it waits on while
    pinging the client) in the app's TaskGroup, which exists only once serving has begun."""

    def __init__(self) -> None:
        self.tg: asyncio.TaskGroup | None = None
        self.end_streams: Callable[[], None] | None = None  # the gateway's, set once it exists

    def __call__(self, coro: Coroutine[Any, Any, Answer]) -> asyncio.Task[Answer]:
        if self.tg is None:
            coro.close()
            raise RuntimeError("the gateway spawned a task before serving began")
        return self.tg.create_task(coro)


class StopState(enum.Enum):
    SERVING = enum.auto()
    DRAINING = enum.auto()  # in-flight requests get up to drain_s
    STOPPING = enum.auto()  # in-flight requests are cancelled now


class _Stopper:
    """Turns stop requests into server shutdowns: drain first, at once on a second signal."""

    def __init__(
        self, server: Server, drain_s: float, tg: asyncio.TaskGroup, end_streams: Callable[[], None] | None = None
    ) -> None:
        self._server = server
        self._end_streams = end_streams  # at the drain deadline: streams end with an in-band error
        self._drain_s = drain_s
        self._tg: asyncio.TaskGroup | None = tg  # None once serving is over: no task may start
        self._drain: asyncio.Task[None] | None = None
        self._signals = 0  # the supervisor's words do not count: see the module docstring
        self.state = StopState.SERVING

    def on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            self.drain(f"{sig.name} received")
        else:
            self.stop_now(f"{sig.name} received again")

    def drain(self, why: str) -> None:
        if self.state is not StopState.SERVING:
            return
        self.state = StopState.DRAINING
        log.info("%s: stopped accepting; draining in-flight requests for up to %gs", why, self._drain_s)
        if self._tg is not None:
            shutdown = self._server.shutdown(self._drain_s, before_cancel=self._end_streams)
            self._drain = self._tg.create_task(shutdown)

    def stop_now(self, why: str) -> None:
        if self.state is StopState.STOPPING:
            return
        self.state = StopState.STOPPING
        log.warning("%s: stopping now; %d in-flight requests are cancelled", why, self._server.active_requests)
        if self._drain is not None:
            self._drain.cancel()
        if self._tg is not None:
            self._tg.create_task(self._server.shutdown(0))

    def finished(self) -> None:
        self._tg = None


async def _serve(
    server: Server,
    config: Config,
    host: str,
    port: int,
    sock: socket.socket | None,
    ready: Ready,
    control_fd: int | None,
    spawner: _Spawner,
) -> None:
    """Run the server until a stop request has been carried out. The signal handlers stay until
    run_gateway ends, so a signal during the drain or the cleanups is seen (not the default: death)."""
    loop = asyncio.get_running_loop()
    stopper: _Stopper | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            spawner.tg = tg
            stopper = _Stopper(server, config.timeouts.drain_s, tg, spawner.end_streams)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stopper.on_signal, sig)
            if control_fd is not None:
                os.set_blocking(control_fd, False)
                loop.add_reader(control_fd, _read_control, loop, control_fd, stopper)
            tg.create_task(server.serve(host, port, sock=sock, ready=ready))
    finally:
        if stopper is not None:
            stopper.finished()
        if control_fd is not None:
            loop.remove_reader(control_fd)


def _read_control(loop: asyncio.AbstractEventLoop, fd: int, stopper: _Stopper) -> None:
    try:
        data = os.read(fd, 256)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:  # the supervisor is gone (killed?): do not outlive it holding the port
        loop.remove_reader(fd)
        stopper.drain("the supervisor's control pipe closed")
        return
    for word in data.split():
        if word == CONTROL_DRAIN:
            stopper.drain("the supervisor asked to drain")
        elif word == CONTROL_STOP:
            stopper.stop_now("the supervisor asked to stop at once")


async def _wait_cleanups(outside: set[asyncio.Task[Any]]) -> None:
    """Let tasks the cancellations left running (shielded usage records and hold releases) finish,
    for a bounded time, before the store they write to is closed. Also after a stop at once:
    "at once" cuts the streams, not the bookkeeping of what was cut (milliseconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLEANUP_GRACE_S
    me = asyncio.current_task()
    while True:
        pending = {t for t in asyncio.all_tasks() if t is not me and t not in outside and not t.done()}
        left = deadline - loop.time()
        if not pending or left <= 0:
            if pending:
                log.warning("stopping with %d cleanup tasks unfinished after %gs", len(pending), CLEANUP_GRACE_S)
            return
        await asyncio.wait(pending, timeout=min(left, 0.05))


def _log_ready(addresses: list[tuple[str, int]]) -> None:
    for host, port in addresses:
        log.info("relayproxy listening on http://%s:%s", host, port)
    sys.stderr.flush()
