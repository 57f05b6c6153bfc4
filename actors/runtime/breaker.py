"""CircuitBreakerActor (one per provider and endpoint) and the CircuitBreakerHandle callers use.

The actor owns the state machine and pushes every transition to its subscribers, so an
engine admits calls on a closed circuit without a message. Outcomes arrive batched.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from actors.runtime.base import GatewayActor

from actors.runtime.logs import logger
from actors.core.breaker import BreakerSnapshot, CircuitBreaker, CircuitState
from actors.errors import CircuitOpen, InferenceError, InternalError
from actors.runtime.protocol import (BreakerAdmitted, BreakerCheck, BreakerForce, BreakerInit, BreakerOutcome, BreakerOutcomes, BreakerQuery, BreakerRefused, BreakerState, BreakerSubscribe, NotReady)

log = logger("atomr.breaker")
T = TypeVar("T")


class CircuitBreakerActor(GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.breaker: CircuitBreaker | None = None
        self.subscribers: list[Any] = []

    def receiveMsg_BreakerInit(self, msg: BreakerInit, sender: Any) -> None:
        self.breaker = CircuitBreaker(msg.provider, msg.endpoint, msg.config)
        self.breaker.add_listener(self._on_transition)
        for subscriber in self.subscribers:  # who subscribed before the init
            self.send(subscriber, BreakerState(self.breaker.snapshot()))

    def _ready(self, msg: Any, sender: Any) -> CircuitBreaker | None:
        """The state machine; before BreakerInit there is none: None, once that is answered."""
        if self.breaker is not None:
            return self.breaker
        if isinstance(msg, BreakerCheck):
            self.send(sender, BreakerRefused(msg.token, InternalError("the breaker has not been initialised yet")))
        elif not isinstance(msg, BreakerOutcomes):
            self.send(sender, NotReady(type(self).__name__, type(msg).__name__))
        return None

    def _on_transition(self, breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        snap = breaker.snapshot()
        level = logging.WARNING if new is CircuitState.OPEN else logging.INFO
        log.log(level, "circuit %s %s: %s -> %s (trips=%d, retry_at=%d)", breaker.provider, breaker.endpoint,
                old.value, new.value, snap.trips, snap.retry_at_unix_ms)
        for subscriber in self.subscribers:
            self.send(subscriber, BreakerState(snap))
        if new is CircuitState.OPEN:
            self._wake_at_half_open(snap)

    def _wake_at_half_open(self, snap: BreakerSnapshot) -> None:
        # Wake when the open period ends, so half-open is pushed, not discovered (a new trip
        # moves the time: the wakeup is armed afresh).
        self.timers.cancel("advance")
        self.timers.after("advance", max(0.0, snap.retry_at_unix_ms / 1000 - time.time()) + 0.001)

    def receiveMsg_BreakerSubscribe(self, msg: BreakerSubscribe, sender: Any) -> None:
        if msg.subscriber not in self.subscribers:
            self.subscribers.append(msg.subscriber)
        if self.breaker is not None:
            self.send(msg.subscriber, BreakerState(self.breaker.snapshot()))

    def receiveMsg_BreakerOutcomes(self, msg: BreakerOutcomes, sender: Any) -> None:
        breaker = self._ready(msg, sender)
        if breaker is None:
            return
        for outcome in msg.outcomes:
            breaker.record(outcome.error, outcome.generation)

    def receiveMsg_BreakerCheck(self, msg: BreakerCheck, sender: Any) -> None:
        breaker = self._ready(msg, sender)
        if breaker is None:
            return
        try:
            generation = breaker.check()
        except CircuitOpen as exc:
            self.send(sender, BreakerRefused(msg.token, exc))
        else:
            self.send(sender, BreakerAdmitted(msg.token, generation))

    def receiveMsg_BreakerQuery(self, msg: BreakerQuery, sender: Any) -> None:
        breaker = self._ready(msg, sender)
        if breaker is None:
            return
        self.send(sender, BreakerState(breaker.snapshot()))

    def receiveMsg_BreakerForce(self, msg: BreakerForce, sender: Any) -> None:
        breaker = self._ready(msg, sender)
        if breaker is None:
            return
        if msg.open_s is None:
            breaker.reset()
        else:
            breaker.force_open(msg.open_s)
        self.send(sender, BreakerState(breaker.snapshot()))

    def timer_advance(self, _: Any) -> None:
        if self.breaker is not None and self.breaker.state is CircuitState.OPEN:  # reading it advances it
            self._wake_at_half_open(self.breaker.snapshot())   # a hair early, or re-opened meanwhile


class CircuitBreakerHandle:
    """Synchronous access to one breaker actor for code outside the actor system.

    ``asys`` is an ActorSystem (or a private context of one). ``check()`` asks the actor,
    so it is exact across every engine sharing the breaker; engines themselves use the
    pushed snapshot instead and never pay this round trip on a closed circuit.
    """

    def __init__(self, asys: Any, address: Any, timeout_s: float = 5.0) -> None:
        self.asys = asys
        self.address = address
        self.timeout_s = timeout_s

    def _ask(self, message: Any, expected: tuple[type, ...]) -> Any:
        reply = self.asys.ask(self.address, message, self.timeout_s)
        if not isinstance(reply, expected):
            raise InternalError(f"breaker actor did not answer {type(message).__name__} (got {type(reply).__name__})")
        return reply

    def state(self) -> BreakerSnapshot:
        return self._ask(BreakerQuery(), (BreakerState,)).snapshot

    def check(self) -> int:
        """The generation to record the outcome with; raises CircuitOpen."""
        token = secrets.token_hex(4)
        reply = self._ask(BreakerCheck(token), (BreakerAdmitted, BreakerRefused))
        if isinstance(reply, BreakerRefused):
            raise reply.error
        return reply.generation

    def record(self, error: InferenceError | None, generation: int) -> None:
        self.asys.tell(self.address, BreakerOutcomes([BreakerOutcome(generation, error)]))

    def run(self, fn: Callable[[], T]) -> T:
        generation = self.check()
        try:
            result = fn()
        except InferenceError as exc:
            self.record(exc, generation)
            raise
        except BaseException as exc:
            # Not the provider's fault: frees a half-open probe slot without counting.
            self.record(InternalError(type(exc).__name__), generation)
            raise
        self.record(None, generation)
        return result

    def force_open(self, open_s: float) -> BreakerSnapshot:
        return self._ask(BreakerForce(open_s), (BreakerState,)).snapshot

    def reset(self) -> BreakerSnapshot:
        return self._ask(BreakerForce(None), (BreakerState,)).snapshot
