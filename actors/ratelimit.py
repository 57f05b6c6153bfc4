"""Requests-per-minute and tokens-per-minute arithmetic over per-window GCounters.

Windows are aligned on wall-clock time (``floor(unix_time / window_s)``), so every node
agrees on which window a moment belongs to without talking. Each window keeps four
GCounters, all mergeable across the cluster: requests and tokens granted, and requests
and tokens refunded (a GCounter cannot go down, so reconciliation below an estimate is
recorded as a refund). Spent = granted - refunded. Only the current and the previous
window are kept.

``burst`` paces a window: without it the whole budget may be spent at the window's
start (and twice across a boundary); with it, at a fraction ``f`` of the way through a
window at most ``limit * min(1, burst + f)`` may have been spent, i.e. the budget
refills linearly like a token bucket whose depth is ``burst * limit``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import BudgetExceeded
from .gcounter import GCounter

__all__ = ["RateLimits", "Reservation", "WindowedLimiter", "WindowUsage", "estimate_tokens", "COUNTERS"]

COUNTERS = ("requests", "tokens", "requests_refunded", "tokens_refunded")
RETAINED_WINDOWS = 2


@dataclass(frozen=True, slots=True)
class RateLimits:
    rpm: int | None = None
    tpm: int | None = None
    burst: float | None = None
    window_s: float = 60.0
    # How the cluster enforces it: GCounter deltas between nodes (fast, may overshoot by
    # about one sync interval of traffic) or one exact limiter on the convention leader.
    mode: Literal["approximate", "strict"] = "approximate"
    # Deployments naming the same key share one budget (default: the deployment name).
    key: str | None = None
    # Strict mode only, when the leader cannot be reached: refuse, or admit against
    # this node's share (budget / nodes) until it is back.
    leader_unavailable: Literal["fail", "local_share"] = "fail"

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 when set")
        if self.burst is not None and not 0 < self.burst <= 1:
            raise ValueError("burst must be in (0, 1]")
        if self.window_s <= 0:
            raise ValueError("window_s must be > 0")
        if self.mode not in ("approximate", "strict"):
            raise ValueError("mode must be approximate or strict")
        if self.leader_unavailable not in ("fail", "local_share"):
            raise ValueError("leader_unavailable must be fail or local_share")

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None

    def allowed(self, limit: int, fraction_elapsed: float) -> float:
        if self.burst is None:
            return float(limit)
        return limit * min(1.0, self.burst + fraction_elapsed)


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one admitted request holds: reconciled or released exactly once."""

    window: int
    requests: int
    tokens: int


@dataclass(frozen=True, slots=True)
class WindowUsage:
    window: int
    window_start_unix: float
    requests: int
    tokens: int
    rpm: int | None
    tpm: int | None


def estimate_tokens(messages: Iterable[Mapping] | str, max_output_tokens: int | None,
                    default_output_tokens: int = 256) -> int:
    """A cheap upper-leaning estimate for reservation: ~4 characters per token, plus output.

    Reservations are reconciled with reported usage, so this only needs to be in the
    right ballpark and never zero.
    """
    if isinstance(messages, str):
        chars = len(messages)
    else:
        chars = 0
        for message in messages:
            content = message.get("content", "")
            chars += len(content) if isinstance(content, str) else len(str(content))
            chars += 16  # role and framing tokens
    output = max_output_tokens if max_output_tokens is not None else default_output_tokens
    return max(1, math.ceil(chars / 4) + max(0, output))


