"""Pricing, pure: usage x price table -> integer micro-USD, holds, usage sanity, the price list.

Theory of operation. List prices are USD per 1M tokens and arrive from the config as floats; they
are read back through ``Fraction(str(price))`` so 1.25 is exactly 5/4 and never 1.2499999...
Every amount is then computed exactly and rounded once, at the end, to whole micro-USD: a charge
rounds DOWN (the customer never pays a fraction of a micro-dollar they did not use), a hold rounds
UP (a hold must cover the worst case). Because a price per 1M tokens in USD is numerically the
price per token in micro-USD, ``tokens * price * (1 - discount)`` is micro-USD. Per request, the
exact customer prices are integer numerators over one common denominator, made once per model
and discount (``_rates``), so a charge or a hold is integer arithmetic and one floor division.

Upstream usage is untrusted input: ``clamp_usage`` bounds it before pricing, so a buggy or hostile
upstream can never produce a negative cost (a credit) or an absurd charge.
"""

from __future__ import annotations

import functools
import html
import math
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from fractions import Fraction
from typing import Any, TypeAlias

from relayproxy.config.settings import Config, ModelConfig
from relayproxy.ir import Usage

__all__ = [
    "MAX_TOKENS",
    "MICROUSD_PER_USD",
    "Booking",
    "Prices",
    "clamp_usage",
    "cost_microusd",
    "customer_prices",
    "format_usd",
    "hold_microusd",
    "list_prices",
    "parse_usd",
    "price_list",
    "render_price_table_html",
]

MICROUSD_PER_USD = 1_000_000
MAX_TOKENS = 100_000_000  # no single request reads or writes more; a bigger count is a bug upstream
_OUTPUT_SLACK = 1_000  # output may exceed the request's limit a little (stop sequences, counting quirks)


class Booking(StrEnum):
    """What booking a payment event into the ledger did."""

    BOOKED = "booked"
    DUPLICATE = "duplicate"  # this event, or this payment / refund level, was already booked
    UNKNOWN_ACCOUNT = "unknown_account"
    UNKNOWN_PAYMENT = "unknown_payment"  # a refund for a payment not (yet) credited here


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per 1M tokens (equivalently micro-USD per token), exact."""

    input: Fraction
    cached_input: Fraction
    output: Fraction


def list_prices(model: ModelConfig) -> Prices:
    """The model's list prices, read exactly from their decimal spelling."""
    return Prices(
        input=Fraction(str(model.input_price)),
        cached_input=Fraction(str(model.cached_input_price)),
        output=Fraction(str(model.output_price)),
    )


def customer_prices(model: ModelConfig, discount: Fraction) -> Prices:
    """What customers pay: list price x (1 - discount)."""
    lp, factor = list_prices(model), 1 - discount
    return Prices(input=lp.input * factor, cached_input=lp.cached_input * factor, output=lp.output * factor)


_Rates: TypeAlias = tuple[int, int, int, int]  # input, cached input, output numerators; denominator > 0


# Memoised (two calls per request, Fraction arithmetic each): configs are few and long-lived, and
# both arguments are frozen values, so an entry can never go stale.
_RATES_MAX = 1024


