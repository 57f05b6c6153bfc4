"""NodeRegistry: the one actor a node is known by (global name ``atomr-node`` on its admin).

It creates the node's actors from the deployments it is given (a limiter hub, one
breaker per provider and endpoint, one session per deployment with credentials, the
engines with their workers), answers routing lookups and assembles the node's status.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from thespian.actors import ActorTypeDispatcher, PoisonMessage, WakeupMessage

from .breaker_actor import CircuitBreakerActor
from .engine import RemoteEngineCoreActor
from .limiter import RateLimiterActor
from .messages import (BreakerInit, BreakerQuery, BreakerState, Deploy, Deployed, Drain, Drained, EngineInit,
                       EngineReady, EngineStatus, LimiterInit, LimiterQuery, LimiterUsage, NodeStatus, Route,
                       RouteEntry, Routes, SessionInit, StatusRequest)
from .session import RemoteSessionActor

log = logging.getLogger("atomr.node")

NODE_GLOBAL_NAME = "atomr-node"
STATUS_TIMEOUT_S = 2.0


class NodeRegistry(ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self.node = ""
        self.started = time.time()
        self.deployments: list[Any] = []
        self.engines: list[tuple[Any, Any, int]] = []   # (deployment, address, replica)
        self.breakers: dict[tuple[str, str], Any] = {}
        self.limiter = None
        self.pending_ready: set[tuple[str, int]] = set()
        self.deploy_waiter = None
        self.status_waiters: list[Any] = []
        self.status_parts: dict[str, Any] = {}
        self.status_expect = 0
        self.drain_waiter = None
        self.drain_left = 0

    # -- deployment --------------------------------------------------------------------

    def receiveMsg_Deploy(self, msg: Deploy, sender: Any) -> None:
        self.node = msg.node
        sync_s = (msg.cluster.sync_interval_ms / 1000) if msg.cluster is not None else 0.05
        if self.limiter is None:
            self.limiter = self.createActor(RateLimiterActor)
            self.send(self.limiter, LimiterInit(self.node, sync_s))
        self.deploy_waiter = sender
        for dep in msg.deployments:
            self.deployments.append(dep)
            key = (dep.provider, dep.endpoint)
            if key not in self.breakers:
                breaker = self.breakers[key] = self.createActor(CircuitBreakerActor)
                self.send(breaker, BreakerInit(dep.provider, dep.endpoint, dep.breaker))
            session = None
            if dep.credentials is not None:
                session = self.createActor(RemoteSessionActor)
                self.send(session, SessionInit(dep.name, dep.provider, dep.credentials))
            for replica in range(dep.replicas):
                engine = self.createActor(RemoteEngineCoreActor)
                self.engines.append((dep, engine, replica))
                self.pending_ready.add((dep.name, replica))
                self.send(engine, EngineInit(dep, replica, self.node, self.myAddress, session,
                                             self.breakers[key], self.limiter, sync_s))
        self._maybe_deployed()

    def receiveMsg_EngineReady(self, msg: EngineReady, sender: Any) -> None:
        self.pending_ready.discard((msg.deployment, msg.replica))
        self._maybe_deployed()

    def _maybe_deployed(self) -> None:
        if self.deploy_waiter is not None and not self.pending_ready:
            names = [d.name for d in self.deployments]
            log.info("node %s ready: %s", self.node, ", ".join(names))
            self.send(self.deploy_waiter, Deployed(self.node, names, len(self.engines)))
            self.deploy_waiter = None

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:
        # An actor failed on one of our messages: during bring-up that means the deploy failed.
        log.error("node %s: %s failed on %s: %s", self.node, sender, type(msg.poisonMessage).__name__,
                  str(msg.details)[-500:])
        if self.deploy_waiter is not None:
            self.send(self.deploy_waiter, msg)
            self.deploy_waiter = None

    # -- routing -------------------------------------------------------------------------

    def receiveMsg_Route(self, msg: Route, sender: Any) -> None:
        entries = [RouteEntry(dep.name, dep.model, engine, self.node)
                   for dep, engine, _ in self.engines if msg.model in (dep.model, dep.name)]
        self.send(sender, Routes(msg.model, entries))

    # -- status --------------------------------------------------------------------------

    def receiveMsg_StatusRequest(self, msg: StatusRequest, sender: Any) -> None:
        self.status_waiters.append(sender)
        if len(self.status_waiters) > 1:
            return  # a collection is under way; this caller gets its result too
        self.status_parts = {"engines": [], "breakers": [], "limits": []}
        targets = [engine for _, engine, _ in self.engines] + list(self.breakers.values())
        targets += [self.limiter] if self.limiter is not None else []
        self.status_expect = len(targets)
        for target in targets:
            self.send(target, BreakerQuery() if target in self.breakers.values() else
                      LimiterQuery() if target == self.limiter else StatusRequest())
        self.wakeupAfter(timedelta(seconds=STATUS_TIMEOUT_S), payload="status")
        self._maybe_status()

    def receiveMsg_EngineStatus(self, msg: EngineStatus, sender: Any) -> None:
        self._status_part("engines", msg)

    def receiveMsg_BreakerState(self, msg: BreakerState, sender: Any) -> None:
        self._status_part("breakers", msg.snapshot)

    def receiveMsg_LimiterUsage(self, msg: LimiterUsage, sender: Any) -> None:
        self._status_part("limits", msg.usage, extend=True)

    def _status_part(self, kind: str, part: Any, extend: bool = False) -> None:
        if not self.status_waiters:
            return
        (self.status_parts[kind].extend if extend else self.status_parts[kind].append)(part)
        self.status_expect -= 1
        self._maybe_status()

    def _maybe_status(self, force: bool = False) -> None:
        if not self.status_waiters or (self.status_expect > 0 and not force):
            return
        parts = self.status_parts
        status = NodeStatus(self.node, self.started, sorted(parts["engines"], key=lambda e: (e.deployment, e.replica)),
                            parts["breakers"], parts["limits"])
        for waiter in self.status_waiters:
            self.send(waiter, status)
        self.status_waiters = []

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if msg.payload == "status":
            self._maybe_status(force=True)  # answer with whatever arrived

    # -- drain ---------------------------------------------------------------------------

    def receiveMsg_Drain(self, msg: Drain, sender: Any) -> None:
        self.drain_waiter = sender
        self.drain_left = len(self.engines)
        for _, engine, _ in self.engines:
            self.send(engine, msg)
        if not self.engines:
            self.send(sender, Drained(self.node, 0))

    def receiveMsg_Drained(self, msg: Drained, sender: Any) -> None:
        self.drain_left -= 1
        if self.drain_left == 0 and self.drain_waiter is not None:
            self.send(self.drain_waiter, Drained(self.node, 0))
            self.drain_waiter = None