class WindowedLimiter:
    """One deployment's budget as seen by one node, mergeable with every other node's."""

    def __init__(self, node: str, limits: RateLimits,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.limits = limits
        self._wall = wall_clock
        self._windows: dict[int, dict[str, GCounter]] = {}

    # -- windows ---------------------------------------------------------------------

    def _window_at(self, now: float) -> tuple[int, float]:
        window_s = self.limits.window_s
        index = math.floor(now / window_s)
        return index, (now - index * window_s) / window_s

    def _counters(self, window: int) -> dict[str, GCounter] | None:
        current, _ = self._window_at(self._wall())
        if window <= current - RETAINED_WINDOWS or window > current + 1:
            return None  # too old to matter, or from a node whose clock is far ahead
        counters = self._windows.get(window)
        if counters is None:
            counters = self._windows[window] = {name: GCounter() for name in COUNTERS}
            self._drop_old_windows(current)
        return counters

    def _drop_old_windows(self, current: int) -> None:
        for old in [w for w in self._windows if w <= current - RETAINED_WINDOWS]:
            del self._windows[old]

    def _spent(self, window: int) -> tuple[int, int]:
        counters = self._windows.get(window)
        if counters is None:
            return 0, 0
        return (counters["requests"].value - counters["requests_refunded"].value,
                counters["tokens"].value - counters["tokens_refunded"].value)

    # -- admission -------------------------------------------------------------------

    def try_acquire(self, tokens: int, requests: int = 1) -> Reservation | BudgetExceeded:
        """Admit against the merged cluster view, or say why not and when to come back."""
        now = self._wall()
        window, elapsed = self._window_at(now)
        limits = self.limits
        for name, limit, cost in (("rpm", limits.rpm, requests), ("tpm", limits.tpm, tokens)):
            if limit is not None and cost > limit:
                return BudgetExceeded(f"one request needs {cost} against a {name} budget of {limit}",
                                      limit=name, retryable=False)
        spent_requests, spent_tokens = self._spent(window)
        for name, limit, spent, cost in (("rpm", limits.rpm, spent_requests, requests),
                                         ("tpm", limits.tpm, spent_tokens, tokens)):
            if limit is not None and spent + cost > limits.allowed(limit, elapsed):
                wait = self._wait_for(limit, spent, cost, elapsed)
                return BudgetExceeded(f"{name} budget spent in this window ({spent}/{limit})",
                                      limit=name, retry_after_s=wait)
        counters = self._counters(window)
        assert counters is not None
        counters["requests"].increment(self.node, requests)
        counters["tokens"].increment(self.node, tokens)
        return Reservation(window, requests, tokens)

    def _wait_for(self, limit: int, spent: int, cost: int, elapsed: float) -> float:
        """Seconds until ``cost`` more fits, assuming nobody else spends meanwhile."""
        window_s = self.limits.window_s
        burst = self.limits.burst
        if burst is not None:
            needed_fraction = (spent + cost) / limit - burst
            if needed_fraction <= 1:
                return max(0.0, (needed_fraction - elapsed) * window_s)
        return (1 - elapsed) * window_s

    def reconcile(self, reservation: Reservation, actual_tokens: int) -> None:
        """Replace the reserved estimate with what the provider reported."""
        diff = actual_tokens - reservation.tokens
        if diff == 0:
            return
        counters = self._counters(reservation.window)
        if counters is None:
            if diff < 0:
                return  # the window is gone; a refund there cannot matter any more
            counters = self._counters(self._window_at(self._wall())[0])
            assert counters is not None
        if diff > 0:
            counters["tokens"].increment(self.node, diff)
        else:
            counters["tokens_refunded"].increment(self.node, -diff)

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose request never reached the provider."""
        counters = self._counters(reservation.window)
        if counters is not None:
            counters["requests_refunded"].increment(self.node, reservation.requests)
            counters["tokens_refunded"].increment(self.node, reservation.tokens)

    # -- cluster sync ----------------------------------------------------------------

    def take_delta(self) -> dict[int, dict[str, dict[str, int]]]:
        """This node's changes since the last call: {window: {counter: {node: absolute}}}."""
        delta: dict[int, dict[str, dict[str, int]]] = {}
        for window, counters in self._windows.items():
            changed = {name: d for name, counter in counters.items() if (d := counter.take_delta())}
            if changed:
                delta[window] = changed
        return delta

    def state(self) -> dict[int, dict[str, dict[str, int]]]:
        """Full state, for a node that joins late or missed deltas."""
        self._drop_old_windows(self._window_at(self._wall())[0])
        return {window: {name: counter.state() for name, counter in counters.items()}
                for window, counters in self._windows.items()}

    def merge(self, delta: Mapping[int, Mapping[str, Mapping[str, int]]]) -> None:
        for window, named in delta.items():
            counters = self._counters(int(window))
            if counters is None:
                continue
            for name, counts in named.items():
                counter = counters.get(name)
                if counter is not None:
                    counter.merge_state(counts)

    def usage(self) -> WindowUsage:
        window, _ = self._window_at(self._wall())
        requests, tokens = self._spent(window)
        return WindowUsage(window, window * self.limits.window_s, requests, tokens,
                           self.limits.rpm, self.limits.tpm)
