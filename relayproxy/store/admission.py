"""Admission by a key's options: what ``Store.admit`` answers on both backends.

The key's row is read in the admission's own transaction (revocation and expiry are instant);
the spend limit is enforced by the guarded hold itself (ledger.py), never by this read.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from relayproxy.records import Principal, allowed_models, key_expired
from relayproxy.store import ledger

__all__ = ["PRINCIPAL_COLUMNS", "Admission", "admission", "judge", "over_rpm", "principal_of"]


@dataclass(frozen=True, slots=True)
class Admission:
    """What ``Store.admit`` found: the key's principal (None: unknown or revoked), whether the
    credit hold was taken (None: not attempted) and, when the key's options refused the request,
    the refusal's error kind (``key_expired``, ``model_not_allowed``, ``key_spend_limit``), or
    ``concurrency`` / ``rpm`` when a per-key cap did (key_limits.py), with its ``retry_after_s``."""

    principal: Principal | None
    held: bool | None
    refused: str | None = None
    retry_after_s: int = 0


def judge(
    principal: Principal | None, hold_microusd: int | None, abort_cap: int, model: str | None, now: str
) -> Admission | None:
    """``admit``'s answer when no hold is to be taken (both backends), else None: hold."""
    if principal is None:
        return Admission(None, None)
    if key_expired(principal.expires, now):
        return Admission(principal, None, "key_expired")
    if hold_microusd is None or 0 < abort_cap <= principal.recent_aborts:
        return Admission(principal, None)
    if model is not None and principal.models is not None and model not in principal.models:
        return Admission(principal, None, "model_not_allowed")
    return None


def admission(principal: Principal, held: str) -> Admission:
    """``admit``'s answer for a hold ``ledger.hold`` tried."""
    if held == ledger.CONCURRENCY:
        return Admission(principal, None, "concurrency", 1)
    return Admission(principal, held == ledger.HELD, "key_spend_limit" if held == ledger.KEY_LIMIT else None)


def over_rpm(principal: Principal, retry_after_s: int) -> Admission:
    """``admit``'s answer when the key's requests-per-minute window is full."""
    return Admission(principal, None, "rpm", retry_after_s)


#: The key, its account and its options as ``principal_of`` reads them (one row, both backends).
PRINCIPAL_COLUMNS = (
    "k.hash, k.revoked_at, a.id, a.name, k.id, k.expires, k.models, k.spend_limit_microusd, k.spend_microusd,"
    " k.held_microusd"
)


def principal_of(row: Any, key_hash: bytes, aborts: int) -> Principal | None:
    """The principal of a ``PRINCIPAL_COLUMNS`` row, or None (revoked, or not this hash)."""
    if row is None:
        return None
    stored, revoked, account_id, account, key_id, expires, models, limit, spend, held = row
    if revoked is not None or not hmac.compare_digest(bytes(stored), key_hash):
        return None
    return Principal(
        int(account_id),
        str(account),
        str(key_id),
        int(aborts),
        None if expires is None else str(expires),
        allowed_models(models),
        None if limit is None else int(limit),
        int(spend),
        int(held),
    )
