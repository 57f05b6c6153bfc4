"""Between a request's attempts: a retry after its backoff, a fresh credential after a 401, or the end.

After an attempt failed, :class:`Recovery` decides what comes next for its request and
keeps it while it waits: a failure after tokens reached the caller ends it (a retry would
duplicate them); a 401 waits once for a newer credential (``SESSION_WAIT_S`` at most) and
goes again with it; anything else is :class:`~actors.core.retry.RetryEngine`'s decision
(backoff, Retry-After, the deadline, the retry budgets, whether the provider saw the
attempt), within what the request brought of its one retry budget across deployments. A
request that may not go again is given up to the engine (whose fault the last answer was
may still hold it: core/caller_fault.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from actors.core.engine_events import AttemptReport, RefreshSession, SessionChanged
from actors.core.retry import RetryEngine
from actors.errors import AuthenticationError, InferenceError
from actors.types import AttemptInfo

if TYPE_CHECKING:
    from actors.core.jobs import Job
    from actors.core.timer_heap import TimerHeap

__all__ = ["Recovery", "RecoveryHost", "RecoveryState", "Parked", "SESSION_WAIT_S"]

SESSION_WAIT_S = 10.0     # how long a request waits for a refreshed credential after a 401


@dataclass(frozen=True)
class Parked:
    """Waiting for a credential newer than ``on_version`` after the provider answered 401 (``error``)."""

    on_version: int
    until: float
    error: InferenceError


@dataclass(eq=False)
class RecoveryState:
    """One request between two attempts: what it waits for (it is in ``Recovery.waiting`` meanwhile)."""

    retry_at: float | None = None          # a retry's backoff ends
    parked: Parked | None = None           # a fresh credential
    refreshed: bool = False                # its one credential refresh after a 401 was asked for
    min_session_version: int = 0           # the credential version its next attempt needs


class RecoveryHost(Protocol):
    """What recovery needs of its engine."""

    def emit(self, effect: object) -> None:
        """Carry out ``effect`` after this step."""

    def requeue(self, job: Job) -> None:
        """Queue ``job`` again for its next attempt, ahead of its level."""

    def fail(self, job: Job, error: InferenceError) -> None:
        """End ``job`` failed with ``error`` now."""

    def give_up(self, job: Job, error: InferenceError, now: float) -> None:
        """End ``job``, failed after its attempts with ``error`` (its answer may wait for a verdict)."""


class Recovery:
    def __init__(self, host: RecoveryHost, timers: TimerHeap, retry: RetryEngine, *, deployment: str,
                 idempotent: bool, has_session: bool) -> None:
        self.host = host
        self.timers = timers
        self.retry = retry
        self.deployment = deployment
        self.idempotent = idempotent       # the deployment's: a call may be repeated there
        self.has_session = has_session     # a session actor refreshes credentials (a 401 waits for one)
        self.waiting: dict[str, Job] = {}

    def after_error(self, job: Job, error: InferenceError, r: AttemptReport, now: float) -> None:
        """``job``'s attempt failed with ``error`` (reported as ``r``)."""
        if job.chunks:
            if r.usage.reported:
                error.partial_usage = r.usage.as_dict()
            return self.host.fail(job, error)
        state = job.recovery
        if isinstance(error, AuthenticationError) and not state.refreshed and self.has_session:
            state.refreshed = True
            job.log.append(AttemptInfo(self.deployment, error.kind, error.status))
            state.parked = Parked(r.session_version, now + SESSION_WAIT_S, error)
            self.waiting[job.request_id] = job
            self.timers.at(state.parked.until, "parked", job)
            self.host.emit(RefreshSession(r.session_version, "provider answered 401"))
            return
        self.retry_or_fail(job, error, now, sent=r.sent)

    def retry_or_fail(self, job: Job, error: InferenceError, now: float, sent: bool = True) -> None:
        budget = job.request.retry_budget
        if isinstance(budget, int) and not isinstance(budget, bool) and job.attempts - 1 >= budget:
            return self.host.give_up(job, error, now)  # the request's retries are one budget across deployments
        decision = self.retry.decide(error, job.attempts, deadline=job.deadline,
                                     idempotent=job.request.idempotent and self.idempotent, sent=sent)
        if not decision.retry:
            return self.host.give_up(job, error, now)
        job.log.append(AttemptInfo(self.deployment, error.kind, error.status, decision.delay_s))
        job.recovery.retry_at = now + decision.delay_s
        self.waiting[job.request_id] = job
        self.timers.at(job.recovery.retry_at, "retry", job)

    def session_changed(self, e: SessionChanged) -> None:
        """A newer credential sends the requests parked on an older one again; a failed refresh ends them."""
        for job in list(self.waiting.values()):
            state = job.recovery
            if state.parked is None:
                continue
            if e.version > state.parked.on_version:
                del self.waiting[job.request_id]
                state.parked = None
                state.min_session_version = e.version
                self.host.requeue(job)
            elif not e.ok:
                self.host.fail(job, state.parked.error)  # the 401 it waited with

    def live(self, kind: Literal["retry", "parked"], job: Job, when: float) -> bool:
        if self.waiting.get(job.request_id) is not job:
            return False
        state = job.recovery
        if kind == "retry":
            return state.retry_at == when
        return state.parked is not None and state.parked.until == when

    def due_retry(self, job: Job, now: float) -> None:
        state = job.recovery
        if self.waiting.get(job.request_id) is job and state.retry_at is not None and state.retry_at <= now:
            del self.waiting[job.request_id]
            state.retry_at = None
            self.host.requeue(job)

    def due_parked(self, job: Job, now: float) -> None:
        parked = job.recovery.parked
        if self.waiting.get(job.request_id) is job and parked is not None and parked.until <= now:
            self.host.fail(job, parked.error)

    @staticmethod
    def stage(job: Job) -> str | None:
        """What a waiting ``job`` waits for at its deadline, in words (None: it is not waiting). Never
        a retry: RetryEngine waits only for a retry that goes before the deadline."""
        return "waiting for a credential" if job.recovery.parked is not None else None
