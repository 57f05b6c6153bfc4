"""An engine's worker slots and the attempts they run.

One slot per worker process, by index: whether it is up (and its pid, to kill it by), and
the attempt it runs. Every dispatched attempt has a scheduled end: a backstop at the
deployment's ``timeouts.total_s`` (or the request's deadline) plus ``ABANDON_GRACE_S``,
past which the worker is presumed frozen; an attempt abandoned at its request's end
(deadline, cancel) is given ``ABANDON_GRACE_S`` to report. A worker that misses either is
killed by pid and replaced, and so is one that exits: its slot starts again, not ready.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actors.core.admission import Admit, AdmissionHost
from actors.core.engine_events import AbandonOnWorker, DispatchTo, KillWorker, StartWorker
from actors.core.jobs import ABANDON_GRACE_S, Attempt, Job

if TYPE_CHECKING:
    from actors.core.timer_heap import TimerHeap

__all__ = ["Workers", "Slot"]


@dataclass(eq=False)
class Slot:
    pid: int = 0
    ready: bool = False
    attempt: Attempt | None = None


class Workers:
    def __init__(self, host: AdmissionHost, timers: TimerHeap, timeouts: Any) -> None:
        self.host = host
        self.timers = timers
        self.timeouts = timeouts       # the deployment's (settings.schema.Timeouts)
        self.slots: dict[int, Slot] = {}
        self.idle: list[int] = []
        self.announced = False         # every worker was up once: the engine said it is ready
        self._sent = itertools.count(1)  # dispatch numbers (the judge orders evidence by them)

    def start(self, count: int) -> None:
        for index in range(count):
            self.slots[index] = Slot()
            self.host.emit(StartWorker(index))

    def up(self, index: int, pid: int) -> bool:
        """A worker reported in: True unless it is unknown or was up already."""
        slot = self.slots.get(index)
        if slot is None or slot.ready:
            return False
        slot.ready, slot.pid = True, pid
        self.idle.append(index)
        return True

    def first_all_up(self) -> bool:
        """True once: when every worker is up for the first time (the engine announces itself)."""
        if self.announced or not all(s.ready for s in self.slots.values()):
            return False
        self.announced = True
        return True

    @property
    def busy(self) -> int:
        return sum(1 for s in self.slots.values() if s.attempt is not None)

    def running(self, index: int) -> Attempt | None:
        slot = self.slots.get(index)
        return slot.attempt if slot is not None else None

    def dispatch(self, job: Job, gate: Admit, now: float) -> Attempt:
        """``job``'s attempt number ``job.attempts`` to an idle worker, with the budget it holds."""
        index = self.idle.pop()
        timeouts = self.timeouts
        capped = job.deadline is not None and job.deadline - now < max(timeouts.connect_s, timeouts.read_s)
        backstop = now + timeouts.total_s + ABANDON_GRACE_S
        if job.deadline is not None:
            backstop = min(backstop, job.deadline + ABANDON_GRACE_S)
        attempt = Attempt(job, job.attempts, index, gate.generation, gate.probe, job.held, capped, backstop,
                          next(self._sent))
        job.attempt = self.slots[index].attempt = attempt
        self.timers.at(attempt.backstop, "attempt", attempt)
        self.host.emit(DispatchTo(index, job.request, job.reply_to, job.attempts, job.recovery.min_session_version))
        return attempt

    def reported(self, index: int, request_id: str, number: int) -> Attempt | None:
        """The attempt a worker's report is about, its worker now free; None for a replaced
        worker's late report, or a duplicate."""
        attempt = self.running(index)
        if attempt is None or attempt.job.request_id != request_id or attempt.number != number:
            return None
        slot = self.slots[index]
        slot.attempt = None
        if slot.ready and index not in self.idle:
            self.idle.append(index)
        return attempt

    def abandon(self, attempt: Attempt, now: float) -> None:
        """Its request ended: the worker is told to stop, and has ``ABANDON_GRACE_S`` to report."""
        attempt.job.attempt, attempt.abandoned_at = None, now
        self.timers.at(attempt.kill_at, "attempt", attempt)
        self.host.emit(AbandonOnWorker(attempt.worker, attempt.job.request_id))

    def live(self, attempt: Attempt, when: float) -> bool:
        return self.running(attempt.worker) is attempt and attempt.kill_at == when

    def overdue(self, attempt: Attempt, now: float) -> str | None:
        """Why ``attempt``'s worker must be killed now, or None."""
        if self.running(attempt.worker) is not attempt or now < attempt.kill_at:
            return None
        if attempt.abandoned_at is not None:
            return f"worker {attempt.worker} did not report within {ABANDON_GRACE_S:g}s of being told to stop"
        return f"worker {attempt.worker} stopped answering"

    def replace(self, index: int, kill: bool = False) -> Attempt | None:
        """A new worker at ``index`` (the old one killed by pid first, if ``kill``); the attempt it was running."""
        if index in self.idle:
            self.idle.remove(index)
        old, self.slots[index] = self.slots[index], Slot()
        if kill:
            self.host.emit(KillWorker(index, old.pid))
        self.host.emit(StartWorker(index))
        return old.attempt
