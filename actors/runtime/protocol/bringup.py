"""Bringing a node's actors up from its own configuration (node-only: see actors/security/permissions.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Deploy:
    node: str
    deployments: list[Any]  # DeploymentConfig
    cluster: Any = None     # ClusterConfig
    leader: bool = True
    host: str = ""          # the address this node advertises to its peers
    # The launcher's per-start capability (actors.security): only the node's own launcher,
    # which read the config, may deploy; the wire layer refuses a Deploy without it.
    capability: str = field(default="", repr=False)   # never in a log line, whoever logs the message
    launcher_pid: int = 0   # the node exits when this process is gone
    admin_port: int = 0     # part of the node's identity; 0: read from the admin's address
    budgets: list[Any] = field(default_factory=list)  # core.budget.Budget
    ledger: Any = None      # LedgerInit, when node.ledger is set
    routing: Any = None     # core.routing.RoutingPolicy (strategy, fallbacks), given to clients with routes


@dataclass
class Deployed:
    node: str
    deployments: list[str]
    engines: int


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
    budgets: list[Any] = field(default_factory=list)  # core.budget.Budget
    budget_slot: str = ""   # stable per node, deployment and replica (docs/spend.md)
    budget_seed: dict[str, int] = field(default_factory=dict)  # counter key -> nano-USD from the ledger
    ledger: Any = None      # the node's LedgerActor, when it has one


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
    capability: str = field(default="", repr=False)   # copied from the Deploy: a credential source only ever comes from local config


@dataclass
class LimiterInit:
    node: str
    sync_interval_s: float = 0.05


@dataclass
class WorkerInit:
    deployment: Any  # DeploymentConfig
    engine: Any
    session: Any
    slots: list[int]  # the slots (engine core worker indices) this worker process holds
