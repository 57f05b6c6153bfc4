"""What the engine core keeps per request, per attempt and per worker slot.

A :class:`Job` is one accepted request from ``Accept`` to its one terminal. What belongs
together lives together: the budget held for its next attempt (:class:`~actors.core.admission.Held`,
:class:`~actors.core.budget.SpendHold`), why it waits
between attempts (:class:`~actors.core.recovery.RecoveryState`), and what the breaker has heard of it
(:class:`~actors.core.caller_fault.Fault`). An :class:`Attempt` is one dispatch to one
worker, tracked until that worker reports, even after the request ended
(:class:`~actors.core.workers.Workers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from actors.core.admission import Held
from actors.core.budget import SpendHold
from actors.core.caller_fault import Fault
from actors.core.priority_queue import Priority
from actors.core.recovery import RecoveryState
from actors.types import AttemptInfo, InferenceRequest

__all__ = ["Job", "Attempt", "ABANDON_GRACE_S"]

ABANDON_GRACE_S = 2.0     # how long a worker may take to report an attempt it was told to abandon


@dataclass(eq=False)
class Job:
    request: InferenceRequest   # validated (core/validation.py) before it became a job
    reply_to: Any               # opaque: the actor's address of the caller
    priority: Priority
    accepted_mono: float
    accepted_unix: float
    deadline: float | None      # on the core's monotonic clock
    estimate: int               # tokens each attempt reserves
    spend: SpendHold            # the spend budgets' hold, and what the request was charged
    known_good: bool = False    # the gateway's own probe: never suspect, not a caller's request
    attempts: int = 0
    attempt: Attempt | None = None   # the one on a worker now
    chunks: int = 0             # chunks the caller was sent, as far as the engine knows
    first_token_unix: float | None = None
    charged_tokens: int = 0     # summed over attempts, as each one was settled
    log: list[AttemptInfo] = field(default_factory=list)   # the terminal's attempt list
    held: Held = field(default_factory=Held)               # rate-limit budget held for the next attempt
    recovery: RecoveryState = field(default_factory=RecoveryState)
    fault: Fault = field(default_factory=Fault)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass(eq=False)
class Attempt:
    job: Job
    number: int
    worker: int
    generation: int             # the breaker generation it was admitted under
    probe: bool                 # a half-open probe
    held: Held
    deadline_capped: bool       # the caller's deadline, not the provider, bounds its timeouts
    backstop: float             # past this the worker is presumed frozen
    seq: int = 0                # dispatch number: orders attempts by when they were sent (evidence)
    abandoned_at: float | None = None

    @property
    def kill_at(self) -> float:
        return self.backstop if self.abandoned_at is None else min(self.backstop, self.abandoned_at + ABANDON_GRACE_S)
