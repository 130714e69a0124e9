"""Pricing math: exact to the micro-USD, charges round down, holds round up, usage is clamped.

Cost (INTERFACE.md), before rounding down to whole micro-USD:
((input - cached) * input_price + cached * cached_input_price + output * output_price) / 1e6 * (1 - discount)
"""

from __future__ import annotations

import ast
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayproxy.billing import pricing as billing
from relayproxy.billing.pricing import (
    clamp_usage,
    cost_microusd,
    customer_prices,
    format_usd,
    hold_microusd,
    parse_usd,
    price_list,
    render_price_table_html,
)
from relayproxy.config.settings import ConfigError, ModelConfig, parse_config
from relayproxy.ir import Usage

D = Fraction(3, 10)
GPT = ModelConfig(
    "gpt-5.5",
    "openai",
    "gpt-5.5",
    input_price=1.25,
    output_price=10.0,
    cached_input_price=0.125,
    max_output_tokens=32768,
)


def model(input_price: float, output_price: float, cached: float | None = None) -> ModelConfig:
    return ModelConfig("m", "p", "m", input_price, output_price, input_price if cached is None else cached, 1000)


def reference(usage: Usage, m: ModelConfig, discount: Fraction) -> Fraction:
    """The INTERFACE.md formula, literally, in exact arithmetic."""
    p_in, p_cached, p_out = (Fraction(str(x)) for x in (m.input_price, m.cached_input_price, m.output_price))
    inp, cached = usage.input_tokens, usage.cached_input_tokens
    usd = ((inp - cached) * p_in + cached * p_cached + usage.output_tokens * p_out) / 10**6 * (1 - discount)
    return usd * 10**6


# -- cost -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param(Usage(0, 0, 0, 0), 0, id="zero"),
        pytest.param(Usage(1, 0, 0, 0), 0, id="one-input-token-rounds-down"),  # 0.875 micro-USD
        pytest.param(Usage(2, 0, 0, 0), 1, id="two-input-tokens"),  # 1.75
        pytest.param(Usage(1000, 0, 500, 0), 4375, id="plain"),  # 875 + 3500
        pytest.param(Usage(1000, 800, 500, 0), 3745, id="cache-reads"),  # 200*.875 + 800*.0875 + 3500 = 3745
        pytest.param(Usage(1000, 0, 500, 400), 4375, id="reasoning-is-part-of-output"),
        pytest.param(Usage(3, 3, 0, 0), 0, id="all-cached-rounds-down"),  # 0.2625
        pytest.param(Usage(100_000_000, 0, 100_000_000, 0), 787_500_000, id="huge"),
        pytest.param(Usage(128_000, 64_000, 32_768, 30_000), 290_976, id="long-context"),  # 56000 + 5600 + 229376
    ],
)
def test_cost_examples(usage: Usage, expected: int) -> None:
    assert cost_microusd(usage, GPT, D) == expected
    assert expected == int(reference(usage, GPT, D))


@pytest.mark.parametrize(
    ("price", "tokens", "expected"),
    [(0.07, 1000, 49), (0.1, 700, 49), (0.3, 500, 105), (1.1, 300, 231), (2.2, 150, 231)],
)
def test_cost_is_exact_where_float_arithmetic_is_not(price: float, tokens: int, expected: int) -> None:
    """Example failure prevented: 700 tokens at $0.10/M less 30 % is 49 micro-USD, float says 48.999..."""
    naive = tokens * price / 1e6 * (1 - 0.3) * 1e6
    assert naive < expected  # the bug this guards against
    assert cost_microusd(Usage(tokens, 0, 0, 0), model(price, 0), D) == expected


@given(
    inp=st.integers(0, 10**9),
    cached_frac=st.fractions(0, 1),
    out=st.integers(0, 10**9),
    prices=st.tuples(*(st.decimals(0, 1000, places=4) for _ in range(3))),
    discount=st.fractions(Fraction(3, 10), Fraction(99, 100)),
)
def test_cost_matches_the_formula_rounded_down(inp, cached_frac, out, prices, discount) -> None:
    cached = int(inp * cached_frac)
    m = model(float(prices[0]), float(prices[1]), float(prices[2]))
    usage = Usage(inp, cached, out, 0)
    exact = reference(usage, m, discount)
    got = cost_microusd(usage, m, discount)
    assert isinstance(got, int)
    assert got <= exact < got + 1


