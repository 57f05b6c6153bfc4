"""The engine's logic with no actor in it: queue, admission, dispatch, retries, settlement, deadlines.

``EngineCore.handle(event)`` returns the effects the actor must carry out, in order (see
:mod:`actors.core.engine_events`). Time comes from injected clocks, so every path (a
deadline while queued, a frozen worker, a crash retry with backoff) is a plain function
call in a test.

The core owns every accepted request until its one terminal :class:`Reply`. A request
that is on a worker when it must end (deadline, cancel) is answered at once; its attempt
stays tracked until the worker reports back, so its budget is settled with what the
worker saw, and a worker that does not report within ``ABANDON_GRACE_S`` is killed and
replaced. Every dispatched attempt has a scheduled end, deadline or not.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.core import engine_events as ev
from actors.core.admission import Admission, Denied, NeedProbe, Refuse, Reserved, Wait
from actors.core.breaker import BreakerView, CircuitState, probe_outcome
from actors.core.caller_fault import (CALLER, DEPLOYMENT, PROBE_PREFIX, Judge, Suspect, is_suspect, probe_request,
                                      upstream_rejected)
from actors.core.budget import NANO, STRICT_ASK_TIMEOUT_S as STRICT_SPEND_ASK_S, BudgetBook, SettleStrictSpend, SpendHold
from actors.core.pricing import cost_usd
from actors.core.priority_queue import Priority, RequestQueue
from actors.core.ratelimit import Reservation, WindowedLimiter, estimate_tokens
from actors.core.records import TerminalRecord, terminal_record
from actors.core.refusals import context_too_long, current, displaced, queue_full
from actors.core.retry import RetryEngine
from actors.core.routing import context_window, input_estimate
from actors.core.stats import DeploymentStats
from actors.core.settlement import AttemptId, Settle, Settlement, apply_settlement, attempt_tokens, settlement
from actors.core.validation import validate_request
from actors.errors import (AuthenticationError, BadRequest, Cancelled, DeadlineExceeded, InferenceError,
                           InternalError, ShuttingDown, Timeout, WorkerCrashed)
from actors.types import AttemptInfo, Completed, Failed, Usage

__all__ = ["EngineCore", "Job", "Attempt", "ABANDON_GRACE_S", "TICK_S", "SESSION_WAIT_S"]

TICK_S = 0.05             # how soon a success outcome reaches the breaker
ABANDON_GRACE_S = 2.0     # how long a worker may take to report an attempt it was told to abandon
SESSION_WAIT_S = 10.0     # how long a request waits for a refreshed credential after a 401
JUDGE_WAIT_S = 10.0       # how long a failed request's answer waits for the verdict on a suspect 5xx
SELF = "engine-core"      # reply_to of the core's own known-good probes: their terminal goes nowhere
_KNOWN = object()         # Failed.chunks: what the engine counted


@dataclass(eq=False)
class Job:
    request: Any
    reply_to: Any
    priority: Priority
    accepted_mono: float
    accepted_unix: float
    deadline: float | None      # on the core's monotonic clock
    estimate: int
    attempts: int = 0
    charged_tokens: int = 0     # summed over attempts, as each one was settled
    chunks: int = 0
    first_token_unix: float | None = None
    min_session_version: int = 0
    known_good: bool = False    # the gateway's own probe: never suspect, not a caller's request
    attempt_seq: int | None = None   # the dispatch number of its last attempt
    counted: bool = False       # one of its failures reached the breaker: it counts once
    suspect: Suspect | None = None   # its last answer was a suspect 5xx (core/caller_fault.py), not counted yet
    auth_refreshed: bool = False
    last_error: InferenceError | None = None
    attempt: "Attempt | None" = None
    retry_at: float | None = None
    parked_on_version: int | None = None
    parked_until: float | None = None
    # Budget held for the next attempt (admission happens before dispatch).
    reservation: Reservation | None = None
    held_by: WindowedLimiter | None = None   # the limiter the reservation came from
    strict_id: AttemptId | None = None
    strict_asked: float | None = None
    strict_first_ask: float | None = None
    strict_denied: InferenceError | None = None
    spend: SpendHold | None = None   # the spend budgets' hold, and what the request was charged
    log: list[AttemptInfo] = field(default_factory=list)   # the terminal's attempt list

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
    generation: int
    probe: bool
    reservation: Reservation | None
    held_by: WindowedLimiter | None
    strict_id: AttemptId | None
    deadline_capped: bool       # the caller's deadline, not the provider, bounds its timeouts
    backstop: float             # past this the worker is presumed frozen
    seq: int = 0                # dispatch number: orders attempts by when they were sent (evidence)
    abandoned_at: float | None = None

    @property
    def kill_at(self) -> float:
        return self.backstop if self.abandoned_at is None else min(self.backstop, self.abandoned_at + ABANDON_GRACE_S)


@dataclass(eq=False)
class Slot:
    pid: int = 0
    ready: bool = False
    attempt: Attempt | None = None


@dataclass
class Counters:
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class EngineCore:
    def __init__(self, deployment: Any, *, slot: str, node: str = "", price: Any = None, sync_interval_s: float = 0.05,
                 failure_timeout_s: float = 5.0, has_session: bool = False, has_hub: bool = False,
                 budgets: Any = (), budget_slot: str = "", budget_seed: Any = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random) -> None:
        self.dep = deployment
        self.slot = slot
        self.node = node
        self.price = price
        self.sync_interval_s = sync_interval_s
        self.has_session = has_session
        self.has_hub = has_hub
        self.clock, self.wall = clock, wall
        self.queue: RequestQueue[Job] = RequestQueue(deployment.queue_capacity)
        self.retry = RetryEngine(deployment.retry, clock=clock, rand=rand)
        self.view = BreakerView(deployment.provider, deployment.endpoint_label)
        limits = deployment.limits
        self.limiter = None if limits.unlimited else WindowedLimiter(slot, limits, wall_clock=wall,
                                                                     sync_interval_s=sync_interval_s,
                                                                     rand=rand, clock=clock)
        self.admission = Admission(self, failure_timeout_s)
        self.book = BudgetBook(budgets, slot=budget_slot or slot, deployment=deployment.name,
                               provider=deployment.provider, wall=wall, clock=clock, sync_interval_s=sync_interval_s,
                               rand=rand, seed=budget_seed, failure_timeout_s=failure_timeout_s) if budgets else None
        self.jobs: dict[str, Job] = {}
        self.judge = Judge()        # whose fault each suspect 5xx is (core/caller_fault.py)
        self.judging: dict[str, tuple[float, InferenceError]] = {}   # failed requests held for a verdict
        self.probe_id: str | None = None   # the known-good probe in flight for the judge
        self._sent = itertools.count(1)
        self._probes = itertools.count(1)
        self.window = deployment.max_input_tokens or context_window(deployment.provider, deployment.provider_model)
        self.slots: dict[int, Slot] = {}
        self.idle: list[int] = []
        self.delayed: dict[str, Job] = {}
        self.parked: dict[str, Job] = {}
        self.counters = Counters()
        # One TerminalRecord per terminal, until the shell takes them (statistics, the ledger).
        self.records: list[TerminalRecord] = []
        self.stats = DeploymentStats()   # the same records, counted for /metrics and the dashboard
        self.outcomes: list[tuple[int, InferenceError | None]] = []
        self.flush_at: float | None = None
        self.pump_at: float | None = None
        self.last_sync = clock()
        self.dirty = False          # the limiter changed since the last published delta
        self.session_version = 0
        self.drainer: Any = None
        self.draining = False
        self.stopping = False
        self.announced = False
        self._timers: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._out: list[Any] = []

    # -- the interface ---------------------------------------------------------------

    def start(self) -> list[Any]:
        for index in range(self.dep.workers):
            self.slots[index] = Slot()
            self._out.append(ev.StartWorker(index))
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
        while self._timers and not self._timer_live(self._timers[0]):
            heapq.heappop(self._timers)
        spend_due = self.book.sync_due() if self.book is not None and self.has_hub else None
        candidates = [t for t in (self.flush_at, self.pump_at, self._sync_due(), spend_due) if t is not None]
        if self._timers:
            candidates.append(self._timers[0][0])
        return min(candidates, default=None)

    def status(self) -> dict[str, Any]:
        busy = sum(1 for s in self.slots.values() if s.attempt is not None)
        return dict(queued=len(self.queue), in_flight=busy, busy_workers=busy, workers=len(self.slots),
                    accepted=self.counters.accepted, completed=self.counters.completed,
                    failed=self.counters.failed, depth_by_priority=self.queue.depth_by_priority(),
                    circuit=self.view.state.value, draining=self.draining, model=self.dep.model,
                    provider=self.dep.provider, endpoint=self.dep.endpoint_label,
                    stats=self.stats.snapshot(self.wall()),
                    budget_spent=self.book.spent() if self.book is not None else [])

    def refusal(self) -> tuple[InferenceError, float | None] | None:
        """What this engine answers a typical request now without calling its provider, and until when
        (pushed with its load: the router refuses with this very error)."""
        return current(self.view, self.book, self.limiter, self.dep.provider, self.wall())

    def _effects(self) -> list[Any]:
        out, self._out = self._out, []
        due = self.next_wakeup()
        if due is not None:
            out.append(ev.WakeAt(due))
        return out

    def emit(self, effect: Any) -> None:
        self._out.append(effect)

    def _at(self, when: float, kind: str, subject: Any) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), kind, subject))
        if len(self._timers) > 64 + 4 * (len(self.jobs) + len(self.slots)):
            # Ended jobs' timers would otherwise stay (and keep their requests alive) until due,
            # e.g. a 600 s total_s backstop per call: drop them, amortised O(1) per timer.
            self._timers = [entry for entry in self._timers if self._timer_live(entry)]
            heapq.heapify(self._timers)

    def pump_soon(self, when: float) -> None:
        self.pump_at = when if self.pump_at is None else min(self.pump_at, when)

    # -- bring-up --------------------------------------------------------------------

    def _on_WorkerUp(self, e: ev.WorkerUp, now: float) -> None:
        slot = self.slots.get(e.index)
        if slot is None or slot.ready:
            return
        slot.ready, slot.pid = True, e.pid
        self.idle.append(e.index)
        if not self.announced and all(s.ready for s in self.slots.values()):
            self.announced = True
            self.emit(ev.AnnounceReady())
        self._pump(now)

    # -- admission -------------------------------------------------------------------

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
        if len(self.queue) == 0 and self.idle and self.view.state is CircuitState.CLOSED:
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

    def _job(self, msg: Any, sender: Any, now: float, wall: float) -> Job:
        deadline = None if msg.deadline_unix is None else now + (msg.deadline_unix - wall)
        # An embeddings call generates nothing: its estimate is its input alone.
        embed = getattr(msg, "operation", "chat") == "embed"
        max_tokens = None if embed else msg.params.get("max_tokens")
        default_output = 0 if embed else self.dep.estimate_output_tokens
        job = Job(msg, sender, Priority.parse(msg.priority), now, wall, deadline,
                  estimate_tokens(msg.messages, max_tokens, default_output))
        job.spend = SpendHold(BudgetBook.estimate(msg.messages, max_tokens, default_output, self.price),
                              self.book.applicable(msg.metadata or {}, self.dep.name, self.dep.provider)
                              if self.book is not None else [])
        return job

    def _accepted(self, job: Job) -> None:
        self.jobs[job.request_id] = job
        self.counters.accepted += 1
        if job.deadline is not None:
            self._at(job.deadline, "deadline", job)

    def _probe(self, now: float) -> None:
        """Send the known-good probe the judge wants, ahead of every queued request."""
        if not self.judge.wants_probe or self.stopping or self.draining:
            return
        request_id = f"{PROBE_PREFIX}{self.slot}/{next(self._probes)}"
        while request_id in self.jobs:  # a caller chose that id: it is only a name
            request_id = f"{PROBE_PREFIX}{self.slot}/{next(self._probes)}"
        request = probe_request(self.dep.model, request_id)
        job = self._job(request, SELF, now, self.wall())
        job.known_good, self.probe_id = True, request.request_id
        self.judge.probing = True
        self.queue.push_front(job.request_id, job, job.priority)
        self._accepted(job)

    def _reject(self, msg: Any, sender: Any, error: InferenceError) -> None:
        request_id = str(getattr(msg, "request_id", "") or "")
        self.counters.rejected[error.kind] = self.counters.rejected.get(error.kind, 0) + 1
        self.stats.reject(type(error).__name__)
        self.emit(ev.Reply(sender, Failed(request_id, error, 0, self.dep.name,
                                          attempt_log=[AttemptInfo(self.dep.name, error.kind, None, 0.0, False)])))

    def _pump(self, now: float) -> None:
        """Move queued jobs to idle workers, in priority order, as far as breaker and budget allow."""
        while len(self.queue):
            _, job = self.queue.peek()
            if job.expired(now):
                self.queue.pop()
                self._fail(job, DeadlineExceeded("the deadline passed while queued", provider=self.dep.provider))
                continue
            gate = self.admission.breaker(now)
            if isinstance(gate, Refuse):
                self.queue.pop()  # fail fast: the caller may fall back to another deployment
                self._fail(job, gate.error)
                continue
            if not self.idle:
                break
            if isinstance(gate, NeedProbe):
                gate = self.admission.take_probe(now)
                if gate is None:
                    break
            budget = self._spend_gate(job, now)
            if budget is None:
                budget = self.admission.budget(job, now)
            if not isinstance(budget, Reserved):
                self.admission.put_back(gate)
            if isinstance(budget, Denied):
                self.queue.pop()
                self._fail(job, budget.error)
                continue
            if isinstance(budget, Wait):
                self.pump_soon(budget.until)
                break
            self.queue.pop()
            self._dispatch(job, gate, now)
        self.admission.end()

    def _spend_gate(self, job: Job, now: float) -> Wait | Denied | None:
        """The spend budgets, before the rate limit: None when admitted (once for all attempts)."""
        hold = job.spend
        if self.book is None or hold is None or not hold.budgets or hold.admitted:
            return None
        if not hold.reserved and any(b.mode != "strict" for b in hold.budgets):
            outside = self.admission.spend_outside(now)
            if outside is not None:
                return outside
        verdict, detail = self.book.admit(hold, now, self.admission.leader_available, self.admission.leader_lost,
                                          job.request_id)
        if verdict == "ok":
            return None
        if verdict == "denied":
            detail.provider = self.dep.provider
            return Denied(detail)
        if verdict == "ask":
            for ask in detail:
                self.emit(ask)
            return Wait(hold.strict_asked + STRICT_SPEND_ASK_S)
        return Wait(detail)

    def _dispatch(self, job: Job, gate: Any, now: float) -> None:
        index = self.idle.pop()
        job.attempts += 1
        if job.attempts == 1 and not job.known_good:
            self.retry.record_call()
        timeouts = self.dep.timeouts
        capped = job.deadline is not None and job.deadline - now < max(timeouts.connect_s, timeouts.read_s)
        backstop = now + timeouts.total_s + ABANDON_GRACE_S
        if job.deadline is not None:
            backstop = min(backstop, job.deadline + ABANDON_GRACE_S)
        attempt = Attempt(job, job.attempts, index, gate.generation, gate.probe, job.reservation, job.held_by,
                          job.strict_id, capped, backstop, next(self._sent))
        job.attempt_seq = attempt.seq
        job.reservation = job.held_by = job.strict_id = job.strict_asked = job.strict_first_ask = None
        job.attempt = self.slots[index].attempt = attempt
        self._at(attempt.backstop, "attempt", attempt)
        self.emit(ev.DispatchTo(index, job.request, job.reply_to, job.attempts, job.min_session_version))

    # -- breaker and budget messages -------------------------------------------------

    def _on_BreakerChanged(self, e: ev.BreakerChanged, now: float) -> None:
        self.view.update(e.snapshot)
        self._pump(now)

    def _on_ProbeAdmitted(self, e: ev.ProbeAdmitted, now: float) -> None:
        self.admission.probe_admitted(e.token, e.generation)
        self._pump(now)

    def _on_ProbeRefused(self, e: ev.ProbeRefused, now: float) -> None:
        self.admission.probe_refused(e.token, now)

    def _on_StrictLeader(self, e: ev.StrictLeader, now: float) -> None:
        self.admission.leader(e.available, e.shares, now, e.in_cluster)
        self._pump(now)

    def _on_StrictGranted(self, e: ev.StrictGranted, now: float) -> None:
        spend = BudgetBook.parse_reservation(e.reservation_id)
        if spend is not None:
            return self._spend_granted(spend, e, now)
        parsed = AttemptId.parse(e.reservation_id)
        live = self.jobs.get(parsed.request_id) if parsed else None
        if live is not None and parsed in (live.strict_id, live.attempt and live.attempt.strict_id):
            return  # a repeated ask answered twice: the ledger holds one reservation, and so do we
        job = self._strict_job(e.reservation_id)
        if job is None:
            # Nobody wants it any more (cancelled, expired): give it straight back.
            self.emit(ev.SettleStrict(e.reservation_id, None, False))
            return
        job.strict_asked = job.strict_first_ask = None
        job.strict_id = AttemptId.parse(e.reservation_id)
        # Mirrored into this engine's replica, so the cluster's GCounter view includes it.
        job.reservation, job.held_by = self.limiter.record(e.tokens, window=e.window), self.limiter
        self.dirty = True
        self._pump(now)

    def _spend_granted(self, spend: tuple[str, str], e: ev.StrictGranted, now: float) -> None:
        job = self.jobs.get(spend[0])
        hold = job.spend if job is not None else None
        if self.book is not None and hold is not None and self.book.granted(hold, spend[1], e.window, e.tokens):
            return self._pump(now)
        # Nobody wants it any more (ended, or refused elsewhere): give it straight back.
        self.emit(SettleStrictSpend(spend[1], e.reservation_id, 0, False))

    def _on_StrictRefused(self, e: ev.StrictRefused, now: float) -> None:
        spend = BudgetBook.parse_reservation(e.reservation_id)
        if spend is not None:
            job = self.jobs.get(spend[0])
            if self.book is not None and job is not None and job.spend is not None and not job.spend.admitted:
                self.book.refused(job.spend, spend[1], e.error)
                self._pump(now)
            return
        job = self._strict_job(e.reservation_id)
        if job is not None:
            job.strict_asked = job.strict_first_ask = None
            job.strict_denied = e.error
            self._pump(now)

    def _strict_job(self, reservation_id: str) -> Job | None:
        parsed = AttemptId.parse(reservation_id)
        job = self.jobs.get(parsed.request_id) if parsed else None
        if (job is None or job.attempt is not None or job.strict_asked is None
                or parsed.attempt != job.attempts + 1):
            return None
        return job

    def _on_PeerCounts(self, e: ev.PeerCounts, now: float) -> None:
        if self.book is not None and e.origin != self.book.slot and self.book.merge(e.key, e.delta, e.sent_unix):
            return
        if self.limiter is not None and e.key == self.dep.limit_key and e.origin != self.slot:
            self.limiter.merge(e.delta, e.sent_unix)

    def _sync_due(self) -> float | None:
        if not self.dirty or self.limiter is None or not self.has_hub:
            return None
        return self.last_sync + self.sync_interval_s

    def _publish(self, now: float) -> None:
        if self.book is not None and self.has_hub:
            for effect in self.book.publish(now):
                self.emit(effect)
        if self.limiter is None or not self.has_hub:
            return
        self.last_sync, self.dirty = now, False
        oldest = self.limiter.unpublished_since
        delta = self.limiter.take_delta()
        if delta:
            self.emit(ev.PublishCounts(delta, oldest or self.wall()))

    def _flush(self) -> None:
        self.flush_at = None
        if self.outcomes:
            self.emit(ev.ReportOutcomes(self.outcomes))
            self.outcomes = []

    def _outcome(self, generation: int, error: InferenceError | None, urgent: bool, now: float) -> None:
        self.outcomes.append((generation, error))
        if urgent:
            self._flush()  # failures and probe results must reach the breaker now
        elif self.flush_at is None:
            self.flush_at = now + TICK_S

    # -- results ---------------------------------------------------------------------

    def _on_TokenStarted(self, e: ev.TokenStarted, now: float) -> None:
        job = self.jobs.get(e.request_id)
        if job is not None and job.attempt is not None and job.attempt.number == e.attempt:
            job.chunks = max(job.chunks, 1)
            job.first_token_unix = e.at_unix

    def _on_WorkerReported(self, e: ev.WorkerReported, now: float) -> None:
        r = e.result
        slot = self.slots.get(r.worker_index)
        attempt = slot.attempt if slot is not None else None
        if attempt is None or attempt.job.request_id != r.request_id or attempt.number != r.attempt:
            return self._pump(now)  # a replaced worker's late report, or a duplicate
        self._free(r.worker_index)
        answered = r.error is not None and r.error.status is not None
        decided = self._settle(attempt, settlement(r.sent, attempt_tokens(r.usage, r.error, r.chunks, answered)),
                               r.usage)
        job = attempt.job
        job.charged_tokens += decided.charged(job.estimate)
        if attempt.abandoned_at is not None:
            self._release_probe(attempt, r.error, now)
        else:
            job.attempt = None
            job.chunks = max(job.chunks, r.chunks)
            self._count_outcome(attempt, r.error, now)
            if r.error is None:
                self._complete(job, r, decided, now)
            else:
                self._after_error(job, r.error, r, now)
        self._pump(now)

    def _count_outcome(self, attempt: Attempt, error: InferenceError | None, now: float) -> None:
        """What the breaker hears of one attempt: each request counts once, and an answered 5xx
        only once the judge says it is the deployment's (core/caller_fault.py)."""
        job = attempt.job
        if error is not None and error.counts_for_breaker and attempt.deadline_capped and isinstance(error, Timeout):
            # The caller's own short deadline cut the call: not a sign of an unhealthy provider.
            error = DeadlineExceeded("the caller's deadline bounded the call", provider=self.dep.provider)
        if attempt.probe:
            error = probe_outcome(error, delivered=job.chunks > 0)
        if error is None:
            self._outcome(attempt.generation, None, urgent=attempt.probe, now=now)
            return self._judged(self.judge.evidence(attempt.seq, ok=True), now)
        if not error.counts_for_breaker:
            if attempt.probe:
                self._outcome(attempt.generation, error, urgent=True, now=now)  # frees its half-open slot
            return
        if job.known_good:
            self._judged(self.judge.evidence(attempt.seq, ok=False), now)
        elif is_suspect(error):
            job.suspect = Suspect(job.request_id, error, attempt.generation, attempt.seq)
            if attempt.probe:  # its slot goes to the next call; the verdict decides what this one says
                self._outcome(attempt.generation, Cancelled("a suspect answer waits for its verdict"), urgent=True,
                              now=now)
            return
        if attempt.probe or not job.counted:
            job.counted = True
            self._outcome(attempt.generation, error, urgent=True, now=now)

    def _judged(self, verdicts: list[tuple[Suspect, str]], now: float) -> None:
        """Carry out verdicts: the deployment's failures count once; held requests get their answer."""
        for suspect, verdict in verdicts:
            if verdict == DEPLOYMENT:
                self._outcome(suspect.generation, suspect.error, urgent=True, now=now)
            held = self.judging.pop(suspect.request_id, None)
            job = self.jobs.get(suspect.request_id)
            if held is not None and job is not None:
                self._fail(job, upstream_rejected(suspect.error, job.attempts) if verdict == CALLER else held[1])
        self._probe(now)

    def _release_probe(self, attempt: Attempt, error: InferenceError | None, now: float) -> None:
        if attempt.probe:
            # An abandoned or lost probe says nothing about the provider: free its slot.
            self._outcome(attempt.generation, error if error is None else Cancelled("probe abandoned"),
                          urgent=True, now=now)

    def _settle(self, attempt: Attempt, decided: Settlement, usage: Any = None) -> Settlement:
        hold = attempt.job.spend
        if hold is not None and attempt.number > 0 and attempt.abandoned_at is None:
            hold.spent_nano += BudgetBook.attempt_charge(decided, usage, hold.estimate_nano, self.price)
            hold.sent = hold.sent or decided.action is not Settle.RELEASE
        if attempt.strict_id is not None:
            self.emit(ev.SettleStrict(str(attempt.strict_id), decided.tokens, decided.action is not Settle.RELEASE))
        if attempt.reservation is not None and attempt.held_by is not None:
            apply_settlement(attempt.held_by, attempt.reservation, decided)
            self.dirty = True
        attempt.reservation = attempt.held_by = attempt.strict_id = None
        return decided

    def _give_back(self, job: Job) -> None:
        """Budget held by a job that ends before its next attempt goes out."""
        if job.reservation is not None or job.strict_id is not None:
            holder = Attempt(job, 0, -1, 0, False, job.reservation, job.held_by, job.strict_id, False, 0.0)
            self._settle(holder, settlement(False, None))
            job.reservation = job.held_by = job.strict_id = None

    def _complete(self, job: Job, r: Any, decided: Settlement, now: float) -> None:
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

    def _after_error(self, job: Job, error: InferenceError, r: Any, now: float) -> None:
        if job.chunks:
            if r.usage.reported:
                error.partial_usage = r.usage.as_dict()
            return self._fail(job, error)
        if isinstance(error, AuthenticationError) and not job.auth_refreshed and self.has_session:
            job.auth_refreshed, job.last_error = True, error
            job.log.append(AttemptInfo(self.dep.name, error.kind, error.status))
            job.parked_on_version, job.parked_until = r.session_version, now + SESSION_WAIT_S
            self.parked[job.request_id] = job
            self._at(job.parked_until, "parked", job)
            self.emit(ev.RefreshSession(r.session_version, "provider answered 401"))
            return
        self._retry_or_fail(job, error, now, sent=r.sent)

    def _retry_or_fail(self, job: Job, error: InferenceError, now: float, sent: bool = True) -> None:
        budget = getattr(job.request, "retry_budget", None)
        if isinstance(budget, int) and not isinstance(budget, bool) and job.attempts - 1 >= budget:
            return self._give_up(job, error, now)  # the request's retries are one budget across deployments
        decision = self.retry.decide(error, job.attempts, deadline=job.deadline,
                                     idempotent=job.request.idempotent and self.dep.idempotent, sent=sent)
        if not decision.retry:
            return self._give_up(job, error, now)
        job.log.append(AttemptInfo(self.dep.name, error.kind, error.status, decision.delay_s))
        job.last_error = error
        job.retry_at = now + decision.delay_s
        self.delayed[job.request_id] = job
        self._at(job.retry_at, "retry", job)

    def _give_up(self, job: Job, error: InferenceError, now: float) -> None:
        """The request failed after its attempts. If the upstream's last answer was a suspect 5xx,
        whose fault it is decides what the caller is told: held for the verdict, at most JUDGE_WAIT_S."""
        suspect = job.suspect
        if suspect is None or suspect.error is not error or job.counted or self.draining:
            return self._fail(job, error)  # (a suspect is still judged, for the breaker, at its terminal)
        job.suspect = None
        until = now + JUDGE_WAIT_S if job.deadline is None else min(now + JUDGE_WAIT_S, job.deadline)
        self.judging[job.request_id] = (until, error)
        verdict = self.judge.register(suspect)
        if verdict is not None:
            return self._judged([(suspect, verdict)], now)
        self._at(until, "judging", job)
        self._probe(now)

    def _on_SessionChanged(self, e: ev.SessionChanged, now: float) -> None:
        self.session_version = max(self.session_version, e.version)
        for job in list(self.parked.values()):
            if e.version > job.parked_on_version:
                del self.parked[job.request_id]
                job.parked_on_version = job.parked_until = None
                job.min_session_version = e.version
                self.queue.push_front(job.request_id, job, job.priority)
            elif not e.ok:
                self._fail(job, job.last_error or e.error)
        self._pump(now)

    # -- workers coming and going ----------------------------------------------------

    def _free(self, index: int) -> None:
        slot = self.slots[index]
        slot.attempt = None
        if slot.ready and index not in self.idle:
            self.idle.append(index)

    def _on_WorkerFailedOn(self, e: ev.WorkerFailedOn, now: float) -> None:
        slot = self.slots.get(e.index)
        attempt = slot.attempt if slot is not None else None
        if attempt is None or attempt.job.request_id != e.request_id or attempt.number != e.attempt:
            return
        self._free(e.index)
        self._settle(attempt, settlement(True, None))
        self._release_probe(attempt, InternalError(), now)
        if attempt.abandoned_at is None:
            attempt.job.attempt = None
            self._fail(attempt.job, InternalError("the worker failed on this request", provider=self.dep.provider))
        self._pump(now)

    def _on_WorkerGone(self, e: ev.WorkerGone, now: float) -> None:
        if e.index in self.slots:
            self._replace(e.index, f"worker {e.index} exited", now)
            self._pump(now)

    def _replace(self, index: int, why: str, now: float, kill: bool = False) -> None:
        old = self.slots[index]
        if index in self.idle:
            self.idle.remove(index)
        if kill:
            self.emit(ev.KillWorker(index, old.pid))
        self.slots[index] = Slot()
        self.emit(ev.StartWorker(index))
        attempt = old.attempt
        if attempt is None:
            return
        self._settle(attempt, settlement(True, None))  # whatever the lost attempt used stays charged
        self._release_probe(attempt, WorkerCrashed(), now)
        if attempt.abandoned_at is not None:
            return
        job = attempt.job
        job.attempt = None
        error = WorkerCrashed(f"{why} during attempt {attempt.number}", provider=self.dep.provider,
                              retryable=job.chunks == 0)
        if job.chunks:
            return self._fail(job, error, chunks=None)   # how many it sent died with it
        self._retry_or_fail(job, error, now)

    # -- cancel, deadlines, time -----------------------------------------------------

    def _on_CancelRequested(self, e: ev.CancelRequested, now: float) -> None:
        job = self.jobs.get(e.request_id)
        if job is None:
            return
        error = Cancelled("cancelled by the caller", provider=self.dep.provider)
        if job.attempt is not None:
            self._abandon(job, now)
            # The worker may still have chunks in flight: the count is unknown.
            return self._fail(job, error, chunks=None)
        self._fail(job, error)
        self._pump(now)

    def _abandon(self, job: Job, now: float) -> None:
        attempt, job.attempt = job.attempt, None
        attempt.abandoned_at = now
        if job.spend is not None:
            # Its report may come after the terminal settles the budgets: it is charged its estimate now.
            job.spend.spent_nano += job.spend.estimate_nano
            job.spend.sent = True
        self._at(attempt.kill_at, "attempt", attempt)
        self.emit(ev.AbandonOnWorker(attempt.worker, job.request_id))

    def _on_Tick(self, e: ev.Tick, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, subject = heapq.heappop(self._timers)
            getattr(self, "_due_" + kind)(subject, now)
        if self.flush_at is not None and self.flush_at <= now:
            self._flush()
        due = self._sync_due()
        spend_due = self.book.sync_due() if self.book is not None and self.has_hub else None
        if (due is not None and due <= now) or (spend_due is not None and spend_due <= now):
            self._publish(now)
        if self.pump_at is not None and self.pump_at <= now:
            self.pump_at = None
        self._pump(now)

    def _timer_live(self, entry: tuple[float, int, str, Any]) -> bool:
        when, _, kind, subject = entry
        if kind == "attempt":
            return self.slots.get(subject.worker) is not None and self.slots[subject.worker].attempt is subject \
                and subject.kill_at == when
        if kind == "deadline":
            return self.jobs.get(subject.request_id) is subject
        if kind == "retry":
            return self.delayed.get(subject.request_id) is subject and subject.retry_at == when
        if kind == "judging":
            return self.jobs.get(subject.request_id) is subject and subject.request_id in self.judging
        return self.parked.get(subject.request_id) is subject and subject.parked_until == when

    def _due_deadline(self, job: Job, now: float) -> None:
        if self.jobs.get(job.request_id) is not job:
            return
        provider = self.dep.provider
        if job.request_id in self.judging:
            return self._due_judging(job, now)
        if job.attempt is not None:
            stage = "mid-stream" if job.chunks else "during the call"
            self._abandon(job, now)
            # The worker may still have chunks in flight: the count is unknown.
            return self._fail(job, DeadlineExceeded(f"the deadline passed {stage}", provider=provider), chunks=None)
        stage = ("waiting for a retry" if job.request_id in self.delayed else
                 "waiting for a credential" if job.request_id in self.parked else "while queued")
        self._fail(job, DeadlineExceeded(f"the deadline passed {stage}", provider=provider))

    def _due_retry(self, job: Job, now: float) -> None:
        if self.delayed.get(job.request_id) is job and job.retry_at is not None and job.retry_at <= now:
            del self.delayed[job.request_id]
            job.retry_at = None
            self.queue.push_front(job.request_id, job, job.priority)

    def _due_judging(self, job: Job, now: float) -> None:
        """No verdict in time: the caller gets the upstream's answer as it was (the judge still counts it or not)."""
        if self.jobs.get(job.request_id) is job and job.request_id in self.judging:
            _, error = self.judging.pop(job.request_id)
            self._fail(job, error)

    def _due_parked(self, job: Job, now: float) -> None:
        if self.parked.get(job.request_id) is job and job.parked_until is not None and job.parked_until <= now:
            self._fail(job, job.last_error or AuthenticationError("no fresh credential arrived",
                                                                  provider=self.dep.provider))

    def _due_attempt(self, attempt: Attempt, now: float) -> None:
        slot = self.slots.get(attempt.worker)
        if slot is None or slot.attempt is not attempt or now < attempt.kill_at:
            return
        why = (f"worker {attempt.worker} did not report within {ABANDON_GRACE_S:g}s of being told to stop"
               if attempt.abandoned_at is not None else f"worker {attempt.worker} stopped answering")
        self._replace(attempt.worker, why, now, kill=True)

    # -- terminals -------------------------------------------------------------------

    def _detach(self, job: Job) -> None:
        self.jobs.pop(job.request_id, None)
        self.queue.remove(job.request_id)
        self.delayed.pop(job.request_id, None)
        self.parked.pop(job.request_id, None)
        self.judging.pop(job.request_id, None)
        self._give_back(job)

    def _terminal(self, job: Job, message: Completed | Failed) -> None:
        self._detach(job)
        if self.book is not None and job.spend is not None:
            for effect in self.book.settle(job.spend, job.request_id):
                self.emit(effect)
        if isinstance(message, Completed):
            self.counters.completed += 1
        else:
            self.counters.failed += 1
        record = self._record(job, message)
        self.records.append(record)
        if job.known_good:
            self.stats.probe(isinstance(message, Completed))
        else:
            self.stats.record(record)
        if job.reply_to is not SELF:
            self.emit(ev.Reply(job.reply_to, message))
        if self.draining and not self.jobs:
            self.emit(ev.ReportDrained(self.drainer, 0))
        if isinstance(message, Failed) and job.suspect is not None and not job.counted:
            # Ended another way (deadline, cancel, a refusal at its retry): still judged, for the breaker.
            suspect, job.suspect = job.suspect, None
            verdict = self.judge.register(suspect)
            self._judged([(suspect, verdict)] if verdict is not None else [], self.clock())  # or a probe for it
        if job.request_id == self.probe_id:
            self.probe_id = None
            self._judged(self.judge.probe_over(job.attempt_seq), self.clock())

    def _record(self, job: Job, message: Completed | Failed) -> TerminalRecord:
        now = self.clock()
        if isinstance(message, Completed):
            cost = message.cost_usd
        else:
            partial = getattr(message.error, "partial_usage", None)
            cost = cost_usd(Usage.from_fields(partial), self.price) if partial else None
        first = job.first_token_unix
        return terminal_record(message, at_unix=self.wall(), node=self.node, model=self.dep.model,
                               provider=self.dep.provider, metadata=getattr(job.request, "metadata", None) or {},
                               streamed=bool(getattr(job.request, "stream", False)),
                               latency_s=now - job.accepted_mono,
                               ttft_s=(first - job.accepted_unix) if first else None,
                               charged_tokens=job.charged_tokens, cost_usd=cost,
                               charged_usd=job.spend.spent_nano / NANO if job.spend is not None else None)

    def take_records(self) -> list[TerminalRecord]:
        records, self.records = self.records, []
        return records

    def _fail(self, job: Job, error: InferenceError, chunks: Any = _KNOWN) -> None:
        """``chunks=None`` when the count is unknown (the worker may still have chunks in flight)."""
        sent_chunks = job.chunks if chunks is _KNOWN else chunks
        if job.chunks or sent_chunks:
            error.retryable = False  # tokens already reached the caller: a retry would duplicate them
        job.log.append(AttemptInfo(self.dep.name, error.kind, error.status, 0.0,
                                   sent=job.attempts > len(job.log)))
        self._terminal(job, Failed(job.request_id, error, job.attempts, self.dep.name, sent_chunks,
                                   attempt_log=job.log))

    # -- drain and stop --------------------------------------------------------------

    def _on_DrainRequested(self, e: ev.DrainRequested, now: float) -> None:
        self.draining, self.drainer = True, e.requester  # the launcher bounds the wait
        held = [(self.jobs[request_id], error) for request_id, (_, error) in self.judging.items()]
        for job, error in held:  # no probe while draining: answered as the upstream answered (the last one reports)
            self._fail(job, error)
        if not held and not self.jobs:
            self.emit(ev.ReportDrained(e.requester, 0))

    def _on_Stop(self, e: ev.Stop, now: float) -> None:
        self.stopping = True   # (first: no probe starts while the rest end)
        for job in list(self.jobs.values()):
            self._fail(job, ShuttingDown("the engine stopped before the request finished",
                                         provider=self.dep.provider), chunks=None if job.attempt else _KNOWN)
        self._flush()
        self._publish(now)
