"""StrictRateLimiterActor: ``mode: strict`` budgets, one per cluster, on the leader.

Strict rate limits and strict spend budgets alike are leased (core/leases.py): every engine
asks for its share of the window (a spend budget's: of its period's nano-USD) every
``REFRESH_S`` while it has demand and spends it locally, so no call waits for this actor.
One :class:`LeaseTable` per budget key (the deployment's limit key, a spend budget's counter key).

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
from actors.runtime.protocol import LeaseOffer, LeaseRefresh, LimiterDelta, LimiterStateRequest, StrictInit
from actors.core.leases import LEASE_TTL_S, LeaseAsk, LeaseTable

log = logger("atomr.strict")

SETTLE_S = LEASE_TTL_S
SEED_TIMEOUT_S = 1.0     # how long the hub has to answer with the cluster's view


class StrictRateLimiterActor(GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.node = ""
        self.hub = None
        self.started = time.monotonic()
        self.leases: dict[str, LeaseTable] = {}

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
                                       tuple(msg.held), tuple(msg.spent),  # type: ignore[arg-type]
                                       tuple(msg.want), tuple(msg.need)))  # type: ignore[arg-type]
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

    def receiveMsg_LimiterDelta(self, msg: LimiterDelta, sender: Any) -> None:
        table = self.leases.get(msg.key)
        if table is not None and table.ready_at == float("inf"):
            self._seed_leases(msg.key, msg.delta)