@functools.lru_cache(maxsize=_RATES_MAX)
def _rates(model: ModelConfig, discount: Fraction) -> _Rates:
    """``customer_prices(model, discount)`` as integer numerators over their least common denominator."""
    p = customer_prices(model, discount)
    den = math.lcm(p.input.denominator, p.cached_input.denominator, p.output.denominator)
    rates = (
        p.input.numerator * (den // p.input.denominator),
        p.cached_input.numerator * (den // p.cached_input.denominator),
        p.output.numerator * (den // p.output.denominator),
        den,
    )
    return rates


def cost_microusd(usage: Usage, model: ModelConfig, discount: Fraction) -> int:
    """The customer cost of ``usage`` (list price per 1M tokens x (1 - discount), cached input at its
    own price), rounded down to whole micro-USD; never negative.

    Counts are taken defensively (negative -> 0, cached capped at input) even though callers are
    expected to pass the output of ``clamp_usage``.
    """
    p_input, p_cached, p_output, den = _rates(model, discount)
    inp = max(usage.input_tokens, 0)
    cached = min(max(usage.cached_input_tokens, 0), inp)
    out = max(usage.output_tokens, 0)
    # The exact cost is this numerator over den (> 0): floor division is math.floor of the Fraction.
    return max(((inp - cached) * p_input + cached * p_cached + out * p_output) // den, 0)


def hold_microusd(
    input_tokens_estimate: int, max_output_tokens: int | None, model: ModelConfig, discount: Fraction
) -> int:
    """The credit to reserve before calling upstream, rounded UP: every input token at the
    dearer of the input prices, plus the output limit (the model's default when the request has none)."""
    p_input, p_cached, p_output, den = _rates(model, discount)
    out = model.max_output_tokens if max_output_tokens is None else max_output_tokens
    exact = max(input_tokens_estimate, 0) * max(p_input, p_cached) + max(out, 0) * p_output
    return -(-exact // den)  # the ceiling of exact / den, as math.ceil of the Fraction


def clamp_usage(usage: Usage, max_output_tokens: int | None) -> tuple[Usage, list[str]]:
    """Bound untrusted upstream counts; returns the usage to bill and a flag per correction.

    Negative counts become 0; any count above ``MAX_TOKENS`` is cut to it; output above twice
    the request's output limit plus 1,000 is cut to that; cached input above input and reasoning
    above output are cut to their totals.
    """
    flags: list[str] = []
    values: dict[str, int] = {}
    for name in ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens"):
        value = getattr(usage, name)
        if value < 0:
            flags.append(f"negative_{name}")
        elif value > MAX_TOKENS:
            flags.append(f"absurd_{name}")
        values[name] = min(max(value, 0), MAX_TOKENS)
    clamped = Usage(**values)
    if max_output_tokens is not None and clamped.output_tokens > 2 * max_output_tokens + _OUTPUT_SLACK:
        flags.append("output_over_limit")
        clamped = replace(clamped, output_tokens=2 * max_output_tokens + _OUTPUT_SLACK)
    if clamped.cached_input_tokens > clamped.input_tokens:
        flags.append("cached_over_input")
        clamped = replace(clamped, cached_input_tokens=clamped.input_tokens)
    if clamped.reasoning_tokens > clamped.output_tokens:
        flags.append("reasoning_over_output")
        clamped = replace(clamped, reasoning_tokens=clamped.output_tokens)
    return clamped, flags


# -- amounts as text ----------------------------------------------------------------------------


def parse_usd(text: str) -> int:
    """'12.50' -> 12_500_000 micro-USD, exactly; ValueError for anything else or sub-micro precision."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not a USD amount: {text!r} (expected e.g. 12.50)") from None
    micro = amount * MICROUSD_PER_USD
    if not micro.is_finite() or micro != micro.to_integral_value():
        raise ValueError(f"not a USD amount in whole micro-dollars: {text!r}")
    return int(micro)


def format_usd(amount_microusd: int) -> str:
    """12_500_000 -> '12.500000' (exact, six decimals, sign kept)."""
    sign = "-" if amount_microusd < 0 else ""
    whole, micro = divmod(abs(amount_microusd), MICROUSD_PER_USD)
    return f"{sign}{whole}.{micro:06d}"


# -- the public price list ----------------------------------------------------------------------


def price_list(config: Config) -> dict[str, Any]:
    """The public ``GET /models`` JSON: list and customer prices per model, USD per 1M tokens."""
    discount = config.billing.discount
    data = [
        {
            "id": model.name,
            "provider": model.provider,
            "protocol": config.providers[model.provider].protocol,
            "list_price": _price_json(list_prices(model)),
            "price": _price_json(customer_prices(model, discount)),
        }
        for model in config.models.values()
    ]
    return {"object": "list", "currency": "usd", "unit": "per_1m_tokens", "discount": float(discount), "data": data}


def _price_json(p: Prices) -> dict[str, float]:
    return {"input": float(p.input), "cached_input": float(p.cached_input), "output": float(p.output)}


def render_price_table_html(prices: dict[str, Any]) -> str:
    """A small self-contained HTML page for ``price_list`` output; every value is escaped."""
    head = "".join(f"<th>{h}</th>" for h in ("Model", "Provider", "Input", "Cached input", "Output", "List output"))
    rows = "".join(_html_row(m) for m in prices["data"])
    pct = html.escape(f"{float(prices['discount']) * 100:g}")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>relayproxy prices</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse}"
        "th,td{padding:.3rem .8rem;border-bottom:1px solid #ddd;text-align:right}"
        "th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}</style></head>"
        f"<body><h1>Prices</h1><p>USD per 1M tokens; {pct}% below list price.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></body></html>\n"
    )


def _html_row(model: dict[str, Any]) -> str:
    price, listed = model["price"], model["list_price"]
    cells = (model["id"], model["provider"], price["input"], price["cached_input"], price["output"], listed["output"])
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
