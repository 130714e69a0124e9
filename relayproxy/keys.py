"""API key format: a recognisable prefix and 190 bits from the OS CSPRNG. Only a hash is stored."""

from __future__ import annotations

import hashlib
import secrets
import string

__all__ = ["KEY_PREFIX", "display_prefix", "hash_key", "looks_like_key", "new_key", "new_key_id"]

KEY_PREFIX = "rp_"
_ALPHABET = string.ascii_letters + string.digits
_BODY_LEN = 32  # 32 base62 characters = 190 bits
_DISPLAY_LEN = len(KEY_PREFIX) + 6


def new_key() -> str:
    """A fresh secret key such as ``rp_3kQ...``; shown to the operator once, never stored."""
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LEN))


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def hash_key(key: str) -> bytes:
    """SHA-256 of the key: a fast hash is right for 190-bit random secrets (no guessing to slow down)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def looks_like_key(key: str) -> bool:
    return len(key) == len(KEY_PREFIX) + _BODY_LEN and key.startswith(KEY_PREFIX)


def display_prefix(key: str) -> str:
    """The non-secret start of a key, for listings."""
    return key[:_DISPLAY_LEN]
