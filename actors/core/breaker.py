"""The circuit breaker state machine for one (provider, endpoint): Closed -> Open -> Half-open.

Pure and synchronous, with injectable clocks. It trips on consecutive failures or on a
failure rate over a sliding time window (once a minimum number of calls was seen), stays
open for a duration that grows with repeated trips, then lets a bounded number of probe
calls through: all succeed -> closed, any fails -> open again (longer).

Only signs of an unhealthy upstream count (``InferenceError.counts_for_breaker``: 5xx,
network errors, timeouts, broken streams). 429s, content-filter refusals and other 4xx
neither count as failures nor reset the consecutive-failure streak. What reaches it is already
judged by the engine: each request counts once, and a 5xx the upstream answered with a message
counts only once a known-good probe confirmed the deployment is sick (``core/caller_fault.py``).

Every transition bumps ``generation``. Outcomes may be reported with the generation in
which their call was admitted; a late outcome from an older generation is ignored, so a
slow call admitted before the circuit opened cannot close it again.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from actors.errors import CircuitOpen, InferenceError

__all__ = ["BreakerConfig", "BreakerSnapshot", "CircuitBreaker", "CircuitState", "BreakerView", "probe_outcome"]

T = TypeVar("T")
HISTORY_LENGTH = 120    # transitions kept for the dashboard's timeline (bounded, whatever the flapping)
HISTORY_S = 3600.0


class CircuitState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    consecutive_failures: int = 5
    failure_rate: float = 0.5
    min_calls: int = 20
    window_s: float = 30.0
    open_s: float = 5.0
    open_multiplier: float = 2.0
    max_open_s: float = 120.0
    half_open_probes: int = 1
    # A probe whose outcome never arrives (its worker died) frees its slot after this long.
    probe_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or self.min_calls < 1 or self.half_open_probes < 1:
            raise ValueError("consecutive_failures, min_calls and half_open_probes must be >= 1")
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.window_s <= 0 or self.open_s <= 0 or self.probe_timeout_s <= 0:
            raise ValueError("window_s, open_s and probe_timeout_s must be > 0")
        if self.open_multiplier < 1 or self.max_open_s < self.open_s:
            raise ValueError("need open_multiplier >= 1 and max_open_s >= open_s")


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What a worker needs to admit calls locally, and what status pages show."""

    provider: str
    endpoint: str
    state: CircuitState
    generation: int
    opened_at_unix_ms: int
    retry_at_unix_ms: int
    trips: int
    consecutive_failures: int
    window_calls: int
    window_failures: int
    # The last transitions, oldest first: (unix_ms, from state, to state), the last hour at most.
    transitions: tuple[tuple[int, str, str], ...] = ()
    opens: int = 0          # times the circuit opened since the breaker started (``trips`` resets)

    def circuit_open_error(self, now_unix_ms: float) -> CircuitOpen:
        """The refusal every layer answers while the circuit is open (the engine, and the router from
        the engine's pushed load): retryable, after the time to the half-open probe."""
        return CircuitOpen(
            f"circuit {self.state.value} for {self.provider} {self.endpoint}",
            provider=self.provider, endpoint=self.endpoint,
            opened_at_unix_ms=self.opened_at_unix_ms, retry_at_unix_ms=self.retry_at_unix_ms,
            retry_after_s=max(0.0, (self.retry_at_unix_ms - now_unix_ms) / 1000), retryable=True,
        )


Listener = Callable[["CircuitBreaker", CircuitState, CircuitState], None]


def probe_outcome(error: InferenceError | None, delivered: bool) -> InferenceError | None:
    """What a half-open probe reports. One that streamed tokens proves the provider answers,
    however its stream then ended: a success, which closes the circuit. Its cut is that call's
    failure (the caller gets it); the circuit asks only whether the provider answers, and
    re-opening with a doubled ``open_s`` would keep an answering provider away for longer."""
    return None if delivered else error


