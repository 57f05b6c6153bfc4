"""The engine core's timers: deadlines, retries, backstops, verdict waits, credential waits.

One heap of ``(due, kind, subject)`` on the core's monotonic clock, and the queue's next
look (``pump_soon``, coalesced to the earliest asked for). The core asks its actor for one
wakeup at a time (``WakeAt`` of :meth:`TimerHeap.next`), so the actor keeps one Thespian
timer however many requests wait.

A heap cannot cancel an entry cheaply (nor can Thespian a wakeup): an entry whose subject
moved on (its request ended, its retry was moved) stays until it reaches the top, where
the ``live`` predicate the core gives drops it; and the heap is compacted whenever it
outgrows what can be live, so ended requests' timers (a ``total_s`` backstop each, 600 s
by default) never pile up.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Literal, TypeAlias, Union

from actors.core.jobs import Attempt, Job

__all__ = ["TimerHeap", "TimerKind", "Subject"]

TimerKind: TypeAlias = Literal["attempt", "deadline", "retry", "judging", "parked"]
Subject: TypeAlias = Union[Job, Attempt]      # an Attempt for "attempt", a Job for the rest
Entry: TypeAlias = tuple[float, int, TimerKind, Subject]
SLACK = 64          # entries tolerated beyond the bound before a compaction


class TimerHeap:
    def __init__(self, live: Callable[[TimerKind, Subject, float], bool], bound: Callable[[], int]) -> None:
        """``live(kind, subject, due)``: whether an entry still matters; ``bound()``: how many can
        (a multiple of the jobs and workers the core holds)."""
        self._live = live
        self._bound = bound
        self._heap: list[Entry] = []
        self._seq = itertools.count()
        self.pump_at: float | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, when: float, kind: TimerKind, subject: Subject) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, subject))
        if len(self._heap) > SLACK + self._bound():
            # Ended jobs' entries would otherwise stay until due: amortised O(1) per entry.
            self._heap = [entry for entry in self._heap if self._alive(entry)]
            heapq.heapify(self._heap)

    def pump_soon(self, when: float) -> None:
        self.pump_at = when if self.pump_at is None else min(self.pump_at, when)

    def next(self) -> float | None:
        """When the earliest live entry or the queue's next look is due."""
        while self._heap and not self._alive(self._heap[0]):
            heapq.heappop(self._heap)
        due = self._heap[0][0] if self._heap else None
        if self.pump_at is None:
            return due
        return self.pump_at if due is None else min(due, self.pump_at)

    def pop(self, now: float) -> tuple[TimerKind, Subject] | None:
        """The earliest entry due by ``now``, live or not (its handler checks), or None."""
        if not self._heap or self._heap[0][0] > now:
            return None
        _, _, kind, subject = heapq.heappop(self._heap)
        return kind, subject

    def pump_due(self, now: float) -> None:
        """The queue is looked at now: a look asked for by ``now`` is done."""
        if self.pump_at is not None and self.pump_at <= now:
            self.pump_at = None

    def _alive(self, entry: Entry) -> bool:
        when, _, kind, subject = entry
        return self._live(kind, subject, when)
