"""The engine's logic with no actor in it: the job table and the event switch.

``EngineCore.handle(event)`` returns the effects the actor must carry out, in order (see
:mod:`actors.core.engine_events`). Time comes from injected clocks, so every path (a
deadline while queued, a frozen worker, a crash retry with backoff) is a plain function
call in a test.

The core owns every accepted request until its one terminal :class:`Reply`. A request
that is on a worker when it must end (deadline, cancel) is answered at once; its attempt
stays tracked until the worker reports back, so its budget is settled with what the
worker saw, and a worker that does not report within ``ABANDON_GRACE_S`` is killed and
replaced. Every dispatched attempt has a scheduled end, deadline or not.

What it decides with, one concern each (docs/architecture.md, "The engine"):
:class:`~actors.core.admission.BreakerGate` and :class:`~actors.core.admission.BudgetGate`
(admission), :class:`~actors.core.budget.SpendGate` (spend budgets, strict ones under
leases), :class:`~actors.core.caller_fault.Hearing` (what the breaker hears, whose fault
a 5xx is), :class:`~actors.core.timer_heap.TimerHeap`, :class:`~actors.core.jobs.Workers`,
:class:`~actors.core.retry.RetryEngine` and :class:`~actors.core.stats.Terminals`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

from actors.core import engine_events as ev
from actors.core.admission import (TICK_S, Admission, Admit, BreakerGate, BudgetGate, Denied, Held, Leader, Refuse,
                                   Wait)
from actors.core.breaker import BreakerView, CircuitState
from actors.core.budget import BudgetBook, SpendGate, SpendHold
from actors.core.caller_fault import JUDGE_WAIT_S, Hearing
from actors.core.jobs import ABANDON_GRACE_S, Attempt, Job
from actors.core.pricing import Price, cost_usd
from actors.core.priority_queue import Priority, RequestQueue
from actors.core.ratelimit import WindowedLimiter, estimate_tokens
from actors.core.records import TerminalRecord
from actors.core.recovery import SESSION_WAIT_S, Recovery
from actors.core.refusals import context_too_long, current, displaced, queue_full
from actors.core.retry import RetryEngine
from actors.core.routing import context_window, input_estimate
from actors.core.settlement import Settlement, attempt_tokens, settlement
from actors.core.stats import Terminals
from actors.core.timer_heap import Subject, TimerHeap, TimerKind
from actors.core.validation import validate_request
from actors.core.workers import Workers
from actors.errors import (BadRequest, Cancelled, DeadlineExceeded, InferenceError, InternalError, ShuttingDown,
                           WorkerCrashed)
from actors.types import AttemptInfo, Completed, Failed, InferenceRequest, Usage

__all__ = ["EngineCore", "Job", "Attempt", "ABANDON_GRACE_S", "TICK_S", "SESSION_WAIT_S", "JUDGE_WAIT_S"]

SELF = "engine-core"      # reply_to of the core's own known-good probes: their terminal goes nowhere
_KNOWN = object()         # Failed.chunks: what the engine counted


class EngineCore:
    """One deployment replica's engine: the job table (``jobs``, indexed by where each job is:
    ``queue``, ``recovery.waiting``, ``hearing.held``, a worker's attempt) and the event switch
    (one ``_on_<Event>`` method per event, one ``_due_<kind>`` per timer kind).

    Longer than 300 lines on purpose: every way a request enters the table and leaves it (its
    one terminal) is here, one short handler per event, so the invariant "every accepted
    request gets exactly one terminal" is read and tested in one place. Each decision that
    keeps state of its own is a collaborator: admission, recovery, hearing, workers, timers,
    terminals.
    """

    def __init__(self, deployment: Any, *, slot: str, node: str = "", price: Price | None = None,
                 sync_interval_s: float = 0.05, failure_timeout_s: float = 5.0, has_session: bool = False,
                 has_hub: bool = False, budgets: Any = (), budget_slot: str = "", budget_seed: Any = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random) -> None:
        self.dep = deployment
        self.slot, self.price = slot, price
        self.has_hub = has_hub           # a limiter hub takes this engine's counts
        self.clock, self.wall = clock, wall
        self.window = deployment.max_input_tokens or context_window(deployment.provider, deployment.provider_model)
        self.jobs: dict[str, Job] = {}
        self.queue: RequestQueue[Job] = RequestQueue(deployment.queue_capacity)
        self.timers = TimerHeap(self._live, lambda: 4 * (len(self.jobs) + len(self.workers.slots)))
        self.workers = Workers(self, self.timers, deployment.timeouts)
        self.recovery = Recovery(self, self.timers, RetryEngine(deployment.retry, clock=clock, rand=rand),
                                 deployment=deployment.name, idempotent=deployment.idempotent, has_session=has_session)
        limits, leader = deployment.limits, Leader(clock(), failure_timeout_s)
        replica = None if limits.unlimited else WindowedLimiter(slot, limits, wall_clock=wall, rand=rand, clock=clock,
                                                                sync_interval_s=sync_interval_s)
        breaker = BreakerGate(self, BreakerView(deployment.provider, deployment.endpoint_label), slot=slot, wall=wall)
        spend = SpendGate(BudgetBook(budgets, slot=budget_slot or slot, deployment=deployment.name,
                                     provider=deployment.provider, wall=wall, clock=clock, rand=rand,
                                     sync_interval_s=sync_interval_s, seed=budget_seed),
                          self, leader, deployment.provider) if budgets else None
        self.admission = Admission(breaker, BudgetGate(self, limits, replica, leader, provider=deployment.provider,
                                                       slot=slot, key=deployment.limit_key, clock=clock, wall=wall,
                                                       sync_interval_s=sync_interval_s), spend)
        self.admission.budget.backlog = self._backlog
        if spend is not None:
            spend.backlog = self._spend_backlog
        self.hearing = Hearing(self, breaker, self.timers, slot=slot, provider=deployment.provider)
        self.terminals = Terminals(node=node, model=deployment.model, provider=deployment.provider, price=price,
                                   clock=clock, wall=wall)
        self.drainer: Any = None         # who asked for the drain (once draining)
        self.draining = self.stopping = False
        self._out: list[Any] = []

    # -- the interface -----------------------------------------------------------------

    def start(self) -> list[Any]:
        self.workers.start(self.dep.workers)
        return self._effects()

    def handle(self, event: Any) -> list[Any]:
        if self.stopping:
            return []
        handler = getattr(self, "_on_" + type(event).__name__, None)
        if handler is None:
            raise TypeError(f"EngineCore does not handle {type(event).__name__}")
        handler(event, self.clock())
        return self._effects()

    def next_wakeup(self) -> float | None:
        candidates = [self.timers.next(), self.breaker.flush_at, *self.admission.refresh_dues(), *self._sync_dues()]
        return min((t for t in candidates if t is not None), default=None)

    def status(self) -> dict[str, Any]:
        busy, t = self.workers.busy, self.terminals
        return dict(queued=len(self.queue), in_flight=busy, busy_workers=busy, workers=len(self.workers.slots),
                    accepted=t.accepted, completed=t.completed, failed=t.failed,
                    depth_by_priority=self.queue.depth_by_priority(), circuit=self.view.state.value,
                    draining=self.draining, model=self.dep.model, provider=self.dep.provider,
                    endpoint=self.dep.endpoint_label, stats=t.stats.snapshot(self.wall()),
                    budget_spent=self.book.spent() if self.book is not None else [],
                    budget_view=self.limiter.view_health() if self.limiter is not None else {})

    def refusal(self) -> tuple[InferenceError, float | None] | None:
        """What this engine answers a typical request now without calling its provider, and until when
        (pushed with its load: the router refuses with this very error)."""
        return current(self.view, self.book, self.limiter, self.dep.provider, self.wall())

    def take_records(self) -> list[TerminalRecord]:
        return self.terminals.take()

    @property
    def breaker(self) -> BreakerGate:
        return self.admission.breaker

    @property
    def view(self) -> BreakerView:
        return self.admission.breaker.view

    @property
    def limiter(self) -> WindowedLimiter | None:
        """This engine's replica of its deployment's rate-limit budget (None: unlimited)."""
        return self.admission.budget.replica

    @property
    def book(self) -> BudgetBook | None:
        return self.admission.spend.book if self.admission.spend is not None else None

    # -- what the collaborators call back (AdmissionHost, HearingHost) -------------------

    def emit(self, effect: Any) -> None:
        self._out.append(effect)

    def pump_soon(self, when: float) -> None:
        self.timers.pump_soon(when)

    def requeue(self, job: Job) -> None:
        self.queue.push_front(job.request_id, job, job.priority)

    def fail(self, job: Job, error: InferenceError) -> None:
        self._fail(job, error)

    def give_up(self, job: Job, error: InferenceError, now: float) -> None:
        if self.draining or not self.hearing.hold(job, error, now):
            self._fail(job, error)

    def answer(self, request_id: str, error: InferenceError) -> None:
        job = self.jobs.get(request_id)
        if job is not None:
            self._fail(job, error)

    def probe(self) -> None:
        """Send the known-good probe the judge wants, ahead of every queued request."""
        if self.stopping or self.draining:
            return
        request = self.hearing.next_probe(self.dep.model, self.jobs.__contains__)
        if request is not None:
            job = self._job(request, SELF, self.clock(), self.wall())
            job.known_good = True
            self.queue.push_front(job.request_id, job, job.priority)
            self._accepted(job)

    def _effects(self) -> list[Any]:
        out, self._out = self._out, []
        due = self.next_wakeup()
        if due is not None:
            out.append(ev.WakeAt(due))
        return out

    def _sync_dues(self) -> list[float | None]:
        return self.admission.sync_dues() if self.has_hub else []

    def _backlog(self) -> tuple[int, int]:
        """What waits in the queue (requests, estimated tokens): part of what a lease asks for."""
        jobs = [job for _, job in self.queue.items()]
        return len(jobs), sum(job.estimate for job in jobs)

    def _spend_backlog(self, key: str) -> tuple[int, int]:
        """What waits in the queue for spend budget ``key`` (requests, estimated nano-USD)."""
        jobs = [job for _, job in self.queue.items()
                if not job.spend.admitted and any(b.counter_key == key for b in job.spend.budgets)]
        return len(jobs), sum(job.spend.estimate_nano for job in jobs)

    # -- requests in -------------------------------------------------------------------

    def _on_Accept(self, e: ev.Accept, now: float) -> None:
        msg, sender = e.request, e.reply_to
        error = validate_request(msg)
        if error is None and msg.request_id in self.jobs:
            if self.jobs[msg.request_id].reply_to == sender:
                return  # the caller resent it (its first send looked lost): it gets one answer
            error = BadRequest(f"request_id {msg.request_id} is already in progress")
        if error is None and msg.deadline_unix is not None and not math.isfinite(msg.deadline_unix):
            error = BadRequest("deadline_unix must be a finite number")
        if error is None and self.draining:
            error = ShuttingDown("the engine is draining", retryable=True)  # nothing was sent: another may serve
        wall = self.wall()
        if error is None and msg.deadline_unix is not None and msg.deadline_unix <= wall:
            error = DeadlineExceeded("the deadline passed before the request arrived")
        if error is None and self.window is not None and (tokens := input_estimate(msg.messages)) > self.window:
            error = context_too_long(self.dep.name, self.dep.provider, tokens, self.window)  # as the router would
        if error is not None:
            return self._reject(msg, sender, error)
        job = self._job(msg, sender, now, wall)
        job.known_good = e.known_good
        victim = None
        if len(self.queue) == 0 and self.workers.idle and self.view.state is CircuitState.CLOSED:
            # Straight to a worker: the capacity bounds waiting requests, and this one won't wait.
            self.queue.push_front(job.request_id, job, job.priority)
        elif not self.queue.push(job.request_id, job, job.priority):
            # Full: a request of higher priority takes the place of the newest of the lowest level
            # (one never sent: a retry keeps its place).
            victim = self.queue.displace(job.priority, lambda queued: queued.attempts == 0)
            if victim is None:
                return self._reject(msg, sender, queue_full(self.dep.name, self.dep.queue_capacity, self.dep.provider))
            self.queue.push(job.request_id, job, job.priority)
        self._accepted(job)
        if victim is not None:
            self._fail(victim[1], displaced(self.dep.name, self.dep.queue_capacity, self.dep.provider,
                                            job.priority.name.lower()))
        self._pump(now)

    def _job(self, msg: InferenceRequest, sender: Any, now: float, wall: float) -> Job:
        deadline = None if msg.deadline_unix is None else now + (msg.deadline_unix - wall)
        # An embeddings call generates nothing: its estimate is its input alone.
        embed = getattr(msg, "operation", "chat") == "embed"
        max_tokens = None if embed else msg.params.get("max_tokens")
        default_output = 0 if embed else self.dep.estimate_output_tokens
        spend = SpendHold(BudgetBook.estimate(msg.messages, max_tokens, default_output, self.price),
                          self.book.applicable(msg.metadata or {}, self.dep.name, self.dep.provider)
                          if self.book is not None else [])
        return Job(msg, sender, Priority.parse(msg.priority), now, wall, deadline,
                   estimate_tokens(msg.messages, max_tokens, default_output), spend)

    def _accepted(self, job: Job) -> None:
        self.jobs[job.request_id] = job
        self.terminals.accepted += 1
        self.admission.arrived(job)
        if job.deadline is not None:
            self.timers.at(job.deadline, "deadline", job)

    def _reject(self, msg: Any, sender: Any, error: InferenceError) -> None:
        request_id = str(getattr(msg, "request_id", "") or "")
        self.terminals.stats.reject(type(error).__name__)
        self.emit(ev.Reply(sender, Failed(request_id, error, 0, self.dep.name,
                                          attempt_log=[AttemptInfo(self.dep.name, error.kind, None, 0.0, False)])))

    # -- the queue to the workers ------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Move queued jobs to idle workers, in priority order, as far as breaker and budget allow."""
        self.admission.unblock()
        while (head := self.queue.peek()) is not None:
            job = head[1]
            if job.expired(now):
                self.queue.pop()
                self._fail(job, DeadlineExceeded("the deadline passed while queued", provider=self.dep.provider))
                continue
            verdict = self.admission.admit(job, now, idle=bool(self.workers.idle))
            if isinstance(verdict, (Refuse, Denied)):
                self.queue.pop()
                self._fail(job, verdict.error)
                continue
            if isinstance(verdict, Wait):
                self.timers.pump_soon(verdict.until)
            if not isinstance(verdict, Admit):
                break
            self.queue.pop()
            self._dispatch(job, verdict, now)
        self.admission.end()

    def _dispatch(self, job: Job, gate: Admit, now: float) -> None:
        job.attempts += 1
        if job.attempts == 1 and not job.known_good:
            self.recovery.retry.record_call()
        job.fault.last_sent = self.workers.dispatch(job, gate, now).seq
        job.held = Held()   # the attempt holds the budget

    # -- breaker and budget messages -------------------------------------------------

    def _on_BreakerChanged(self, e: ev.BreakerChanged, now: float) -> None:
        self.view.update(e.snapshot)
        self._pump(now)

    def _on_ProbeAdmitted(self, e: ev.ProbeAdmitted, now: float) -> None:
        self.breaker.probe_admitted(e.token, e.generation)
        self._pump(now)

    def _on_ProbeRefused(self, e: ev.ProbeRefused, now: float) -> None:
        self.breaker.probe_refused(e.token, now)

    def _on_StrictLeader(self, e: ev.StrictLeader, now: float) -> None:
        self.admission.leader_changed(e.available, e.shares, now, e.in_cluster)
        self._pump(now)

    def _on_LeaseOffered(self, e: ev.LeaseOffered, now: float) -> None:
        if self.admission.offered(e.key, e.grant, now):
            self._pump(now)

    def _on_PeerCounts(self, e: ev.PeerCounts, now: float) -> None:
        self.admission.merge(e)

    def _publish(self, now: float) -> None:
        if self.has_hub:
            self.admission.publish(now)

    # -- results ---------------------------------------------------------------------

    def _on_TokenStarted(self, e: ev.TokenStarted, now: float) -> None:
        job = self.jobs.get(e.request_id)
        if job is not None and job.attempt is not None and job.attempt.number == e.attempt:
            job.chunks = max(job.chunks, 1)
            job.first_token_unix = e.at_unix

    def _on_WorkerReported(self, e: ev.WorkerReported, now: float) -> None:
        r = e.result
        attempt = self.workers.reported(r.worker_index, r.request_id, r.attempt)
        if attempt is None:
            return self._pump(now)  # a replaced worker's late report, or a duplicate
        answered = r.error is not None and r.error.status is not None
        decided = self._settle(attempt, settlement(r.sent, attempt_tokens(r.usage, r.error, r.chunks, answered)),
                               r.usage)
        job = attempt.job
        job.charged_tokens += decided.charged(job.estimate)
        if attempt.abandoned_at is not None:
            self.breaker.lost(attempt.generation, attempt.probe, r.error)
        else:
            job.attempt = None
            job.chunks = max(job.chunks, r.chunks)
            self.hearing.heard(attempt, r.error, now)
            if r.error is None:
                self._complete(job, r, decided, now)
            else:
                self.recovery.after_error(job, r.error, r, now)
        self._pump(now)

    def _settle(self, attempt: Attempt, decided: Settlement, usage: Usage | None = None) -> Settlement:
        if attempt.abandoned_at is None:
            attempt.job.spend.charge(decided, usage, self.price)
        self.admission.settle(attempt.held, decided)
        return decided

    def _complete(self, job: Job, r: ev.AttemptReport, decided: Settlement, now: float) -> None:
        first = r.first_token_unix or job.first_token_unix
        job.log.append(AttemptInfo(self.dep.name))
        self._terminal(job, Completed(
            request_id=job.request_id, text=r.text, finish_reason=r.finish_reason or "stop",
            usage=r.usage, raw_finish_reason=r.raw_finish_reason, tool_calls=r.tool_calls,
            cost_usd=cost_usd(r.usage, self.price), attempts=job.attempts, latency_s=now - job.accepted_mono,
            ttft_s=(first - job.accepted_unix) if first else None, deployment=self.dep.name,
            provider_model=self.dep.provider_model, chunks=r.chunks,
            charged_tokens=decided.charged(job.estimate), attempt_log=job.log,
            logprobs=getattr(r, "logprobs", None), choices=list(getattr(r, "choices", None) or ()),
            embeddings=getattr(r, "embeddings", None), stop_sequence=getattr(r, "stop_sequence", None)))

    def _on_SessionChanged(self, e: ev.SessionChanged, now: float) -> None:
        self.recovery.session_changed(e)
        self._pump(now)

    # -- workers coming and going ----------------------------------------------------

    def _on_WorkerUp(self, e: ev.WorkerUp, now: float) -> None:
        if not self.workers.up(e.index, e.pid):
            return
        if self.workers.first_all_up():
            self.emit(ev.AnnounceReady())
        self._pump(now)

    def _on_WorkerFailedOn(self, e: ev.WorkerFailedOn, now: float) -> None:
        attempt = self.workers.reported(e.index, e.request_id, e.attempt)
        if attempt is None:
            return
        self._settle(attempt, settlement(True, None))
        self.breaker.lost(attempt.generation, attempt.probe, InternalError())
        if attempt.abandoned_at is None:
            self._fail(attempt.job, InternalError("the worker failed on this request", provider=self.dep.provider))
        self._pump(now)

    def _on_WorkerGone(self, e: ev.WorkerGone, now: float) -> None:
        if e.index in self.workers.slots:
            self._replace(e.index, f"worker {e.index} exited", now)
            self._pump(now)

    def _replace(self, index: int, why: str, now: float, kill: bool = False) -> None:
        attempt = self.workers.replace(index, kill)
        if attempt is None:
            return
        self._settle(attempt, settlement(True, None))  # whatever the lost attempt used stays charged
        self.breaker.lost(attempt.generation, attempt.probe, WorkerCrashed())
        if attempt.abandoned_at is not None:
            return
        job = attempt.job
        job.attempt = None
        error = WorkerCrashed(f"{why} during attempt {attempt.number}", provider=self.dep.provider,
                              retryable=job.chunks == 0)
        if job.chunks:
            return self._fail(job, error, chunks=None)   # how many it sent died with it
        self.recovery.retry_or_fail(job, error, now)

    # -- cancel, deadlines, time -----------------------------------------------------

    def _on_CancelRequested(self, e: ev.CancelRequested, now: float) -> None:
        job = self.jobs.get(e.request_id)
        if job is None:
            return
        error = Cancelled("cancelled by the caller", provider=self.dep.provider)
        if job.attempt is not None:
            self._abandon(job.attempt, now)
            # The worker may still have chunks in flight: the count is unknown.
            return self._fail(job, error, chunks=None)
        self._fail(job, error)
        self._pump(now)

    def _abandon(self, attempt: Attempt, now: float) -> None:
        # Its report may come after the terminal settles the budgets: it is charged its estimate now.
        attempt.job.spend.charge_estimate()
        self.workers.abandon(attempt, now)

    def _on_Tick(self, e: ev.Tick, now: float) -> None:
        while (due := self.timers.pop(now)) is not None:
            kind, subject = due
            if isinstance(subject, Attempt):
                self._due_attempt(subject, now)
            else:
                {"deadline": self._due_deadline, "retry": self.recovery.due_retry, "judging": self._due_judging,
                 "parked": self.recovery.due_parked}[kind](subject, now)
        if self.breaker.flush_at is not None and self.breaker.flush_at <= now:
            self.breaker.flush()
        if any(due is not None and due <= now for due in self._sync_dues()):
            self._publish(now)
        self.admission.refresh(now)
        self.timers.pump_due(now)
        self._pump(now)

    def _live(self, kind: TimerKind, subject: Subject, when: float) -> bool:
        if isinstance(subject, Attempt):
            return self.workers.live(subject, when)
        if kind == "deadline":
            return self.jobs.get(subject.request_id) is subject
        if kind == "judging":
            return self.jobs.get(subject.request_id) is subject and subject.request_id in self.hearing.held
        return self.recovery.live("retry" if kind == "retry" else "parked", subject, when)

    def _due_deadline(self, job: Job, now: float) -> None:
        if self.jobs.get(job.request_id) is not job:
            return
        provider = self.dep.provider
        if job.request_id in self.hearing.held:
            return self._due_judging(job, now)
        if job.attempt is not None:
            stage = "mid-stream" if job.chunks else "during the call"
            self._abandon(job.attempt, now)
            # The worker may still have chunks in flight: the count is unknown.
            return self._fail(job, DeadlineExceeded(f"the deadline passed {stage}", provider=provider), chunks=None)
        stage = self.recovery.stage(job) or "while queued"
        self._fail(job, DeadlineExceeded(f"the deadline passed {stage}", provider=provider))

    def _due_judging(self, job: Job, now: float) -> None:
        """No verdict in time: the caller gets the upstream's answer as it was."""
        if self.jobs.get(job.request_id) is job and job.request_id in self.hearing.held:
            self._fail(job, self.hearing.expired(job.request_id))

    def _due_attempt(self, attempt: Attempt, now: float) -> None:
        why = self.workers.overdue(attempt, now)
        if why is not None:
            self._replace(attempt.worker, why, now, kill=True)

    # -- terminals -------------------------------------------------------------------

    def _fail(self, job: Job, error: InferenceError, chunks: Any = _KNOWN) -> None:
        """``chunks=None`` when the count is unknown (the worker may still have chunks in flight)."""
        sent_chunks = job.chunks if chunks is _KNOWN else chunks
        if job.chunks or sent_chunks:
            error.retryable = False  # tokens already reached the caller: a retry would duplicate them
        job.log.append(AttemptInfo(self.dep.name, error.kind, error.status, 0.0,
                                   sent=job.attempts > len(job.log)))
        self._terminal(job, Failed(job.request_id, error, job.attempts, self.dep.name, sent_chunks,
                                   attempt_log=job.log))

    def _terminal(self, job: Job, message: Completed | Failed) -> None:
        self.jobs.pop(job.request_id, None)
        self.queue.remove(job.request_id)
        self.recovery.waiting.pop(job.request_id, None)
        self.hearing.held.pop(job.request_id, None)
        self.admission.ended(job)
        self.terminals.ended(job, message)
        if job.reply_to is not SELF:
            self.emit(ev.Reply(job.reply_to, message))
        if self.draining and not self.jobs:
            self.emit(ev.ReportDrained(self.drainer, 0))
        self.hearing.ended(job, isinstance(message, Failed))

    # -- drain and stop --------------------------------------------------------------

    def _on_DrainRequested(self, e: ev.DrainRequested, now: float) -> None:
        self.draining, self.drainer = True, e.requester  # the launcher bounds the wait
        held = [(self.jobs[request_id], error) for request_id, (error, _) in self.hearing.held.items()]
        for job, error in held:  # no probe while draining: answered as the upstream answered (the last one reports)
            self._fail(job, error)
        if not held and not self.jobs:
            self.emit(ev.ReportDrained(e.requester, 0))

    def _on_Stop(self, e: ev.Stop, now: float) -> None:
        self.stopping = True   # (first: no probe starts while the rest end)
        for job in list(self.jobs.values()):
            self._fail(job, ShuttingDown("the engine stopped before the request finished",
                                         provider=self.dep.provider), chunks=None if job.attempt else _KNOWN)
        self.breaker.flush()
        self._publish(now)
