"""Which worker process holds which slot: the layout of a deployment's ``workers``.

A slot is one concurrent HTTP call of a deployment (the engine core's worker index). Slots
are threads of a few worker processes: by default one process per core, and more when a
process would hold over ``MAX_SLOTS_PER_PROCESS`` (``worker_processes`` sets the count).
Slot ``i`` lives in process ``i % processes``, so a run of consecutive slots spreads over
every process: a crash takes down at most ``ceil(workers / processes)`` calls.

Why 16: a process's slots share one Thespian connection to their engine, and Thespian sends
one message at a time on a connection, each waiting for the receiver's acknowledgement. With
128 slots a process, a burst of 256 calls waited ~10 s for its first tokens and cost the
engine ~19 ms of CPU a call; with 16, ~2 s and ~5 ms (docs/performance.md, round 5). Memory
is ~10 MiB a process. Since the control links (runtime/control_link.py) carry those messages
off Thespian, more slots a process may do as well: not measured yet, so 16 stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SlotPlan", "MAX_SLOTS_PER_PROCESS"]

MAX_SLOTS_PER_PROCESS = 16    # chosen while the control path was on Thespian (above)


@dataclass(frozen=True)
class SlotPlan:
    workers: int
    processes: int

    @classmethod
    def of(cls, workers: int, worker_processes: int | None, cores: int) -> "SlotPlan":
        if worker_processes is None:
            worker_processes = max(cores, math.ceil(workers / MAX_SLOTS_PER_PROCESS))
        return cls(workers, max(1, min(workers, worker_processes)))

    def process_of(self, slot: int) -> int:
        return slot % self.processes

    def slots_of(self, process: int) -> list[int]:
        return list(range(process, self.workers, self.processes))
