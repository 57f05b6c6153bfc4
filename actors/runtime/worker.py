"""RemoteWorkerActor: one concurrent HTTP slot, in its own process.

It makes one attempt per :class:`Dispatch` and reports a :class:`WorkerResult` to its
engine, which owns retries and the terminal message. Streamed output goes straight to
the caller as coalesced :class:`TokenChunk` messages.

Thespian only transmits an actor's sends after ``receiveMessage`` returns, so a response
cannot be read in one long handler. A reader thread (``actors.runtime.upstream``) does the
blocking HTTP reads into a bounded queue and writes a byte to a self-pipe after each event;
the actor watches the pipe (``ThespianWatch``), so Thespian wakes it only when there is
something to send: it drains the queue, sends what arrived as one chunk (the first token at
once; when the actor falls behind, the tokens that queued meanwhile travel together, so the
message rate adapts to load), and returns, seeing any Cancel between wake-ups. On the
in-process ``simpleSystemBase`` (no watches) it polls instead with 1 ms wakeups. Streamed
and non-streamed calls take the same path, so ``timeouts.total_s`` and the caller's
deadline bound the whole call however slowly the upstream trickles, and the size limits
bound what one response can make this process hold. The thread never touches Thespian:
sends from other threads are lost.

A worker is forked by its engine's process; when that process dies the worker is
reparented, notices (its parent's pidfd turns readable; without pidfds, within
``PARENT_CHECK``), and exits rather than live on as an orphan.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from datetime import timedelta
from typing import Any

import requests
from thespian.actors import ActorExitRequest, ThespianWatch, WakeupMessage, WatchMessage

from actors.core import streaming
from actors.errors import AuthenticationError, Cancelled, InferenceError, InternalError
from actors.providers import make_runner
from actors.providers.base import ModelRunner, StreamAccumulator
from actors.runtime import stream_sender
from actors.runtime.base import GatewayActor
from actors.runtime.logs import logger
from actors.runtime.protocol import (Dispatch, SessionSnapshot, SessionSubscribe, WorkerInit, WorkerReady,
                                     WorkerResult)
from actors.runtime.stream_job import Job, Stepping
from actors.runtime.upstream import Attempt, PhaseAdapter
from actors.runtime.wake import WakePipe, open_process_fd, watch_supported
from actors.settings.schema import DeploymentConfig
from actors.types import Cancel

log = logger("atomr.worker")

SESSION_WAIT_S = 10.0
PARENT_CHECK = timedelta(seconds=1)
ORPHAN_EXIT_GRACE_S = 5.0
CONTINUE = object()


class RemoteWorkerActor(Stepping, GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.deployment: DeploymentConfig | None = None
        self.runner: ModelRunner | None = None
        self.engine = None
        self.index = -1
        self.http = requests.Session()
        self.snapshot: SessionSnapshot | None = None
        self.waiting: tuple[Dispatch, float] | None = None
        self.job: Job | None = None
        self.parent_pid = os.getppid()
        self.wake: WakePipe | None = None       # set when the system delivers WatchMessages
        self.parent_fd: int | None = None
        self.lag = streaming.Lag()              # how late this worker wakes: the load it feels
        self.deadline_timer: float | None = None  # when the pending deadline wakeup fires (unix time)

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        super().receiveMessage(msg, sender)
        # Thespian replaces the watch list with whatever each handler returns.
        if self.wake is None:
            return None
        fds = [self.wake.fileno()] if self.job is not None else []
        if self.parent_fd is not None:
            fds.append(self.parent_fd)
        return ThespianWatch(fds)

    # -- set-up --------------------------------------------------------------------

    def receiveMsg_WorkerInit(self, msg: WorkerInit, sender: Any) -> None:
        self.deployment = msg.deployment
        self.runner = make_runner(msg.deployment)
        self.engine = msg.engine
        self.index = msg.worker_index
        adapter = PhaseAdapter(pool_connections=1, pool_maxsize=2, max_retries=0)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        # requests re-reads proxy variables and ~/.netrc on every call (milliseconds each here):
        # resolve the proxy for this endpoint once, honouring HTTPS_PROXY and NO_PROXY.
        self.http.proxies = requests.utils.get_environ_proxies(msg.deployment.endpoint)
        self.http.trust_env = False
        if msg.session is not None:
            self.send(msg.session, SessionSubscribe(self.myAddress, wants_secret=True))
        else:
            self.snapshot = SessionSnapshot(version=0, credential=None)
        self.send(self.engine, WorkerReady(self.index, os.getpid()))
        if watch_supported(self):
            self.wake = WakePipe()
            self.parent_fd = open_process_fd(self.parent_pid)
            if self.parent_fd is not None and os.getppid() != self.parent_pid:
                self._check_parent()  # gone before the pidfd was opened: that pid may be another's now
                return
        if self.parent_fd is None:
            self.wakeupAfter(PARENT_CHECK, payload="parent")

    def receiveMsg_SessionSnapshot(self, msg: SessionSnapshot, sender: Any) -> None:
        if self.snapshot is None or msg.version >= self.snapshot.version:
            self.snapshot = msg
        if self.waiting and self.snapshot.version >= self.waiting[0].min_session_version:
            dispatch, _ = self.waiting
            self.waiting = None
            self._start(dispatch)

    # -- one attempt ----------------------------------------------------------------

    def receiveMsg_Dispatch(self, msg: Dispatch, sender: Any) -> None:
        if self.deployment is None:
            return  # not initialised: the engine's own deadline ends the request
        if self.snapshot is None or self.snapshot.version < msg.min_session_version:
            # The fresh credential is on its way from the session actor.
            self.waiting = (msg, time.monotonic() + SESSION_WAIT_S)
            self.wakeupAfter(timedelta(seconds=SESSION_WAIT_S), payload="session")
            return
        self._start(msg)

    def _start(self, dispatch: Dispatch) -> None:
        try:
            self._attempt(dispatch)
        except Exception as exc:  # noqa: BLE001 - a bug here must still end the request, once
            log.exception("worker %d failed on %s", self.index, dispatch.request.request_id)
            if self.job is not None and self.job.dispatch is dispatch:
                self.job.attempt.stop()
                self.job = None
            self._report(dispatch, error=InternalError(f"worker failed: {type(exc).__name__}: {exc}",
                                                       provider=self.deployment.provider))

    def _attempt(self, dispatch: Dispatch) -> None:
        dep = self.deployment
        request = dispatch.request
        try:
            runner = self.runner.for_request(request)   # the runner, or its embeddings call
            http = runner.build_request(request, self.snapshot.credential)
        except InferenceError as exc:
            return self._report(dispatch, error=exc, sent=False)
        except Exception as exc:  # noqa: BLE001 - a bad request shape must not kill the slot
            return self._report(dispatch, error=InternalError(f"building the request failed: {type(exc).__name__}: {exc}",
                                                              provider=dep.provider), sent=False)
        deadline = time.time() + dep.timeouts.total_s
        if request.deadline_unix is not None:
            deadline = min(deadline, request.deadline_unix)
        attempt = Attempt(http, self._timeouts(deadline), dep.response_limits.max_body_bytes, deadline,
                          whole=not http.stream, notify=self.wake.notify if self.wake and http.stream else None)
        if not http.stream:
            # Nothing to deliver before it ends, so read in this handler (no thread hand-offs);
            # the attempt's own deadline bounds it, however slowly the body trickles.
            job = Job(dispatch, attempt, deadline, None, dep.timeouts.total_s)
            attempt.run(self.http)
            try:
                error = job.consume(attempt.events.get_nowait(), runner, dep.provider)
            except queue.Empty:
                error = InternalError("the attempt ended without an outcome", provider=dep.provider)
            return self._finish(job, error)
        self.job = Job(dispatch, attempt, deadline, self.runner.stream_decoder(), dep.timeouts.total_s)
        channel = getattr(request, "channel", None)
        out = stream_sender.sender() if channel is not None and self.wake is not None else None
        if out is not None:
            # After the first chunk, the reader writes the chunks to the channel itself (stream_job.py).
            self.job.relay_to = (out, channel, self.runner, dep.provider, dep.coalesce_ms / 1000)
            attempt.on_data = self.job.relay
        attempt.start(self.http, f"reader-{request.request_id}")
        if self.wake is None:
            return self._step()
        self._arm_deadline(deadline)

    def _arm_deadline(self, deadline: float) -> None:
        # The reader's reads end at the deadline too; this is the backstop should it hang. One
        # timer at a time (re-armed when it fires early): a timer per stream would pile up
        # pending wakeups that Thespian's loop walks on every turn.
        if self.deadline_timer is None or self.deadline_timer > deadline + 0.05:
            self.deadline_timer = deadline + 0.05
            self.wakeupAfter(timedelta(seconds=max(0.0, self.deadline_timer - time.time())), payload="deadline")

    def _timeouts(self, deadline: float) -> tuple[float, float]:
        t = self.deployment.timeouts
        remaining = max(0.001, deadline - time.time())
        return min(t.connect_s, remaining), min(t.read_s, remaining)

    # -- steps -------------------------------------------------------------------------

    def receiveMsg_WatchMessage(self, msg: WatchMessage, sender: Any) -> None:
        ready = msg.ready
        if self.parent_fd is not None and self.parent_fd in ready:
            return self._check_parent()
        if self.wake is not None and self.wake.fileno() in ready:
            self.wake.drain()
            if self.job is not None:
                self._guarded(self._pump)

    def _guarded(self, step: Any) -> None:
        job = self.job
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - as in _start: the request must still end
            log.exception("worker %d failed streaming %s", self.index, job.dispatch.request.request_id)
            if self.job is job:
                self._finish(job, InternalError(f"worker failed: {type(exc).__name__}: {exc}",
                                                provider=self.deployment.provider))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        payload = msg.payload
        if payload == "step" and self.job is not None:
            self._guarded(self._step)
        elif isinstance(payload, tuple) and self.job is not None and payload[1] is self.job:
            if payload[0] == "flush":
                self.job.flush_armed = False
                self._guarded(self._pump)
        elif payload == "deadline":
            self.deadline_timer = None
            if self.job is not None and time.time() >= self.job.deadline:
                self._finish_at_deadline(self.job)
            elif self.job is not None:
                self._arm_deadline(self.job.deadline)
        elif payload == "parent":
            self._check_parent()
        elif msg.payload == "session" and self.waiting:
            remaining = self.waiting[1] - time.monotonic()
            if remaining > 0:  # timers and the monotonic clock disagree by a hair
                self.wakeupAfter(timedelta(seconds=remaining), payload="session")
                return
            dispatch, _ = self.waiting
            self.waiting = None
            self._report(dispatch, error=AuthenticationError("no credential arrived from the session actor",
                                                             provider=self.deployment.provider), sent=False)

    def _finish_at_deadline(self, job: Job) -> None:
        with job.lock:
            job.finished = True
            job.attempt.stop()
            if job.acc.has_pending:
                self._flush(job)
            self._finish(job, job.deadline_error(self.deployment.provider))

    def _finish(self, job: Job, error: InferenceError | None) -> None:
        with job.lock:   # a relaying reader is between two chunks, never inside one
            job.finished = True
        self.job = None
        job.attempt.stop()
        if error is not None and job.chunks:
            error.retryable = False  # the caller has part of the answer: replaying would repeat it
        # HTTP statuses and body errors come after the headers, so the phase says it all.
        self._report(job.dispatch, acc=job.acc, error=error, chunks=job.chunks,
                     first_token_unix=job.first_token_unix, sent=job.attempt.phase.reached_provider)

    # -- control -----------------------------------------------------------------------

    def receiveMsg_Cancel(self, msg: Cancel, sender: Any) -> None:
        job = self.job
        if job is not None and job.dispatch.request.request_id == msg.request_id:
            self._finish(job, Cancelled("cancelled by the caller", provider=self.deployment.provider))
        elif self.waiting and self.waiting[0].request.request_id == msg.request_id:
            dispatch, _ = self.waiting
            self.waiting = None
            self._report(dispatch, error=Cancelled("cancelled by the caller"), sent=False)

    def _check_parent(self) -> None:
        if os.getppid() == self.parent_pid:
            if self.parent_fd is None:  # no pidfd: poll
                self.wakeupAfter(PARENT_CHECK, payload="parent")
            return
        log.warning("worker %d (pid %d): its engine (pid %d) is gone; exiting", self.index, os.getpid(),
                    self.parent_pid)
        self.parent_fd = None  # stays readable: watch it no more
        if self.job is not None:
            with self.job.lock:
                self.job.finished = True
            self.job.attempt.stop()
            self.job = None
        # Thespian's own exit may wait on transmits to the dead parent: make sure the process ends.
        timer = threading.Timer(ORPHAN_EXIT_GRACE_S, os._exit, args=(0,))
        timer.daemon = True
        timer.start()
        self.send(self.myAddress, ActorExitRequest())

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        if self.job is not None:
            with self.job.lock:
                self.job.finished = True
            self.job.attempt.stop()
        self.http.close()  # the wake pipe stays open: a stopping reader may still write to it

    def _report(self, dispatch: Dispatch, *, acc: StreamAccumulator | None = None,
                error: InferenceError | None = None, sent: bool = True, chunks: int = 0,
                first_token_unix: float | None = None) -> None:
        acc = acc or StreamAccumulator()
        self.send(self.engine, WorkerResult(
            request_id=dispatch.request.request_id, attempt=dispatch.attempt, worker_index=self.index,
            error=error, text=acc.text, tool_calls=acc.tool_calls(), finish_reason=acc.finish_reason,
            raw_finish_reason=acc.raw_finish_reason, usage=acc.usage, chunks=chunks, logprobs=acc.logprobs,
            choices=acc.choices, embeddings=acc.embeddings, stop_sequence=acc.stop_sequence,
            first_token_unix=first_token_unix, session_version=self.snapshot.version if self.snapshot else 0,
            sent=sent))
