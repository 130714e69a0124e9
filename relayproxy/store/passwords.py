"""Password hashing for dashboard users: argon2id through ``argon2-cffi``.

``verify`` answers whether the password matches and whether the stored hash should be replaced
(the parameters changed since it was made). ``verify_dummy`` spends the same work on a fixed hash,
so that an unknown e-mail costs as long as a wrong password.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["hash_password", "verify", "verify_dummy"]

_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY = _HASHER.hash("relayproxy dummy password, never a real one")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify(stored: str, password: str) -> tuple[bool, bool]:
    """(matches, needs_rehash)."""
    try:
        _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, False
    return True, _HASHER.check_needs_rehash(stored)


def verify_dummy(password: str) -> bool:
    """Always False, after the same work as ``verify``."""
    verify(_DUMMY, password + "\x00")
    return False
