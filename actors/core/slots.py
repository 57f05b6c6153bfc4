"""Which worker process holds which slot: the layout of a deployment's ``workers``.

A slot is one concurrent HTTP call of a deployment (the engine core's worker index). Slots
are threads of a few worker processes: by default one process per core, and more when a
process would hold over ``MAX_SLOTS_PER_PROCESS`` (``worker_processes`` sets the count).
Slot ``i`` lives in process ``i % processes``, so a run of consecutive slots spreads over
every process: a crash takes down at most ``ceil(workers / processes)`` calls.

Why 32: each process pays its own wake-ups and cold caches for every chunk it relays, so
fewer, fuller processes relay for less CPU; but a crash ends every call of its process. At
K=256 streams, 8 processes of 32 slots used 10-35 us less CPU a chunk in the worker processes
than 16 of 16, and the node 5-10 % less; 4 of 64 and 2 of 128 less still, for two and four
times the calls one crash ends (docs/performance.md, round 10). A process is ~10 MiB. (128 a
process once held a burst's first tokens ~10 s, when the control path was on Thespian, round
5; the control links, runtime/control_link.py, took it off.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SlotPlan", "MAX_SLOTS_PER_PROCESS"]

MAX_SLOTS_PER_PROCESS = 32    # measured in round 10 (above)


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
