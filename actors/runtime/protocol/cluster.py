"""The cluster: locating the leader's registrar, heartbeats, membership and cluster status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.runtime.protocol.routing import NodeStatus


@dataclass
class Locate:
    """To a LeaderLocator (placed on the leader by capability): who is the registrar?"""


@dataclass
class Introduce:
    reply_to: Any


@dataclass
class RegistrarIs:
    registrar: Any
    strict_limiter: Any
    leader_node: str
    incarnation: str


@dataclass
class MemberInfo:
    node: str
    registry: Any
    limiter: Any
    started_unix: float
    incarnation: str
    deployments: list[str] = field(default_factory=list)
    last_seen_s: float = 0.0
    host: str = ""
    node_id: str = ""       # name@host:admin_port; the key of the membership table
    admin_port: int = 0


@dataclass
class Heartbeat:
    member: MemberInfo


@dataclass
class Membership:
    leader_node: str
    incarnation: str
    members: list[MemberInfo]
    strict_limiter: Any
    # node id -> what just happened to it, for its status: "back 7.1s after it was dropped ..."
    news: dict[str, str] = field(default_factory=dict)


@dataclass
class ClusterStatusRequest:
    reply_to: Any = None
    members_only: bool = False  # membership at once, without asking every node for its status
    token: str = ""


@dataclass
class ClusterStatus:
    leader: str
    members: list[MemberInfo]
    nodes: list[NodeStatus]
    unreachable: list[str]
    token: str = ""


@dataclass
class RegistrarConfig:
    """From the leader's own registry: who leads, the timers, and the leader's limiter hub."""

    leader_node: str
    heartbeat_s: float
    failure_timeout_s: float
    hub: Any
    leader_id: str = ""     # the leader's own node id: never dropped from its own cluster


@dataclass
class MemberRefused:
    """From the registrar: another live node already holds this node's identity."""

    node_id: str
    reason: str
