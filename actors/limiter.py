"""RateLimiterActor: this node's hub for approximate, cluster-wide RPM/TPM budgets.

Each engine admits against its own replica of the budget (a WindowedLimiter) and sends
its GCounter deltas here every sync interval. The hub merges them, forwards them to the
node's other engines sharing the budget key, and (in a cluster) to the other nodes'
hubs. Deltas carry absolute per-slot counts, so loss, duplication and reordering only
delay convergence, never corrupt it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from thespian.actors import ActorTypeDispatcher

from .messages import LimiterDelta, LimiterInit, LimiterQuery, LimiterRegister, LimiterUsage
from .ratelimit import RateLimits, WindowedLimiter

log = logging.getLogger("atomr.limiter")


@dataclass
class _Budget:
    view: WindowedLimiter
    engines: list[Any] = field(default_factory=list)


class RateLimiterActor(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self.node = ""
        self.budgets: dict[str, _Budget] = {}

    def receiveMsg_LimiterInit(self, msg: LimiterInit, sender: Any) -> None:
        self.node = msg.node

    def _budget(self, key: str, limits: RateLimits) -> _Budget:
        budget = self.budgets.get(key)
        if budget is None:
            # The hub never spends; its slot name only has to differ from every engine's.
            budget = self.budgets[key] = _Budget(WindowedLimiter(f"{self.node}/hub", limits))
        return budget

    def receiveMsg_LimiterRegister(self, msg: LimiterRegister, sender: Any) -> None:
        budget = self._budget(msg.key, msg.limits)
        if msg.engine not in budget.engines:
            budget.engines.append(msg.engine)
        state = budget.view.state()
        if state:
            self.send(msg.engine, LimiterDelta(msg.key, state, origin="hub"))

    def receiveMsg_LimiterDelta(self, msg: LimiterDelta, sender: Any) -> None:
        budget = self.budgets.get(msg.key)
        if budget is None:
            return
        budget.view.merge(msg.delta)
        for engine in budget.engines:
            if engine != sender:
                self.send(engine, msg)

    def receiveMsg_LimiterQuery(self, msg: LimiterQuery, sender: Any) -> None:
        usage = []
        for key, budget in sorted(self.budgets.items()):
            u = budget.view.usage()
            usage.append({"key": key, "window_start_unix": u.window_start_unix, "requests": u.requests,
                          "tokens": u.tokens, "rpm": u.rpm, "tpm": u.tpm, "mode": budget.view.limits.mode,
                          "engines": len(budget.engines)})
        self.send(sender, LimiterUsage(self.node, usage))