def test_customer_prices_apply_the_discount_exactly() -> None:
    p = customer_prices(GPT, D)
    assert (p.input, p.cached_input, p.output) == (Fraction(7, 8), Fraction(7, 80), Fraction(7))


# -- holds ----------------------------------------------------------------------------------------


def test_hold_rounds_up() -> None:
    assert hold_microusd(1, 0, GPT, D) == 1  # 0.875 -> 1
    assert hold_microusd(0, 1, GPT, D) == 7
    assert hold_microusd(1000, 500, GPT, D) == 4375  # exact stays exact


def test_hold_defaults_to_the_model_output_cap_and_prices_input_at_the_dearer_rate() -> None:
    assert hold_microusd(0, None, GPT, D) == 32768 * 7
    cheap_cache_inverted = model(0.1, 1.0, cached=0.5)
    assert hold_microusd(10, 0, cheap_cache_inverted, D) == 4  # 10 * 0.35 = 3.5 -> 4


@given(
    inp=st.integers(0, 10**7),
    cached=st.integers(0, 10**7),
    limit=st.integers(1, 10**6),
    out_frac=st.fractions(0, 1),
)
def test_cost_within_the_limits_never_exceeds_the_hold(inp, cached, limit, out_frac) -> None:
    usage = Usage(inp, min(cached, inp), int(limit * out_frac), 0)
    assert cost_microusd(usage, GPT, D) <= hold_microusd(inp, limit, GPT, D)


# -- integer rates: bit-identical to the Fraction formula ---------------------------------------------


def fraction_cost(usage: Usage, m: ModelConfig, discount: Fraction) -> int:
    """cost_microusd as it was computed with Fractions, kept as the reference."""
    p = customer_prices(m, discount)
    inp = max(usage.input_tokens, 0)
    cached = min(max(usage.cached_input_tokens, 0), inp)
    out = max(usage.output_tokens, 0)
    return max(math.floor((inp - cached) * p.input + cached * p.cached_input + out * p.output), 0)


def fraction_hold(estimate: int, limit: int | None, m: ModelConfig, discount: Fraction) -> int:
    """hold_microusd as it was computed with Fractions, kept as the reference."""
    p = customer_prices(m, discount)
    out = m.max_output_tokens if limit is None else limit
    return math.ceil(max(estimate, 0) * max(p.input, p.cached_input) + max(out, 0) * p.output)


PRICES = st.one_of(
    st.decimals(0, 1000, places=6).map(float),
    st.sampled_from([0.0, 0.07, 0.1, 0.125, 0.3, 1.1, 1.25, 2.2, 10.0, 1e-06, 0.000123, 75.0, 1 / 3]),
)
COUNTS = st.integers(-(10**3), 10**12)


@given(
    usage=st.builds(Usage, COUNTS, COUNTS, COUNTS, st.just(0)),
    prices=st.tuples(PRICES, PRICES, PRICES),
    max_output=st.integers(1, 10**6),
    estimate=COUNTS,
    limit=st.one_of(st.none(), COUNTS),
    discount=st.one_of(st.fractions(0, Fraction(999, 1000)), st.sampled_from([D, Fraction(35, 100), Fraction(1, 3)])),
)
def test_integer_rates_match_the_fraction_formula(
    usage: Usage,
    prices: tuple[float, float, float],
    max_output: int,
    estimate: int,
    limit: int | None,
    discount: Fraction,
) -> None:
    m = ModelConfig("m", "p", "m", prices[0], prices[1], prices[2], max_output)
    assert cost_microusd(usage, m, discount) == fraction_cost(usage, m, discount)
    assert hold_microusd(estimate, limit, m, discount) == fraction_hold(estimate, limit, m, discount)


