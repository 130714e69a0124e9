"""The overview's 30-day spend bars."""

from __future__ import annotations

from datetime import date

from relayproxy.dashboard.chart import HEIGHT, spend_bars


def test_thirty_days_ending_today_scaled_to_the_largest() -> None:
    bars = spend_bars({"2026-12-07": 2_000_000, "2026-11-10": 500_000, "2026-11-01": 9_000_000}, date(2026, 12, 7))
    assert len(bars) == 30 and bars[0].day == "2026-11-08" and bars[-1].day == "2026-12-07"
    assert bars[-1].height == HEIGHT and bars[-1].y == 0  # the largest day inside the window
    assert bars[2].day == "2026-11-10" and bars[2].height == HEIGHT / 4
    assert sum(b.microusd for b in bars) == 2_500_000  # 2026-11-01 is outside the window
    assert all(b.height == 0 for b in bars if b.microusd == 0)
    assert all(bars[i].x < bars[i + 1].x for i in range(29))


def test_no_spend_draws_empty_bars() -> None:
    assert {b.height for b in spend_bars({}, date(2026, 1, 1))} == {0}
