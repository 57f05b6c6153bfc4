"""Budgets: GCounter deltas between engines and hubs, and the strict limiter on the leader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.core.ratelimit import RateLimits



@dataclass
class LimiterRegister:
    engine: Any  # None: the sender, for a lease renewed by re-registering (the HTTP front door's key budgets)
    key: str
    limits: RateLimits


@dataclass
class LimiterDelta:
    """Absolute per-replica counts for one budget key: {window: {counter: {replica: n}}}."""

    key: str
    delta: dict[int, dict[str, dict[str, int]]]
    origin: str = ""
    limits: RateLimits | None = None  # so a hub that never saw the key can still keep it
    sent_unix: float | None = None  # when the counts left the engine that admitted them


@dataclass
class LimiterQuery:
    pass


@dataclass
class LimiterUsage:
    node: str
    usage: list[dict[str, Any]]


@dataclass
class LimiterPeers:
    """The other nodes' limiter hubs, replacing the previous list."""

    peers: list[Any]


@dataclass
class LimiterStateRequest:
    key: str


@dataclass
class LimiterHubRequest:
    """Asked of a node's registry by its HTTP front door, whose key budgets go through the node's hub."""

    token: str = ""


@dataclass
class LimiterHubIs:
    """To a front door: where its key budgets sync, and whether this node is in the cluster (and
    in how many shares a key budget splits while it is not: ``leader_unavailable``)."""

    hub: Any  # None until the node is deployed
    node: str
    sync_interval_s: float
    token: str = ""
    in_cluster: bool = True
    shares: int = 1


@dataclass
class StrictLimiterIs:
    """To an engine with a budget: where strict admission goes (None while the leader cannot be
    reached), whether this node is in the cluster, and in how many shares a budget splits
    while it is not (``limits.leader_unavailable: local_share``; 0: never in the cluster)."""

    address: Any
    shares: int = 1
    in_cluster: bool = True


@dataclass
class LeaseRefresh:
    """An engine's lease ask of a strict budget to the leader (core/leases.py ``LeaseAsk``, flat)."""

    key: str
    limits: RateLimits
    client: str
    seq: int
    window: int
    holding: int
    held: tuple[int | None, int | None]
    spent: tuple[int, int]
    want: tuple[int, int]
    need: tuple[int, int] = (0, 0)


@dataclass
class LeaseOffer:
    """The leader's answer (core/leases.py ``LeaseGrant``, flat)."""

    key: str
    client: str
    seq: int
    window: int
    lease: tuple[int | None, int | None]
    ttl_s: float
    left: tuple[int | None, int | None]


@dataclass
class StrictInit:
    node: str
    hub: Any
