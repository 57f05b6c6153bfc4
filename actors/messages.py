"""Every message that crosses an actor boundary: small, picklable dataclasses.

Anything that belongs to a request carries its ``request_id``. Messages that may leave
their node never hold a secret; the only message that carries one is
:class:`SessionSnapshot`, sent from a node's session actor to that node's workers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .errors import InferenceError

# --- value types ---------------------------------------------------------------------

USAGE_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")


@dataclass(frozen=True)
class Usage:
    """Token counts of one call. ``reported`` is False when the provider said nothing."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    reported: bool = True

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_fields(cls, fields: dict[str, int]) -> "Usage":
        if not fields:
            return cls(reported=False)
        return cls(**{k: int(fields.get(k) or 0) for k in USAGE_FIELDS})

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in USAGE_FIELDS}


@dataclass(frozen=True)
class ToolCall:
    """A complete tool call, assembled from its streamed deltas."""

    index: int
    id: str
    name: str
    arguments: str


# --- the public contract -------------------------------------------------------------

def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


@dataclass
class InferenceRequest:
    """One call. ``model`` names a model (any deployment serving it) or a deployment.

    ``params`` are generation parameters in OpenAI vocabulary (max_tokens, temperature,
    top_p, stop, tools, tool_choice, ...); runners translate them per provider.
    ``deadline_unix`` is absolute wall-clock time, so it survives crossing hosts.
    """

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    priority: int | str = "normal"
    deadline_unix: float | None = None
    idempotent: bool = True
    request_id: str = field(default_factory=new_request_id)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class TokenChunk:
    """Streamed output since the previous chunk of the same request (coalesced)."""

    request_id: str
    seq: int
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass
class Completed:
    """Terminal: the call succeeded."""

    request_id: str
    text: str
    finish_reason: str
    usage: Usage
    raw_finish_reason: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    cost_usd: float | None = None
    attempts: int = 1
    latency_s: float = 0.0
    ttft_s: float | None = None
    deployment: str = ""
    provider_model: str = ""
    chunks: int = 0


@dataclass
class Failed:
    """Terminal: the call failed. ``chunks`` TokenChunks were streamed before it did."""

    request_id: str
    error: InferenceError
    attempts: int = 0
    deployment: str = ""
    chunks: int | None = 0


@dataclass
class Cancel:
    request_id: str


TERMINAL = (Completed, Failed)


# --- routing and status --------------------------------------------------------------

@dataclass
class Route:
    model: str


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


@dataclass
class StatusRequest:
    pass


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


@dataclass
class LimiterInit:
    node: str
    sync_interval_s: float = 0.05


# --- request validation --------------------------------------------------------------

def validate_request(request: Any) -> InferenceError | None:
    """Why ``request`` cannot be served as given, or None. Checked before it is queued."""
    from .errors import BadRequest
    from .priority_queue import Priority

    if not isinstance(request, InferenceRequest):
        return BadRequest(f"expected an InferenceRequest, got {type(request).__name__}")
    if not isinstance(request.request_id, str) or not request.request_id:
        return BadRequest("request_id must be a non-empty string")
    if not isinstance(request.messages, list) or not request.messages:
        return BadRequest("messages must be a non-empty list")
    for i, message in enumerate(request.messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return BadRequest(f"messages[{i}] must be a mapping with a string 'role'")
        if "content" not in message and not message.get("tool_calls"):
            return BadRequest(f"messages[{i}] has no content")
    if not isinstance(request.params, dict):
        return BadRequest("params must be a mapping")
    max_tokens = request.params.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        return BadRequest("params.max_tokens must be a positive integer")
    if not isinstance(request.stream, bool) or not isinstance(request.idempotent, bool):
        return BadRequest("stream and idempotent must be booleans")
    try:
        Priority.parse(request.priority)
    except (ValueError, TypeError) as exc:
        return BadRequest(str(exc))
    if request.deadline_unix is not None and (not isinstance(request.deadline_unix, (int, float))
                                              or isinstance(request.deadline_unix, bool)):
        return BadRequest("deadline_unix must be a number (unix seconds)")
    return None


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
