"""Budget periods: fixed-length windows aligned on Unix time, and calendar months (UTC).

Every node agrees on which period a moment belongs to without talking, as for the rate
limits' windows: ``1h`` is the clock hour, ``1d`` the UTC day, ``30d`` a 30-day block since
the epoch, ``1mo`` the calendar month. A period is an integer index; consecutive periods
have consecutive indexes, so "keep the current and the previous one" works for both kinds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone

__all__ = ["Period", "parse_period"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "mo": 0}
_FORM = re.compile(r"^(\d+)(mo|s|m|h|d)$")


@dataclass(frozen=True, slots=True)
class Period:
    """``seconds`` > 0 for fixed windows; ``months`` > 0 for calendar months (then seconds == 0)."""

    text: str
    seconds: float = 0.0
    months: int = 0

    def index(self, now: float) -> int:
        if self.months:
            t = datetime.fromtimestamp(now, timezone.utc)
            return (t.year * 12 + t.month - 1) // self.months
        return math.floor(now / self.seconds)

    def start(self, index: int) -> float:
        if self.months:
            m = index * self.months
            return datetime(m // 12, m % 12 + 1, 1, tzinfo=timezone.utc).timestamp()
        return index * self.seconds

    def end(self, index: int) -> float:
        return self.start(index + 1)

    def at(self, now: float) -> tuple[int, float]:
        """(period index, fraction of it elapsed)."""
        index = self.index(now)
        start, end = self.start(index), self.end(index)
        return index, (now - start) / (end - start)

    @property
    def nominal_s(self) -> float:
        """Its length, months counted as 30 days (for waits and display only)."""
        return self.seconds or self.months * 30 * 86400.0


def parse_period(text: str) -> Period:
    """``"1h"``, ``"1d"``, ``"30d"``, ``"1mo"``, ``"10s"`` ... -> Period; ValueError otherwise."""
    match = _FORM.match(text.strip()) if isinstance(text, str) else None
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"period: expected a count and a unit (s, m, h, d, mo), e.g. 1h, 1d, 30d, 1mo, got {text!r}")
    count, unit = int(match.group(1)), match.group(2)
    if unit == "mo":
        if 12 % count:
            raise ValueError(f"period: months must divide a year (1, 2, 3, 4, 6, 12), got {text!r}")
        return Period(text.strip(), months=count)
    return Period(text.strip(), seconds=float(count * _UNITS[unit]))
