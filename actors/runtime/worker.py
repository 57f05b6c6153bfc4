"""RemoteWorkerActor: one concurrent HTTP slot, in its own process.

It makes one attempt per :class:`Dispatch` and reports a :class:`WorkerResult` to its
engine, which owns retries and the terminal message. Its HTTP goes through the process's
transport (``transport.py``) and a ``PhaseAdapter`` that records how far each attempt got,
so the report says whether the provider saw it (``sent``).

Thespian only transmits an actor's sends after ``receiveMessage`` returns, so a streamed
response cannot be read in one long handler: a reader thread (``upstream.py``) reads and
decodes it, and ``delivery.py`` (the stream half, one design) says what each thread sends.
The actor is woken when the reader has something for it: through a self-pipe it watches
(``ThespianWatch``, ``wake.py``) on ``multiprocTCPBase``, by a 1 ms poll on the in-process
``simpleSystemBase`` (no watches); either way it runs ``Delivery.pump``, seeing any Cancel
between wake-ups. A non-streamed call is read in the handler (nothing to deliver before it ends). ``timeouts.total_s`` and the caller's deadline bound the whole call
however slowly the upstream trickles (the reader's reads end there; a backstop timer here),
and the size limits bound what one response can make this process hold.

A worker is forked by its engine's process; when that process dies the worker notices (its
parent's pidfd turns readable; else within ``PARENT_CHECK_S``) and exits, never an orphan.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import requests
from thespian.actors import ActorExitRequest, ThespianWatch, WatchMessage

from actors.core import streaming
from actors.errors import AuthenticationError, Cancelled, InferenceError
from actors.providers import make_runner
from actors.providers.base import ModelRunner, StreamAccumulator
from actors.runtime import stream_sender, transport
from actors.runtime.base import GatewayActor
from actors.runtime.delivery import Delivery
from actors.runtime.logs import logger
from actors.runtime.protocol import (Dispatch, FirstToken, SessionSnapshot, SessionSubscribe, WorkerInit, WorkerReady,
                                     WorkerResult)
from actors.runtime.upstream import HttpExchange, PhaseAdapter
from actors.runtime.wake import WakePipe, open_process_fd, watch_supported
from actors.settings.schema import DeploymentConfig
from actors.types import Cancel, TokenChunk

__all__ = ["RemoteWorkerActor", "CREDENTIAL_WAIT_S", "POLL_S"]

log = logger("atomr.worker")

CREDENTIAL_WAIT_S = 10.0    # how long a dispatch waits for the session actor's fresh credential to reach this worker
PARENT_CHECK_S = 1.0        # how often the parent is polled where there are no pidfds
ORPHAN_EXIT_GRACE_S = 5.0
POLL_S = 0.001              # how often the reader is looked at where the system has no watches
DEADLINE_SLACK_S = 0.05     # the backstop fires this long after the attempt's deadline (the reader's own comes first)


def _session(endpoint: str, network: transport.Transport) -> requests.Session:
    http = requests.Session()
    adapter = PhaseAdapter(network, pool_connections=1, pool_maxsize=2, max_retries=0)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    # requests re-reads proxy variables and ~/.netrc on every call (milliseconds each here):
    # resolve the proxy for this endpoint once, honouring HTTPS_PROXY and NO_PROXY.
    http.proxies = requests.utils.get_environ_proxies(endpoint)
    http.trust_env = False
    return http


def _monotonic(unix: float) -> float:
    return time.monotonic() + (unix - time.time())


class _ToCaller:
    """The :class:`~actors.runtime.delivery.Outlet` of one dispatch: what the actor sends for it."""

    def __init__(self, actor: "RemoteWorkerActor", delivery: Delivery) -> None:
        self.actor, self.delivery = actor, delivery
        self.fallback_logged = False

    def to_caller(self, chunk: TokenChunk) -> None:
        delivery = self.delivery
        if delivery.channel is not None and not self.fallback_logged:
            self.fallback_logged = True
            log.info("stream channel unusable (%s): %s's chunks go as messages",
                     getattr(delivery.channel, "last_failure", ""), delivery.request_id)
        self.actor.send(delivery.dispatch.reply_to, chunk)

    def first_token(self, at_unix: float) -> None:
        dispatch = self.delivery.dispatch
        self.actor.send(self.actor.engine, FirstToken(dispatch.request.request_id, dispatch.attempt, at_unix))


class RemoteWorkerActor(GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.deployment: DeploymentConfig | None = None
        self.runner: ModelRunner | None = None
        self.engine: Any = None
        self.index = -1
        self.http: requests.Session | None = None
        self.snapshot: SessionSnapshot | None = None
        self.waiting: Dispatch | None = None      # a dispatch waiting for a fresh credential
        self.delivery: Delivery | None = None     # the streamed attempt under way
        self.outlet: _ToCaller | None = None
        self.parent_pid = os.getppid()
        self.wake: WakePipe | None = None         # set when the system delivers WatchMessages
        self.parent_fd: int | None = None
        self.lag = streaming.Lag()                # how late this worker wakes: the load it feels

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        super().receiveMessage(msg, sender)
        # Thespian replaces the watch list with whatever each handler returns.
        if self.wake is None:
            return None
        fds = [self.wake.fileno()] if self.delivery is not None else []
        if self.parent_fd is not None:
            fds.append(self.parent_fd)
        return ThespianWatch(fds)

    # -- set-up --------------------------------------------------------------------

    def receiveMsg_WorkerInit(self, msg: WorkerInit, sender: Any) -> None:
        self.deployment = msg.deployment
        self.runner = make_runner(msg.deployment)
        self.engine = msg.engine
        self.index = msg.worker_index
        self.http = _session(msg.deployment.endpoint, transport.installed())
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
            self.timers.after("parent", PARENT_CHECK_S)

    def receiveMsg_SessionSnapshot(self, msg: SessionSnapshot, sender: Any) -> None:
        if self.snapshot is None or msg.version >= self.snapshot.version:
            self.snapshot = msg
        if self.waiting is not None and self.snapshot.version >= self.waiting.min_session_version:
            dispatch, self.waiting = self.waiting, None
            self.timers.cancel("credential")
            self._start(dispatch)

    def timer_credential(self, _: Any) -> None:
        if self.waiting is not None:
            dispatch, self.waiting = self.waiting, None
            self._report(dispatch, error=AuthenticationError("no credential arrived from the session actor",
                                                             provider=self.deployment.provider), sent=False)

    # -- one attempt ----------------------------------------------------------------

    def receiveMsg_Dispatch(self, msg: Dispatch, sender: Any) -> None:
        if self.deployment is None:
            return  # not initialised: the engine's own deadline ends the request
        if self.snapshot is None or self.snapshot.version < msg.min_session_version:
            # The fresh credential is on its way from the session actor.
            self.waiting = msg
            self.timers.after("credential", CREDENTIAL_WAIT_S)
            return
        self._start(msg)

    def _start(self, dispatch: Dispatch) -> None:
        try:
            self._attempt(dispatch)
        except Exception as exc:  # noqa: BLE001 - a bug here must still end the request, once
            log.exception("worker %d failed on %s", self.index, dispatch.request.request_id)
            delivery = self.delivery
            if delivery is not None and delivery.dispatch is dispatch:
                return self._finish(delivery, delivery.end(self._bug(exc)))
            self._report(dispatch, error=self._bug(exc))

    def _bug(self, exc: Exception) -> InferenceError:
        return streaming.runner_failed(exc, self.deployment.provider, "the worker")

    def _attempt(self, dispatch: Dispatch) -> None:
        dep, request, runner = self.deployment, dispatch.request, self.runner
        try:
            runner = runner.for_request(request)   # the runner, or its embeddings call
            http = runner.build_request(request, self.snapshot.credential)
        except InferenceError as exc:
            return self._report(dispatch, error=exc, sent=False)
        except Exception as exc:  # noqa: BLE001 - a runner bug must not kill the slot
            return self._report(dispatch, error=streaming.runner_failed(exc, dep.provider, "building the request",
                                                                        detail=False), sent=False)
        deadline = time.time() + dep.timeouts.total_s
        if request.deadline_unix is not None:
            deadline = min(deadline, request.deadline_unix)
        exchange = HttpExchange(http, self._timeouts(deadline), dep.response_limits.max_body_bytes, deadline,
                                whole=not http.stream)
        total_s, coalesce_s = dep.timeouts.total_s, dep.coalesce_ms / 1000
        if not http.stream:
            # Nothing to deliver before it ends, so read in this handler (no thread hand-offs);
            # the exchange's own deadline bounds it, however slowly the body trickles.
            delivery = Delivery(dispatch, exchange, runner, deadline=deadline, total_s=total_s, coalesce_s=coalesce_s)
            exchange.run(self.http, delivery.take)
            return self._finish(delivery, delivery.end(self._bug(RuntimeError("the exchange ended without an outcome"))))
        channel = getattr(request, "channel", None)
        out = stream_sender.sender() if channel is not None else None
        delivery = Delivery(dispatch, exchange, runner, deadline=deadline, total_s=total_s, coalesce_s=coalesce_s,
                            decoder=runner.stream_decoder(),
                            channel=stream_sender.ChannelTo(out, channel) if out is not None else None,
                            wake=self.wake.notify if self.wake is not None else None)
        self.delivery, self.outlet = delivery, _ToCaller(self, delivery)
        exchange.start(self.http, delivery.take, f"reader-{request.request_id}")
        # The reader's reads end at the deadline too; this is the backstop should it hang. One
        # timer at a time (re-armed when it fires early): a timer per stream would pile up
        # pending wakeups that Thespian's loop walks on every turn.
        self.timers.at("deadline", _monotonic(deadline) + DEADLINE_SLACK_S)
        if self.wake is None:
            self.timers.after("poll", POLL_S)

    def _timeouts(self, deadline: float) -> tuple[float, float]:
        t = self.deployment.timeouts
        remaining = max(0.001, deadline - time.time())
        return min(t.connect_s, remaining), min(t.read_s, remaining)

    # -- wake-ups --------------------------------------------------------------------

    def receiveMsg_WatchMessage(self, msg: WatchMessage, sender: Any) -> None:
        ready = msg.ready
        if self.parent_fd is not None and self.parent_fd in ready:
            return self._check_parent()
        if self.wake is not None and self.wake.fileno() in ready:
            self.wake.drain()
            self._pump()

    def timer_poll(self, _: Any) -> None:
        self._pump()

    def timer_flush(self, _: Any) -> None:
        self._pump()

    def timer_deadline(self, _: Any) -> None:
        delivery = self.delivery
        if delivery is not None and time.time() >= delivery.deadline:
            self._finish(delivery, delivery.end(delivery.deadline_error(), self.outlet))
        elif delivery is not None:
            self.timers.at("deadline", _monotonic(delivery.deadline) + DEADLINE_SLACK_S)

    def timer_parent(self, _: Any) -> None:
        self._check_parent()

    def _pump(self) -> None:
        delivery = self.delivery
        if delivery is None:
            return
        try:
            if time.time() >= delivery.deadline:
                return self._finish(delivery, delivery.end(delivery.deadline_error(), self.outlet))
            due = delivery.pump(self.outlet, self.lag)
            if delivery.settled:
                return self._finish(delivery, delivery.end(None))
            if due is not None:
                self.timers.at("flush", due)
            if self.wake is None:
                self.timers.after("poll", POLL_S)
        except Exception as exc:  # noqa: BLE001 - as in _start: the request must still end
            log.exception("worker %d failed streaming %s", self.index, delivery.request_id)
            if self.delivery is delivery:
                self._finish(delivery, delivery.end(self._bug(exc)))

    def _finish(self, delivery: Delivery, error: InferenceError | None) -> None:
        if self.delivery is delivery:
            self.delivery = self.outlet = None
            self.timers.cancel("flush")
            self.timers.cancel("poll")
        if delivery.upstream_body is not None:   # the caller was told less than the upstream said
            log.warning("%s answered HTTP %d; the caller was told %r; the whole body: %s", self.deployment.provider,
                        *delivery.upstream_body)
        if error is not None and delivery.chunks:
            error.retryable = False  # the caller has part of the answer: replaying would repeat it
        # HTTP statuses and body errors come after the headers, so the phase says it all.
        self._report(delivery.dispatch, acc=delivery.acc, error=error, chunks=delivery.chunks,
                     first_token_unix=delivery.first_token_unix, sent=delivery.exchange.phase.reached_provider)

    # -- control -----------------------------------------------------------------------

    def receiveMsg_Cancel(self, msg: Cancel, sender: Any) -> None:
        delivery = self.delivery
        if delivery is not None and delivery.request_id == msg.request_id:
            self._finish(delivery, delivery.end(Cancelled("cancelled by the caller", provider=self.deployment.provider)))
        elif self.waiting is not None and self.waiting.request.request_id == msg.request_id:
            dispatch, self.waiting = self.waiting, None
            self.timers.cancel("credential")
            self._report(dispatch, error=Cancelled("cancelled by the caller"), sent=False)

    def _check_parent(self) -> None:
        if os.getppid() == self.parent_pid:
            if self.parent_fd is None:  # no pidfd: poll
                self.timers.after("parent", PARENT_CHECK_S)
            return
        log.warning("worker %d (pid %d): its engine (pid %d) is gone; exiting", self.index, os.getpid(),
                    self.parent_pid)
        self.parent_fd = None  # stays readable: watch it no more
        self._drop_delivery()
        # Thespian's own exit may wait on transmits to the dead parent: make sure the process ends.
        timer = threading.Timer(ORPHAN_EXIT_GRACE_S, os._exit, args=(0,))
        timer.daemon = True
        timer.start()
        self.send(self.myAddress, ActorExitRequest())

    def _drop_delivery(self) -> None:
        """End the attempt without a report (this worker is going away)."""
        delivery, self.delivery, self.outlet = self.delivery, None, None
        if delivery is not None:
            delivery.end(None)

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self._drop_delivery()
        if self.http is not None:
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
