"""ClusterMember: the part of a node's registry that keeps the node in the cluster.

It has an identity unique without the user's help (``name@host:admin_port``), locates
the leader's registrar, heartbeats it, and hands what it learns (peers' limiter hubs,
the strict limiter) to the node's actors. See actors/runtime/cluster.py for the leader side.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from typing import Any

from thespian.actors import ActorSystemConventionUpdate

from actors.core.membership import node_id
from actors.runtime.base import GatewayActor
from actors.runtime.cluster import LEADER_CAPABILITY, LeaderLocator
from actors.runtime.logs import logger
from actors.runtime.protocol import (ClusterStatus, ClusterStatusRequest, Deploy, Heartbeat, LimiterPeers, Locate, MemberInfo, MemberRefused, Membership, RegistrarConfig, RegistrarIs, StrictLimiterIs)
from actors.settings.schema import ClusterConfig

log = logger("atomr.node")

LOCATE_AFTER_JOIN_S = 0.25
CLUSTER_STATUS_TIMEOUT_S = 4.0


def _admin_hostport(actor: Any) -> tuple[str, int]:
    """The (ip, port) of this actor's admin, as Thespian addresses it (private attributes: best effort)."""
    try:
        ip, port = actor._myRef._adminAddr.addressDetails.connectArgs[0][:2]
        return str(ip), int(port)
    except Exception:  # noqa: BLE001 - identity then rests on the Deploy's fields
        return "", 0


class ClusterMember(GatewayActor):
    def __init__(self) -> None:
        super().__init__()
        self.node = ""
        self.node_id = ""
        self.host = ""
        self.admin_port = 0
        self.address = ""
        self.incarnation = secrets.token_hex(4)
        self.leader = False
        self.cluster = ClusterConfig()
        self.registrar = None
        self.strict = None
        self.leader_node = ""
        self.members: list[MemberInfo] = []
        self.last_membership = 0.0
        self.locate_sent = 0.0
        self.leader_reachable = False
        self.leader_in_convention = False
        self.refused = ""
        self.peer_hubs: list[Any] = []
        self.cluster_queries: dict[str, tuple[Any, bool, str]] = {}
        self.stopping = False
        self.engines: list[tuple[Any, Any, int]] = []
        self.limiter = None

    def _set_identity(self, msg: Deploy) -> None:
        admin_ip, admin_port = _admin_hostport(self)
        self.node = msg.node
        self.leader = msg.leader
        self.host = msg.host or admin_ip
        self.admin_port = msg.admin_port or admin_port
        self.node_id = node_id(self.node, self.host, self.admin_port)
        self.address = f"{self.host or '?'}:{self.admin_port or '?'}"

    def membership_state(self) -> str:
        if self.refused:
            return f"refused: {self.refused}"
        if self.leader:
            return "leader"
        return "member" if self.leader_reachable else "alone"

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
        self.timers.after("cluster", self.cluster.heartbeat_s)

    def _member_info(self) -> MemberInfo:
        deployments = [dep.name for dep in getattr(self, "deployments", [])]
        return MemberInfo(self.node, self.myAddress, self.limiter, getattr(self, "started", 0.0), self.incarnation,
                          deployments, host=self.host, node_id=self.node_id, admin_port=self.admin_port)

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

    def receiveMsg_MemberRefused(self, msg: MemberRefused, sender: Any) -> None:
        if not self.refused:  # once: it is repeated at every heartbeat while the other node lives
            log.error("node %s: the cluster refused this node: %s", self.node, msg.reason)
        self.refused = msg.reason

    def receiveMsg_Membership(self, msg: Membership, sender: Any) -> None:
        if not any(m.node_id == self.node_id and m.incarnation == self.incarnation for m in msg.members):
            return  # a broadcast that does not (yet) count this node in
        self.refused = ""
        self.last_membership = time.monotonic()
        if not self.leader_reachable:
            log.info("node %s (%s): in the cluster led by %s (%d nodes)", self.node, self.node_id,
                     msg.leader_node or "?", len(msg.members))
        self.leader_reachable = True
        self.leader_node = msg.leader_node
        self.members = msg.members
        self._set_strict(msg.strict_limiter)
        hubs = [m.limiter for m in msg.members if m.node_id != self.node_id and m.limiter is not None]
        if hubs != self.peer_hubs:
            self.peer_hubs = hubs
            self.send(self.limiter, LimiterPeers(hubs))

    def _set_strict(self, address: Any) -> None:
        if address == self.strict and address is not None:
            return
        self.strict = address
        nodes = max(1, len(self.members))
        for dep, engine, _ in self.engines:
            if dep.limits.mode == "strict" or any(b.mode == "strict" for b in getattr(self, "budgets", ())):
                self.send(engine, StrictLimiterIs(address, nodes))

    def receiveMsg_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate, sender: Any) -> None:
        if self.stopping or not (msg.remoteCapabilities or {}).get(LEADER_CAPABILITY):
            return
        self.leader_in_convention = msg.remoteAdded
        if msg.remoteAdded:
            # The leader (re)joined: register with it now. Thespian reports the join a moment
            # before it can place actors there, hence the short pause.
            self.timers.after("locate", LOCATE_AFTER_JOIN_S)
        elif self.leader_reachable:
            self._leader_lost("the leader left the convention")

    def receiveMsg_ClusterStatusRequest(self, msg: ClusterStatusRequest, sender: Any) -> None:
        """Asked of this node, answered by the leader's registrar, or by this node alone
        when the registrar is unknown or does not answer in time (e.g. it just died)."""
        waiter = msg.reply_to or sender
        if self.registrar is None:
            return self._answer_alone(waiter, msg.members_only, msg.token)
        token = secrets.token_hex(4)
        self.cluster_queries[token] = (waiter, msg.members_only, msg.token)
        self.send(self.registrar, ClusterStatusRequest(self.myAddress, msg.members_only, token))
        wait = self.cluster.heartbeat_s * 2 if msg.members_only else CLUSTER_STATUS_TIMEOUT_S + 1
        self.timers.after("cluster_query", wait, key=token)

    def receiveMsg_ClusterStatus(self, msg: ClusterStatus, sender: Any) -> None:
        query = self.cluster_queries.pop(msg.token, None)
        self.timers.cancel("cluster_query", key=msg.token)
        if query is not None:
            self.send(query[0], replace(msg, token=query[2]))  # the asker files it under its own token

    def _answer_alone(self, waiter: Any, members_only: bool, token: str) -> None:
        raise NotImplementedError

    def timer_cluster(self, _: Any) -> None:
        self._cluster_tick()

    def timer_locate(self, _: Any) -> None:
        if self.registrar is None:
            self._locate()

    def timer_cluster_query(self, token: str) -> None:
        query = self.cluster_queries.pop(token, None)
        if query is not None:
            self._answer_alone(*query)
