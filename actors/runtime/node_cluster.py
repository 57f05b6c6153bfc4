"""ClusterMember: the part of a node's registry that keeps the node in the cluster.

It has an identity unique without the user's help (``name@host:admin_port``), locates
the leader's registrar, heartbeats it, and hands what it learns (peers' limiter hubs,
the strict limiter) to the node's actors. See actors/runtime/cluster.py for the leader side.

A member outside the cluster (not joined yet, or its leader went quiet) keeps asking its
admin to register with the leader every ``reregistration_s``, warns at a bounded rate, tells
its engines so their budgets follow ``limits.leader_unavailable`` (actors/core/admission.py),
and answers cluster status from the nodes it learned of (:class:`ClusterGather`).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from typing import Any

from thespian.actors import ActorSystemConventionUpdate

from actors.core.membership import Standing, node_id
from actors.runtime.base import GatewayActor
from actors.runtime.cluster import LEADER_CAPABILITY, ClusterGather, LeaderLocator
from actors.runtime.logs import logger
from actors.runtime.protocol import (ClusterStatus, ClusterStatusRequest, Deploy, Heartbeat, LimiterPeers, Locate, MemberInfo, MemberRefused, Membership, RegistrarConfig, RegistrarIs, StrictLimiterIs)
from actors.settings.schema import ClusterConfig

log = logger("atomr.node")

LOCATE_AFTER_JOIN_S = 0.25
CLUSTER_STATUS_TIMEOUT_S = 4.0
OUTSIDE_BUDGETS = "its budgets follow limits.leader_unavailable until it is back (docs/cluster.md)"


def _admin_hostport(actor: Any) -> tuple[str, int]:
    """The (ip, port) of this actor's admin, as Thespian addresses it (private attributes: best effort)."""
    try:
        ip, port = actor._myRef._adminAddr.addressDetails.connectArgs[0][:2]
        return str(ip), int(port)
    except Exception:  # noqa: BLE001 - identity then rests on the Deploy's fields
        return "", 0


