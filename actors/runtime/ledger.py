"""LedgerActor: the node's spend ledger, written off the hot path by a writer thread.

Engines send their terminal records in batches (:class:`LedgerRecords`, every 250 ms or 64
records); the actor only queues them. A writer thread commits what is queued every
``batch_interval_s`` in one SQLite transaction (WAL). The queue is bounded: when it is full,
or the disk fails (full, read-only, gone), records are dropped, the loss is logged once, and
the ledger reports itself degraded in the node's status; the node keeps serving. On drain
and on stop the queue is flushed before the actor answers.

What survives what: a record is on disk once its batch committed, at most
``batch_interval_s`` (+ the engine's 250 ms) after its terminal; a SIGKILL of the node
loses only what was not committed yet; a clean stop loses nothing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from actors.runtime.base import GatewayActor
from actors.runtime.ledger_store import LedgerStore
from actors.runtime.logs import logger
from actors.runtime.protocol import LedgerFlush, LedgerInit, LedgerRecords, LedgerState, SpendQuery, SpendReport

log = logger("atomr.ledger")

PURGE_EVERY_S = 3600.0


class LedgerWriter:
    """A bounded queue and the thread that drains it into a :class:`LedgerStore`."""

    def __init__(self, open_store: Callable[[], LedgerStore], path: str, *, batch_interval_s: float = 0.25,
                 queue_limit: int = 100_000, retention_days: float = 90.0,
                 wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self.batch_interval_s = batch_interval_s
        self.queue_limit = queue_limit
        self.retention_s = retention_days * 86400.0
        self.wall = wall
        self.queue: deque[tuple[str, Any]] = deque()
        self.cond = threading.Condition()
        self.written = 0
        self.dropped = 0
        self.degraded = False
        self.error = ""
        self.inflight = 0
        self.stopping = False
        self.store: LedgerStore | None = None
        try:
            self.store = open_store()
        except Exception as exc:  # noqa: BLE001 - checked at start; if it fails now the node still serves
            self._lose(0, f"cannot open: {exc}")
        self.next_purge = 0.0
        self.thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self.thread.start()

    def put(self, slot: str, records: list[Any]) -> None:
        with self.cond:
            room = self.queue_limit - len(self.queue)
            if room < len(records):
                self._lose(len(records) - max(0, room), f"queue full ({self.queue_limit} records waiting)")
                records = records[:max(0, room)]
            self.queue.extend((slot, r) for r in records)
            self.cond.notify()

    def _lose(self, count: int, why: str) -> None:
        self.dropped += count
        if not self.degraded:
            self.degraded, self.error = True, why
            log.error("ledger %s: degraded, spend records are being lost (%s); the node keeps serving and its "
                      "budgets keep counting in memory", self.path, why)

    def _run(self) -> None:
        while True:
            with self.cond:
                if not self.queue and not self.stopping:
                    self.cond.wait(self.batch_interval_s)
                if self.stopping and not self.queue:
                    return
                batch = list(self.queue)
                self.queue.clear()
                self.inflight = len(batch)
            if batch:
                self._write(batch)
            with self.cond:
                self.inflight = 0
                self.cond.notify_all()
            if not self.stopping:
                self._purge()
                time.sleep(self.batch_interval_s)  # what arrives meanwhile goes in the next batch

    def _write(self, batch: list[tuple[str, Any]]) -> None:
        if self.store is None:
            self._lose(len(batch), self.error or "not open")
            return
        try:
            self.written += self.store.write(batch)
        except Exception as exc:  # noqa: BLE001 - a full or failing disk must not stop the node
            self._lose(len(batch), f"{type(exc).__name__}: {exc}")

    def _purge(self) -> None:
        now = self.wall()
        if self.store is None or now < self.next_purge:
            return
        self.next_purge = now + PURGE_EVERY_S
        try:
            removed = self.store.purge(now - self.retention_s)
            if removed:
                log.info("ledger %s: %d records older than the retention removed", self.path, removed)
        except Exception as exc:  # noqa: BLE001
            log.warning("ledger %s: retention purge failed: %s", self.path, exc)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Until everything queued now is committed (or lost); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            self.cond.notify()
            while self.queue or self.inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.05))
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout_s)
        if self.store is not None:
            self.store.close()
            self.store = None

    def state(self, token: str = "") -> LedgerState:
        with self.cond:
            queued = len(self.queue) + self.inflight
        return LedgerState(self.path, "degraded" if self.degraded else "ok", self.written, self.dropped, queued,
                           self.error, token)


class LedgerActor(GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.writer: LedgerWriter | None = None
        self.init: LedgerInit | None = None

    def receiveMsg_LedgerInit(self, msg: LedgerInit, sender: Any) -> None:
        if self.writer is not None:
            return
        self.init = msg
        self.writer = LedgerWriter(lambda: LedgerStore(msg.path), msg.path, batch_interval_s=msg.batch_interval_s,
                                   queue_limit=msg.queue_limit, retention_days=msg.retention_days)

    def receiveMsg_LedgerRecords(self, msg: LedgerRecords, sender: Any) -> None:
        if self.writer is not None:
            self.writer.put(msg.slot, list(msg.records))

    def receiveMsg_LedgerFlush(self, msg: LedgerFlush, sender: Any) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.send(sender, self.writer.state(msg.token))

    def receiveMsg_StatusRequest(self, msg: Any, sender: Any) -> None:
        if self.writer is not None:
            self.send(sender, self.writer.state(getattr(msg, "token", "")))

    def receiveMsg_SpendQuery(self, msg: SpendQuery, sender: Any) -> None:
        from actors.runtime.ledger_store import report

        node = self.init.node if self.init else ""
        sender = msg.reply_to or sender
        try:
            if self.writer is not None:
                self.writer.flush(2.0)  # what this node spent up to now, not up to its last batch
            rows = report(self.init.path, msg.since_unix, msg.by) if self.init else []
            self.send(sender, SpendReport(node, rows, token=msg.token))
        except Exception as exc:  # noqa: BLE001 - a report is an answer, whatever the file says
            self.send(sender, SpendReport(node, [], error=f"{type(exc).__name__}: {exc}", token=msg.token))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def spend_status(limits: list[dict[str, Any]], ledger: LedgerState | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The hub's usage lines split: rate limits stay in ``limits``; spend budgets go to ``NodeStatus.spend``."""
    from dataclasses import asdict

    from actors.core.budget import NANO, SPEND_PREFIX

    rates = [u for u in limits if not str(u.get("key", "")).startswith(SPEND_PREFIX)]
    budgets = [{"budget": u["key"][len(SPEND_PREFIX):], "spent_usd": u["tokens"] / NANO,
                "usd": (u["tpm"] or 0) / NANO, "mode": u["mode"], "period_start_unix": u["window_start_unix"]}
               for u in limits if str(u.get("key", "")).startswith(SPEND_PREFIX)]
    return rates, {"budgets": budgets, "ledger": asdict(ledger) if ledger is not None else None}


def engine_seed(path: str | None, slot: str, budgets: list[Any], now: float) -> dict[str, int]:
    """A (re)starting engine's spend in the current periods, from the ledger; {} if it cannot be read."""
    if not path or not budgets:
        return {}
    from actors.runtime.ledger_store import seed_for

    try:
        return seed_for(path, slot, budgets, now)
    except Exception as exc:  # noqa: BLE001 - checked at start; a failure now must not stop the engine
        log.error("ledger %s: cannot read the spend of %s to seed its budgets (%s); counting from zero",
                  path, slot, exc)
        return {}
