"""Cancelling the call of every caller that went away (WSGI has no disconnect event: polled)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from actors.client import Stream

log = logging.getLogger("atomr.http")

__all__ = ["Watcher", "WATCH_INTERVAL_S"]

WATCH_INTERVAL_S = 0.1


@dataclass
class _Watched:
    disconnected: Callable[[], bool]
    stream: Stream
    cancelled: bool = False


class Watcher:
    """Cancels the call of every connection that closed (polled: WSGI has no disconnect event)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, _Watched] = {}
        self._stop = threading.Event()
        self.cancelled = 0
        self.polls = 0          # passes over the calls watched (one per WATCH_INTERVAL_S)
        self._thread = threading.Thread(target=self._run, name="http-disconnect-watcher", daemon=True)
        self._thread.start()

    def add(self, request_id: str, disconnected: Callable[[], bool] | None, stream: Stream) -> None:
        if disconnected is not None:
            with self._lock:
                self._calls[request_id] = _Watched(disconnected, stream)

    def remove(self, request_id: str) -> None:
        with self._lock:
            self._calls.pop(request_id, None)

    def _run(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            with self._lock:
                calls = list(self._calls.items())
            for request_id, watched in calls:
                try:
                    gone = not watched.cancelled and watched.disconnected()
                except Exception:  # noqa: BLE001 - a closed channel may fail to answer: that is gone too
                    gone = True
                if gone:
                    watched.cancelled = True
                    self.cancelled += 1
                    log.info("caller of %s went away: cancelling it upstream", request_id)
                    watched.stream.cancel()  # safe from any thread
            self.polls += 1

    def cancel_all(self) -> None:
        with self._lock:
            calls = list(self._calls.values())
        for watched in calls:
            watched.stream.cancel()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
