"""RemoteEngineCoreActor: one deployment replica's queue, admission, retries and terminal messages.

The engine owns every accepted request from acceptance to its one terminal message
(:class:`Completed` or :class:`Failed`): workers report to it, never to the caller, so
no crash can produce two terminals or none. Admission is local: the breaker state and
the rate-limit view are pushed to the engine, not asked for per request.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from thespian.actors import ActorExitRequest, ActorTypeDispatcher, ChildActorExited, PoisonMessage, WakeupMessage

from actors.runtime.logs import logger
from actors.core.breaker import BreakerView, CircuitState
from actors.settings.schema import DeploymentConfig
from actors.errors import (AuthenticationError, BadRequest, BudgetExceeded, Cancelled, DeadlineExceeded, InferenceError, InternalError, LeaderUnavailable, QueueFull, ShuttingDown, WorkerCrashed)
from actors.runtime.protocol import (BreakerAdmitted, BreakerCheck, BreakerOutcome, BreakerOutcomes, BreakerRefused, BreakerState, BreakerSubscribe, Dispatch, Drain, Drained, EngineInit, EngineReady, EngineStatus, FirstToken, LimiterDelta, LimiterRegister, SessionRefresh, SessionSubscribe, SessionVersion, StatusRequest, StrictAcquire, StrictDenied, StrictGrant, StrictLimiterIs, StrictSettle, WorkerInit, WorkerReady, WorkerResult)
from actors.types import Cancel, Completed, Failed, InferenceRequest
from actors.core.validation import validate_request
from actors.core.pricing import cost_usd
from actors.core.priority_queue import Priority, RequestQueue
from actors.providers import make_runner
from actors.core.ratelimit import RateLimits, Reservation, WindowedLimiter, estimate_tokens
from actors.core.retry import RetryEngine
from actors.runtime.worker import RemoteWorkerActor

log = logger("atomr.engine")

TICK_S = 0.05
PROBE_RETRY_S = 0.25
STRICT_ASK_TIMEOUT_S = 2.0


@dataclass
class Job:
    request: InferenceRequest
    reply_to: Any
    priority: Priority
    accepted_mono: float
    accepted_unix: float
    deadline_mono: float | None
    estimate: int
    attempts: int = 0
    reservation: Reservation | None = None
    generation: int = 0
    worker: int | None = None
    chunks: int = 0
    first_token_unix: float | None = None
    min_session_version: int = 0
    auth_refreshed: bool = False
    cancelled: bool = False
    last_error: InferenceError | None = None
    parked_on_version: int | None = None
    probe: bool = False
    strict_id: str | None = None        # reservation id at the strict limiter, once granted
    strict_asked: float | None = None   # when the pending strict ask went out
    strict_denied: BudgetExceeded | None = None

    def expired(self, now: float) -> bool:
        return self.deadline_mono is not None and now >= self.deadline_mono


@dataclass
class _Counters:
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class RemoteEngineCoreActor(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self.deployment: DeploymentConfig | None = None
        self.jobs: dict[str, Job] = {}
        self.queue: RequestQueue[Job] = RequestQueue(0)
        self.delayed: list[tuple[float, str]] = []
        # Addresses are not hashable, and a child's address is a placeholder until Thespian
        # resolves it: workers are known by index, and matched with == only on exit.
        self.workers: dict[int, Any] = {}
        self.idle: list[int] = []
        self.ready: set[int] = set()
        self.busy: dict[int, str] = {}
        self.counters = _Counters()
        self.outcomes: list[BreakerOutcome] = []
        self.view = BreakerView()
        self.tick_at: float | None = None
        self.draining: Any = None  # who asked for the drain; told once nothing is left
        self.stopping = False
        self.announced = False
        self.probe_token = ""
        self.probe_grant: int | None = None
        self.probe_asked_at = 0.0
        self.strict_nodes = 1
        self.leader_lost = False
        self.last_sync = 0.0

    # -- bring-up ----------------------------------------------------------------------

    def receiveMsg_EngineInit(self, msg: EngineInit, sender: Any) -> None:
        dep = self.deployment = msg.deployment
        self.init = msg
        self.runner = make_runner(dep)
        self.price = self.runner.price()
        self.queue = RequestQueue(dep.queue_capacity)
        self.retry = RetryEngine(dep.retry)
        self.view = BreakerView(dep.provider, dep.endpoint)
        # A fresh slot id per incarnation: a restarted engine must not resume counting
        # from a lower value than the cluster already merged for its predecessor.
        self.slot = f"{msg.node}/{dep.name}/{msg.replica}/{secrets.token_hex(3)}"
        self.limiter = None if dep.limits.unlimited else WindowedLimiter(self.slot, dep.limits,
                                                                          sync_interval_s=msg.sync_interval_s)
        self.strict = dep.limits.mode == "strict" and self.limiter is not None
        self.strict_address = None
        self.strict_down_since: float | None = time.monotonic()  # unknown until the registry says
        self.fallback: WindowedLimiter | None = None
        self.session_version = 0
        for index in range(dep.workers):
            self._start_worker(index)
        self.send(msg.breaker, BreakerSubscribe(self.myAddress))
        if msg.session is not None:
            self.send(msg.session, SessionSubscribe(self.myAddress, wants_secret=False))
        if self.limiter is not None and msg.limiter is not None:
            self.send(msg.limiter, LimiterRegister(self.myAddress, dep.limit_key, dep.limits))

    def _start_worker(self, index: int) -> None:
        worker = self.createActor(RemoteWorkerActor)
        self.workers[index] = worker
        self.send(worker, WorkerInit(self.deployment, self.myAddress, self.init.session, index))

    def receiveMsg_WorkerReady(self, msg: WorkerReady, sender: Any) -> None:
        if self.workers.get(msg.worker_index) != sender or msg.worker_index in self.ready:
            return
        self.ready.add(msg.worker_index)
        self.idle.append(msg.worker_index)
        if not self.announced and len(self.ready) == len(self.workers):
            self.announced = True
            self.send(self.init.registry, EngineReady(self.deployment.name, self.init.replica))
        self._dispatch()

    # -- admission ---------------------------------------------------------------------

    def receiveMsg_InferenceRequest(self, msg: InferenceRequest, sender: Any) -> None:
        error = validate_request(msg)
        if error is None and msg.request_id in self.jobs:
            if self.jobs[msg.request_id].reply_to == sender:
                return  # the caller resent it (its first send looked lost): it gets one answer
            error = BadRequest(f"request_id {msg.request_id} is already in progress")
        if error is not None:
            return self._reject(msg, sender, error)
        if self.draining is not None or self.stopping:
            return self._reject(msg, sender, ShuttingDown("the engine is draining"))
        now_mono, now_unix = time.monotonic(), time.time()
        deadline = None
        if msg.deadline_unix is not None:
            if msg.deadline_unix <= now_unix:
                return self._reject(msg, sender, DeadlineExceeded("the deadline passed before the request arrived"))
            deadline = now_mono + (msg.deadline_unix - now_unix)
        dep = self.deployment
        job = Job(msg, sender, Priority.parse(msg.priority), now_mono, now_unix, deadline,
                  estimate_tokens(msg.messages, msg.params.get("max_tokens"), dep.estimate_output_tokens))
        if len(self.queue) == 0 and self.idle and self.view.state is CircuitState.CLOSED:
            # Straight to a worker: the capacity bounds waiting requests, and this one won't wait.
            self.queue.push_front(msg.request_id, job, job.priority)
        elif not self.queue.push(msg.request_id, job, job.priority):
            return self._reject(msg, sender, QueueFull(
                f"queue of {dep.name} is full ({dep.queue_capacity} waiting)", provider=dep.provider))
        self.jobs[msg.request_id] = job
        self.counters.accepted += 1
        self._dispatch()
        if len(self.queue):
            self._schedule_tick(TICK_S)

    def _reject(self, msg: Any, sender: Any, error: InferenceError) -> None:
        request_id = getattr(msg, "request_id", "") or ""
        self.counters.rejected[error.kind] = self.counters.rejected.get(error.kind, 0) + 1
        self.send(sender, Failed(str(request_id), error, 0, self.deployment.name if self.deployment else ""))

    def _dispatch(self) -> None:
        """Move queued jobs to idle workers, in priority order, as far as breaker and budget allow."""
        now_unix_ms = time.time() * 1000
        while len(self.queue):
            _, job = self.queue.peek()
            if job.expired(time.monotonic()):
                self.queue.pop()
                self._fail(job, DeadlineExceeded("the deadline passed while queued", provider=self.deployment.provider))
                continue
            verdict, detail = self.view.admit(now_unix_ms)
            if verdict == BreakerView.REFUSE:
                self.queue.pop()  # fail fast: the caller may fall back to another deployment
                self._fail(job, detail)
                continue
            if not self.idle:
                break
            if verdict == BreakerView.NEED_PROBE:
                if self.probe_grant is None:
                    self._ask_probe()
                    break
                detail, self.probe_grant = self.probe_grant, None
                job.probe = True
            budget = self._reserve(job)
            if budget != "reserved" and job.probe:
                job.probe = False
                self.probe_grant = detail  # unused: released below unless the next job takes it
            if budget == "failed":
                continue
            if budget == "wait":
                break
            self.queue.pop()
            self._send_to_worker(job, detail)
        if self.probe_grant is not None:
            self._release_probe(self.probe_grant)
            self.probe_grant = None

    def _reserve(self, job: Job) -> str:
        """Rate-limit admission for the job at the head of the queue: reserved, wait, or failed."""
        if self.limiter is None or job.reservation is not None:
            return "reserved"
        if self.strict:
            return self._reserve_strict(job)
        return self._admit(job, self.limiter.try_acquire(job.estimate))

    def _admit(self, job: Job, verdict: Reservation | BudgetExceeded) -> str:
        if isinstance(verdict, Reservation):
            job.reservation = verdict
            return "reserved"
        wait = verdict.retry_after_s or TICK_S
        if not verdict.retryable or (job.deadline_mono is not None and time.monotonic() + wait >= job.deadline_mono):
            self.queue.pop()
            verdict.provider = self.deployment.provider
            self._fail(job, verdict)
            return "failed"
        self._schedule_tick(min(max(wait, 0.005), 1.0))
        return "wait"

    def _reserve_strict(self, job: Job) -> str:
        """Exact admission: one round trip to the strict limiter on the leader per request."""
        if job.strict_denied is not None:
            denied, job.strict_denied = job.strict_denied, None
            return self._admit(job, denied)
        now = time.monotonic()
        if self.strict_address is None:
            if now - self.strict_down_since < self.init.failure_timeout_s and not self.leader_lost:
                self._schedule_tick(TICK_S)  # still starting up: the registry will say where it is
                return "wait"
            if self.deployment.limits.leader_unavailable == "local_share":
                return self._admit(job, self._fallback().try_acquire(job.estimate))
            self.queue.pop()
            self._fail(job, LeaderUnavailable("strict rate limiting needs the convention leader, which is "
                                              "unreachable", provider=self.deployment.provider,
                                              retry_after_s=self.init.failure_timeout_s))
            return "failed"
        if job.strict_asked is None or now - job.strict_asked > STRICT_ASK_TIMEOUT_S:
            # The same id on a repeated ask: the strict ledger grants it once.
            job.strict_asked = now
            self.send(self.strict_address, StrictAcquire(self.deployment.limit_key, self.deployment.limits,
                                                         f"{job.request.request_id}#{job.attempts + 1}", job.estimate))
            self._schedule_tick(STRICT_ASK_TIMEOUT_S)
        return "wait"

    def _fallback(self) -> WindowedLimiter:
        """This node's share of a strict budget while the leader is away (``leader_unavailable: local_share``)."""
        if self.fallback is None:
            limits, share = self.deployment.limits, self.strict_nodes
            scaled = RateLimits(rpm=max(1, limits.rpm // share) if limits.rpm else None,
                                tpm=max(1, limits.tpm // share) if limits.tpm else None,
                                burst=limits.burst, window_s=limits.window_s)
            self.fallback = WindowedLimiter(self.slot + "/fallback", scaled, exclusive=True)
        return self.fallback

    def receiveMsg_StrictLimiterIs(self, msg: StrictLimiterIs, sender: Any) -> None:
        self.strict_address = msg.address
        self.strict_nodes = max(1, msg.nodes)
        self.leader_lost = msg.address is None
        self.strict_down_since = time.monotonic() if msg.address is None else None
        if msg.address is not None:
            self.fallback = None
        self._dispatch()

    def _strict_job(self, reservation_id: str) -> Job | None:
        request_id, _, attempt = reservation_id.rpartition("#")
        job = self.jobs.get(request_id)
        if job is None or job.cancelled or str(job.attempts + 1) != attempt or job.worker is not None:
            return None
        return job

    def _settle_strict(self, job: Job, actual_tokens: int | None, sent: bool) -> None:
        # With the leader gone the ledger keeps the estimate, which is the safe side of a hard cap.
        if self.strict_address is not None:
            self.send(self.strict_address, StrictSettle(self.deployment.limit_key, job.strict_id, actual_tokens, sent))
        job.strict_id = None

    def receiveMsg_StrictGrant(self, msg: StrictGrant, sender: Any) -> None:
        job = self._strict_job(msg.reservation_id)
        if job is None:
            # Nobody wants it any more (cancelled, expired): give it straight back.
            self.send(sender, StrictSettle(self.deployment.limit_key, msg.reservation_id, None, False))
            return
        job.strict_asked = None
        job.strict_id = msg.reservation_id
        # Mirrored into this engine's replica, so the cluster's GCounter view includes it.
        job.reservation = self.limiter.record(msg.tokens, window=msg.window)
        self._dispatch()

    def receiveMsg_StrictDenied(self, msg: StrictDenied, sender: Any) -> None:
        job = self._strict_job(msg.reservation_id)
        if job is not None:
            job.strict_asked = None
            job.strict_denied = msg.error
            self._dispatch()

    def _send_to_worker(self, job: Job, generation: int) -> None:
        index = self.idle.pop()
        job.worker = index
        job.generation = generation
        job.attempts += 1
        self.busy[index] = job.request.request_id
        if job.attempts == 1:
            self.retry.record_call()
        self.send(self.workers[index], Dispatch(job.request, job.reply_to, job.attempts, job.min_session_version))

    def _ask_probe(self) -> None:
        if self.view.probe_requested and time.monotonic() - self.probe_asked_at < PROBE_RETRY_S:
            return
        self.view.probe_requested = True
        self.probe_asked_at = time.monotonic()
        self.probe_token = secrets.token_hex(4)
        self.send(self.init.breaker, BreakerCheck(self.probe_token))
        self._schedule_tick(PROBE_RETRY_S)

    def receiveMsg_BreakerAdmitted(self, msg: BreakerAdmitted, sender: Any) -> None:
        self.view.probe_requested = False
        if msg.token != self.probe_token:
            return self._release_probe(msg.generation)
        self.probe_grant = msg.generation
        self._dispatch()

    def _release_probe(self, generation: int) -> None:
        # An unused probe slot: report a non-counted outcome so the breaker frees it.
        self.send(self.init.breaker, BreakerOutcomes([BreakerOutcome(generation, Cancelled("probe not used"))]))

    def receiveMsg_BreakerRefused(self, msg: BreakerRefused, sender: Any) -> None:
        self.view.probe_requested = False
        self._schedule_tick(PROBE_RETRY_S)

    def receiveMsg_BreakerState(self, msg: BreakerState, sender: Any) -> None:
        self.view.update(msg.snapshot)
        self._dispatch()

    # -- results ----------------------------------------------------------------------

    def receiveMsg_FirstToken(self, msg: FirstToken, sender: Any) -> None:
        job = self.jobs.get(msg.request_id)
        if job is not None and job.attempts == msg.attempt:
            job.chunks = max(job.chunks, 1)
            job.first_token_unix = msg.at_unix

    def receiveMsg_WorkerResult(self, msg: WorkerResult, sender: Any) -> None:
        index = msg.worker_index
        if self.busy.get(index) == msg.request_id:
            del self.busy[index]
            self.idle.append(index)
        job = self.jobs.get(msg.request_id)
        if job is None or job.worker != index or job.attempts != msg.attempt:
            return self._dispatch()  # a cancelled request's worker reporting back
        job.worker = None
        job.chunks = max(job.chunks, msg.chunks)
        self._account(job, msg)
        error = msg.error
        if job.cancelled:
            self.jobs.pop(msg.request_id, None)
        elif error is None:
            self._complete(job, msg)
        else:
            self._handle_error(job, error, msg)
        self._dispatch()

    def _account(self, job: Job, msg: WorkerResult) -> None:
        if job.strict_id is not None:
            actual = msg.usage.total_tokens if msg.usage.reported else (0 if msg.error and not msg.chunks else None)
            self._settle_strict(job, actual, msg.sent)
        if job.reservation is not None and self.limiter is not None:
            if not msg.sent:
                self.limiter.release(job.reservation)
            elif msg.usage.reported:
                self.limiter.reconcile(job.reservation, msg.usage.total_tokens)
            elif msg.error is not None and msg.chunks == 0:
                self.limiter.reconcile(job.reservation, 0)  # refused before generating anything
            job.reservation = None
        if job.cancelled and msg.error is not None:
            return
        if msg.error is None or msg.error.counts_for_breaker or job.probe:
            self.outcomes.append(BreakerOutcome(job.generation, msg.error))
            if job.probe or (msg.error is not None and msg.error.counts_for_breaker):
                self._flush_outcomes()  # failures and probe results must reach the breaker now
            else:
                self._schedule_tick(TICK_S)
        job.probe = False

    def _complete(self, job: Job, msg: WorkerResult) -> None:
        now = time.monotonic()
        first = msg.first_token_unix or job.first_token_unix
        self._terminal(job, Completed(
            request_id=job.request.request_id, text=msg.text, finish_reason=msg.finish_reason or "stop",
            usage=msg.usage, raw_finish_reason=msg.raw_finish_reason, tool_calls=msg.tool_calls,
            cost_usd=cost_usd(msg.usage, self.price), attempts=job.attempts, latency_s=now - job.accepted_mono,
            ttft_s=(first - job.accepted_unix) if first else None, deployment=self.deployment.name,
            provider_model=self.deployment.provider_model, chunks=msg.chunks))

    def _handle_error(self, job: Job, error: InferenceError, msg: WorkerResult) -> None:
        if job.chunks:
            # Tokens already reached the caller: retrying would duplicate them.
            if msg.usage.reported:
                error.partial_usage = msg.usage.as_dict()
            return self._fail(job, error)
        if isinstance(error, AuthenticationError) and not job.auth_refreshed and self.init.session is not None:
            job.auth_refreshed = True
            job.last_error = error
            job.parked_on_version = msg.session_version
            self.send(self.init.session, SessionRefresh(msg.session_version, "provider answered 401"))
            self._schedule_tick(TICK_S)
            return
        decision = self.retry.decide(error, job.attempts, deadline=job.deadline_mono,
                                     idempotent=job.request.idempotent and self.deployment.idempotent)
        if not decision.retry:
            log.info("%s %s: giving up: %s (%s)", self.deployment.name, job.request.request_id,
                     error.kind, decision.reason)
            return self._fail(job, error)
        job.last_error = error
        self.delayed.append((time.monotonic() + decision.delay_s, job.request.request_id))
        self._schedule_tick(decision.delay_s)

    def receiveMsg_SessionVersion(self, msg: SessionVersion, sender: Any) -> None:
        self.session_version = max(self.session_version, msg.version)
        for job in [j for j in self.jobs.values() if j.parked_on_version is not None]:
            if msg.version > job.parked_on_version:
                job.parked_on_version = None
                job.min_session_version = msg.version
                self.queue.push_front(job.request.request_id, job, job.priority)
            elif not msg.ok:
                job.parked_on_version = None
                self._fail(job, job.last_error or msg.error)
        self._dispatch()

    # -- terminals --------------------------------------------------------------------

    def _terminal(self, job: Job, message: Completed | Failed) -> None:
        self.jobs.pop(job.request.request_id, None)
        if isinstance(message, Completed):
            self.counters.completed += 1
        else:
            self.counters.failed += 1
        self.send(job.reply_to, message)
        if self.draining is not None and not self.jobs:
            self._drained()

    def _fail(self, job: Job, error: InferenceError, chunks: int | None = None) -> None:
        self._terminal(job, Failed(job.request.request_id, error, job.attempts, self.deployment.name,
                                   job.chunks if chunks is None else chunks))

    # -- cancellation, crashes, time -----------------------------------------------------

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:
        """A worker failed twice on a Dispatch: the request still gets its one terminal."""
        dispatch = msg.poisonMessage
        if not isinstance(dispatch, Dispatch):
            log.error("%s: %s failed on %s", self.deployment.name, sender, type(dispatch).__name__)
            return
        job = self.jobs.get(dispatch.request.request_id)
        log.error("%s: worker failed on %s: %s", self.deployment.name, dispatch.request.request_id,
                  str(msg.details)[-300:])
        if job is None or job.worker is None:
            return
        self.busy.pop(job.worker, None)
        self.idle.append(job.worker)
        job.worker = None
        if job.cancelled:
            self.jobs.pop(dispatch.request.request_id, None)
        else:
            self._fail(job, InternalError("the worker failed on this request", provider=self.deployment.provider))
        self._dispatch()

    def receiveMsg_Cancel(self, msg: Cancel, sender: Any) -> None:
        job = self.jobs.get(msg.request_id)
        if job is None or job.cancelled:
            return
        error = Cancelled("cancelled by the caller", provider=self.deployment.provider)
        self.queue.remove(msg.request_id)
        if job.worker is not None:
            job.cancelled = True
            self.send(self.workers[job.worker], Cancel(msg.request_id))
            # The worker may still have chunks in flight: the count is unknown.
            self._fail(job, error, chunks=None)
            self.jobs[msg.request_id] = job  # kept until its worker reports back, to free the slot
            return
        job.parked_on_version = None
        self._fail(job, error)

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        index = next((i for i, address in self.workers.items() if address == msg.childAddress), None)
        if index is None or self.stopping:
            return
        del self.workers[index]
        self.ready.discard(index)
        if index in self.idle:
            self.idle.remove(index)
        request_id = self.busy.pop(index, None)
        job = self.jobs.get(request_id) if request_id else None
        log.warning("%s worker %d exited%s", self.deployment.name, index,
                    f" holding {request_id}" if request_id else "")
        self._start_worker(index)
        if job is None:
            return
        job.worker = None
        if job.strict_id is not None:
            self._settle_strict(job, None, True)  # whatever the dead attempt used stays charged
        job.reservation = None
        if job.cancelled:
            self.jobs.pop(request_id, None)
            return
        error = WorkerCrashed(f"worker {index} exited during attempt {job.attempts}", provider=self.deployment.provider)
        if (job.chunks == 0 and job.request.idempotent and self.deployment.idempotent
                and job.attempts <= self.deployment.retry.max_retries and not job.expired(time.monotonic())):
            job.last_error = error
            self.queue.push_front(request_id, job, job.priority)
        else:
            self._fail(job, error)

    def _schedule_tick(self, delay: float) -> None:
        due = time.monotonic() + delay
        if self.tick_at is not None and self.tick_at <= due + 0.001:
            return
        self.tick_at = due
        self.wakeupAfter(timedelta(seconds=max(delay, 0.001)), payload="tick")

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if msg.payload != "tick" or self.stopping:
            return
        now = time.monotonic()
        if self.tick_at is not None and now < self.tick_at - 0.001:
            return  # an older, superseded wakeup
        self.tick_at = None
        due = [rid for at, rid in self.delayed if at <= now]
        self.delayed = [(at, rid) for at, rid in self.delayed if at > now]
        for rid in due:
            job = self.jobs.get(rid)
            if job is not None and not job.cancelled:
                self.queue.push_front(rid, job, job.priority)
        for job in [j for j in self.jobs.values() if j.worker is None and j.expired(now)
                    and (j.request.request_id not in self.queue)]:
            self._fail(job, DeadlineExceeded("the deadline passed", provider=self.deployment.provider))
            self.delayed = [(at, rid) for at, rid in self.delayed if rid != job.request.request_id]
        for key, job in self.queue.remove_where(lambda j: j.expired(now)):
            self._fail(job, DeadlineExceeded("the deadline passed while queued", provider=self.deployment.provider))
        self._flush_outcomes()
        self._sync_limiter(force=True)
        self._dispatch()
        if self.delayed:
            self._schedule_tick(max(0.0, min(at for at, _ in self.delayed) - now))
        if len(self.queue) or any(j.parked_on_version is not None for j in self.jobs.values()):
            self._schedule_tick(TICK_S)
        if self.outcomes or (self.limiter is not None and self.jobs):
            self._schedule_tick(self.init.sync_interval_s)

    def _flush_outcomes(self) -> None:
        if self.outcomes:
            self.send(self.init.breaker, BreakerOutcomes(self.outcomes))
            self.outcomes = []

    def _sync_limiter(self, force: bool = False) -> None:
        if self.limiter is None or self.init.limiter is None:
            return
        now = time.monotonic()
        if not force and now - self.last_sync < self.init.sync_interval_s:
            return
        self.last_sync = now
        oldest = self.limiter.unpublished_since
        delta = self.limiter.take_delta()
        if delta:
            self.send(self.init.limiter, LimiterDelta(self.deployment.limit_key, delta, self.slot,
                                                      sent_unix=oldest or time.time()))

    def receiveMsg_LimiterDelta(self, msg: LimiterDelta, sender: Any) -> None:
        if self.limiter is not None and msg.key == self.deployment.limit_key and msg.origin != self.slot:
            self.limiter.merge(msg.delta, msg.sent_unix)

    # -- status, drain, shutdown ---------------------------------------------------------

    def receiveMsg_StatusRequest(self, msg: StatusRequest, sender: Any) -> None:
        dep = self.deployment
        self.send(sender, EngineStatus(
            deployment=dep.name, replica=self.init.replica, node=self.init.node, queued=len(self.queue),
            in_flight=len(self.busy), busy_workers=len(self.busy), workers=len(self.workers),
            accepted=self.counters.accepted, completed=self.counters.completed, failed=self.counters.failed,
            depth_by_priority=self.queue.depth_by_priority(), circuit=self.view.state.value,
            draining=self.draining is not None))

    def receiveMsg_Drain(self, msg: Drain, sender: Any) -> None:
        self.draining = sender  # the launcher bounds the wait; shutdown fails whatever is left
        if not self.jobs:
            self._drained()

    def _drained(self) -> None:
        self.send(self.draining, Drained(self.init.node, len(self.jobs)))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self.stopping = True
        for job in list(self.jobs.values()):
            if not job.cancelled:
                self._fail(job, ShuttingDown("the engine stopped before the request finished",
                                             provider=self.deployment.provider if self.deployment else ""))
        self.jobs.clear()
        self._flush_outcomes()
        self._sync_limiter(force=True)
