"""What the engine core is told (events) and what it asks its actor to do (effects).

Events are facts the actor saw: a message arrived, a wakeup fired. Effects are plain
instructions with no addresses in them except the opaque ``reply_to`` values the core was
given: the actor holds every address (workers by index) and turns each effect into one
send, one spawn or one signal. The shape follows tenacity's ``DoAttempt``/``DoSleep``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Protocol

from actors.core.leases import LeaseAsk, LeaseGrant
from actors.core.ratelimit import CounterDelta, RateLimits
from actors.errors import InferenceError
from actors.types import InferenceRequest, ToolCall, Usage

# --- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class Accept:
    request: Any            # validated by the core: anything may arrive
    reply_to: Any
    known_good: bool = False  # the engine's own health probe (never a caller's: its failures are the deployment's)


@dataclass(frozen=True)
class WorkerUp:
    index: int
    pid: int = 0


class AttemptReport(Protocol):
    """What a worker reports about one attempt (``protocol.WorkerResult`` has this shape)."""

    request_id: str
    attempt: int
    worker_index: int
    error: InferenceError | None
    text: str
    tool_calls: list[ToolCall]
    finish_reason: str | None
    raw_finish_reason: str | None
    usage: Usage
    chunks: int
    first_token_unix: float | None
    session_version: int
    sent: bool


@dataclass(frozen=True)
class WorkerReported:
    result: AttemptReport


@dataclass(frozen=True)
class TokenStarted:
    request_id: str
    attempt: int
    at_unix: float


@dataclass(frozen=True)
class WorkerGone:
    """The worker at ``index`` exited (ChildActorExited for its current address)."""

    index: int


@dataclass(frozen=True)
class WorkerFailedOn:
    """The worker at ``index`` raised twice on a Dispatch (Thespian's PoisonMessage)."""

    index: int
    request_id: str
    attempt: int


@dataclass(frozen=True)
class BreakerChanged:
    snapshot: Any  # breaker.BreakerSnapshot


@dataclass(frozen=True)
class ProbeAdmitted:
    token: str
    generation: int


@dataclass(frozen=True)
class ProbeRefused:
    token: str


@dataclass(frozen=True)
class StrictLeader:
    """Where the cluster is: see protocol.StrictLimiterIs."""

    available: bool
    shares: int = 1
    in_cluster: bool = True


@dataclass(frozen=True)
class LeaseOffered:
    """The leader's answer to a lease ask of one of this engine's strict budgets (core/leases.py):
    its rate limits' (the deployment's limit key) or a strict spend budget's (its counter key)."""

    key: str
    grant: LeaseGrant


@dataclass(frozen=True)
class PeerCounts:
    key: str
    delta: Mapping[int, Mapping[str, Mapping[str, int]]]
    origin: str = ""
    sent_unix: float | None = None


@dataclass(frozen=True)
class SessionChanged:
    version: int
    ok: bool = True
    error: InferenceError | None = None


@dataclass(frozen=True)
class CancelRequested:
    request_id: str


@dataclass(frozen=True)
class DrainRequested:
    requester: Any


@dataclass(frozen=True)
class Tick:
    """A wakeup fired: do whatever is due."""


@dataclass(frozen=True)
class Stop:
    """The engine is exiting: every request still open ends now."""


# --- effects ------------------------------------------------------------------------


@dataclass(frozen=True)
class StartWorker:
    index: int


@dataclass(frozen=True)
class KillWorker:
    """Replace a worker that stopped answering: SIGKILL by pid (same host), then StartWorker."""

    index: int
    pid: int


@dataclass(frozen=True)
class DispatchTo:
    index: int
    request: InferenceRequest
    reply_to: Any
    attempt: int
    min_session_version: int = 0


@dataclass(frozen=True)
class AbandonOnWorker:
    index: int
    request_id: str


@dataclass(frozen=True)
class Reply:
    to: Any
    message: Any  # Completed | Failed


@dataclass(frozen=True)
class ReportOutcomes:
    outcomes: list[tuple[int, InferenceError | None]] = field(default_factory=list)


@dataclass(frozen=True)
class AskProbe:
    token: str


@dataclass(frozen=True)
class AskLease:
    """Ask the leader for this engine's lease of strict budget ``key`` (what it spent, holds and wants)."""

    key: str
    limits: RateLimits
    ask: LeaseAsk


@dataclass(frozen=True)
class PublishCounts:
    delta: CounterDelta
    sent_unix: float


@dataclass(frozen=True)
class RefreshSession:
    seen_version: int
    reason: str


@dataclass(frozen=True)
class AnnounceReady:
    pass


@dataclass(frozen=True)
class ReportDrained:
    to: Any
    in_flight: int


@dataclass(frozen=True)
class WakeAt:
    """Deliver a Tick at ``at`` (the core's monotonic clock) or earlier."""

    at: float
