"""StrictRateLimiterActor: ``mode: strict`` budgets, one per cluster, on the leader.

Rate limits are leased (core/leases.py): every engine asks for its share of the window
every ``REFRESH_S`` while it has demand and spends it locally, so no call waits for this
actor. Strict spend budgets are still one round trip per request (``StrictAcquire``).

It starts empty after a leader restart. For one lease length (``LEASE_TTL_S``, also
``SETTLE_S``) it only renews what engines say they hold, and leaves the rest ungranted: every
grant its predecessor made and nobody reported has expired by then. Then it seeds itself from
the leader's limiter hub, the cluster's GCounter view of the window (engines count what they
spend in it), and hands out the rest.
"""

from __future__ import annotations

import time
from typing import Any

from actors.runtime.base import GatewayActor

from actors.runtime.logs import logger
from actors.runtime.protocol import (LeaseOffer, LeaseRefresh, LimiterDelta, LimiterStateRequest, StrictAcquire,
                                     StrictDenied, StrictGrant, StrictInit, StrictSettle)
from actors.core.leases import LEASE_TTL_S, LeaseAsk, LeaseTable
from actors.core.ratelimit import Reservation, StrictLedger

log = logger("atomr.strict")

SETTLE_S = LEASE_TTL_S
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
        self.leases: dict[str, LeaseTable] = {}

    # -- leases of strict rate limits --------------------------------------------------

    def receiveMsg_LeaseRefresh(self, msg: LeaseRefresh, sender: Any) -> None:
        table = self.leases.get(msg.key)
        if table is None:
            # Learning until seeded: ready_at moves to the seed's arrival (see _seed_leases).
            table = self.leases[msg.key] = LeaseTable(msg.limits, clock=time.monotonic, wall=time.time,
                                                      learning_s=float("inf"))
            remaining = SETTLE_S - (time.monotonic() - self.started)
            self.timers.after("lease_seed", max(0.0, remaining))
        try:
            grant = table.ask(LeaseAsk(msg.client, int(msg.seq), int(msg.window), int(msg.holding),
                                       tuple(msg.held), tuple(msg.spent), tuple(msg.want)))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return log.warning("strict limiter: a malformed lease ask for %s from %s", msg.key, sender)
        self.send(sender, LeaseOffer(msg.key, grant.client, grant.seq, grant.window, grant.lease, grant.ttl_s,
                                     grant.left))

    def timer_lease_seed(self, _: Any) -> None:
        unseeded = [key for key, table in self.leases.items() if table.ready_at == float("inf")]
        for key in unseeded:
            if self.hub is None:
                self._seed_leases(key, {})
            else:
                self.send(self.hub, LimiterStateRequest(key))
        if unseeded:
            self.timers.after("lease_seed_timeout", SEED_TIMEOUT_S)

    def timer_lease_seed_timeout(self, _: Any) -> None:
        for key, table in self.leases.items():
            if table.ready_at == float("inf"):
                log.warning("strict limiter: no cluster view for %s; leasing from what engines report", key)
                self._seed_leases(key, {})

    def _seed_leases(self, key: str, state: dict[int, dict[str, dict[str, int]]]) -> None:
        table = self.leases[key]
        for window, counters in state.items():
            def count(name: str, slot: str) -> int:
                return int(counters.get(name, {}).get(slot, 0))
            slots = set(counters.get("requests", {})) | set(counters.get("tokens", {}))
            table.seed(int(window), {slot: (count("requests", slot) - count("requests_refunded", slot),
                                            count("tokens", slot) - count("tokens_refunded", slot))
                                     for slot in slots})
        table.ready_at = time.monotonic()

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
        table = self.leases.get(msg.key)
        if table is not None:
            if table.ready_at == float("inf"):
                self._seed_leases(msg.key, msg.delta)
            return
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
