"""When to restart a dead child, and what to say about it: pure, on an injectable clock.

The first restart is almost immediate; each further death within ``stable_s`` of the
last restart doubles the wait (up to ``max_s``), so an engine that dies at once on every
start does not spin the node. A child that stayed up ``stable_s`` starts over at the base.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Supervisor"]


@dataclass
class _Record:
    restarts: int = 0
    streak: int = 0
    last_exit_unix: float = 0.0
    last_start: float = 0.0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, base_s: float = 0.2, max_s: float = 30.0, stable_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.base_s, self.max_s, self.stable_s = base_s, max_s, stable_s
        self.clock, self.wall = clock, wall
        self._records: dict[Any, _Record] = {}

    def exited(self, key: Any) -> float:
        """A child died: the delay before starting it again."""
        now = self.clock()
        record = self._records.setdefault(key, _Record(last_start=now))
        record.streak = 1 if now - record.last_start >= self.stable_s else record.streak + 1
        record.last_exit_unix = self.wall()
        delay = min(self.max_s, self.base_s * 2.0 ** (record.streak - 1))
        record.restart_at = now + delay
        return delay

    def restarted(self, key: Any) -> int:
        """The child is running again; how many times it was restarted in all."""
        record = self._records[key]
        record.restarts += 1
        record.last_start = self.clock()
        record.restart_at = None
        return record.restarts

    def restarting(self, key: Any) -> bool:
        record = self._records.get(key)
        return record is not None and record.restart_at is not None

    def lines(self) -> list[dict[str, Any]]:
        """One status line per child that ever died."""
        now = self.clock()
        out = []
        for key, r in sorted(self._records.items(), key=lambda kv: str(kv[0])):
            out.append({"child": key, "restarts": r.restarts, "state": "restarting" if r.restart_at else "running",
                        "last_exit_unix": r.last_exit_unix,
                        "next_restart_s": round(max(0.0, r.restart_at - now), 3) if r.restart_at else None})
        return out
