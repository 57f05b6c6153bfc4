"""Per-call retry decisions: exponential backoff with jitter, Retry-After, deadlines, a retry budget.

``RetryPolicy`` is an immutable value read from configuration; ``RetryEngine`` applies it
with an injectable clock and random source, and owns the retry budget that keeps a
failing provider from being hit by a retry storm.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from actors.errors import InferenceError
from actors.types import AttemptInfo

__all__ = ["RetryPolicy", "RetryDecision", "RetryBudget", "RetryEngine", "caller_may_retry"]

Jitter = Literal["full", "equal", "none"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry one call.

    ``max_retries`` counts retries after the first attempt. A server's Retry-After wins
    over the computed backoff, up to ``max_retry_after_s``: past that we give up and
    surface the error rather than hold a worker for minutes. ``budget_ratio`` caps
    retries at that fraction of the calls seen in the last ``budget_window_s``, with
    ``budget_min_retries`` always allowed so a quiet deployment can still retry.
    """

    max_retries: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    multiplier: float = 2.0
    jitter: Jitter = "full"
    respect_retry_after: bool = True
    max_retry_after_s: float = 60.0
    budget_ratio: float = 0.2
    budget_min_retries: int = 10
    budget_window_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not 0 <= self.base_delay_s <= self.max_delay_s:
            raise ValueError("need 0 <= base_delay_s <= max_delay_s")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if self.jitter not in ("full", "equal", "none"):
            raise ValueError("jitter must be one of full, equal, none")
        if self.max_retry_after_s < 0 or self.budget_ratio < 0 or self.budget_min_retries < 0:
            raise ValueError("max_retry_after_s, budget_ratio and budget_min_retries must be >= 0")
        if self.budget_window_s <= 0:
            raise ValueError("budget_window_s must be > 0")

    def backoff(self, retry_number: int, rand: float) -> float:
        """Delay before retry ``retry_number`` (1-based), given ``rand`` in [0, 1)."""
        capped = min(self.max_delay_s, self.base_delay_s * self.multiplier ** (retry_number - 1))
        if self.jitter == "full":
            return capped * rand
        if self.jitter == "equal":
            return capped / 2 + capped / 2 * rand
        return capped


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    delay_s: float
    reason: str


class RetryBudget:
    """Sliding-window cap on retries relative to first attempts (as in Finagle's RetryBudget)."""

    __slots__ = ("ratio", "min_retries", "window_s", "_clock", "_calls", "_retries")

    def __init__(self, ratio: float, min_retries: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = ratio
        self.min_retries = min_retries
        self.window_s = window_s
        self._clock = clock
        self._calls: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        for stamps in (self._calls, self._retries):
            while stamps and stamps[0] <= horizon:
                stamps.popleft()

    def record_call(self) -> None:
        now = self._clock()
        self._prune(now)
        self._calls.append(now)

    def try_spend(self) -> bool:
        now = self._clock()
        self._prune(now)
        if len(self._retries) + 1 > self.min_retries + self.ratio * len(self._calls):
            return False
        self._retries.append(now)
        return True


class RetryEngine:
    """Decides, after a failed attempt, whether and when to try again."""

    def __init__(self, policy: RetryPolicy | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        self.policy = policy or RetryPolicy()
        self._clock = clock
        self._rand = rand
        self.budget = RetryBudget(self.policy.budget_ratio, self.policy.budget_min_retries,
                                  self.policy.budget_window_s, clock)

    def record_call(self) -> None:
        """Count a first attempt; the retry budget grows with real traffic."""
        self.budget.record_call()

    def decide(self, error: InferenceError, attempts: int, *, deadline: float | None = None,
               idempotent: bool = True, sent: bool = True) -> RetryDecision:
        """``attempts`` is how many attempts have been made, the failed one included.

        ``deadline`` is on the engine's clock (monotonic by default). ``sent``: the provider saw
        the failed attempt (``core/transport.py``); a call that is not idempotent is retried only
        when it did not (its connection was refused, its body never written).
        """
        policy = self.policy
        if not error.retryable:
            return RetryDecision(False, 0.0, f"{error.kind} is not retryable")
        if not idempotent and sent:
            return RetryDecision(False, 0.0, "request is not idempotent and the provider saw it")
        # An error class may allow fewer retries than the policy (e.g. EmptyResponse: one).
        max_retries = min(policy.max_retries, getattr(type(error), "max_retries", policy.max_retries))
        if attempts > max_retries:
            return RetryDecision(False, 0.0, f"gave up after {attempts} attempts")
        # A negative or NaN retry-after is no instruction at all: fall back to backoff.
        if policy.respect_retry_after and error.retry_after_s is not None and error.retry_after_s >= 0:
            if error.retry_after_s > policy.max_retry_after_s:
                return RetryDecision(False, 0.0, f"retry-after {error.retry_after_s:g}s exceeds "
                                                 f"max_retry_after_s {policy.max_retry_after_s:g}s")
            delay, why = error.retry_after_s, "server retry-after"
        else:
            delay, why = policy.backoff(attempts, self._rand()), "backoff"
        if deadline is not None and self._clock() + delay >= deadline:
            return RetryDecision(False, 0.0, "deadline would pass before the retry")
        if not self.budget.try_spend():
            return RetryDecision(False, 0.0, "retry budget exhausted")
        return RetryDecision(True, delay, f"{why} after {error.kind} (retry {attempts} of {max_retries})")


def caller_may_retry(error: InferenceError, attempts: Iterable[AttemptInfo]) -> bool:
    """Whether the caller should repeat the whole call (``x-should-retry``, and ``retryable`` of the
    error a GatewayClient raises): only when a repeat can help and the gateway made no attempt the
    repeat would duplicate. Once an attempt went to a worker, the gateway has spent the call's
    retries (the deployment's ``max_retries``); an SDK repeating it would multiply them."""
    return bool(error.retryable) and not any(a.sent for a in attempts)
