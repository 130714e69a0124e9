"""The `relayproxy` command line: serve, keys, users, usage, credits, ledger, models, migrate, db copy,
--version (keys create/list and users: cli_accounts.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from relayproxy import __version__
from relayproxy.app import run, run_gateway
from relayproxy.billing.pricing import format_usd, price_list
from relayproxy.cli_accounts import add_key_commands, add_user_commands, emit, out, positive_usd
from relayproxy.config.settings import Config, ConfigError, default_public_url, load_config, parse_listen
from relayproxy.errors import StoreError
from relayproxy.store.backends import is_url, open_store, open_store_for
from relayproxy.store.copy import copy_store
from relayproxy.store.facade import Store
from relayproxy.telemetry.logsetup import configure_logging
from relayproxy.workers import serve_workers

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        config = load_config(args.config or os.environ.get("RELAYPROXY_CONFIG") or "config.toml")
        result: int = args.func(config, args)
        return result
    except ConfigError as exc:
        print(f"relayproxy: bad config: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except StoreError as exc:
        print(f"relayproxy: {exc}", file=sys.stderr)  # noqa: T201
        return 1


def _parser() -> argparse.ArgumentParser:
    config_help = "path to config.toml (default: $RELAYPROXY_CONFIG, else ./config.toml)"
    # Sub-commands take --config too; SUPPRESS keeps their unset default from hiding a top-level one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    parser = argparse.ArgumentParser(prog="relayproxy", description="A self-hosted LLM gateway.")
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--version", action="version", version=f"relayproxy {__version__}")
    sub = parser.add_subparsers(title="commands")

    serve = sub.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--listen", help="HOST:PORT, overrides [server] listen")
    serve.add_argument("--workers", type=int, help="worker processes, overrides [server] workers")
    serve.set_defaults(func=_serve)

    keys = sub.add_parser("keys", parents=[common], help="manage API keys").add_subparsers(title="keys commands")
    add_key_commands(keys, common)
    revoke = keys.add_parser("revoke", parents=[common], help="revoke a key at once")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.set_defaults(func=_run(_keys_revoke))

    add_user_commands(sub, common)

    usage = sub.add_parser("usage", parents=[common], help="usage records, newest first")
    usage.add_argument("--account")
    usage.add_argument("--limit", type=int, default=50)
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=_run(_usage))
    _add_money_commands(sub, common)
    _add_db_commands(sub, common)
    return parser


def _add_db_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    migrate = sub.add_parser("migrate", parents=[common], help="create or upgrade the store's schema, then exit")
    migrate.set_defaults(func=_run(_migrate))
    db = sub.add_parser("db", parents=[common], help="the store as a whole").add_subparsers(title="db commands")
    copy = db.add_parser("copy", parents=[common], help="copy the configured store into an empty one at URL")
    copy.add_argument("--to", required=True, metavar="URL", help="a SQLite path or a postgresql:// URL")
    copy.set_defaults(func=_db_copy)


async def _migrate(store: Store, args: argparse.Namespace) -> int:
    out("schema up to date")  # opening the store migrated it (under the backend's lock)
    return 0


def _db_copy(config: Config, args: argparse.Namespace) -> int:
    target_url = args.to if is_url(args.to) else Path(args.to).resolve()

    async def go() -> int:
        source = await open_store_for(config)
        try:
            s = config.server
            target = await open_store(target_url, pool_size=2, password_env=s.database_password_env)
            try:
                counts = await copy_store(source, target)
            finally:
                await target.close()
        finally:
            await source.close()
        out(", ".join(f"{table}: {n}" for table, n in counts.items()))
        out("db copy: done; ledger check ok on both")
        return 0

    return asyncio.run(go())


def _serve(config: Config, args: argparse.Namespace) -> int:
    # Redacted (keys, secrets and bearer tokens never reach a log line), one write per loop iteration.
    configure_logging(sys.stderr, "%(asctime)s %(levelname)s %(message)s")
    host, port = parse_listen(args.listen, "--listen") if args.listen else (config.server.host, config.server.port)
    if config.dashboard.public_url == default_public_url(config.server.host, config.server.port):
        # No public_url in the file: the dashboard's links follow a --listen override.
        config = replace(config, dashboard=replace(config.dashboard, public_url=default_public_url(host, port)))
    workers = args.workers if args.workers is not None else config.server.workers
    if workers < 1:
        raise ConfigError(f"--workers: must be 1 or more, got {workers}")
    try:
        if workers > 1:  # a supervisor and N worker processes on one socket (see workers.py)
            return serve_workers(config, host, port, workers)
        run(run_gateway(config, host=host, port=port), config.server.event_loop)
    except OSError as exc:  # binding the listener: address in use, permission denied
        print(f"relayproxy: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


def _run(
    fn: Callable[[Store, argparse.Namespace], Awaitable[int]],
) -> Callable[[Config, argparse.Namespace], int]:
    """Adapt an async store command to the CLI: open the store, run, close."""

    def run(config: Config, args: argparse.Namespace) -> int:
        async def go() -> int:
            store = await open_store_for(config)
            try:
                return await fn(store, args)
            finally:
                await store.close()

        return asyncio.run(go())

    return run


async def _keys_revoke(store: Store, args: argparse.Namespace) -> int:
    if not await store.revoke_key(args.key_id):
        print(f"relayproxy: no active key with id {args.key_id}", file=sys.stderr)  # noqa: T201
        return 1
    out(f"revoked {args.key_id}")
    return 0


async def _usage(store: Store, args: argparse.Namespace) -> int:
    rows = [r.to_json() for r in await store.list_usage(args.account, args.limit)]
    cols = ("request_id", "created_at", "account", "model", "outcome", "http_status")
    emit(rows, args.json, (*cols, "input_tokens", "output_tokens", "cost_microusd", "billed", "reason"))
    return 0


# -- credits, ledger, models -------------------------------------------------------------------------


def _add_money_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    credits = sub.add_parser("credits", parents=[common], help="account credit").add_subparsers(
        title="credits commands"
    )
    add = credits.add_parser("add", parents=[common], help="operator grant: a ledger entry (creates the account)")
    add.add_argument("--account", required=True)
    add.add_argument("--usd", required=True, type=positive_usd, metavar="AMOUNT", help="e.g. 25 or 12.50")
    add.add_argument("--note", default="")
    add.set_defaults(func=_run(_credits_add))
    show = credits.add_parser("show", parents=[common], help="balance and held credit of an account")
    show.add_argument("--account", required=True)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_run(_credits_show))

    ledger = sub.add_parser("ledger", parents=[common], help="the credit ledger").add_subparsers(
        title="ledger commands"
    )
    check = ledger.add_parser("check", parents=[common], help="verify balances against the ledger (exit 1 if broken)")
    check.set_defaults(func=_run(_ledger_check))

    models = sub.add_parser("models", parents=[common], help="the price list as served at /models")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=_models)


async def _credits_add(store: Store, args: argparse.Namespace) -> int:
    balance = await store.grant(args.account, args.usd, args.note)
    out(f"{args.account}: balance {format_usd(balance)} USD ({balance} micro-USD)")
    return 0


async def _credits_show(store: Store, args: argparse.Namespace) -> int:
    found = await store.balance(args.account)
    if found is None:
        print(f"relayproxy: no account named {args.account}", file=sys.stderr)  # noqa: T201
        return 1
    balance, held = found
    if args.json:
        out(orjson.dumps({"account": args.account, "balance_microusd": balance, "held_microusd": held}).decode())
        return 0
    row = {"account": args.account, "balance_usd": format_usd(balance), "held_usd": format_usd(held)}
    emit([{**row, "available_usd": format_usd(balance - held)}], False, (*row, "available_usd"))
    return 0


async def _ledger_check(store: Store, args: argparse.Namespace) -> int:
    problems = await store.ledger_check()
    for problem in problems:
        out(problem)
    out(f"ledger check: {len(problems)} problem(s)" if problems else "ledger check: ok")
    return 1 if problems else 0


def _models(config: Config, args: argparse.Namespace) -> int:
    prices = price_list(config)
    if args.json:
        out(orjson.dumps(prices, option=orjson.OPT_INDENT_2).decode())
        return 0
    rows = [
        {
            "id": m["id"],
            "provider": m["provider"],
            "protocol": m["protocol"],
            **{k: str(v) for k, v in m["price"].items()},
            **{f"list_{k}": str(v) for k, v in m["list_price"].items()},
        }
        for m in prices["data"]
    ]
    out(f"USD per 1M tokens; price = list price x (1 - {prices['discount']:g})")
    columns = ("id", "provider", "protocol", "input", "cached_input", "output", "list_input", "list_output")
    emit(rows, False, columns)
    return 0
