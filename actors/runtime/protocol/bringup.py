"""Bringing a node's actors up from its own configuration (node-only: see actors/security/permissions.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.core.breaker import BreakerConfig
    from actors.core.budget import Budget
    from actors.core.credentials import CredentialSource
    from actors.core.routing import RoutingPolicy
    from actors.runtime.protocol.ledger import LedgerInit
    from actors.settings.schema import ClusterConfig, DeploymentConfig


@dataclass
class Deploy:
    node: str
    deployments: list[DeploymentConfig]
    cluster: ClusterConfig | None = None
    leader: bool = True
    host: str = ""          # the address this node advertises to its peers
    # The launcher's per-start capability (actors.security): only the node's own launcher,
    # which read the config, may deploy; the wire layer refuses a Deploy without it.
    capability: str = field(default="", repr=False)   # never in a log line, whoever logs the message
    launcher_pid: int = 0   # the node exits when this process is gone
    admin_port: int = 0     # part of the node's identity; 0: read from the admin's address
    budgets: list[Budget] = field(default_factory=list)
    ledger: LedgerInit | None = None   # when node.ledger is set
    routing: RoutingPolicy | None = None   # strategy, fallbacks: given to clients with routes


@dataclass
class Deployed:
    node: str
    deployments: list[str]
    engines: int


@dataclass
class EngineInit:
    deployment: DeploymentConfig
    replica: int
    node: str
    registry: Any
    session: Any
    breaker: Any
    limiter: Any
    sync_interval_s: float = 0.05
    failure_timeout_s: float = 5.0
    budgets: list[Budget] = field(default_factory=list)
    budget_slot: str = ""   # stable per node, deployment and replica (docs/spend.md)
    budget_seed: dict[str, int] = field(default_factory=dict)  # counter key -> nano-USD from the ledger
    ledger: Any = None      # the node's LedgerActor, when it has one


@dataclass
class EngineReady:
    deployment: str
    replica: int
    control_port: int | None = None   # its control listener (loopback): callers on this host link to it


@dataclass
class BreakerInit:
    provider: str
    endpoint: str
    config: BreakerConfig


@dataclass
class SessionInit:
    deployment: str
    provider: str
    source: CredentialSource | None
    capability: str = field(default="", repr=False)   # copied from the Deploy: a credential source only ever comes from local config


@dataclass
class LimiterInit:
    node: str
    sync_interval_s: float = 0.05


@dataclass
class WorkerInit:
    deployment: DeploymentConfig
    engine: Any
    session: Any
    slots: list[int]  # the slots (engine core worker indices) this worker process holds
    # The engine's control listener (a loopback port; runtime/control_link.py), or None: Thespian only.
    control_port: int | None = None