class ClusterMember(ClusterGather, GatewayActor):
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
        self.standing = Standing(leader=False)
        self.registrar = None
        self.strict = None
        self.members: list[MemberInfo] = []   # the last membership: kept while the leader is away
        self.locate_sent = 0.0
        self.leader_in_convention = False
        self.peer_hubs: list[Any] = []
        self.cluster_queries: dict[str, tuple[Any, bool, str]] = {}
        self.told: tuple[Any, ...] | None = None   # what the engines were last told about the cluster
        self.stopping = False
        self.engines: list[tuple[Any, Any, int]] = []
        self.limiter = None

    def _set_identity(self, msg: Deploy) -> None:
        first = not self.node_id
        admin_ip, admin_port = _admin_hostport(self)
        self.node = msg.node
        self.leader = msg.leader
        self.host = msg.host or admin_ip
        self.admin_port = msg.admin_port or admin_port
        self.node_id = node_id(self.node, self.host, self.admin_port)
        self.address = f"{self.host or '?'}:{self.admin_port or '?'}"
        if first:
            cluster = msg.cluster or ClusterConfig()
            self.standing = Standing(self.leader, cluster.failure_timeout_s, float(cluster.reregistration_s),
                                     tick_every_s=cluster.heartbeat_s)

    def membership_state(self) -> str:
        return self.standing.describe()

    def _cluster_tick(self) -> None:
        if self.stopping:
            return
        stall = self.standing.step()
        if stall:
            log.warning("node %s stood still for %.1fs (not scheduled, stopped or blocked): not counted as its "
                        "leader's silence", self.node, stall)
        silent = self.standing.silent_for()
        if silent is not None:
            self._leader_lost(f"no answer from the registrar for {silent:.1f}s")
        if not self.standing.in_cluster:
            if self.standing.retry_due():
                self._rejoin()
            outside = self.standing.warning_due()
            if outside:
                log.warning("node %s (%s) %s; it keeps trying to join, and %s", self.node, self.node_id, outside,
                            OUTSIDE_BUDGETS)
        if self.registrar is None:
            # A member can only place the locator on the leader once its admin has joined
            # the convention (Thespian tells us through ActorSystemConventionUpdate).
            if (self.leader or self.leader_in_convention) and \
                    time.monotonic() - self.locate_sent > 2 * self.cluster.heartbeat_s:
                self._locate()
        else:
            self.send(self.registrar, Heartbeat(self._member_info()))
        self.share_routes()
        self.timers.after("cluster", self.cluster.heartbeat_s)

    def share_routes(self) -> None:
        """Tell the other members what this node serves (the registry's: cross-node routing)."""

    def _rejoin(self) -> None:
        """Make this member's admin register with the convention leader now.

        Thespian retries a registration that found no leader listening (e.g. started before
        it) only at its next re-registration period; changing a capability re-registers at once.
        """
        if not self.leader:
            self.updateCapability("atomr-rejoin", secrets.token_hex(4))

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
        self.standing.lost(why)
        self.registrar = None
        if self.leader:
            # Its registrar is a process of this node: locate it again, but the node leads on, and
            # the strict limiter (this node's too) stays the engines' until a membership names another.
            log.warning("node %s: its own registrar did not answer (%s); locating it again (still the leader)",
                        self.node, why)
            return
        log.warning("node %s: leader unreachable (%s)", self.node, why)
        self.strict = None
        self._tell_engines()

    def receiveMsg_RegistrarIs(self, msg: RegistrarIs, sender: Any) -> None:
        self.registrar = msg.registrar
        if self.leader:
            self.send(self.registrar, RegistrarConfig(self.node, self.cluster.heartbeat_s,
                                                      self.cluster.failure_timeout_s, self.limiter,
                                                      leader_id=self.node_id))
        self.send(self.registrar, Heartbeat(self._member_info()))

    def receiveMsg_MemberRefused(self, msg: MemberRefused, sender: Any) -> None:
        if self.standing.refuse(msg.reason):  # once: it is repeated at every heartbeat while the other node lives
            log.error("node %s: the cluster refused this node: %s", self.node, msg.reason)
            self._tell_engines()

    def receiveMsg_Membership(self, msg: Membership, sender: Any) -> None:
        if not any(m.node_id == self.node_id and m.incarnation == self.incarnation for m in msg.members):
            return  # a broadcast that does not (yet) count this node in
        outside = self.standing.heard(msg.leader_node)
        if self.node_id in msg.news:
            self.standing.dropped(msg.news[self.node_id])
        if outside is not None:
            log.info("node %s (%s): in the cluster led by %s (%d nodes)%s", self.node, self.node_id,
                     msg.leader_node or "?", len(msg.members),
                     f" after {outside:.1f}s outside it" if outside >= self.cluster.failure_timeout_s else "")
        self.members = msg.members
        self.strict = msg.strict_limiter
        self._tell_engines()
        hubs = [m.limiter for m in msg.members if m.node_id != self.node_id and m.limiter is not None]
        if hubs != self.peer_hubs:
            self.peer_hubs = hubs
            self.send(self.limiter, LimiterPeers(hubs))

    # -- what the engines know of the cluster ----------------------------------------------

    def cluster_news(self, dep: Any) -> StrictLimiterIs:
        """For an engine of ``dep``: where strict admission goes, whether this node is in the
        cluster, and in how many shares a budget splits while it is not: every node known
        (none before the first membership) times this node's engines sharing the budget."""
        local = sum(1 for d, _, _ in self.engines if d.limit_key == dep.limit_key)
        return StrictLimiterIs(self.strict, len(self.members) * max(1, local), self.standing.in_cluster)

    def budgeted(self, dep: Any) -> bool:
        return not dep.limits.unlimited or bool(getattr(self, "budgets", ()))

    def _tell_engines(self) -> None:
        told = (self.strict, len(self.members), self.standing.in_cluster)
        if told == self.told:
            return
        self.told = told
        for dep, engine, _ in self.engines:
            if self.budgeted(dep):
                self.send(engine, self.cluster_news(dep))

    def receiveMsg_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate, sender: Any) -> None:
        if self.stopping or not (msg.remoteCapabilities or {}).get(LEADER_CAPABILITY):
            return
        self.leader_in_convention = msg.remoteAdded
        if msg.remoteAdded:
            # The leader (re)joined: register with it now. Thespian reports the join a moment
            # before it can place actors there, hence the short pause.
            self.timers.after("locate", LOCATE_AFTER_JOIN_S)
        elif self.standing.in_cluster and not self.leader:
            self._leader_lost("the leader left the convention")

    # -- cluster status ----------------------------------------------------------------------

    def receiveMsg_ClusterStatusRequest(self, msg: ClusterStatusRequest, sender: Any) -> None:
        """Asked of this node, answered by the leader's registrar, or from the nodes this node
        knows of when the registrar is unknown or does not answer in time (e.g. it just died)."""
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

    def _known_cluster(self) -> tuple[str, list[MemberInfo]]:
        """Without the registrar: this node and every node of the last membership, their ages
        grown by the time since it came (the leader's name is "": it does not answer)."""
        since = self.standing.since_heard() or 0.0
        known = [replace(m, last_seen_s=round(m.last_seen_s + since, 3)) for m in self.members
                 if m.node_id != self.node_id]
        return "", sorted([self._member_info()] + known, key=lambda m: (m.node, m.node_id))

    def _answer_alone(self, waiter: Any, members_only: bool, token: str) -> None:
        if members_only:
            self.send(waiter, ClusterStatus("", self._known_cluster()[1], [], [], token))
        else:
            self.gather_cluster(waiter, token)

    def timer_cluster(self, _: Any) -> None:
        self._cluster_tick()

    def timer_locate(self, _: Any) -> None:
        if self.registrar is None:
            self._locate()

    def timer_cluster_query(self, token: str) -> None:
        query = self.cluster_queries.pop(token, None)
        if query is not None:
            self._answer_alone(*query)
