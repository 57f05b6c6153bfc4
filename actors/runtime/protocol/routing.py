"""Routing, status and drain: what clients and operators ask a node."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.core.breaker import BreakerSnapshot


@dataclass
class Route:
    model: str
    token: str = ""   # echoed in Routes, so a client files the answer with its lookup


@dataclass
class ModelsRequest:
    """Which models a call through this node can reach: its own deployments', and other nodes'
    where cross-node routing lets calls go (for ``GET /v1/models``)."""

    token: str = ""


@dataclass
class ModelList:
    models: list[str]
    token: str = ""


@dataclass
class EngineCheck:
    """From a client whose request has been silent: is the engine it sent to still the live one?"""

    engine: Any
    token: str = ""
    via: Any = None         # the relay the request went through, for another node's engine


@dataclass
class EngineLiveness:
    token: str
    engine: Any
    alive: bool
    reason: str = ""        # why not, e.g. "engine d1/0 died; restarting" or "not an engine of this node"


@dataclass
class RouteEntry:
    deployment: str
    model: str
    engine: Any  # ActorAddress
    node: str
    queue_depth: int = 0
    circuit: str = "closed"
    # What the router reads (docs/routing.md): config, and the load the engine last pushed.
    in_flight: int = 0
    weight: float = 1.0
    max_input_tokens: int | None = None
    max_retries: int = 0
    latency_s: float | None = None
    ttft_s: float | None = None
    headroom: float | None = None
    price_in: float | None = None
    price_out: float | None = None
    load_age_s: float | None = None   # how old the pushed state was when the node answered; None: none yet
    retry_at_unix: float | None = None   # an open circuit admits a probe from then on (not skipped past it)
    budget_spent: tuple[str, ...] = ()   # its USD budgets that ran out this period: skipped
    embed_batch: int = 0    # the most texts one embeddings call takes there (0: no embeddings API)
    provider: str = ""
    refusal: Any = None                  # what its engine refuses with now (LoadState.refusal): skipped until ...
    refusal_until_unix: float | None = None   # ... then
    # Another node's engine: the relay of this node that forwards calls to it (None: this node's own).
    via: Any = None
    control_port: int | None = None   # this node's engine's control listener, on loopback (caller_links.py)


@dataclass
class EngineLoad:
    """From an engine to its node's registry when its load changed (at most every ~150 ms)."""

    deployment: str
    replica: int
    state: Any   # core.load.LoadState


@dataclass
class PeerRoutes:
    """From a node's registry to every other member's, once per heartbeat: its engines as its own
    ``Route`` answers would list them (load and refusal state included), for cross-node routing."""

    node_id: str
    entries: list[RouteEntry]


@dataclass
class RelayTargets:
    """From the registry to its relay: the other nodes' engines it may forward calls to."""

    engines: list[Any]
    version: int = 0


@dataclass
class RelayTargetsTaken:
    """From the relay to its registry: it forwards to the engines of that ``RelayTargets`` now. Only
    then does the registry hand those engines out, so a call never reaches the relay before they do."""

    version: int


@dataclass
class Routes:
    model: str
    entries: list[RouteEntry]
    token: str = ""
    restarting: list[str] = field(default_factory=list)  # deployments serving the model whose engine is coming back
    policy: Any = None   # core.routing.RoutingPolicy of the node (strategy, fallbacks)


@dataclass
class StatusRequest:
    token: str = ""   # echoed in NodeStatus


@dataclass
class EngineStatus:
    deployment: str
    replica: int
    node: str
    queued: int
    in_flight: int
    busy_workers: int
    workers: int
    accepted: int
    completed: int
    failed: int
    depth_by_priority: dict[str, int]
    circuit: str
    draining: bool = False
    budget_spent: list[str] = field(default_factory=list)  # deployment/provider spend budgets run out: route elsewhere
    model: str = ""
    provider: str = ""
    endpoint: str = ""      # the breaker's endpoint label (no password)
    stats: dict[str, Any] = field(default_factory=dict)   # actors.core.stats.DeploymentStats.snapshot(): plain data
    # The rate-limit replica's health (WindowedLimiter.view_health): staleness_s, late_deltas, worst_late_s
    budget_view: dict[str, float] = field(default_factory=dict)
    # The control links to its worker processes (runtime/control_link.py): port, links, messages sent and
    # received on them, connections refused; empty where there are none (no watches, no key).
    control: dict[str, int] = field(default_factory=dict)


@dataclass
class NodeStatus:
    node: str
    started_unix: float
    engines: list[EngineStatus]
    breakers: list[BreakerSnapshot]
    limits: list[dict[str, Any]]
    peers: list[dict[str, Any]] = field(default_factory=list)   # the other members this node knows: {"node", "node_id"}
    token: str = ""
    node_id: str = ""       # unique in the cluster: name@address:admin_port
    address: str = ""       # host:admin_port this node is reached at
    # One line per engine that died: {"deployment", "replica", "restarts", "state", "last_exit_unix", "next_restart_s"}
    supervision: list[dict[str, Any]] = field(default_factory=list)
    membership: str = ""    # "member", "leader", "refused: <why>", "not in cluster: <why>"
    in_cluster: bool = True  # False while a member is outside the cluster (joining, leader lost, refused)
    membership_note: str = ""  # what last happened to its standing, and how long ago ("" when nothing did)
    # Spend (docs/spend.md): {"budgets": [{"budget", "spent_usd", "usd", "mode", ...}], "ledger": {...} | None}
    spend: dict[str, Any] = field(default_factory=dict)
    # Requests the router refused in this node's clients (model -> error class -> n), as they reported them.
    refusals: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class RouterRefusals:
    """From a client process to its node: requests its router refused since the last report (by model
    and error class). Router refusals happen in the callers' processes; the node keeps the counts."""

    counts: dict[str, dict[str, int]]


@dataclass
class Drain:
    """Stop accepting new requests; finish what is in flight."""

    timeout_s: float = 30.0


@dataclass
class Drained:
    node: str
    in_flight: int


@dataclass
class NotReady:
    """The answer of an actor asked something before its init message arrived."""

    actor: str
    message: str
    request_id: str = ""
    token: str = ""
