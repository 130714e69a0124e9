"""Secrets from the environment, or from systemd credentials (``LoadCredential=``).

systemd puts each credential in a file under ``$CREDENTIALS_DIRECTORY`` (readable by the service
only, not inherited by children, not shown in ``systemctl show``); the environment is the
fallback for development. For an environment variable ``OPENAI_API_KEY`` the credential file is
``openai_api_key`` (the name in lower case). A set, non-empty variable wins over the file.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

__all__ = ["CredentialError", "credential_name", "read_secret"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_SECRET_BYTES = 64 * 1024


class CredentialError(Exception):
    """A credential file exists but cannot be used; the message says which and why."""


def credential_name(env_name: str) -> str:
    """The credential file name for an environment variable name: ``OPENAI_API_KEY`` -> ``openai_api_key``."""
    if not _NAME.match(env_name):
        raise CredentialError(f"{env_name!r} is not an environment variable name (letters, digits, _)")
    return env_name.lower()


def read_secret(env_name: str) -> str | None:
    """The secret named ``env_name``: the variable if set and non-empty, else the credential file
    ``$CREDENTIALS_DIRECTORY/<env_name lower case>`` if present, else None.

    Surrounding whitespace (the newline an editor adds) is removed. A file that exists but cannot be
    read, is empty, or is larger than 64 KiB raises CredentialError (a silent fallback would hide
    a misconfigured unit).
    """
    value = os.environ.get(env_name)
    if value:
        return value
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / credential_name(env_name)
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialError(f"credential {path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SECRET_BYTES:
        raise CredentialError(f"credential {path}: expected a regular file of at most {MAX_SECRET_BYTES} bytes")
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialError(f"credential {path}: cannot be read ({exc})") from None
    if not secret:
        raise CredentialError(f"credential {path}: the file is empty")
    return secret