@pytest.mark.parametrize(
    ("usage", "estimate", "limit"),
    [
        (Usage(0, 0, 0, 0), 0, 0),
        (Usage(1, 0, 0, 0), 1, 0),
        (Usage(700, 0, 0, 0), 700, 1),
        (Usage(1000, 800, 500, 0), 1000, None),
        (Usage(10**8, 10**8 - 1, 10**8, 0), 10**8, 10**8),
        (Usage(-5, -1, -7, 0), -5, -7),
    ],
)
@pytest.mark.parametrize("m", [GPT, model(0.07, 0.3), model(0.1, 1.0, cached=0.5), model(1 / 3, 2 / 3, cached=0.0)])
@pytest.mark.parametrize("discount", [D, Fraction(35, 100), Fraction(0), Fraction(7, 9)])
def test_integer_rates_match_the_fraction_formula_on_a_table(
    usage: Usage, estimate: int, limit: int | None, m: ModelConfig, discount: Fraction
) -> None:
    assert cost_microusd(usage, m, discount) == fraction_cost(usage, m, discount)
    assert hold_microusd(estimate, limit, m, discount) == fraction_hold(estimate, limit, m, discount)


def test_rates_follow_the_discount_and_the_model_object() -> None:
    """The per-model cache never serves one discount's or one model's rates for another."""
    usage = Usage(1000, 0, 1000, 0)
    assert cost_microusd(usage, GPT, D) == 7875  # 875 + 7000
    assert cost_microusd(usage, GPT, Fraction(1, 2)) == 5625  # 625 + 5000
    assert cost_microusd(usage, GPT, Fraction(3, 10)) == 7875  # an equal discount, another object
    twin = ModelConfig("gpt-5.5", "openai", "gpt-5.5", 2.5, 20.0, 0.25, 32768)
    assert cost_microusd(usage, twin, D) == 15750
    assert cost_microusd(usage, GPT, D) == 7875


def test_rate_cache_is_bounded() -> None:
    for i in range(billing._RATES_MAX + 10):
        cost_microusd(Usage(1, 0, 0, 0), model(1.0 + i, 1.0), D)
    assert billing._rates.cache_info().currsize <= billing._RATES_MAX


# -- clamping untrusted usage -------------------------------------------------------------------------


def test_clamp_leaves_sane_usage_alone() -> None:
    usage = Usage(1000, 200, 300, 100)
    assert clamp_usage(usage, 4096) == (usage, [])


@pytest.mark.parametrize(
    ("usage", "limit", "clamped", "flags"),
    [
        (Usage(-5, 0, 10, 0), 100, Usage(0, 0, 10, 0), ["negative_input_tokens"]),
        (
            Usage(10, -1, -7, -2),
            100,
            Usage(10, 0, 0, 0),
            ["negative_cached_input_tokens", "negative_output_tokens", "negative_reasoning_tokens"],
        ),
        (Usage(10, 0, 5000, 0), 100, Usage(10, 0, 1200, 0), ["output_over_limit"]),
        (Usage(10, 0, 1200, 0), 100, Usage(10, 0, 1200, 0), []),  # 2 x 100 + 1,000 is still fine
        (Usage(10, 50, 5, 0), 100, Usage(10, 10, 5, 0), ["cached_over_input"]),
        (Usage(10, 0, 5, 9), 100, Usage(10, 0, 5, 5), ["reasoning_over_output"]),
        (Usage(10**12, 0, 5, 0), None, Usage(10**8, 0, 5, 0), ["absurd_input_tokens"]),
        (Usage(10, 0, 10**12, 0), None, Usage(10, 0, 10**8, 0), ["absurd_output_tokens"]),
    ],
)
def test_clamp_flags_each_correction(usage: Usage, limit: int | None, clamped: Usage, flags: list[str]) -> None:
    assert clamp_usage(usage, limit) == (clamped, flags)


@given(
    usage=st.builds(Usage, *(st.integers(-(10**15), 10**15) for _ in range(4))),
    limit=st.one_of(st.none(), st.integers(1, 10**6)),
)
def test_no_usage_ever_produces_a_credit(usage: Usage, limit: int | None) -> None:
    """Example failure prevented: negative upstream usage credited back to the caller (octopus #243)."""
    clamped, _ = clamp_usage(usage, limit)
    assert 0 <= clamped.cached_input_tokens <= clamped.input_tokens <= billing.MAX_TOKENS
    assert 0 <= clamped.reasoning_tokens <= clamped.output_tokens <= billing.MAX_TOKENS
    assert cost_microusd(clamped, GPT, D) >= 0
    assert cost_microusd(usage, GPT, D) >= 0  # even unclamped


