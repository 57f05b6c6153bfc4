"""RateLimiterActor: this node's hub for approximate, cluster-wide RPM/TPM budgets.

Each engine admits against its own replica of the budget (a WindowedLimiter) and sends
its GCounter deltas here every sync interval. The hub merges them, forwards them to the
node's other engines sharing the budget key and to the other nodes' hubs, which forward
them to their engines. Every heartbeat it also sends its whole state to the other hubs,
so a node that joined late or missed a delta catches up. Deltas carry absolute per-slot
counts: loss, duplication and reordering only delay convergence, never corrupt it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from actors.runtime.base import GatewayActor

from actors.runtime.logs import logger
from actors.runtime.protocol import (LimiterDelta, LimiterInit, LimiterPeers, LimiterQuery, LimiterRegister, LimiterStateRequest, LimiterUsage)
from actors.core.ratelimit import RateLimits, WindowedLimiter

log = logger("atomr.limiter")

ANTI_ENTROPY_S = 1.0
# A registration without an engine address is a lease of its sender (an HTTP front door's
# endpoint, which re-registers every few seconds): a front door that went away stops being
# sent deltas once its lease lapses.
LEASE_S = 10.0


@dataclass
class _Budget:
    view: WindowedLimiter
    engines: list[Any] = field(default_factory=list)
    leases: list[tuple[Any, float]] = field(default_factory=list)  # (endpoint, lapses at, monotonic)

    def lease(self, endpoint: Any, until: float) -> None:
        self.leases = [(e, t) for e, t in self.leases if e != endpoint] + [(endpoint, until)]

    def targets(self, now: float) -> list[Any]:
        if self.leases:
            self.leases = [(e, t) for e, t in self.leases if t > now]
        return self.engines + [e for e, _ in self.leases]


class RateLimiterActor(GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.node = ""
        self.budgets: dict[str, _Budget] = {}
        self.peers: list[Any] = []

    @property
    def origin(self) -> str:
        return f"hub:{self.node}"

    def receiveMsg_LimiterInit(self, msg: LimiterInit, sender: Any) -> None:
        self.node = msg.node

    def _budget(self, key: str, limits: RateLimits | None) -> _Budget:
        budget = self.budgets.get(key)
        if budget is None:
            # The hub never spends; its slot name only has to differ from every engine's.
            budget = self.budgets[key] = _Budget(WindowedLimiter(self.origin, limits or RateLimits()))
        elif limits is not None and budget.view.limits.unlimited and not limits.unlimited:
            budget.view.limits = limits  # learned from a peer first, configured here later
        return budget

    def receiveMsg_LimiterRegister(self, msg: LimiterRegister, sender: Any) -> None:
        budget = self._budget(msg.key, msg.limits)
        engine = msg.engine
        if engine is None:
            engine = sender
            budget.lease(sender, time.monotonic() + LEASE_S)
        elif engine not in budget.engines:
            budget.engines.append(engine)
        state = budget.view.state()
        if state:
            self.send(engine, LimiterDelta(msg.key, state, self.origin, budget.view.limits))

    def receiveMsg_LimiterDelta(self, msg: LimiterDelta, sender: Any) -> None:
        budget = self._budget(msg.key, msg.limits)
        budget.view.merge(msg.delta)
        from_peer = msg.origin.startswith("hub:")
        for engine in budget.targets(time.monotonic()):
            if from_peer or engine != sender:
                self.send(engine, msg)
        if not from_peer:
            relay = LimiterDelta(msg.key, msg.delta, self.origin, budget.view.limits, msg.sent_unix)
            for peer in self.peers:
                self.send(peer, relay)

    def receiveMsg_LimiterPeers(self, msg: LimiterPeers, sender: Any) -> None:
        new = [p for p in msg.peers if p not in self.peers]
        self.peers = list(msg.peers)
        for peer in new:
            self._send_state(peer)
        if self.peers:
            self.timers.after("anti_entropy", ANTI_ENTROPY_S)

    def _send_state(self, peer: Any) -> None:
        for key, budget in self.budgets.items():
            state = budget.view.state()
            if state:
                self.send(peer, LimiterDelta(key, state, self.origin, budget.view.limits))

    def timer_anti_entropy(self, _: Any) -> None:
        for peer in self.peers:
            self._send_state(peer)
        if self.peers:
            self.timers.after("anti_entropy", ANTI_ENTROPY_S)

    def receiveMsg_LimiterStateRequest(self, msg: LimiterStateRequest, sender: Any) -> None:
        budget = self.budgets.get(msg.key)
        state = budget.view.state() if budget is not None else {}
        self.send(sender, LimiterDelta(msg.key, state, self.origin, budget.view.limits if budget else None))

    def receiveMsg_LimiterQuery(self, msg: LimiterQuery, sender: Any) -> None:
        usage = []
        for key, budget in sorted(self.budgets.items()):
            u = budget.view.usage()
            usage.append({"key": key, "window_start_unix": u.window_start_unix, "requests": u.requests,
                          "tokens": u.tokens, "rpm": u.rpm, "tpm": u.tpm, "mode": budget.view.limits.mode,
                          "window_s": budget.view.limits.window_s,
                          "engines": len(budget.targets(time.monotonic())), "slots": budget.view.participants() - 1})
        self.send(sender, LimiterUsage(self.node, usage))
