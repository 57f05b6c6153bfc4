"""RemoteWorkerActor: a worker process holding some of a deployment's slots, a thread each.

Each slot (``slot.py``) makes one attempt per :class:`Dispatch` on its own long-lived thread,
which reads and decodes the body and relays chunks as frames (``delivery.py``). This actor,
on its own thread, prepares the attempts (``attempt.py``), sends what only an actor may send
(the first chunk with its ``FirstToken``, chunks as messages, each ``WorkerResult``) and
answers the engine, which owns retries and the terminal (on their control link, ``linked_actor.py``).
A slot wakes the actor through a watched self-pipe (``wake.py``; a 1 ms poll on ``simpleSystemBase``).
Reads end at the attempt's deadline; a backstop timer ends one that hangs.

A process crash takes every slot of the process down: its engine ends each of their requests
once and starts a new process (``engine.py``). A slot whose attempt the engine gave up on is
restarted alone (:class:`RestartSlot`). When the engine's process dies, the worker notices (its
parent's pidfd; without pidfds, within ``PARENT_CHECK_S``) and exits rather than live on as an
orphan. Deadlines and size limits bound what one response costs however the upstream trickles.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any

from thespian.actors import ActorExitRequest, ThespianWatch, WatchMessage

from actors.core import streaming
from actors.errors import AuthenticationError, Cancelled, InferenceError, InternalError
from actors.providers import make_runner
from actors.providers.base import ModelRunner
from actors.runtime import transport
from actors.runtime.attempt import SlotAttempt, ToCaller, monotonic_of, prepare, worker_result
from actors.runtime.base import GatewayActor
from actors.runtime.delivery import UNDECIDED, Delivery
from actors.runtime.linked_actor import LinkedActor
from actors.runtime.logs import logger
from actors.runtime.protocol import (Dispatch, FirstTokenHeard, RestartSlot, SessionSnapshot, SessionSubscribe, WorkerInit,
                                     WorkerReady)
from actors.runtime.slot import Slot
from actors.runtime.wake import WakePipe, open_process_fd, waker, watch_supported
from actors.settings.schema import DeploymentConfig
from actors.types import Cancel

__all__ = ["RemoteWorkerActor", "CREDENTIAL_WAIT_S", "POLL_S"]

log = logger("atomr.worker")

CREDENTIAL_WAIT_S = 10.0    # how long a dispatch waits for the session actor's fresh credential to reach this worker
PARENT_CHECK_S, ORPHAN_EXIT_GRACE_S = 1.0, 5.0  # the parent polled where there are no pidfds; the orphan's exit
POLL_S = 0.001              # how often the slots are looked at where the system has no watches
DEADLINE_SLACK_S = 0.05     # the backstop fires this long after the attempt's deadline (the reader's own comes first)
RETIRE_GRACE_S = 5.0        # a stopped slot's thread that has not ended by then is logged as stuck


class RemoteWorkerActor(LinkedActor, GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.deployment: DeploymentConfig | None = None
        self.runner: ModelRunner | None = None
        self.engine: Any = None
        self.slots: dict[int, Slot] = {}
        self.by_request: dict[str, Slot] = {}     # the slot each dispatched request is on (for Cancel)
        self.snapshot: SessionSnapshot | None = None
        self.parent_pid = os.getppid()
        self.wake: WakePipe | None = None         # set when the system delivers WatchMessages
        self.asked: deque[int] = deque()          # slots whose delivery asked for the actor (any thread appends)
        self.parent_fd: int | None = None
        self.lag = streaming.Lag()                # how late this worker wakes: the load it feels
        self.retired: list[tuple[float, Slot]] = []

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        super().receiveMessage(msg, sender)
        if self.delivering or self.wake is None:   # from a link: the handler Thespian called does the rest
            return None
        self.flush_links()   # Thespian replaces the watch list with whatever each handler returns:
        fds = [fd for fd in (self.wake.fileno(), self.parent_fd) if fd is not None]
        return ThespianWatch(fds + self._link_fds())

    # -- set-up --------------------------------------------------------------------

    def receiveMsg_WorkerInit(self, msg: WorkerInit, sender: Any) -> None:
        if self.deployment is not None:
            return log.warning("worker process %d ignored a second WorkerInit", os.getpid())
        self.deployment = msg.deployment
        self.runner = make_runner(msg.deployment)
        self.engine = msg.engine
        if watch_supported(self):
            self.wake = WakePipe()
            self.parent_fd = open_process_fd(self.parent_pid)
        for index in msg.slots:
            self._new_slot(index)
        # With watches, every message to and from the engine goes on one link (runtime/control_link.py).
        self._connect_link(self.engine, msg.control_port if self.wake is not None else None)
        if msg.session is not None:
            self.send(msg.session, SessionSubscribe(self.myAddress, wants_secret=True))
        else:
            self.snapshot = SessionSnapshot(version=0, credential=None)
        self.send(self.engine, WorkerReady(sorted(self.slots), os.getpid()))
        if self.parent_fd is not None and os.getppid() != self.parent_pid:
            self._check_parent()  # gone before the pidfd was opened: that pid may be another's now
        elif self.parent_fd is None:
            self.timers.after("parent", PARENT_CHECK_S)

    def _started(self) -> tuple[DeploymentConfig, ModelRunner]:
        assert self.deployment is not None and self.runner is not None, "slots exist only after WorkerInit"
        return self.deployment, self.runner

    def _new_slot(self, index: int) -> None:
        slot = self.slots[index] = Slot(index, self._started()[0].endpoint, transport.installed())
        slot.start()

    def receiveMsg_SessionSnapshot(self, msg: SessionSnapshot, sender: Any) -> None:
        if self.snapshot is None or msg.version >= self.snapshot.version:
            self.snapshot = msg
        for slot in self.slots.values():
            if slot.waiting is not None and self.snapshot.version >= slot.waiting.min_session_version:
                dispatch, slot.waiting = slot.waiting, None
                self.timers.cancel("credential", slot.index)
                self._start(slot, dispatch)

    def timer_credential(self, index: int) -> None:
        slot = self.slots.get(index)
        if slot is not None and slot.waiting is not None:
            dispatch, slot.waiting = slot.waiting, None
            self._report(dispatch, error=AuthenticationError("no credential arrived from the session actor",
                                                             provider=self._started()[0].provider), sent=False)

    # -- one attempt ----------------------------------------------------------------

    def receiveMsg_Dispatch(self, msg: Dispatch, sender: Any) -> None:
        if self.deployment is None:
            return  # not initialised: the engine's own deadline ends the request
        slot = self.slots.get(msg.slot)
        if slot is None or slot.busy:
            log.error("worker process %d: a dispatch of %s to slot %d, which it %s", os.getpid(),
                      msg.request.request_id, msg.slot, "is busy" if slot is not None else "does not hold")
            return self._report(msg, error=InternalError("dispatched to a slot that cannot take it"), sent=False)
        if self.snapshot is None or self.snapshot.version < msg.min_session_version:
            slot.waiting = msg   # the fresh credential is on its way from the session actor
            self.by_request[msg.request.request_id] = slot
            self.timers.after("credential", CREDENTIAL_WAIT_S, slot.index)
            return
        self._start(slot, msg)

    def _start(self, slot: Slot, dispatch: Dispatch) -> None:
        try:
            self._attempt(slot, dispatch)
        except Exception as exc:  # noqa: BLE001 - a bug here must still end the request, once
            log.exception("worker slot %d failed on %s", slot.index, dispatch.request.request_id)
            if (delivery := slot.delivery) is not None and delivery.dispatch is dispatch:
                return self._finish(slot, delivery, delivery.end(self._bug(exc)))
            self._report(dispatch, error=self._bug(exc))

    def _bug(self, exc: Exception) -> InferenceError:
        return streaming.runner_failed(exc, self._started()[0].provider, "the worker")

    def _attempt(self, slot: Slot, dispatch: Dispatch) -> None:
        assert self.snapshot is not None, "an attempt starts once a snapshot is here (Dispatch, SessionSnapshot)"
        made = prepare(dispatch, *self._started(), self.snapshot.credential, waker(self.asked, self.wake, slot.index))
        if isinstance(made, InferenceError):
            return self._report(dispatch, error=made, sent=False)
        slot.delivery, slot.outlet = made, ToCaller(self, made)
        self.by_request[dispatch.request.request_id] = slot
        slot.run(SlotAttempt(made))
        # The reads end at the deadline too; this is the backstop should one hang.
        self.timers.at("deadline", monotonic_of(made.deadline) + DEADLINE_SLACK_S, slot.index)
        if self.wake is None:
            self.timers.after("poll", POLL_S)

    # -- wake-ups --------------------------------------------------------------------

    def receiveMsg_WatchMessage(self, msg: WatchMessage, sender: Any) -> None:
        if self.parent_fd is not None and self.parent_fd in msg.ready:
            return self._check_parent()
        self._read_links(msg.ready)
        if self.wake is not None and self.wake.fileno() in msg.ready:
            self.wake.drain()
            self._pump_asked()

    def timer_poll(self, _: Any) -> None:
        self._pump_asked()
        if any(slot.delivery is not None for slot in self.slots.values()):
            self.timers.after("poll", POLL_S)

    def _pump_asked(self) -> None:
        # Only what asked so far: a slot that asks again once pumped stays queued, with its own
        # wake-up on the way (it asks once per pump, so dropping it would lose it for good).
        asked = {self.asked.popleft() for _ in range(len(self.asked))}
        for index in asked:
            slot = self.slots.get(index)
            if slot is not None and slot.delivery is not None:
                self._pump(slot)

    def timer_flush(self, index: int) -> None:
        if (slot := self.slots.get(index)) is not None and slot.delivery is not None:
            self._pump(slot)

    def timer_deadline(self, index: int) -> None:
        slot = self.slots.get(index)
        delivery = slot.delivery if slot is not None else None
        if slot is not None and delivery is not None and time.time() >= delivery.deadline:
            self._at_deadline(slot, delivery)
        elif delivery is not None:
            self.timers.at("deadline", monotonic_of(delivery.deadline) + DEADLINE_SLACK_S, index)

    def timer_parent(self, _: Any) -> None:
        self._check_parent()

    def _pump(self, slot: Slot) -> None:
        delivery = slot.delivery
        try:
            if time.time() >= delivery.deadline:
                return self._at_deadline(slot, delivery)
            if delivery.decoder is None:   # a whole body: nothing to send before its outcome
                if delivery.outcome is not UNDECIDED:
                    self._finish(slot, delivery, delivery.end(None))
                return
            due = delivery.pump(slot.outlet, self.lag)
            if delivery.settled:
                return self._finish(slot, delivery, delivery.end(None))
            if due is not None:
                self.timers.at("flush", due, slot.index)
        except Exception as exc:  # noqa: BLE001 - as in _start: the request must still end
            log.exception("worker slot %d failed streaming %s", slot.index, delivery.request_id)
            if slot.delivery is delivery:
                self._finish(slot, delivery, delivery.end(self._bug(exc)))

    def _at_deadline(self, slot: Slot, delivery: Delivery) -> None:
        # The text held back goes first; a whole body has none to send.
        outlet = slot.outlet if delivery.decoder is not None else None
        self._finish(slot, delivery, delivery.end(delivery.deadline_error(), outlet))

    def _finish(self, slot: Slot, delivery: Delivery, error: InferenceError | None) -> None:
        by_message = slot.delivery is delivery and isinstance(slot.outlet, ToCaller) and slot.outlet.by_message
        if slot.delivery is delivery:
            self._clear(slot)
        if delivery.upstream_body is not None:   # the caller was told less than the upstream said
            log.warning("%s answered HTTP %d; the caller was told %r; the whole body: %s",
                        self._started()[0].provider, *delivery.upstream_body)
        if error is not None and delivery.chunks:
            error.retryable = False  # the caller has part of the answer: replaying would repeat it
        # HTTP statuses and body errors come after the headers, so the phase says it all.
        self._report(delivery.dispatch, by_message, acc=delivery.acc, error=error, chunks=delivery.chunks,
                     first_token_unix=delivery.first_token_unix, sent=delivery.exchange.phase.reached_provider)

    def _clear(self, slot: Slot) -> None:
        for dispatch in (slot.delivery.dispatch if slot.delivery else None, slot.waiting):
            if dispatch is not None and self.by_request.get(dispatch.request.request_id) is slot:
                del self.by_request[dispatch.request.request_id]
        slot.delivery = slot.outlet = slot.waiting = None
        for name in ("flush", "deadline", "credential"):
            self.timers.cancel(name, slot.index)

    # -- control -----------------------------------------------------------------------

    def receiveMsg_Cancel(self, msg: Cancel, sender: Any) -> None:
        slot = self.by_request.get(msg.request_id)
        if slot is None or self.slots.get(slot.index) is not slot:
            return
        delivery = slot.delivery
        if delivery is not None and delivery.request_id == msg.request_id:
            self._finish(slot, delivery, delivery.end(Cancelled("cancelled by the caller",
                                                                provider=self._started()[0].provider)))
        elif slot.waiting is not None and slot.waiting.request.request_id == msg.request_id:
            dispatch = slot.waiting
            self._clear(slot)
            self._report(dispatch, error=Cancelled("cancelled by the caller"), sent=False)

    def receiveMsg_FirstTokenHeard(self, msg: FirstTokenHeard, sender: Any) -> None:
        slot = self.by_request.get(msg.request_id)
        delivery = slot.delivery if slot is not None else None
        if slot is not None and delivery is not None and delivery.request_id == msg.request_id \
                and delivery.dispatch.attempt == msg.attempt:
            delivery.heard()
            self._pump(slot)

    def receiveMsg_RestartSlot(self, msg: RestartSlot, sender: Any) -> None:
        old = self.slots.get(msg.slot)
        if old is None:
            return
        self._drop(old)
        self.retired.append((time.monotonic(), old))
        self._new_slot(msg.slot)
        self.send(self.engine, WorkerReady([msg.slot], os.getpid()))
        self.timers.after("retired", RETIRE_GRACE_S)

    def timer_retired(self, _: Any) -> None:
        now = time.monotonic()
        for since, slot in [entry for entry in self.retired if now - entry[0] >= RETIRE_GRACE_S]:
            if slot.thread.is_alive():
                log.error("worker process %d: slot %d's old thread still runs %.0fs after its exchange was stopped "
                          "(a bug: it holds a thread until the process ends)", os.getpid(), slot.index, now - since)
        self.retired = [entry for entry in self.retired if now - entry[0] < RETIRE_GRACE_S]
        if self.retired:
            self.timers.after("retired", RETIRE_GRACE_S)

    def _check_parent(self) -> None:
        if os.getppid() == self.parent_pid:
            if self.parent_fd is None:  # no pidfd: poll
                self.timers.after("parent", PARENT_CHECK_S)
            return
        log.warning("worker process %d: its engine (pid %d) is gone; exiting", os.getpid(), self.parent_pid)
        self.parent_fd = None  # stays readable: watch it no more
        self._drop_all()
        # Thespian's own exit may wait on transmits to the dead parent: make sure the process ends.
        end = threading.Timer(ORPHAN_EXIT_GRACE_S, os._exit, (0,))
        end.daemon = True
        end.start()
        self.send(self.myAddress, ActorExitRequest())

    def _drop(self, slot: Slot) -> None:
        """End the slot's attempt without a report (the engine has given up on it), and its thread."""
        delivery = slot.delivery
        self._clear(slot)
        if delivery is not None:
            delivery.end(None)
        slot.retire()

    def _drop_all(self) -> None:
        for slot in self.slots.values():
            self._drop(slot)

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self._drop_all()  # (the wake pipe stays open: a stopping slot may still write to it)

    def _report(self, dispatch: Dispatch, after_messages: bool = False, **outcome: Any) -> None:
        version = self.snapshot.version if self.snapshot else 0
        send = self.send_by_thespian if after_messages else self.send   # behind the chunks it sent by Thespian
        send(self.engine, worker_result(dispatch, session_version=version, **outcome))
