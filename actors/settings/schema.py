"""The configuration schema: one frozen dataclass per section, with its defaults and checks.

``actors.settings.loader`` builds these from YAML; value types the pure core needs
(``CredentialSource``, ``Price``, ``RateLimits``, ``RetryPolicy``, ``BreakerConfig``) live in
the core and are imported here, never the other way round.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from actors.core.breaker import BreakerConfig
from actors.core.credentials import CredentialSource
from actors.core.pricing import Price
from actors.errors import ConfigError
from actors.core.ratelimit import RateLimits
from actors.core.retry import RetryPolicy

__all__ = [
    "CredentialSource", "Timeouts", "Price", "DeploymentConfig", "NodeConfig", "MockProviderConfig",
    "ClusterConfig", "GatewayConfig", "PROVIDERS", "MOCK_ENDPOINT",
]

PROVIDERS = ("openai", "openai_responses", "azure_openai", "openai_compatible", "anthropic", "gemini",
             "cohere", "bedrock")
Provider = Literal["openai", "openai_responses", "azure_openai", "openai_compatible", "anthropic", "gemini",
                   "cohere", "bedrock"]
MOCK_ENDPOINT = "mock"


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 5.0
    read_s: float = 60.0
    total_s: float = 600.0

    def __post_init__(self) -> None:
        if min(self.connect_s, self.read_s, self.total_s) <= 0:
            raise ValueError("timeouts must be > 0")


@dataclass(frozen=True)
class DeploymentConfig:
    name: str
    model: str
    provider: Provider
    endpoint: str
    upstream_model: str | None = None
    credentials: CredentialSource | None = None
    workers: int = 4
    replicas: int = 1
    queue_capacity: int = 256
    idempotent: bool = True
    coalesce_ms: float = 15.0
    estimate_output_tokens: int = 256
    limits: RateLimits = field(default_factory=RateLimits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    pricing: Price | None = None
    headers: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.model.strip():
            raise ValueError("name and model must not be empty")
        if self.workers < 1 or self.replicas < 1:
            raise ValueError("workers and replicas must be >= 1")
        if self.queue_capacity < 0 or self.estimate_output_tokens < 0 or self.coalesce_ms < 0:
            raise ValueError("queue_capacity, estimate_output_tokens and coalesce_ms must be >= 0")
        if self.endpoint != MOCK_ENDPOINT and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must be an http(s) URL or {MOCK_ENDPOINT!r}, got {self.endpoint!r}")

    @property
    def provider_model(self) -> str:
        return self.upstream_model or self.model

    @property
    def limit_key(self) -> str:
        """Deployments naming the same key share one budget (e.g. one API key)."""
        return self.limits.key or self.name

    def with_endpoint(self, endpoint: str) -> "DeploymentConfig":
        return dataclasses.replace(self, endpoint=endpoint)


@dataclass(frozen=True)
class NodeConfig:
    admin_port: int = 1900
    name: str | None = None
    advertise: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_file: str | None = None
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.admin_port <= 65535:
            raise ValueError("admin_port must be in 1..65535")
        if self.drain_timeout_s < 0:
            raise ValueError("drain_timeout_s must be >= 0")


@dataclass(frozen=True)
class MockProviderConfig:
    host: str = "127.0.0.1"
    port: int = 0
    words_per_second: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be in 0..65535")


@dataclass(frozen=True)
class ClusterConfig:
    """How nodes keep one view: delta sync, heartbeats and failure detection.

    ``reregistration_s`` is Thespian's own convention re-registration period (its
    default, 7m22s, lets a crashed node go unnoticed for about 22 minutes).
    ``secret_file`` names a file of cluster keys (``[KEYID:]SECRET``, one per line, the
    first signs; mode 600) that authenticates every message; relative to the config file.
    ``ATOMR_CLUSTER_SECRET`` or ``ATOMR_CLUSTER_SECRET_FILE``, when set, take precedence
    (see actors/wire.py and docs/security.md). Only the path is held here, never a key.
    """

    sync_interval_ms: float = 50.0
    heartbeat_s: float = 1.0
    failure_timeout_s: float = 5.0
    reregistration_s: int = 3
    secret_file: str | None = None

    def __post_init__(self) -> None:
        if self.sync_interval_ms <= 0 or self.heartbeat_s <= 0 or self.failure_timeout_s <= self.heartbeat_s:
            raise ValueError("need sync_interval_ms > 0, heartbeat_s > 0 and failure_timeout_s > heartbeat_s")
        if self.reregistration_s < 1:
            raise ValueError("reregistration_s must be >= 1")
        if self.secret_file is not None and not self.secret_file.strip():
            raise ValueError("secret_file must not be empty")


@dataclass(frozen=True)
class GatewayConfig:
    deployments: list[DeploymentConfig]
    node: NodeConfig = field(default_factory=NodeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    mock_provider: MockProviderConfig | None = None

    def __post_init__(self) -> None:
        if not self.deployments:
            raise ValueError("at least one deployment is needed")
        names = [d.name for d in self.deployments]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"deployment names must be unique: {', '.join(duplicates)}")
        if self.mock_provider is None and any(d.endpoint == MOCK_ENDPOINT for d in self.deployments):
            raise ValueError(f"endpoint {MOCK_ENDPOINT!r} needs a mock_provider section")

    def deployment(self, name: str) -> DeploymentConfig:
        for d in self.deployments:
            if d.name == name:
                return d
        raise KeyError(name)
