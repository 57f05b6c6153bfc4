"""NodeRegistry: the one actor a node is known by (global name ``atomr-node`` on its admin).

It creates the node's actors from the deployments it is given (a limiter hub, one
breaker per provider and endpoint, one session per deployment with credentials, the
engines with their workers), answers routing lookups, assembles the node's status, and
keeps the node in the cluster: it locates the leader's registrar, heartbeats it, and
hands what it learns (peers' limiter hubs, the strict limiter) to the node's actors.
"""

from __future__ import annotations

import secrets
import time
from datetime import timedelta
from typing import Any

from thespian.actors import (ActorExitRequest, ActorSystemConventionUpdate, ActorTypeDispatcher, PoisonMessage,
                             WakeupMessage)

from actors.runtime.logs import logger
from actors.runtime.breaker import CircuitBreakerActor
from actors.runtime.cluster import LEADER_CAPABILITY, LeaderLocator
from actors.settings.schema import ClusterConfig
from actors.runtime.engine import RemoteEngineCoreActor
from actors.runtime.limiter import RateLimiterActor
from actors.runtime.protocol import (BreakerInit, BreakerQuery, BreakerState, ClusterStatus, ClusterStatusRequest, Deploy, Deployed, Drain, Drained, EngineInit, EngineReady, EngineStatus, Heartbeat, LimiterInit, LimiterPeers, LimiterQuery, LimiterUsage, Locate, MemberInfo, Membership, NodeStatus, RegistrarConfig, RegistrarIs, Route, RouteEntry, Routes, SessionInit, StatusRequest, StrictLimiterIs)
from actors.runtime.session import RemoteSessionActor

log = logger("atomr.node")

