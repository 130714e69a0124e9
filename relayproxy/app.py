"""Wiring and lifecycle: config, store, pool, gateway and server; signals and graceful drain."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from .config import Config
from .gateway import Gateway
from .keys import display_prefix, hash_key, new_key, new_key_id
from .server import Server, ServerLimits
from .store import Store
from .upstream import Pool

__all__ = ["create_key", "run_gateway", "server_limits"]

log = logging.getLogger("relayproxy")


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


async def create_key(store: Store, account: str, label: str = "") -> tuple[str, str]:
    """Create a key for ``account`` (creating the account); returns (key id, secret)."""
    secret = new_key()
    info = await store.add_key(account, new_key_id(), display_prefix(secret), hash_key(secret), label)
    return info.id, secret


async def _bootstrap(store: Store) -> None:
    """On a store with no accounts, create account 'default' and print its key once."""
    if await store.account_count() == 0:
        key_id, secret = await create_key(store, "default", "created at first start")
        log.info("created account 'default' and key %s; its secret is printed once on stdout", key_id)
        print(secret, flush=True)  # noqa: T201 - the one place a secret is shown: the operator's terminal


def _report_missing_keys(config: Config) -> None:
    for provider in config.missing_keys():
        names = ", ".join(sorted(m.name for m in config.models.values() if m.provider == provider.name))
        log.warning(
            "provider %s is disabled: set %s to serve %s",
            provider.name,
            provider.api_key_env,
            names or "its models",
        )


async def run_gateway(
    config: Config,
    *,
    host: str,
    port: int,
    ready: Callable[[list[tuple[str, int]]], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight requests and close everything."""
    store = await Store.open(config.server.database)
    pool = Pool()
    try:
        await _bootstrap(store)
        _report_missing_keys(config)
        gateway = Gateway(config, store, pool)
        server = Server(gateway.handle, limits=server_limits(config), render_error=gateway.render_server_error)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(server.serve(host, port, ready=ready or _log_ready))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: tg.create_task(_shutdown(server, config)))
    finally:
        await pool.aclose()
        await store.close()


async def _shutdown(server: Server, config: Config) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("shutting down: draining in-flight requests for up to %ss", config.timeouts.drain_s)
    await server.shutdown(config.timeouts.drain_s)


def _log_ready(addresses: list[tuple[str, int]]) -> None:
    for host, port in addresses:
        log.info("relayproxy listening on http://%s:%s", host, port)
    sys.stderr.flush()
