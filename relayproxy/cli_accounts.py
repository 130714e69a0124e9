"""The command line of customer keys and dashboard users: `keys create` with its options,
`keys list`, and `users create|list|disable|reset-password`.

Bad option values exit 2 with a message saying what is accepted, like every usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import orjson

from relayproxy.app import create_key
from relayproxy.billing.pricing import format_usd, parse_usd
from relayproxy.config.settings import Config
from relayproxy.store.accounts import Accounts
from relayproxy.store.backends import open_store_for
from relayproxy.store.facade import Store
from relayproxy.store.passwords import hash_password

__all__ = ["add_key_commands", "add_user_commands", "emit", "out", "positive_usd"]

Command = Callable[[Config, Store, argparse.Namespace], Awaitable[int]]


def out(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the CLI's output


def _fail(message: str, status: int = 1) -> int:
    print(f"relayproxy: {message}", file=sys.stderr)  # noqa: T201
    return status


def emit(rows: list[dict[str, Any]], as_json: bool, columns: Sequence[str]) -> None:
    """Rows as one JSON object per line, or as a table of ``columns``."""
    if as_json:
        for row in rows:
            out(orjson.dumps(row).decode())
        return
    table = [list(columns)] + [["" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for r in table:
        out("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def _run(fn: Command) -> Callable[[Config, argparse.Namespace], int]:
    """Open the store, run ``fn``, close."""

    def run(config: Config, args: argparse.Namespace) -> int:
        async def go() -> int:
            store = await open_store_for(config)
            try:
                return await fn(config, store, args)
            finally:
                await store.close()

        return asyncio.run(go())

    return run


# -- keys -------------------------------------------------------------------------------------------


def positive_usd(text: str) -> int:
    """An argparse type: a USD amount above 0, in micro-USD."""
    try:
        amount = parse_usd(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if amount <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return amount


def _expires(text: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}")
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a calendar date: {text!r}") from None
    if day < datetime.now(UTC).date():
        raise argparse.ArgumentTypeError(f"{text} is already past (the key is valid through that UTC day)")
    return text


def _models(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not names:
        raise argparse.ArgumentTypeError("expected one or more model ids separated by commas")
    return names


def add_key_commands(keys: Any, common: argparse.ArgumentParser) -> None:
    create = keys.add_parser("create", parents=[common], help="create a key (and the account if missing)")
    create.add_argument("--account", required=True)
    create.add_argument("--label", default="")
    create.add_argument("--limit-usd", type=positive_usd, metavar="N", help="the key's own spend limit in USD")
    create.add_argument("--expires", type=_expires, metavar="YYYY-MM-DD", help="valid through that UTC day")
    create.add_argument("--models", type=_models, metavar="a,b,...", help="the only models the key may use")
    create.set_defaults(func=_run(_keys_create))
    listing = keys.add_parser("list", parents=[common], help="list keys (never the secret)")
    listing.add_argument("--account")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_run(_keys_list))


async def _keys_create(config: Config, store: Store, args: argparse.Namespace) -> int:
    unknown = [m for m in args.models or () if m not in config.models]
    if unknown:
        known = ", ".join(sorted(config.models)) or "none"
        return _fail(f"--models: not configured on this gateway: {', '.join(unknown)} (configured: {known})", 2)
    _, secret = await create_key(
        store, args.account, args.label, spend_limit_microusd=args.limit_usd, expires=args.expires, models=args.models
    )
    out(secret)
    return 0


async def _keys_list(config: Config, store: Store, args: argparse.Namespace) -> int:
    keys = await store.list_keys(args.account)
    rows = [
        {
            "id": k.id,
            "prefix": k.prefix,
            "label": k.label,
            "account": k.account,
            "created": k.created_at,
            "revoked": k.revoked_at,
            "spend_limit_microusd": k.spend_limit_microusd,
            "expires": k.expires,
            "models": None if k.models is None else list(k.models),
            "spend_microusd": k.spend_microusd,
            "last_used": k.last_used_at,
        }
        for k in keys
    ]
    if args.json:
        emit(rows, True, ())
        return 0
    for row, k in zip(rows, keys, strict=True):
        row["limit_usd"] = None if k.spend_limit_microusd is None else format_usd(k.spend_limit_microusd)
        row["spend_usd"] = format_usd(k.spend_microusd)
        row["models"] = None if k.models is None else ",".join(k.models)
    columns = ("id", "prefix", "account", "label", "created", "revoked", "limit_usd", "spend_usd", "expires")
    emit(rows, False, (*columns, "models", "last_used"))
    return 0


# -- users ------------------------------------------------------------------------------------------


def add_user_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    users = sub.add_parser("users", parents=[common], help="dashboard users").add_subparsers(title="users commands")
    create = users.add_parser("create", parents=[common], help="create a user (and its account if missing)")
    create.add_argument("--email", required=True, type=_email)
    create.add_argument("--account", required=True)
    create.add_argument("--admin", action="store_true", help="an operator: may use /admin")
    create.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    create.set_defaults(func=_run(_users_create))
    listing = users.add_parser("list", parents=[common], help="list users (never a password hash)")
    listing.add_argument("--account")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_run(_users_list))
    disable = users.add_parser("disable", parents=[common], help="disable a user and end its sessions")
    disable.add_argument("--email", required=True, type=_email)
    disable.set_defaults(func=_run(_users_disable))
    reset = users.add_parser("reset-password", parents=[common], help="a new random password; ends its sessions")
    reset.add_argument("--email", required=True, type=_email)
    reset.set_defaults(func=_run(_users_reset))


def _email(text: str) -> str:
    email = text.strip().lower()
    if not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
        raise argparse.ArgumentTypeError(f"not an e-mail address: {text!r}")
    return email


def _new_password() -> str:
    return secrets.token_urlsafe(18)


async def _users_create(config: Config, store: Store, args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if len(password) < 8:
            return _fail("--password-stdin: the password must be at least 8 characters", 2)
    else:
        password = _new_password()
    accounts = Accounts(store)
    user = await accounts.create_user(args.email, args.account, hash_password(password), admin=args.admin)
    if user is None:
        return _fail(f"a user with e-mail {args.email} already exists")
    await accounts.audit("cli", "user.create", args.email, f"account={args.account} admin={args.admin}")
    if not args.password_stdin:
        out(password)
    return 0


async def _users_list(config: Config, store: Store, args: argparse.Namespace) -> int:
    users = await Accounts(store).list_users(args.account)
    emit([u.public() for u in users], args.json, ("id", "email", "account", "admin", "created", "disabled"))
    return 0


async def _users_disable(config: Config, store: Store, args: argparse.Namespace) -> int:
    accounts = Accounts(store)
    user = await accounts.user_by_email(args.email)
    if user is None or not await accounts.disable_user(user.id):
        return _fail(f"no user with e-mail {args.email}")
    await accounts.audit("cli", "user.disable", args.email)
    out(f"disabled {args.email}; its sessions are ended")
    return 0


async def _users_reset(config: Config, store: Store, args: argparse.Namespace) -> int:
    accounts = Accounts(store)
    user = await accounts.user_by_email(args.email)
    if user is None:
        return _fail(f"no user with e-mail {args.email}")
    password = _new_password()
    await accounts.set_password(user.id, hash_password(password))
    await accounts.audit("cli", "user.reset-password", args.email)
    out(password)
    return 0
