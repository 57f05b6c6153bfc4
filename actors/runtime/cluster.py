"""Cluster membership on top of a Thespian convention: a registrar on the leader, heartbeats, failure detection.

Thespian notices a crashed node only after minutes, and its global names are per admin
(a second remote-placed ``createActor(..., globalName=X)`` from the same member hangs in
4.0.1). So members find the leader's registrar through a short-lived ``LeaderLocator``
placed on the leader by capability, which looks the registrar up *locally* there, and
every node's registry heartbeats the registrar. A member silent for
``failure_timeout_s`` is dropped (never the leader's own node, and silence is counted only
while the registrar itself runs: actors/core/membership.py); a registry that hears nothing
back for as long considers the leader gone and keeps locating it until it answers again.

Members are keyed by node id (``name@host:admin_port``, see actors/core/membership.py),
so one config on several hosts makes several members; a second live node claiming an id
already held is refused with ``MemberRefused``.

Cluster status is gathered by whoever answers it (:class:`ClusterGather`): the registrar
from every current member, a member that has lost the leader from every node it learned of.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, requireCapability

from actors.core.gather import Gathering
from actors.core.membership import MemberTable, Verdict
from actors.runtime.base import GatewayActor
from actors.runtime.logs import logger
from actors.runtime.protocol import (ClusterStatus, ClusterStatusRequest, Heartbeat, Introduce, Locate, MemberInfo, MemberRefused, Membership, NodeStatus, RegistrarConfig, RegistrarIs, StatusRequest, StrictInit)
from actors.runtime.strict_limiter import StrictRateLimiterActor
from actors.runtime.timers import Timers

log = logger("atomr.cluster")

REGISTRAR_NAME = "atomr-registrar"
LEADER_CAPABILITY = "atomr-leader"
STATUS_TIMEOUT_S = 3.0


@requireCapability(LEADER_CAPABILITY, True)
class LeaderLocator(GatewayActor):
    """Created (without a global name) by any node; lives on the leader; answers once, then exits."""

    def receiveMsg_Locate(self, msg: Locate, sender: Any) -> None:
        registrar = self.createActor(ClusterRegistrar, globalName=REGISTRAR_NAME)  # local lookup on the leader
        self.send(registrar, Introduce(reply_to=sender))
        self.timers.after("exit", 2.0)

    def timer_exit(self, _: Any) -> None:
        self.send(self.myAddress, ActorExitRequest())


class ClusterGather:
    """Mixin of an actor that answers ``ClusterStatus``: asks every node it knows of for its
    ``NodeStatus`` and answers each waiter once, naming the nodes that did not answer in
    ``STATUS_TIMEOUT_S``. The actor says who it knows of (``_known_cluster``); the timeout is
    its ``cluster_status`` timer."""

    cluster_gathering: Gathering | None = None
    cluster_gather_token = ""
    send: Callable[..., None]          # the actor's own
    timers: Timers

    def _known_cluster(self) -> tuple[str, list[MemberInfo]]:
        """(the leader's name, or "" if unreachable; the nodes to ask)."""
        raise NotImplementedError

    def gather_cluster(self, waiter: Any, token: str) -> None:
        if self.cluster_gathering is not None:
            self.cluster_gathering.waiters.append((waiter, token))
            return
        _, members = self._known_cluster()
        self.cluster_gathering = Gathering([m.node_id or m.node for m in members], [(waiter, token)])
        self.cluster_gather_token = secrets.token_hex(4)
        for member in members:
            self.send(member.registry, StatusRequest(token=self.cluster_gather_token))
        self.timers.after("cluster_status", STATUS_TIMEOUT_S)
        if self.cluster_gathering.done:
            self._answer_cluster()

    def receiveMsg_NodeStatus(self, msg: NodeStatus, sender: Any) -> None:
        if self.cluster_gathering is not None and msg.token == self.cluster_gather_token and \
                self.cluster_gathering.add(msg.node_id or msg.node, msg):
            self._answer_cluster()

    def timer_cluster_status(self, _: Any) -> None:
        self._answer_cluster()  # with whatever arrived

    def _answer_cluster(self) -> None:
        gathering, self.cluster_gathering = self.cluster_gathering, None
        self.timers.cancel("cluster_status")   # a new collection's timeout starts afresh
        if gathering is None:
            return
        leader, members = self._known_cluster()
        nodes = sorted(gathering.parts, key=lambda n: (n.node, n.node_id))
        names = {m.node_id: m.node for m in members}
        unreachable = sorted(names.get(key, key) for key in gathering.pending)
        for waiter, token in gathering.waiters:
            self.send(waiter, ClusterStatus(leader, members, nodes, unreachable, token))


class ClusterRegistrar(ClusterGather, GatewayActor):
    """The leader's view of the cluster; owner of the strict limiter singleton."""

    def __init__(self) -> None:
        super().__init__()
        self.incarnation = secrets.token_hex(4)
        self.table = MemberTable()
        self.strict = None
        self.hub = None
        self.leader_node = ""
        self.heartbeat_s = 1.0
        self.refusals_logged: set[tuple[str, str]] = set()
        self.stopping = False

    def _strict(self) -> Any:
        if self.strict is None:
            self.strict = self.createActor(StrictRateLimiterActor)
            self.send(self.strict, StrictInit(self.leader_node, self.hub))
        return self.strict

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        self.stopping = True

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        if not self.stopping and self.strict is not None and msg.childAddress == self.strict:
            # A new one seeds itself from the cluster's counters; every node learns its address.
            log.error("the strict limiter died; starting a new one")
            self.strict = None
            self._broadcast()

    def receiveMsg_Introduce(self, msg: Introduce, sender: Any) -> None:
        self.send(msg.reply_to, RegistrarIs(self.myAddress, self._strict(), self.leader_node, self.incarnation))
        self.timers.after("sweep", self.heartbeat_s)

    def receiveMsg_Heartbeat(self, msg: Heartbeat, sender: Any) -> None:
        info = msg.member
        key = info.node_id or info.node
        heard = self.table.heartbeat(key, info.incarnation, info)
        if heard.verdict is Verdict.REFUSED:
            if (key, info.incarnation) not in self.refusals_logged and len(self.refusals_logged) < 256:
                self.refusals_logged.add((key, info.incarnation))
                log.error("refused a second node claiming %s: %s", key, heard.reason)
            self.send(info.registry, MemberRefused(key, heard.reason))
        elif heard.verdict is Verdict.HELD:
            return  # decided within confirm_s: a restart, or a refusal
        elif heard.changed:
            if heard.reason and heard.verdict is Verdict.JOINED:
                log.warning("node %s (%s) is back in the cluster: %s (%d nodes)", info.node, key, heard.reason,
                            len(self.table))
                self._broadcast({key: heard.reason})
                return
            what = "restarted" if heard.verdict is Verdict.REPLACED else "joined the cluster"
            log.info("node %s (%s) %s (%d nodes)", info.node, key, what, len(self.table))
            self._broadcast()
        else:
            self.send(info.registry, self._membership())

    def _membership(self) -> Membership:
        members = [MemberInfo(i.node, i.registry, i.limiter, i.started_unix, i.incarnation, i.deployments,
                              round(age, 3), i.host, i.node_id, i.admin_port) for _, i, age in self.table.members()]
        return Membership(self.leader_node, self.incarnation, members, self._strict())

    def _broadcast(self, news: dict[str, str] | None = None) -> None:
        membership = self._membership()
        membership.news = news or {}
        for member in membership.members:
            self.send(member.registry, membership)

    def timer_sweep(self, _: Any) -> None:
        gone = self.table.sweep()
        if self.table.stalled_s:
            log.warning("the registrar stood still for %.1fs (not scheduled, stopped or blocked): heartbeats it "
                        "had not read meanwhile are not counted as missed", self.table.stalled_s)
        for key in gone:
            log.warning("node %s missed heartbeats for %.1fs: dropped from the cluster", key,
                        self.table.failure_timeout_s)
        if gone:
            self._broadcast()
        self.timers.after("sweep", self.heartbeat_s)

    # -- cluster-wide status ------------------------------------------------------------

    def receiveMsg_ClusterStatusRequest(self, msg: ClusterStatusRequest, sender: Any) -> None:
        if msg.members_only:
            membership = self._membership()
            self.send(msg.reply_to or sender, ClusterStatus(self.leader_node, membership.members, [], [], msg.token))
        else:
            self.gather_cluster(msg.reply_to or sender, msg.token)

    def _known_cluster(self) -> tuple[str, list[MemberInfo]]:
        return self.leader_node, self._membership().members

    def receiveMsg_RegistrarConfig(self, msg: RegistrarConfig, sender: Any) -> None:
        self.leader_node = msg.leader_node
        self.heartbeat_s = msg.heartbeat_s
        self.table.failure_timeout_s = msg.failure_timeout_s
        self.table.confirm_s = min(2 * msg.heartbeat_s + 0.1, msg.failure_timeout_s)
        self.table.stalls.every_s = msg.heartbeat_s
        if msg.leader_id:
            self.table.pin(msg.leader_id)  # a leader never drops itself, however late its heartbeats
        if self.hub is None:
            self.hub = msg.hub
            if self.strict is not None:
                self.send(self.strict, StrictInit(self.leader_node, self.hub))
