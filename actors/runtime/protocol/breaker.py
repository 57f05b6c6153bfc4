"""The circuit breaker actor and the engines that admit against its pushed state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.errors import InferenceError


@dataclass
class BreakerSubscribe:
    subscriber: Any


@dataclass
class BreakerState:
    snapshot: Any  # breaker.BreakerSnapshot


@dataclass
class BreakerOutcome:
    generation: int
    error: InferenceError | None


@dataclass
class BreakerOutcomes:
    outcomes: list[BreakerOutcome]


@dataclass
class BreakerCheck:
    """Admit one call now (a half-open probe, or CircuitBreakerHandle.check())."""

    token: str = ""


@dataclass
class BreakerAdmitted:
    token: str
    generation: int


@dataclass
class BreakerRefused:
    token: str
    error: InferenceError


@dataclass
class BreakerQuery:
    pass


@dataclass
class BreakerForce:
    """Operator control: open for ``open_s`` seconds, or close and reset when None."""

    open_s: float | None = None