# -- amounts as text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "micro"), [("12.50", 12_500_000), ("0.000001", 1), ("5", 5_000_000), (" 1e2 ", 10**8)]
)
def test_parse_usd(text: str, micro: int) -> None:
    assert parse_usd(text) == micro


@pytest.mark.parametrize("text", ["", "ten", "0.0000001", "NaN", "Infinity", "1,5"])
def test_parse_usd_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="USD amount"):
        parse_usd(text)


def test_format_usd() -> None:
    assert [format_usd(x) for x in (0, 1, 12_500_000, -1_000_001)] == ["0.000000", "0.000001", "12.500000", "-1.000001"]


# -- the price list -----------------------------------------------------------------------------------

RAW: dict[str, Any] = {
    "billing": {"discount": 0.35},
    "providers": {"openai": {"protocol": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "K"}},
    "models": {
        "gpt-5.5": {"provider": "openai", "input_price": 1.25, "output_price": 10, "cached_input_price": 0.125},
        "<b>odd</b>": {"provider": "openai", "input_price": 0.1, "output_price": 0.3},
    },
}


def test_price_list_is_the_interface_json() -> None:
    prices = price_list(parse_config(RAW, Path("/x/config.toml")))
    assert {k: v for k, v in prices.items() if k != "data"} == {
        "object": "list",
        "currency": "usd",
        "unit": "per_1m_tokens",
        "discount": 0.35,
    }
    assert prices["data"][0] == {
        "id": "gpt-5.5",
        "provider": "openai",
        "protocol": "openai",
        "list_price": {"input": 1.25, "cached_input": 0.125, "output": 10.0},
        "price": {"input": 0.8125, "cached_input": 0.08125, "output": 6.5},
    }
    assert prices["data"][1]["price"] == {"input": 0.065, "cached_input": 0.065, "output": 0.195}


def test_price_page_is_self_contained_and_escaped() -> None:
    page = render_price_table_html(price_list(parse_config(RAW, Path("/x/config.toml"))))
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page
    assert "&lt;b&gt;odd&lt;/b&gt;" in page and "<b>odd" not in page
    assert "<td>0.8125</td>" in page and "35% below list" in page


# -- config keys and purity ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("billing_table", "needle"),
    [
        ({"topup_min_usd": 0}, "[billing] topup_min_usd: must be a positive USD amount"),
        ({"topup_min_usd": 5.001}, "[billing] topup_min_usd: must be a positive USD amount in whole cents"),
        ({"topup_max_usd": "lots"}, "[billing] topup_max_usd: expected a USD amount"),
        ({"topup_min_usd": 50, "topup_max_usd": 10}, "[billing] topup_max_usd: must be at least topup_min_usd"),
        ({"success_url": "relay.example/ok"}, "[billing] success_url: must start with https://"),
        ({"stripe_api_base": 5}, "[billing] stripe_api_base: expected str"),
        ({"livemode": "yes"}, "[billing] livemode: expected bool"),
        ({"stripe_key": "sk_live"}, "[billing] stripe_key: unknown key"),
    ],
)
def test_billing_config_errors_name_the_key(billing_table: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**RAW, "billing": billing_table}, Path("/x/config.toml"))
    assert needle in str(info.value)


def test_billing_config_defaults_and_values() -> None:
    raw = {
        **RAW,
        "billing": {"topup_min_usd": 2.5, "topup_max_usd": 500, "livemode": True, "success_url": "https://r/ok"},
    }
    b = parse_config(raw, Path("/x/config.toml")).billing
    assert (str(b.topup_min_usd), str(b.topup_max_usd), b.livemode, b.success_url, b.cancel_url) == (
        "2.5",
        "500",
        True,
        "https://r/ok",
        None,
    )
    defaults = parse_config({}, Path("/x/config.toml")).billing
    assert (defaults.topup_min_usd, defaults.topup_max_usd, defaults.livemode) == (Decimal(5), Decimal(1000), False)


def test_billing_is_pure() -> None:
    """billing.py is in the pure layer: no I/O, clock, logging or Stripe."""
    tree = ast.parse(Path(billing.__file__).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    assert not imported & {"asyncio", "socket", "ssl", "h11", "aiosqlite", "sqlite3", "logging", "stripe", "time", "os"}
