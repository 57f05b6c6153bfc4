"""Cluster membership on top of a Thespian convention: a registrar on the leader, heartbeats, failure detection.

Thespian notices a crashed node only after minutes, and its global names are per admin
(a second remote-placed ``createActor(..., globalName=X)`` from the same member hangs in
4.0.1). So members find the leader's registrar through a short-lived ``LeaderLocator``
placed on the leader by capability, which looks the registrar up *locally* there, and
every node's registry heartbeats the registrar. A member silent for
``failure_timeout_s`` is dropped; a registry that hears nothing back for as long
considers the leader gone and keeps locating it until it answers again.
"""

from __future__ import annotations

import secrets
import time
from datetime import timedelta
from typing import Any

from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage, requireCapability

from actors.runtime.logs import logger
from actors.runtime.protocol import (ClusterStatus, ClusterStatusRequest, Heartbeat, Introduce, Locate, MemberInfo, Membership, NodeStatus, RegistrarConfig, RegistrarIs, StatusRequest, StrictInit)
from actors.runtime.strict_limiter import StrictRateLimiterActor

log = logger("atomr.cluster")

REGISTRAR_NAME = "atomr-registrar"
LEADER_CAPABILITY = "atomr-leader"
STATUS_TIMEOUT_S = 3.0


@requireCapability(LEADER_CAPABILITY, True)
class LeaderLocator(ActorTypeDispatcher):
    """Created (without a global name) by any node; lives on the leader; answers once, then exits."""

    def receiveMsg_Locate(self, msg: Locate, sender: Any) -> None:
        registrar = self.createActor(ClusterRegistrar, globalName=REGISTRAR_NAME)  # local lookup on the leader
        self.send(registrar, Introduce(reply_to=sender))
        self.wakeupAfter(timedelta(seconds=2), payload="exit")

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if msg.payload == "exit":
            self.send(self.myAddress, ActorExitRequest())


class ClusterRegistrar(ActorTypeDispatcher):
    """The leader's view of the cluster; owner of the strict limiter singleton."""

    def __init__(self) -> None:
        super().__init__()
        self.incarnation = secrets.token_hex(4)
        self.members: dict[str, tuple[MemberInfo, float]] = {}
        self.strict = None
        self.hub = None
        self.leader_node = ""
        self.heartbeat_s = 1.0
        self.failure_timeout_s = 5.0
        self.ticking = False
        self.status: dict[str, Any] | None = None
        self.status_waiters: list[tuple[Any, str]] = []

    def _strict(self) -> Any:
        if self.strict is None:
            self.strict = self.createActor(StrictRateLimiterActor)
            self.send(self.strict, StrictInit(self.leader_node, self.hub))
        return self.strict

    def receiveMsg_Introduce(self, msg: Introduce, sender: Any) -> None:
        self.send(msg.reply_to, RegistrarIs(self.myAddress, self._strict(), self.leader_node, self.incarnation))
        if not self.ticking:
            self.ticking = True
            self.wakeupAfter(timedelta(seconds=self.heartbeat_s), payload="sweep")

    def receiveMsg_Heartbeat(self, msg: Heartbeat, sender: Any) -> None:
        info = msg.member
        known = info.node in self.members and self.members[info.node][0].incarnation == info.incarnation
        self.members[info.node] = (info, time.monotonic())
        if not known:
            log.info("node %s joined the cluster (%d nodes)", info.node, len(self.members))
            self._broadcast()
        else:
            self.send(info.registry, self._membership())

    def _membership(self) -> Membership:
        now = time.monotonic()
        members = [MemberInfo(i.node, i.registry, i.limiter, i.started_unix, i.incarnation, i.deployments,
                              round(now - seen, 3), i.host) for i, seen in self.members.values()]
        return Membership(self.leader_node, self.incarnation, sorted(members, key=lambda m: m.node), self._strict())

    def _broadcast(self) -> None:
        membership = self._membership()
        for info, _ in self.members.values():
            self.send(info.registry, membership)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if msg.payload == "sweep":
            now = time.monotonic()
            gone = [node for node, (_, seen) in self.members.items() if now - seen > self.failure_timeout_s]
            for node in gone:
                del self.members[node]
                log.warning("node %s missed heartbeats for %.1fs: dropped from the cluster", node,
                            self.failure_timeout_s)
            if gone:
                self._broadcast()
            self.wakeupAfter(timedelta(seconds=self.heartbeat_s), payload="sweep")
        elif msg.payload == "status":
            self._answer_status()

    # -- cluster-wide status ------------------------------------------------------------

    def receiveMsg_ClusterStatusRequest(self, msg: ClusterStatusRequest, sender: Any) -> None:
        if msg.members_only:
            membership = self._membership()
            self.send(msg.reply_to or sender, ClusterStatus(self.leader_node, membership.members, [], [], msg.token))
            return
        self.status_waiters.append((msg.reply_to or sender, msg.token))
        if self.status is not None:
            return
        self.status = {"pending": {info.node for info, _ in self.members.values()}, "nodes": []}
        for info, _ in self.members.values():
            self.send(info.registry, StatusRequest())
        self.wakeupAfter(timedelta(seconds=STATUS_TIMEOUT_S), payload="status")
        if not self.status["pending"]:
            self._answer_status()

    def receiveMsg_NodeStatus(self, msg: NodeStatus, sender: Any) -> None:
        if self.status is None:
            return
        self.status["nodes"].append(msg)
        self.status["pending"].discard(msg.node)
        if not self.status["pending"]:
            self._answer_status()

    def _answer_status(self) -> None:
        if self.status is None:
            return
        membership = self._membership()
        nodes = sorted(self.status["nodes"], key=lambda n: n.node)
        for waiter, token in self.status_waiters:
            self.send(waiter, ClusterStatus(self.leader_node, membership.members, nodes,
                                            sorted(self.status["pending"]), token))
        self.status, self.status_waiters = None, []

    def receiveMsg_RegistrarConfig(self, msg: RegistrarConfig, sender: Any) -> None:
        self.leader_node = msg.leader_node
        self.heartbeat_s = msg.heartbeat_s
        self.failure_timeout_s = msg.failure_timeout_s
        if self.hub is None:
            self.hub = msg.hub
            if self.strict is not None:
                self.send(self.strict, StrictInit(self.leader_node, self.hub))
