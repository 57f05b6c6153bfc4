"""The runtime's internal messages: small, picklable dataclasses between the actors of a node
and between nodes. Anything that belongs to a request carries its ``request_id``.

Messages that may leave their node never hold a secret; the only one that carries one is
:class:`SessionSnapshot`, sent from a node's session actor to that node's workers. Their
module path is part of the wire format (the allow-list is keyed by module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.errors import InferenceError
from actors.types import InferenceRequest, ToolCall, Usage

# --- routing and status --------------------------------------------------------------

@dataclass
class Route:
    model: str
    token: str = ""   # echoed in Routes, so a client files the answer with its lookup


@dataclass
class EngineCheck:
    """From a client whose request has been silent: is the engine it sent to still the live one?"""

    engine: Any
    token: str = ""


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


@dataclass
class Routes:
    model: str
    entries: list[RouteEntry]
    token: str = ""
    restarting: list[str] = field(default_factory=list)  # deployments serving the model whose engine is coming back


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


@dataclass
class NodeStatus:
    node: str
    started_unix: float
    engines: list[EngineStatus]
    breakers: list[Any]  # BreakerSnapshot
    limits: list[dict[str, Any]]
    peers: list[dict[str, Any]] = field(default_factory=list)
    token: str = ""
    node_id: str = ""       # unique in the cluster: name@address:admin_port
    address: str = ""       # host:admin_port this node is reached at
    # One line per engine that died: {"deployment", "replica", "restarts", "state", "last_exit_unix", "next_restart_s"}
    supervision: list[dict[str, Any]] = field(default_factory=list)
    membership: str = ""    # "member", "leader", "refused: <why>", "alone"


@dataclass
class Drain:
    """Stop accepting new requests; finish what is in flight."""

    timeout_s: float = 30.0


@dataclass
class Drained:
    node: str
    in_flight: int


# --- node bring-up -------------------------------------------------------------------

@dataclass
class Deploy:
    node: str
    deployments: list[Any]  # DeploymentConfig
    cluster: Any = None     # ClusterConfig
    leader: bool = True
    host: str = ""          # the address this node advertises to its peers
    # The launcher's per-start capability (actors.security): only the node's own launcher,
    # which read the config, may deploy; the wire layer refuses a Deploy without it.
    capability: str = ""
    launcher_pid: int = 0   # the node exits when this process is gone
    admin_port: int = 0     # part of the node's identity; 0: read from the admin's address


@dataclass
class Deployed:
    node: str
    deployments: list[str]
    engines: int


# --- engine <-> worker ---------------------------------------------------------------

@dataclass
class WorkerInit:
    deployment: Any  # DeploymentConfig
    engine: Any
    session: Any
    worker_index: int


@dataclass
class Dispatch:
    request: InferenceRequest
    reply_to: Any
    attempt: int
    min_session_version: int = 0


@dataclass
class FirstToken:
    request_id: str
    attempt: int
    at_unix: float


@dataclass
class WorkerResult:
    request_id: str
    attempt: int
    worker_index: int
    error: InferenceError | None = None
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    raw_finish_reason: str | None = None
    usage: Usage = field(default_factory=lambda: Usage(reported=False))
    chunks: int = 0
    first_token_unix: float | None = None
    session_version: int = 0
    # False when the attempt never reached the provider (e.g. connection refused).
    sent: bool = True


@dataclass
class WorkerReady:
    worker_index: int
    pid: int = 0            # so the engine can replace a worker that stopped answering


# --- session -------------------------------------------------------------------------

@dataclass
class SessionSubscribe:
    subscriber: Any
    wants_secret: bool = True


@dataclass
class SessionSnapshot:
    """Node-local only: carries the credential to this node's workers."""

    version: int
    credential: Any  # credentials.Secret | None
    expires_unix: float | None = None


@dataclass
class SessionRefresh:
    """Ask for a fresh credential (e.g. after a 401 with version ``seen_version``)."""

    seen_version: int
    reason: str = ""


@dataclass
class SessionVersion:
    version: int
    ok: bool = True
    error: InferenceError | None = None


# --- breaker -------------------------------------------------------------------------

@dataclass
class BreakerSubscribe:
    subscriber: Any


@dataclass
class BreakerState:
    snapshot: Any  # breaker.BreakerSnapshot


@dataclass
class BreakerOutcome:
    generation: int
    error: InferenceError | None


@dataclass
class BreakerOutcomes:
    outcomes: list[BreakerOutcome]


@dataclass
class BreakerCheck:
    """Admit one call now (a half-open probe, or CircuitBreakerHandle.check())."""

    token: str = ""


@dataclass
class BreakerAdmitted:
    token: str
    generation: int


@dataclass
class BreakerRefused:
    token: str
    error: InferenceError


@dataclass
class BreakerQuery:
    pass


@dataclass
class BreakerForce:
    """Operator control: open for ``open_s`` seconds, or close and reset when None."""

    open_s: float | None = None


# --- rate limiter --------------------------------------------------------------------

@dataclass
class LimiterRegister:
    engine: Any
    key: str
    limits: Any  # ratelimit.RateLimits


@dataclass
class LimiterDelta:
    """Absolute per-replica counts for one budget key: {window: {counter: {replica: n}}}."""

    key: str
    delta: dict[int, dict[str, dict[str, int]]]
    origin: str = ""
    limits: Any = None  # RateLimits, so a hub that never saw the key can still keep it
    sent_unix: float | None = None  # when the counts left the engine that admitted them


@dataclass
class LimiterQuery:
    pass


@dataclass
class LimiterUsage:
    node: str
    usage: list[dict[str, Any]]


# --- actor bring-up ------------------------------------------------------------------

@dataclass
class EngineInit:
    deployment: Any  # DeploymentConfig
    replica: int
    node: str
    registry: Any
    session: Any
    breaker: Any
    limiter: Any
    sync_interval_s: float = 0.05
    failure_timeout_s: float = 5.0


@dataclass
class EngineReady:
    deployment: str
    replica: int


@dataclass
class BreakerInit:
    provider: str
    endpoint: str
    config: Any  # BreakerConfig


@dataclass
class SessionInit:
    deployment: str
    provider: str
    source: Any  # CredentialSource | None
    capability: str = ""    # copied from the Deploy: a credential source only ever comes from local config


@dataclass
class LimiterInit:
    node: str
    sync_interval_s: float = 0.05


# --- cluster -------------------------------------------------------------------------

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


@dataclass
class LimiterPeers:
    """The other nodes' limiter hubs, replacing the previous list."""

    peers: list[Any]


@dataclass
class LimiterStateRequest:
    key: str


@dataclass
class StrictLimiterIs:
    """Where strict admission goes; None while the leader cannot be reached."""

    address: Any
    nodes: int = 1


@dataclass
class StrictAcquire:
    key: str
    limits: Any  # RateLimits
    reservation_id: str
    tokens: int


@dataclass
class StrictGrant:
    reservation_id: str
    window: int
    tokens: int


@dataclass
class StrictDenied:
    reservation_id: str
    error: InferenceError


@dataclass
class StrictSettle:
    key: str
    reservation_id: str
    actual_tokens: int | None
    sent: bool


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


@dataclass
class StrictInit:
    node: str
    hub: Any


@dataclass
class MemberRefused:
    """From the registrar: another live node already holds this node's identity."""

    node_id: str
    reason: str


@dataclass
class NotReady:
    """The answer of an actor asked something before its init message arrived."""

    actor: str
    message: str
    request_id: str = ""
    token: str = ""

