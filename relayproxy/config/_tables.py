"""Typed getters over config.toml's tables, for settings.py: each error is a ``ConfigError``
naming the TOML key path and how to fix it.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """The configuration is invalid; the message names the key path and the fix."""


def _usd(t: dict[str, Any], key: str, default: int, *, allow_zero: bool = False, where: str = "billing") -> Decimal:
    """A positive USD amount in whole cents, read exactly (no float rounding)."""
    value = t.get(key, default)
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidOperation
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"[{where}] {key}: expected a USD amount such as 5 or 12.50, got {value!r}") from None
    low_ok = amount >= 0 if allow_zero else amount > 0
    if not amount.is_finite() or not low_ok or amount != amount.quantize(Decimal("0.01")):
        kind = "zero or a positive" if allow_zero else "a positive"
        raise ConfigError(f"[{where}] {key}: must be {kind} USD amount in whole cents, got {value!r}")
    return amount


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}]: expected a table, got {type(value).__name__}")
    return value


def _check_keys(t: dict[str, Any], where: str, allowed: set[str]) -> None:
    for key in t:
        if key not in allowed:
            hint = f"; allowed keys: {', '.join(sorted(allowed))}"
            raise ConfigError(f"[{where}] {key}: unknown key{hint}" if where else f"[{key}]: unknown table{hint}")


def _get(t: dict[str, Any], where: str, key: str, typ: type, default: Any) -> Any:
    if key not in t:
        return default
    value = t[key]
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"[{where}] {key}: expected {typ.__name__}, got {value!r}")
    return value


def _require(t: dict[str, Any], where: str, key: str, typ: type) -> Any:
    if key not in t:
        raise ConfigError(f"[{where}] {key}: missing; add {key} = ... to the table")
    return _get(t, where, key, typ, None)


def _price(t: dict[str, Any], where: str, key: str, default: float | None) -> float:
    if key not in t and default is not None:
        return default
    value: float = _require(t, where, key, float)
    if not 0 <= value < 100_000:
        raise ConfigError(f"[{where}] {key}: USD per 1M tokens must be 0 or more, got {value}")
    return value


def _numbers(cls: Any, t: dict[str, Any], where: str, typ: type) -> Any:
    names = set(cls.__dataclass_fields__)
    _check_keys(t, where, names)
    values = {k: _get(t, where, k, typ, None) for k in t}
    for k, v in values.items():
        if v < 0:
            raise ConfigError(f"[{where}] {k}: must be 0 or more, got {v}")
    return cls(**values)


def _known(table: dict[str, Any]) -> str:
    return f"known: {', '.join(sorted(table))}" if table else "none are configured"