class CircuitBreaker:
    def __init__(self, provider: str, endpoint: str, config: BreakerConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.config = config or BreakerConfig()
        self._clock = clock
        self._wall = wall_clock
        self._listeners: list[Listener] = []
        self._state = CircuitState.CLOSED
        self.generation = 0
        self._trips = 0
        self._consecutive = 0
        # One bucket per whole second: [second, calls, failures]; bounded by window_s.
        self._buckets: deque[list[int]] = deque()
        self._open_until = 0.0         # monotonic
        self._opened_at_wall = 0.0
        self._closed_since = clock()
        self._probe_deadlines: list[float] = []
        self._probe_successes = 0
        self._opens = 0
        self._history: deque[tuple[int, str, str]] = deque(maxlen=HISTORY_LENGTH)

    # -- queries ---------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """``listener(breaker, old_state, new_state)`` runs after every transition."""
        self._listeners.append(listener)

    @property
    def state(self) -> CircuitState:
        self._advance()
        return self._state

    def snapshot(self) -> BreakerSnapshot:
        self._advance()
        calls, failures = self._window_totals()
        return BreakerSnapshot(
            provider=self.provider, endpoint=self.endpoint, state=self._state,
            generation=self.generation,
            opened_at_unix_ms=int(self._opened_at_wall * 1000),
            retry_at_unix_ms=self._retry_at_unix_ms(),
            trips=self._trips, consecutive_failures=self._consecutive,
            window_calls=calls, window_failures=failures, transitions=self._recent_transitions(),
            opens=self._opens,
        )

    def _recent_transitions(self) -> tuple[tuple[int, str, str], ...]:
        since = int((self._wall() - HISTORY_S) * 1000)
        return tuple(t for t in self._history if t[0] >= since)

    # -- admission -------------------------------------------------------------------

    def check(self) -> int:
        """Admit one call or raise :class:`CircuitOpen`; returns the generation to report with.

        In half-open each admitted call is a probe and holds one of ``half_open_probes``
        slots until its outcome is recorded (or ``probe_timeout_s`` passes).
        """
        self._advance()
        if self._state is CircuitState.CLOSED:
            return self.generation
        if self._state is CircuitState.HALF_OPEN:
            now = self._clock()
            self._probe_deadlines = [d for d in self._probe_deadlines if d > now]
            if len(self._probe_deadlines) + self._probe_successes < self.config.half_open_probes:
                self._probe_deadlines.append(now + self.config.probe_timeout_s)
                return self.generation
        raise self.snapshot().circuit_open_error(self._wall() * 1000)

    def run(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` through the breaker, recording its outcome."""
        generation = self.check()
        try:
            result = fn()
        except InferenceError as exc:
            self.record_error(exc, generation)
            raise
        except BaseException:
            self._release_probe(generation)
            raise
        self.record_success(generation)
        return result

    # -- outcomes --------------------------------------------------------------------

    def record_success(self, generation: int | None = None) -> None:
        self._advance()
        if not self._current(generation):
            return
        if self._state is CircuitState.HALF_OPEN:
            if self._probe_deadlines:
                self._probe_deadlines.pop(0)
            self._probe_successes += 1
            if self._probe_successes >= self.config.half_open_probes:
                self._transition(CircuitState.CLOSED)
            return
        self._consecutive = 0
        self._count(failed=False)

    def record_failure(self, generation: int | None = None, retry_after_s: float | None = None) -> None:
        """A counted failure. ``retry_after_s`` from the provider may lengthen the open time."""
        self._advance()
        if not self._current(generation):
            return
        if self._state is CircuitState.HALF_OPEN:
            self._trip(retry_after_s)
            return
        self._consecutive += 1
        self._count(failed=True)
        calls, failures = self._window_totals()
        if (self._consecutive >= self.config.consecutive_failures
                or (calls >= self.config.min_calls and failures >= self.config.failure_rate * calls)):
            self._trip(retry_after_s)

    def record_error(self, error: InferenceError, generation: int | None = None) -> None:
        """Record a failed call: counted errors are failures, the rest only free a probe slot."""
        if error.counts_for_breaker:
            self.record_failure(generation, error.retry_after_s)
        else:
            self._release_probe(generation)

    def record(self, error: InferenceError | None, generation: int | None = None) -> None:
        if error is None:
            self.record_success(generation)
        else:
            self.record_error(error, generation)

    # -- operator controls -----------------------------------------------------------

    def force_open(self, duration_s: float) -> None:
        self._advance()
        self._open(duration_s)

    def reset(self) -> None:
        """Close the circuit and forget history (e.g. after an operator fixed the endpoint)."""
        self._trips = 0
        self._transition(CircuitState.CLOSED)

    # -- internals -------------------------------------------------------------------

    def _current(self, generation: int | None) -> bool:
        # Nothing was admitted while open, so any outcome arriving then is a straggler.
        return self._state is not CircuitState.OPEN and (generation is None or generation == self.generation)

    def _release_probe(self, generation: int | None) -> None:
        self._advance()
        if self._state is CircuitState.HALF_OPEN and self._current(generation) and self._probe_deadlines:
            self._probe_deadlines.pop(0)

    def _advance(self) -> None:
        if self._state is CircuitState.OPEN and self._clock() >= self._open_until:
            self._transition(CircuitState.HALF_OPEN)

    def _retry_at_unix_ms(self) -> int:
        if self._state is CircuitState.CLOSED:
            return 0
        remaining = max(0.0, self._open_until - self._clock())
        return int((self._wall() + remaining) * 1000)

    def _count(self, failed: bool) -> None:
        second = math.floor(self._clock())
        self._expire_buckets(second)
        if self._buckets and self._buckets[-1][0] == second:
            bucket = self._buckets[-1]
        else:
            bucket = [second, 0, 0]
            self._buckets.append(bucket)
        bucket[1] += 1
        bucket[2] += failed

    def _expire_buckets(self, second: int) -> None:
        horizon = second - math.ceil(self.config.window_s)
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()

    def _window_totals(self) -> tuple[int, int]:
        self._expire_buckets(math.floor(self._clock()))
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def _trip(self, retry_after_s: float | None) -> None:
        cfg = self.config
        # Trips escalate only while failures keep coming back; a circuit that then stayed
        # closed and healthy for max_open_s starts again from the base duration.
        if self._state is CircuitState.CLOSED and self._clock() - self._closed_since >= cfg.max_open_s:
            self._trips = 0
        self._trips += 1
        duration = min(cfg.max_open_s, cfg.open_s * cfg.open_multiplier ** (self._trips - 1))
        if retry_after_s is not None:
            duration = min(cfg.max_open_s, max(duration, retry_after_s))
        self._open(duration)

    def _open(self, duration_s: float) -> None:
        now = self._clock()
        self._open_until = now + duration_s
        self._opened_at_wall = self._wall()
        self._transition(CircuitState.OPEN, force=True)

    def _transition(self, new: CircuitState, force: bool = False) -> None:
        old = self._state
        if old is new and not force:
            return
        self._state = new
        self.generation += 1
        self._history.append((int(self._wall() * 1000), old.value, new.value))
        self._opens += new is CircuitState.OPEN
        self._probe_deadlines = []
        self._probe_successes = 0
        if new is CircuitState.CLOSED:
            self._consecutive = 0
            self._buckets.clear()
            self._closed_since = self._clock()
        for listener in list(self._listeners):
            listener(self, old, new)


class BreakerView:
    """A remote breaker as seen by one engine: the last snapshot its actor pushed.

    Closed circuits admit locally with no message per call. Open ones refuse locally
    until ``retry_at``; after that every call must be a probe granted by the actor,
    because only the actor can count probes across engines.
    """

    ADMIT, REFUSE, NEED_PROBE = "admit", "refuse", "need_probe"

    def __init__(self, provider: str = "", endpoint: str = "") -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.snapshot: BreakerSnapshot | None = None
        self.probe_requested = False

    def update(self, snapshot: BreakerSnapshot) -> None:
        if self.snapshot is None or snapshot.generation >= self.snapshot.generation:
            self.snapshot = snapshot
            self.probe_requested = False

    @property
    def state(self) -> CircuitState:
        return self.snapshot.state if self.snapshot else CircuitState.CLOSED

    def admit(self, now_unix_ms: float) -> tuple[str, int | CircuitOpen | None]:
        snap = self.snapshot
        if snap is None or snap.state is CircuitState.CLOSED:
            return self.ADMIT, snap.generation if snap else 0
        if snap.state is CircuitState.OPEN and now_unix_ms < snap.retry_at_unix_ms:
            return self.REFUSE, snap.circuit_open_error(now_unix_ms)
        return self.NEED_PROBE, None
