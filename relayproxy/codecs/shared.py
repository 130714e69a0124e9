"""Helpers that more than one codec needs, with the same behaviour for each: JSON value checks,
token counts, tool-call argument text, MiniMax's status codes.

Request validation stays in each codec: its error messages are worded per protocol.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import orjson

__all__ = ["MINIMAX_STATUS", "arguments_object", "count", "is_int", "str_or_empty"]

MINIMAX_STATUS = {1002: 429, 1004: 401, 1008: 402, 2013: 400, 1026: 400}  # base_resp.status_code -> HTTP


def is_int(value: Any) -> TypeGuard[int]:
    """A JSON integer: an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def count(value: Any) -> int:
    """A token count; anything but a non-negative integer counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def str_or_empty(value: Any) -> str:
    """The value if it is a string, else ""."""
    return value if isinstance(value, str) else ""


def arguments_object(text: str) -> dict[str, Any]:
    """Tool-call argument JSON -> an object. Models do write invalid JSON: text that is not a JSON
    object is kept as ``{"_raw": text}`` rather than refused; blank text is ``{}``."""
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}
