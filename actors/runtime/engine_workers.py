"""The engine's worker processes: the core's workers are slots, threads of a few processes.

``EngineCore`` keeps one worker per slot (its index), as it always has; this mixin of
``RemoteEngineCoreActor`` translates (``core/slots.py`` says which process holds which slot):

- the core's ``StartWorker`` for a slot whose process is not there starts that process with
  every slot started in the same message; for a slot the core replaced in a live process
  (it did not report in time: ``KillWorker`` first), a ``RestartSlot`` stops the slot's
  exchange and starts it afresh, alone;
- a process's ``WorkerReady`` is a ``WorkerUp`` for each of its slots; at bring-up they are
  handed over in index order once every process is up (the core takes the last idle slot
  first, so consecutive dispatches alternate between processes);
- a process's exit is a ``WorkerGone`` for each of its slots, so every request the process
  held ends exactly once, as the core decides for a lost worker (retried if no token had
  reached its caller and it may be, else ``WorkerCrashed``); the core then starts the slots
  again, in a new process;
- a process that has not restarted a slot within ``SLOT_RESTART_GRACE_S`` (frozen, or its
  actor thread hung) is killed, the last resort, and replaced the same way;
- where the system has watches, each process connects to the engine's control listener and
  every message between them goes on that link (``runtime/control_link.py``), not through
  Thespian's one-message-at-a-time transmits. Callers on this host link to the same listener
  for their calls (``runtime/caller_links.py``): a connection is a worker process's or a
  caller's by its first frame.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from thespian.actors import ActorExitRequest, ChildActorExited, ThespianWatch, WatchMessage

from actors.core import engine_events as ev
from actors.core.procstat import live_stat
from actors.runtime.caller_links import CALLS, CallerLinks
from actors.runtime.control_link import HELLO_TIMEOUT_S, ControlListener, wire_codec
from actors.runtime.data_stack import call_with_room
from actors.runtime.logs import logger
from actors.runtime.protocol import EngineInit, LinkHello, RestartSlot, WorkerInit, WorkerReady
from actors.runtime.timers import Timers
from actors.runtime.wake import watch_supported
from actors.runtime.worker import RemoteWorkerActor

if TYPE_CHECKING:
    from actors.core.engine_core import EngineCore
    from actors.core.slots import SlotPlan

__all__ = ["SLOT_RESTART_GRACE_S", "WorkerProcesses"]

log = logger("atomr.engine")
SLOT_RESTART_GRACE_S = 2.0   # a worker process that has not restarted a slot by then is killed
KILL_WAIT_S = 1.0            # how long the engine waits for a process it killed to be gone


class WorkerProcesses(CallerLinks):
    """Mixed into RemoteEngineCoreActor (which provides core, init, plan, timers, _feed)."""

    # Provided by RemoteEngineCoreActor (engine.py); declared, not assigned, so nothing here shadows it.
    core: EngineCore | None
    init: EngineInit | None
    plan: SlotPlan | None
    timers: Timers
    myAddress: Any                      # a Thespian ActorAddress

    if TYPE_CHECKING:
        def createActor(self, actorClass: Any) -> Any: ...
        def _feed(self, event: Any) -> None: ...

    def _init_processes(self) -> None:
        self.procs: dict[int, Any] = {}            # worker process number -> its address
        self.pids: dict[int, int] = {}
        self.starting: dict[int, list[int]] = {}   # slots the core started in this message, by process
        self.restarting: dict[int, Any] = {}       # slot -> the process asked to restart it
        self.held: list[ev.WorkerUp] | None = []   # bring-up: WorkerUps until every process is up
        self.awaiting: set[int] = set()
        self.control: ControlListener | None = None

    def _open_control(self) -> None:
        """The listener the worker processes connect to, where the system wakes actors on sockets."""
        wire = wire_codec()
        if wire is None or not watch_supported(self):
            return
        try:
            self.control = ControlListener(wire)
        except OSError as exc:
            return log.warning("engine: no control listener (%s): its worker processes are told by Thespian", exc)
        # Worker processes are forked from this one: each would hold the listener and every link.
        os.register_at_fork(after_in_child=self._close_control_in_child)

    def _close_control_in_child(self) -> None:
        if self.control is not None:
            self.control.close()
        for link in [*(link for _, link in self.links.values()), *self.callers]:
            link.close("not this process's")

    def _watch(self) -> ThespianWatch | None:
        """What every handler returns: Thespian watches only the list the last handler gave it."""
        if self.control is None:
            return None
        return ThespianWatch([self.control.fileno(), *(link.fileno() for _, link in self.control.waiting),
                              *self._link_fds(), *self._caller_fds()])

    def receiveMsg_WatchMessage(self, msg: WatchMessage, sender: Any) -> None:
        control = self.control
        if control is None:
            return
        ready = set(msg.ready)
        if control.fileno() in ready:
            known = {id(link) for _, link in control.waiting}
            control.accept()
            for _, link in control.waiting:
                if id(link) not in known:   # who answers: a caller checks it reached the engine it meant
                    link.send(self.myAddress, LinkHello(self.myAddress))
            if control.waiting:
                self.timers.after("control_hello", HELLO_TIMEOUT_S)
        for at, link in list(control.waiting):
            if link.fileno() in ready:
                self._greeted(link, link.receive())
        control.expire()
        self._read_links(ready)
        self._read_callers(ready)

    def _greeted(self, link: Any, envelopes: list[tuple[Any, Any]]) -> None:
        """A connection's first frame: a WorkerReady from one of this engine's processes, tagged by the
        node (a worker link), or a call or a cancel (a caller's link); anything else is refused."""
        assert self.control is not None
        if not envelopes and not link.closed:
            return
        self.control.waiting = [(at, waiting) for at, waiting in self.control.waiting if waiting is not link]
        sender, first = envelopes[0] if envelopes else (None, None)
        if not link.closed and isinstance(first, CALLS):
            if not self._caller_linked(link, envelopes):
                self.control.refused += 1
                link.close("this engine has its most caller links")
            return
        process = self._process_at(sender) if sender is not None else None
        if link.closed or not isinstance(first, WorkerReady) or process is None or self.linked(sender) \
                or link.untagged:
            self.control.refused += 1
            return link.close("not a worker process of this engine")
        # The address createActor gave is a placeholder until the process is up (unhashable, equal
        # by override); the process's own is final, and it is what the link is found by.
        link.node_only = True
        self.procs[process] = sender
        self._link(sender, link)
        self._take(sender, link, envelopes)

    def _control_status(self) -> dict[str, int]:
        if self.control is None:
            return {}
        links = [link for _, link in self.links.values()]
        return {"port": self.control.port, "links": len(links), "sent": sum(link.sent for link in links),
                "received": sum(link.received for link in links), "refused": self.control.refused,
                **self._callers_status()}

    def timer_control_hello(self, _: Any) -> None:
        if self.control is not None:
            self.control.expire()
            if self.control.waiting:
                self.timers.after("control_hello", HELLO_TIMEOUT_S)

    def _started(self) -> tuple[EngineInit, SlotPlan]:
        """The init and slot plan, which EngineInit sets before any worker process is started."""
        assert self.init is not None and self.plan is not None, "worker processes exist only after EngineInit"
        return self.init, self.plan

    def receiveMsg_WorkerReady(self, msg: WorkerReady, sender: Any) -> None:
        process = self._process_at(sender)
        if process is None:
            return   # a replaced process's late word
        _, plan = self._started()
        self.pids[process] = msg.pid
        ups = []
        for index in msg.slots:
            if plan.process_of(index) != process:
                continue
            if self.restarting.get(index) == sender:
                del self.restarting[index]
                self.timers.cancel("restart", index)
            ups.append(ev.WorkerUp(index, msg.pid))
        if self.held is not None:
            self.held += ups
            self.awaiting.discard(process)
            return self._release_held()
        for up in ups:
            self._feed(up)

    def _release_held(self) -> None:
        if self.held is not None and not self.awaiting:
            held, self.held = sorted(self.held, key=lambda up: up.index), None
            for up in held:
                self._feed(up)

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        process = self._process_at(msg.childAddress)
        if process is not None:
            self._process_gone(process, "exited")

    def _process_gone(self, process: int, how: str) -> None:
        """Every slot of a dead worker process is a lost worker to the core: each request ends once."""
        init, plan = self._started()
        address = self.procs[process]
        # What it wrote before it died is heard before its death: a FirstToken there means its
        # caller may have that token already (delivery.py), and a result there ends its attempt.
        self.read_to_end(address)
        self.procs.pop(process, None)
        self._unlink(address, resend=False)
        self.pids.pop(process, None)
        slots = plan.slots_of(process)
        # Stopping, every worker exits: that is the plan, not news. Any other exit is.
        stopping = self.core is None or self.core.stopping
        log.log(logging.INFO if stopping else logging.WARNING, "%s worker process %d (%d slots) %s%s",
                init.deployment.name, process, len(slots), how, " (the engine is stopping)" if stopping else "")
        self.awaiting.discard(process)
        for index in slots:
            self._feed(ev.WorkerGone(index))
        self._release_held()

    def timer_restart(self, index: int) -> None:
        init, plan = self._started()
        address = self.restarting.pop(index, None)
        process = plan.process_of(index)
        if address is None or self.procs.get(process) != address:
            return
        log.error("%s: worker process %d (pid %s) did not restart slot %d within %gs: killing it, and with it "
                  "the calls on its other slots", init.deployment.name, process, self.pids.get(process, "?"),
                  index, SLOT_RESTART_GRACE_S)
        pid = self.pids.get(process, 0)
        if _is_my_child(pid):
            try:
                os.kill(pid, signal.SIGKILL)  # a frozen process answers no message
            except OSError:
                pass
            _wait_gone(pid)   # so that nothing it writes after its link is read to the end
        self.send(address, ActorExitRequest())
        self._process_gone(process, "was killed")

    def _process_at(self, address: Any) -> int | None:
        return next((p for p, known in self.procs.items() if known == address), None)

    def _address_of(self, slot: int) -> Any:
        return self.procs.get(self.plan.process_of(slot)) if self.plan is not None else None

    @property
    def workers(self) -> dict[int, Any]:
        """Each slot's worker process (its address)."""
        found = ((index, self._address_of(index)) for index in range(self.plan.workers if self.plan else 0))
        return {index: address for index, address in found if address is not None}

    def _do_StartWorker(self, e: ev.StartWorker) -> None:
        _, plan = self._started()
        self.starting.setdefault(plan.process_of(e.index), []).append(e.index)

    def _start_slots(self) -> None:
        """A new process for the slots of a process that is not there; a restart for a slot the
        core replaced in a live one (answered by a WorkerReady, or the process is killed)."""
        starting, self.starting = self.starting, {}
        for process, slots in sorted(starting.items()):
            address = self.procs.get(process)
            if address is None:
                init, _ = self._started()
                # The process is forked inside this call: on a fresh frame-stack chunk (runtime/data_stack.py).
                address = self.procs[process] = call_with_room(self.createActor, RemoteWorkerActor)
                self.send(address, WorkerInit(init.deployment, self.myAddress, init.session, sorted(slots),
                                              control_port=self.control.port if self.control is not None else None))
                if self.held is not None:
                    self.awaiting.add(process)
                continue
            for index in slots:
                self.restarting[index] = address
                self.send(address, RestartSlot(index))
                self.timers.after("restart", SLOT_RESTART_GRACE_S, index)

    def _do_KillWorker(self, e: ev.KillWorker) -> None:
        # Its StartWorker follows: the slot's exchange is stopped and the slot restarted alone.
        init, _ = self._started()
        log.error("%s: slot %d (worker pid %d) did not report in time: restarting it", init.deployment.name,
                  e.index, e.pid)


def _wait_gone(pid: int, bound_s: float = KILL_WAIT_S) -> None:
    """Until a killed child is a zombie or gone (its sockets closed), at most ``bound_s``."""
    until = time.monotonic() + bound_s
    while live_stat(pid) is not None and time.monotonic() < until:
        time.sleep(0.002)


def _is_my_child(pid: int) -> bool:
    """Only a live child of this process is ever signalled (a pid may be reused after an exit)."""
    if pid <= 0 or pid == os.getpid():
        return False
    stat = live_stat(pid)
    return stat is not None and stat.ppid == os.getpid()