NODE_GLOBAL_NAME = "atomr-node"
STATUS_TIMEOUT_S = 2.0
LOCATE_AFTER_JOIN_S = 0.25


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
        # cluster
        self.incarnation = secrets.token_hex(4)
        self.leader = False
        self.host = ""
        self.cluster = ClusterConfig()
        self.registrar = None
        self.strict = None
        self.leader_node = ""
        self.members: list[MemberInfo] = []
        self.last_membership = 0.0
        self.locate_sent = 0.0
        self.leader_reachable = False
        self.peer_hubs: list[Any] = []
        self.status_cluster_waiter = None
        self.cluster_queries: dict[str, tuple[Any, bool]] = {}
        self.leader_in_convention = False
        self.stopping = False

    # -- deployment --------------------------------------------------------------------

    def receiveMsg_Deploy(self, msg: Deploy, sender: Any) -> None:
        self.node = msg.node
        self.leader = msg.leader
        self.host = msg.host
        self.cluster = msg.cluster or ClusterConfig()
        sync_s = self.cluster.sync_interval_ms / 1000
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
                self.send(session, SessionInit(dep.name, dep.provider, dep.credentials, capability=msg.capability))
            for replica in range(dep.replicas):
                engine = self.createActor(RemoteEngineCoreActor)
                self.engines.append((dep, engine, replica))
                self.pending_ready.add((dep.name, replica))
                self.send(engine, EngineInit(dep, replica, self.node, self.myAddress, session,
                                             self.breakers[key], self.limiter, sync_s,
                                             self.cluster.failure_timeout_s))
        self._maybe_deployed()
        self.notifyOnSystemRegistrationChanges(True)
        self._cluster_tick()

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
        if isinstance(msg.poisonMessage, Locate):
            # No leader to place the locator on (it is down or we are not in the convention yet).
            log.info("node %s: the leader cannot be located yet", self.node)
            return
        # An actor failed on one of our messages: during bring-up that means the deploy failed.
        log.error("node %s: %s failed on %s: %s", self.node, sender, type(msg.poisonMessage).__name__,
                  str(msg.details)[-500:])
        if self.deploy_waiter is not None:
            self.send(self.deploy_waiter, msg)
            self.deploy_waiter = None

    # -- cluster membership ---------------------------------------------------------------

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self.stopping = True

    def _cluster_tick(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        silent = now - self.last_membership
        if self.leader_reachable and silent > self.cluster.failure_timeout_s:
            self._leader_lost(f"no answer from the registrar for {silent:.1f}s")
        if self.registrar is None:
            # A member can only place the locator on the leader once its admin has joined
            # the convention (Thespian tells us through ActorSystemConventionUpdate).
            if (self.leader or self.leader_in_convention) and now - self.locate_sent > 2 * self.cluster.heartbeat_s:
                self._locate()
        else:
            self.send(self.registrar, Heartbeat(self._member_info()))
        self.wakeupAfter(timedelta(seconds=self.cluster.heartbeat_s), payload="cluster")

    def _member_info(self) -> MemberInfo:
        return MemberInfo(self.node, self.myAddress, self.limiter, self.started, self.incarnation,
                          [d.name for d in self.deployments], host=self.host)

    def _locate(self) -> None:
        if self.stopping:
            return
        self.locate_sent = time.monotonic()
        # A fresh locator each time, placed on the leader by capability: see cluster.py.
        self.send(self.createActor(LeaderLocator), Locate())

    def _leader_lost(self, why: str) -> None:
        log.warning("node %s: leader unreachable (%s)", self.node, why)
        self.leader_reachable = False
        self.registrar = None
        self._set_strict(None)
        if not self.leader:
            # Make this member's admin register with the convention leader again now,
            # instead of at its next re-registration period.
            self.updateCapability("atomr-rejoin", secrets.token_hex(4))

    def receiveMsg_RegistrarIs(self, msg: RegistrarIs, sender: Any) -> None:
        self.registrar = msg.registrar
        if self.leader:
            self.send(self.registrar, RegistrarConfig(self.node, self.cluster.heartbeat_s,
                                                      self.cluster.failure_timeout_s, self.limiter))
        self.send(self.registrar, Heartbeat(self._member_info()))

    def receiveMsg_Membership(self, msg: Membership, sender: Any) -> None:
        self.last_membership = time.monotonic()
        if not self.leader_reachable:
            log.info("node %s: in the cluster led by %s (%d nodes)", self.node, msg.leader_node or "?",
                     len(msg.members))
        self.leader_reachable = True
        self.leader_node = msg.leader_node
        self.members = msg.members
        self._set_strict(msg.strict_limiter)
        hubs = [m.limiter for m in msg.members if m.node != self.node and m.limiter is not None]
        if hubs != self.peer_hubs:
            self.peer_hubs = hubs
            self.send(self.limiter, LimiterPeers(hubs))

    def _set_strict(self, address: Any) -> None:
        if address == self.strict and address is not None:
            return
        self.strict = address
        nodes = max(1, len(self.members))
        for dep, engine, _ in self.engines:
            if dep.limits.mode == "strict":
                self.send(engine, StrictLimiterIs(address, nodes))

    def receiveMsg_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate, sender: Any) -> None:
        if self.stopping or not (msg.remoteCapabilities or {}).get(LEADER_CAPABILITY):
            return
        self.leader_in_convention = msg.remoteAdded
        if msg.remoteAdded:
            # The leader (re)joined: register with it now. Thespian reports the join a moment
            # before it can place actors there, hence the short pause.
            self.wakeupAfter(timedelta(seconds=LOCATE_AFTER_JOIN_S), payload="locate")
        elif self.leader_reachable:
            self._leader_lost("the leader left the convention")

    def receiveMsg_ClusterStatusRequest(self, msg: ClusterStatusRequest, sender: Any) -> None:
        """Asked of this node, answered by the leader's registrar, or by this node alone
        when the registrar is unknown or does not answer in time (e.g. it just died)."""
        waiter = msg.reply_to or sender
        if self.registrar is None:
            return self._answer_alone(waiter, msg.members_only)
        token = secrets.token_hex(4)
        self.cluster_queries[token] = (waiter, msg.members_only)
        self.send(self.registrar, ClusterStatusRequest(self.myAddress, msg.members_only, token))
        wait = self.cluster.heartbeat_s * 2 if msg.members_only else STATUS_TIMEOUT_S + 2
        self.wakeupAfter(timedelta(seconds=wait), payload=("cluster-query", token))

    def receiveMsg_ClusterStatus(self, msg: ClusterStatus, sender: Any) -> None:
        waiter = self.cluster_queries.pop(msg.token, None)
        if waiter is not None:
            self.send(waiter[0], msg)

    def _answer_alone(self, waiter: Any, members_only: bool) -> None:
        if members_only:
            self.send(waiter, ClusterStatus("", [self._member_info()], [], []))
        else:
            self.status_cluster_waiter = waiter
            self.receiveMsg_StatusRequest(StatusRequest(), self.myAddress)

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
        elif msg.payload == "cluster":
            self._cluster_tick()
        elif msg.payload == "locate" and self.registrar is None:
            self._locate()
        elif isinstance(msg.payload, tuple) and msg.payload[0] == "cluster-query":
            query = self.cluster_queries.pop(msg.payload[1], None)
            if query is not None:
                self._answer_alone(*query)

    def receiveMsg_NodeStatus(self, msg: NodeStatus, sender: Any) -> None:
        # Our own status, collected for a cluster status asked while the leader is unreachable.
        waiter = self.status_cluster_waiter
        if waiter is not None:
            self.status_cluster_waiter = None
            self.send(waiter, ClusterStatus("", [self._member_info()], [msg], []))

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
