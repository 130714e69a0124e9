"""The overview's spend chart: 30 daily bars, computed here and drawn as inline SVG by the template."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

__all__ = ["Bar", "spend_bars"]

WIDTH, HEIGHT, DAYS = 600, 120, 30


@dataclass(frozen=True, slots=True)
class Bar:
    day: str
    microusd: int
    x: float
    y: float
    width: float
    height: float


def spend_bars(per_day: dict[str, int], today: date) -> list[Bar]:
    """One bar per day of the last 30 (today last), heights scaled to the largest day."""
    days = [(today - timedelta(days=DAYS - 1 - i)).isoformat() for i in range(DAYS)]
    top = max([per_day.get(d, 0) for d in days] + [1])
    slot = WIDTH / DAYS
    bars = []
    for i, day in enumerate(days):
        amount = per_day.get(day, 0)
        height = round(HEIGHT * amount / top, 1) if amount else 0.0
        bars.append(Bar(day, amount, round(i * slot + 1, 1), round(HEIGHT - height, 1), round(slot - 2, 1), height))
    return bars
