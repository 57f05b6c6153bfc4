"""At most one log line per source and kind of event every interval: a flood logs a count, not itself.

For refusals a sender can provoke at will (bad frames, connections over a limit, timeouts):
the first is logged at once, the rest of the interval only counted, and the count is named
in the next line. Pure: the clock and the line's destination are given.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["LineLimiter", "source_host"]


def source_host(source: str) -> str:
    """``host:port`` (or ``[v6]:port``) -> host: a flood from one host counts once, whatever its ports."""
    head, sep, port = source.rpartition(":")
    return head if sep and port.rstrip(")").isdigit() else source


class LineLimiter:
    """One line per (source host, kind) every ``interval_s``, counting the rest."""

    def __init__(self, emit: Callable[[str], None], interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.emit = emit
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()
        self.total = 0

    def note(self, source: str, kind: str, line: str) -> bool:
        """Count one event; emit ``line`` unless one like it was emitted in the interval. True if emitted."""
        host = source_host(source)
        now = self.clock()
        with self._lock:
            self.total += 1
            last, held = self._last.get((host, kind), (None, 0))
            if last is not None and now - last < self.interval_s:
                self._last[(host, kind)] = (last, held + 1)
                return False
            self._last[(host, kind)] = (now, 0)
            if len(self._last) > 1024:  # many sources: forget the quiet ones
                for key in [k for k, (t, _) in self._last.items() if now - t >= self.interval_s]:
                    del self._last[key]
        more = f" (+{held} more like it in the last {self.interval_s:g}s)" if held else ""
        self.emit(line + more)
        return True
