"""Plain records that cross the store boundary: keys, principals, usage rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

__all__ = ["KeyInfo", "Outcome", "Principal", "UsageRecord", "allowed_models", "key_expired"]


class Outcome(StrEnum):
    COMPLETED = "completed"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_DROPPED = "upstream_dropped"
    CLIENT_DISCONNECTED = "client_disconnected"
    REJECTED = "rejected"
    GATEWAY_ERROR = "gateway_error"


@dataclass(slots=True, frozen=True)
class Principal:
    """Who is calling: resolved from an API key."""

    account_id: int
    account: str
    key_id: str
    recent_aborts: int = 0  # unbilled client-aborted requests in the window asked about, if asked
    # The key's options and running totals as read with it (KeyInfo has their meaning).
    expires: str | None = None
    models: tuple[str, ...] | None = None
    spend_limit_microusd: int | None = None
    spend_microusd: int = 0
    held_microusd: int = 0


def key_expired(expires: str | None, now_iso: str) -> bool:
    """True when a key valid through the UTC day ``expires`` (YYYY-MM-DD) is past it at ``now_iso``."""
    return expires is not None and now_iso[:10] > expires


def allowed_models(text: object) -> tuple[str, ...] | None:
    """The allow-list as stored (comma-separated text; NULL: every model)."""
    return None if text is None else tuple(m for m in str(text).split(",") if m)


@dataclass(slots=True, frozen=True)
class KeyInfo:
    id: str
    prefix: str
    label: str
    account: str
    created_at: str
    revoked_at: str | None
    spend_limit_microusd: int | None = None  # None: no limit beyond the account's credit
    expires: str | None = None  # YYYY-MM-DD, valid through that UTC day; None: never
    models: tuple[str, ...] | None = None  # the allow-list; None: every configured model
    spend_microusd: int = 0  # charged so far
    last_used_at: str | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> KeyInfo:
        """From the store's columns (``KEY_COLUMNS`` order, as the database driver gives them: untyped),
        ``models`` as comma-separated text."""
        kid, prefix, label, account, created, revoked, limit, expires, models, spend, last_used = row
        return cls(
            str(kid),
            str(prefix),
            str(label),
            str(account),
            str(created),
            None if revoked is None else str(revoked),
            None if limit is None else int(limit),
            None if expires is None else str(expires),
            allowed_models(models),
            int(spend),
            None if last_used is None else str(last_used),
        )


@dataclass(slots=True)
class UsageRecord:
    """One row per request: the fields of a usage record as `relayproxy usage --json` shows them (README)."""

    request_id: str
    created_at: str
    account: str | None = None
    key_id: str | None = None
    model: str | None = None
    provider: str | None = None
    client_protocol: str | None = None
    upstream_protocol: str | None = None
    stream: bool = False
    outcome: str = Outcome.GATEWAY_ERROR.value
    http_status: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_microusd: int = 0
    billed: bool = False
    reason: str = ""
    duration_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
