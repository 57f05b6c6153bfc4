"""An engine's load as the router reads it: queue, in-flight, circuit, decayed latency, headroom.

The engine keeps one :class:`LoadTracker`, feeds it the TerminalRecords of each step, and
pushes a :class:`LoadState` to its node's registry when it changed, at most once per
``interval_s`` (no message per request). Latency and TTFT are time-decayed means: a
sample's weight halves every ``half_life_s``, so a deployment that got slow shows it
within a few calls and one that recovered is not held to its past for long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["LoadState", "Decayed", "LoadTracker", "headroom", "HALF_LIFE_S", "PUSH_INTERVAL_S"]

HALF_LIFE_S = 30.0
PUSH_INTERVAL_S = 0.15


@dataclass(frozen=True)
class LoadState:
    queued: int = 0
    in_flight: int = 0
    circuit: str = "closed"
    latency_s: float | None = None    # non-streamed calls, decayed mean
    ttft_s: float | None = None       # streamed calls, decayed mean
    headroom: float | None = None     # fraction of the rate-limit window left; None: no limit
    price_in: float | None = None     # USD per million tokens
    price_out: float | None = None
    at_unix: float = 0.0              # when the engine took it (freshness, shown in docs/status)
    retry_at_unix: float | None = None   # an open circuit admits a probe from then on
    budget_spent: tuple[str, ...] = ()   # USD budgets (deployment, provider) without room for a typical call
    # What the engine refuses a typical request with now, its retry-after left to the reader, and
    # when that lifts (unix): the router refuses with this very error (core/refusals.py).
    refusal: Any = None
    refusal_until_unix: float | None = None


class Decayed:
    """A mean whose samples weigh 0.5 ** (age / half_life_s)."""

    __slots__ = ("half_life_s", "total", "weight", "at")

    def __init__(self, half_life_s: float = HALF_LIFE_S) -> None:
        self.half_life_s = half_life_s
        self.total = 0.0
        self.weight = 0.0
        self.at: float | None = None

    def add(self, value: float, now: float) -> None:
        if self.at is not None:
            keep = 0.5 ** (max(0.0, now - self.at) / self.half_life_s)
            self.total *= keep
            self.weight *= keep
        self.total += value
        self.weight += 1.0
        self.at = now

    @property
    def value(self) -> float | None:
        return self.total / self.weight if self.weight > 0 else None


def headroom(usage: Any) -> float | None:
    """Fraction of the current window left, the tighter of requests and tokens; None: unlimited.

    ``usage`` is a ``ratelimit.WindowUsage`` (requests, tokens, rpm, tpm). This is the
    "budget left" the router skips on; a USD budget would plug in beside it.
    """
    if usage is None:
        return None
    fractions = [1.0 - spent / limit for spent, limit in ((usage.requests, usage.rpm), (usage.tokens, usage.tpm))
                 if limit]
    return max(0.0, min(fractions)) if fractions else None


class LoadTracker:
    def __init__(self, *, half_life_s: float = HALF_LIFE_S, interval_s: float = PUSH_INTERVAL_S,
                 clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.latency = Decayed(half_life_s)
        self.ttft = Decayed(half_life_s)
        self.pushed: LoadState | None = None
        self.pushed_at: float | None = None

    def observe(self, records: Iterable[Any]) -> None:
        """Fold in TerminalRecords: completed calls, and timeouts (a deployment slow enough to time out is slow)."""
        now = self.clock()
        for r in records:
            if r.outcome != "completed" and r.error_kind != "Timeout":
                continue
            if r.streamed and r.ttft_s is not None:
                self.ttft.add(r.ttft_s, now)
            elif not r.streamed:
                self.latency.add(r.latency_s, now)

    def state(self, *, queued: int, in_flight: int, circuit: str, headroom: float | None,
              price_in: float | None, price_out: float | None, at_unix: float,
              retry_at_unix: float | None = None, budget_spent: tuple[str, ...] = (),
              refusal: Any = None, refusal_until_unix: float | None = None) -> LoadState:
        return LoadState(queued, in_flight, circuit, self.latency.value, self.ttft.value, headroom,
                         price_in, price_out, at_unix, retry_at_unix, budget_spent, refusal, refusal_until_unix)

    def due(self, state: LoadState) -> float | None:
        """When ``state`` should be pushed: now (a clock reading <= now), later, or None (nothing new)."""
        if self.pushed is not None and replace(state, at_unix=0.0) == replace(self.pushed, at_unix=0.0):
            return None
        if self.pushed_at is None:
            return self.clock()
        return self.pushed_at + self.interval_s

    def mark_pushed(self, state: LoadState) -> None:
        self.pushed, self.pushed_at = state, self.clock()
