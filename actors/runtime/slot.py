"""One slot: a long-lived thread of a worker process that makes its slot's HTTP attempts.

A slot is one concurrent call of a deployment (the engine core's worker index). Its thread
exists from the worker's start and runs one attempt after another: the worker actor builds
each attempt on its own thread and hands the slot an :class:`Attempt` (the exchange and its
sink, ``Delivery.take``); the slot's thread makes the HTTP exchange, and reads and decodes
the body, except a streamed one on a real socket: the process's one body poller reads that
while the slot's thread waits for its end (``body_poller.py``). Neither touches Thespian
(sends from another thread are lost, and a log record is a message): they reach the actor
through the delivery's wake function only.

Each slot has its own ``requests`` session (a session is not for concurrent use) whose
connections come from the process's transport; the slots of a process share one TLS
context (``upstream_session.tls_context``). Slot threads run at their process's priority. (They ran
at nice +5, meant to keep a thousand runnable slots from starving the engine and the door;
measured, that starved the relay instead: the slot that then read a stream's chunks waited
behind every other call's start. docs/performance.md, round 8.)

A slot whose attempt will not end is stopped by its exchange (``HttpExchange.stop`` shuts its
socket, so a blocked read returns at once) and :meth:`Slot.retire`: its thread ends after
the attempt in hand, and a fresh slot takes its index.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Protocol

import requests

from actors.runtime import transport
from actors.runtime.upstream_session import http_session

__all__ = ["Slot", "Attempt"]


class Attempt(Protocol):
    """What a slot runs: one attempt's exchange, reporting to its sink (``worker.py``)."""

    def run(self, http: requests.Session) -> None: ...

    def crashed(self, exc: BaseException) -> None:
        """``run`` raised (a bug): the attempt must still get an outcome."""
        ...


class Slot:
    def __init__(self, index: int, endpoint: str, network: transport.Transport) -> None:
        self.index = index
        self.http = http_session(endpoint, network)
        self.delivery: Any = None       # the attempt under way (the actor's to set and clear)
        self.outlet: Any = None
        self.waiting: Any = None        # a Dispatch waiting for a fresh credential
        self._attempts: queue.SimpleQueue[Attempt | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=f"slot-{index}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run(self, attempt: Attempt) -> None:
        """Queue an attempt: the thread takes it once the one in hand (a stopped exchange, at
        most) has returned."""
        self._attempts.put(attempt)

    def retire(self) -> None:
        """The thread ends after the attempt in hand; nothing more is given to it."""
        self._attempts.put(None)

    @property
    def busy(self) -> bool:
        return self.delivery is not None or self.waiting is not None

    def _run(self) -> None:
        try:
            while (attempt := self._attempts.get()) is not None:
                try:
                    attempt.run(self.http)
                except BaseException as exc:  # noqa: BLE001 - the slot serves on; the attempt gets an outcome
                    attempt.crashed(exc)
        finally:
            self.http.close()

