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
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from actors.errors import BudgetExceeded
from actors.core.gcounter import GCounter
from actors.core.periods import Period

__all__ = ["RateLimits", "Reservation", "WindowedLimiter", "WindowUsage", "SyncSchedule", "CounterDelta",
           "estimate_tokens", "window_at", "COUNTERS"]

COUNTERS = ("requests", "tokens", "requests_refunded", "tokens_refunded")
CounterDelta = dict[int, dict[str, dict[str, int]]]   # {window: {counter: {slot: absolute count}}}
RETAINED_WINDOWS = 2
LAG_MEMORY_S = 5.0     # how long an observed propagation delay keeps counting
LAG_MARGIN_S = 0.01
# How long a slot remembers its own admissions: a delay measured later than they were made may
# widen the staleness past them, and they must count as recent again then.
RECALL_S = 2 * LAG_MEMORY_S


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
    # When the leader cannot be reached (strict), or this node is outside the cluster
    # (approximate): refuse, or admit within this node's share (budget / nodes) until it is
    # back. Default: fail for strict, local_share for approximate (docs/cluster.md).
    leader_unavailable: Literal["fail", "local_share"] | None = None
    # Spend budgets (core/budget.py): windows are these periods (calendar months included)
    # instead of floor(t / window_s); tpm then counts nano-USD.
    period: Period | None = None

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
        if self.leader_unavailable is None:
            object.__setattr__(self, "leader_unavailable", "fail" if self.mode == "strict" else "local_share")
        if self.leader_unavailable not in ("fail", "local_share"):
            raise ValueError("leader_unavailable must be fail or local_share")

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None

    def divided(self, shares: int) -> RateLimits:
        """One of ``shares`` equal parts (at least 1 of each limit): a node's share while it is
        outside the cluster (``leader_unavailable: local_share``)."""
        return RateLimits(rpm=max(1, self.rpm // shares) if self.rpm else None,
                          tpm=max(1, self.tpm // shares) if self.tpm else None,
                          burst=self.burst, window_s=self.window_s)

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


def window_at(limits: RateLimits, now: float) -> tuple[int, float]:
    """The window ``now`` (unix time) falls in, and how far through it (0..1)."""
    if limits.period is not None:
        return limits.period.at(now)
    index = math.floor(now / limits.window_s)
    return index, (now - index * limits.window_s) / limits.window_s


def estimate_tokens(messages: Iterable[Mapping[str, Any]] | str, max_output_tokens: int | None,
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


class SyncSchedule:
    """When a replica's changes go to the hub: ``interval_s`` after the last delta went, once
    something changed (an admission, a refund, a merge of a seed)."""

    def __init__(self, interval_s: float, now: float, dirty: bool = False) -> None:
        self.interval_s = interval_s
        self.last = now
        self.dirty = dirty

    def touch(self) -> None:
        self.dirty = True

    def due(self) -> float | None:
        return self.last + self.interval_s if self.dirty else None

    def sent(self, now: float) -> None:
        self.last, self.dirty = now, False


class WindowedLimiter:
    """One deployment's budget as seen by one node, mergeable with every other node's."""

    def __init__(self, node: str, limits: RateLimits, wall_clock: Callable[[], float] = time.time,
                 sync_interval_s: float = 0.05, rand: Callable[[], float] = random.random,
                 exclusive: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self._rand = rand
        # An exclusive limiter is the only one admitting (the strict singleton): no shares.
        self.exclusive = exclusive
        self.limits = limits
        self._wall = wall_clock
        self._windows: dict[int, dict[str, GCounter]] = {}
        self._clock = clock
        # What this slot admitted recently enough that other slots may not have seen it
        # yet. How recent that is gets measured, not assumed: every delta carries the time
        # of its oldest admission, and the age at which deltas arrive here is how stale
        # views get in this cluster, under this load (the way back is as long).
        self.sync_interval_s = sync_interval_s
        self.unpublished_since: float | None = None  # wall time of the oldest admission not yet in a delta
        self._lags: deque[tuple[float, float]] = deque()  # (arrival, age), the last LAG_MEMORY_S
        self._recent: deque[tuple[float, int, int, int]] = deque()  # (time, window, requests, tokens)
        # Deltas older on arrival than the staleness then assumed: the share rule's premise broke
        # (a stall longer than the last few seconds showed), so the budget may have been overrun.
        self.late_deltas = 0
        self.worst_late_s = 0.0

    # -- windows ---------------------------------------------------------------------

    def _window_at(self, now: float) -> tuple[int, float]:
        return window_at(self.limits, now)

    def current_window(self) -> int:
        return self._window_at(self._wall())[0]

    def until_next_window(self) -> float:
        """Seconds until the current window ends."""
        now = self._wall()
        window, _ = self._window_at(now)
        period = self.limits.period
        end = period.end(window) if period is not None else (window + 1) * self.limits.window_s
        return max(0.0, end - now)

    def own(self, window: int) -> tuple[int, int]:
        """What this slot spent in ``window`` (requests, tokens): granted less refunded."""
        counters = self._windows.get(window)
        if counters is None:
            return 0, 0
        node = self.node
        return (counters["requests"].get(node) - counters["requests_refunded"].get(node),
                counters["tokens"].get(node) - counters["tokens_refunded"].get(node))

    def slots(self, window: int) -> dict[str, tuple[int, int]]:
        """What every slot spent in ``window``, as far as this replica has merged."""
        counters = self._windows.get(window)
        if counters is None:
            return {}
        names = set(counters["requests"].nodes()) | set(counters["tokens"].nodes())
        return {n: (counters["requests"].get(n) - counters["requests_refunded"].get(n),
                    counters["tokens"].get(n) - counters["tokens_refunded"].get(n)) for n in names}

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
        refused = self.refusal(tokens, requests)
        if refused is not None:
            return refused
        window, elapsed = self._window_at(self._wall())
        limits = self.limits
        spent_requests, spent_tokens = self._spent(window)
        participants = 1 if self.exclusive else self.participants(window)
        recent_requests, recent_tokens = self._recent_spend(window) if participants > 1 else (0, 0)
        checks = (("rpm", limits.rpm, spent_requests, requests, recent_requests),
                  ("tpm", limits.tpm, spent_tokens, tokens, recent_tokens))
        for name, limit, spent, cost, recent in checks:
            if limit is None:
                continue
            allowed = limits.allowed(limit, elapsed)
            # Every slot may be admitting on a view that misses what the others admitted
            # in the last ``staleness_s``. If each slot takes at most an equal share of
            # what was left before that, together they stay within the budget. A share
            # smaller than one request is taken with the matching probability, so the
            # tail is neither starved nor overrun on average.
            if participants > 1:
                share = (allowed - (spent - recent)) / participants
                if recent + cost > share and (recent or self._rand() * cost >= share):
                    return BudgetExceeded(f"{name}: this node's share of the rest of the window is taken "
                                          f"until the next sync", limit=name, retry_after_s=self.sync_interval_s)
        self.record(tokens, requests, window)
        return Reservation(window, requests, tokens)

    def refusal(self, tokens: int, requests: int = 1) -> BudgetExceeded | None:
        """Why the merged view has no room for this cost (changing nothing), or None. The engine's
        refusal of a spent window, and what it pushes for the router to refuse with (core/refusals.py)."""
        window, elapsed = self._window_at(self._wall())
        limits = self.limits
        for name, limit, cost in (("rpm", limits.rpm, requests), ("tpm", limits.tpm, tokens)):
            if limit is not None and cost > limit:
                return BudgetExceeded(f"one request needs {cost} against a {name} budget of {limit}",
                                      limit=name, retryable=False)
        spent_requests, spent_tokens = self._spent(window)
        for name, limit, spent, cost in (("rpm", limits.rpm, spent_requests, requests),
                                         ("tpm", limits.tpm, spent_tokens, tokens)):
            if limit is not None and spent + cost > limits.allowed(limit, elapsed):
                return BudgetExceeded(f"{name} budget spent in this window ({spent}/{limit})",
                                      limit=name, retry_after_s=self._wait_for(limit, spent, cost, elapsed))
        return None

    def record(self, tokens: int, requests: int = 1, window: int | None = None) -> Reservation:
        """Count spend without checking it (e.g. a strict limiter's grant mirrored here)."""
        if window is None:
            window = self._window_at(self._wall())[0]
        counters = self._counters(window)
        assert counters is not None
        counters["requests"].increment(self.node, requests)
        counters["tokens"].increment(self.node, tokens)
        if self.unpublished_since is None:
            self.unpublished_since = self._wall()
        now = self._clock()
        if self._recent and now - self._recent[0][0] > RECALL_S + LAG_MEMORY_S:   # now and then: amortised
            self._forget_before(now - max(RECALL_S, self.staleness_s))
        self._recent.append((now, window, requests, tokens))
        return Reservation(window, requests, tokens)

    def _forget_before(self, horizon: float) -> None:
        recent = self._recent
        while recent and recent[0][0] <= horizon:
            recent.popleft()

    def _recent_spend(self, window: int) -> tuple[int, int]:
        now, staleness = self._clock(), self.staleness_s
        self._forget_before(now - max(RECALL_S, staleness))
        horizon = now - staleness
        requests = tokens = 0
        for at, w, r, t in reversed(self._recent):
            if at <= horizon:
                break
            if w == window:
                requests += r
                tokens += t
        return requests, tokens

    def participants(self, window: int | None = None) -> int:
        """Slots that spent from this budget in this or the previous window (this one included)."""
        if window is None:
            window = self._window_at(self._wall())[0]
        slots = {self.node}
        for w in (window, window - 1):
            counters = self._windows.get(w)
            if counters is not None:
                slots.update(n for n in counters["requests"].nodes() if counters["requests"].get(n))
        return len(slots)

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

    def take_delta(self) -> CounterDelta:
        """This node's changes since the last call: {window: {counter: {node: absolute}}}."""
        self.unpublished_since = None
        delta: CounterDelta = {}
        for window, counters in self._windows.items():
            changed = {name: d for name, counter in counters.items() if (d := counter.take_delta())}
            if changed:
                delta[window] = changed
        return delta

    def state(self) -> CounterDelta:
        """Full state, for a node that joins late or missed deltas."""
        self._drop_old_windows(self._window_at(self._wall())[0])
        return {window: {name: counter.state() for name, counter in counters.items()}
                for window, counters in self._windows.items()}

    @property
    def staleness_s(self) -> float:
        """How long another slot may go without seeing an admission of ours."""
        horizon = self._clock() - LAG_MEMORY_S
        while self._lags and self._lags[0][0] < horizon:
            self._lags.popleft()
        worst = max((lag for _, lag in self._lags), default=2 * self.sync_interval_s)
        # Doubled: delays grow under load faster than the last few seconds can show.
        return 2 * max(worst, self.sync_interval_s) + LAG_MARGIN_S

    def merge(self, delta: Mapping[int, Mapping[str, Mapping[str, int]]], sent_unix: float | None = None) -> None:
        """Merge another slot's (or a hub's) counts; ``sent_unix``: when the oldest of them was admitted."""
        if sent_unix is not None:
            age = max(0.0, self._wall() - sent_unix)
            if age > self.staleness_s:
                self.late_deltas += 1
                self.worst_late_s = max(self.worst_late_s, age)
            self._lags.append((self._clock(), age))
        for window, named in delta.items():
            counters = self._counters(int(window))
            if counters is None:
                continue
            for name, counts in named.items():
                counter = counters.get(name)
                if counter is not None:
                    counter.merge_state(counts)

    def view_health(self) -> dict[str, float]:
        """How stale this replica may be, and how often deltas came later than that (since start)."""
        return {"staleness_s": round(self.staleness_s, 4), "late_deltas": self.late_deltas,
                "worst_late_s": round(self.worst_late_s, 4)}

    def usage(self) -> WindowUsage:
        window, _ = self._window_at(self._wall())
        requests, tokens = self._spent(window)
        period = self.limits.period
        start = period.start(window) if period is not None else window * self.limits.window_s
        return WindowUsage(window, start, requests, tokens,
                           self.limits.rpm, self.limits.tpm)
