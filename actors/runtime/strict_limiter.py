"""StrictRateLimiterActor: exact admission for ``mode: strict`` budgets, one per cluster, on the leader.

Every admission is a round trip to this one actor, so the budget is never exceeded. It
starts empty after a leader restart; before its first grant for a key it waits
``SETTLE_S`` for the leader's limiter hub to gather the cluster's GCounter view of the
window (engines mirror every strict grant into it) and seeds itself from that view.
"""

from __future__ import annotations

import time
from typing import Any

from actors.runtime.base import GatewayActor

from actors.runtime.logs import logger
from actors.runtime.protocol import (LimiterDelta, LimiterStateRequest, StrictAcquire, StrictDenied, StrictGrant, StrictInit, StrictSettle)
from actors.core.ratelimit import Reservation, StrictLedger

log = logger("atomr.strict")

SETTLE_S = 3.0
SEED_TIMEOUT_S = 1.0     # how long the hub has to answer with the cluster's view
EXPIRE_EVERY_S = 5.0


class StrictRateLimiterActor(GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.node = ""
        self.hub = None
        self.started = time.monotonic()
        self.ledgers: dict[str, StrictLedger] = {}
        self.seeded: set[str] = set()
        self.waiting: list[tuple[StrictAcquire, Any]] = []

    def receiveMsg_StrictInit(self, msg: StrictInit, sender: Any) -> None:
        self.node = msg.node
        self.hub = msg.hub

    def receiveMsg_StrictAcquire(self, msg: StrictAcquire, sender: Any) -> None:
        if msg.key not in self.ledgers:
            self.ledgers[msg.key] = StrictLedger(msg.limits)
        self.timers.after("expire", EXPIRE_EVERY_S)
        if msg.key not in self.seeded:
            self.waiting.append((msg, sender))
            remaining = SETTLE_S - (time.monotonic() - self.started)
            if remaining <= 0:
                self._seed(msg.key)
            else:
                self.timers.after("seed", remaining)
            return
        self._decide(msg, sender)

    def _seed(self, key: str) -> None:
        if self.hub is None:
            self._seeded(key)  # a leader without a hub has no history to start from
        else:
            self.send(self.hub, LimiterStateRequest(key))

    def receiveMsg_LimiterDelta(self, msg: LimiterDelta, sender: Any) -> None:
        ledger = self.ledgers.get(msg.key)
        if ledger is not None and msg.key not in self.seeded:
            ledger.seed(msg.delta)
            self._seeded(msg.key)

    def _seeded(self, key: str) -> None:
        self.seeded.add(key)
        ready = [(m, s) for m, s in self.waiting if m.key == key]
        self.waiting = [(m, s) for m, s in self.waiting if m.key != key]
        for msg, sender in ready:
            self._decide(msg, sender)

    def _decide(self, msg: StrictAcquire, sender: Any) -> None:
        verdict = self.ledgers[msg.key].acquire(msg.reservation_id, msg.tokens)
        if isinstance(verdict, Reservation):
            self.send(sender, StrictGrant(msg.reservation_id, verdict.window, verdict.tokens))
        else:
            self.send(sender, StrictDenied(msg.reservation_id, verdict))

    def receiveMsg_StrictSettle(self, msg: StrictSettle, sender: Any) -> None:
        ledger = self.ledgers.get(msg.key)
        if ledger is not None:
            ledger.settle(msg.reservation_id, msg.actual_tokens, msg.sent)

    def timer_seed(self, _: Any) -> None:
        for key in {m.key for m, _ in self.waiting} - self.seeded:
            self._seed(key)
        # If the hub does not answer, proceed rather than hold admission forever.
        self.timers.after("seed_timeout", SEED_TIMEOUT_S)

    def timer_seed_timeout(self, _: Any) -> None:
        for key in {m.key for m, _ in self.waiting} - self.seeded:
            log.warning("strict limiter: no cluster view for %s; starting from zero", key)
            self._seeded(key)

    def timer_expire(self, _: Any) -> None:
        for key, ledger in self.ledgers.items():
            expired = ledger.expire()
            if expired:
                log.warning("strict limiter: %d reservation(s) for %s never settled; kept at their estimate",
                            expired, key)
        self.timers.after("expire", EXPIRE_EVERY_S)
