"""The configuration schema: one frozen dataclass per section, with its defaults and checks.

``actors.settings.loader`` builds these from YAML; value types the pure core needs
(``CredentialSource``, ``Price``, ``RateLimits``, ``RetryPolicy``, ``BreakerConfig``) live in
the core and are imported here, never the other way round.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from actors.core.breaker import BreakerConfig
from actors.core.budget import BudgetSpec
from actors.core.credentials import CredentialSource
from actors.core.pricing import Price
from actors.core.ratelimit import RateLimits
from actors.core.retry import RetryPolicy
from actors.core.routing import HealthCheck, RoutingPolicy, check_models

__all__ = [
    "CredentialSource", "Timeouts", "Price", "DeploymentConfig", "NodeConfig", "MockProviderConfig",
    "ClusterConfig", "GatewayConfig", "MOCK_ENDPOINT",
    "ApiKeySource", "HttpKey", "KeyLimits", "KEY_BUDGET_PREFIX", "HttpConfig", "parse_listen",
]

MOCK_ENDPOINT = "mock"

# Checks raise ValueError("<field>: <problem>, got <value>"); the loader files the message
# under that field's full path (``deployments[0].timeouts.read_s: must be > 0, got -1``).


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    return f"{value:g}" if _number(value) else repr(value)


def _positive(name: str, value: Any) -> None:
    if not _number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be > 0, got {_shown(value)}")


def _at_least(name: str, value: Any, minimum: float) -> None:
    if not _number(value) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name}: must be >= {minimum:g}, got {_shown(value)}")


def endpoint_label(endpoint: str) -> str:
    """``endpoint`` as it may be shown (status, logs, breaker names, errors): scheme, host, port
    and path only. A user:password part and the query (which may carry a key) are dropped."""
    if not isinstance(endpoint, str):
        return "<endpoint>"
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable endpoint>"
    if not parts.scheme or not host:
        return endpoint if "@" not in endpoint and "?" not in endpoint else "<endpoint>"
    if ":" in host:
        host = f"[{host}]"  # IPv6
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}{parts.path}"


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 5.0
    read_s: float = 60.0
    total_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("connect_s", "read_s", "total_s"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class ResponseLimits:
    """Bounds on what one response may make a worker hold. An event-stream line (or one
    event's data) longer than ``max_line_bytes``, or a body (streamed or not) longer than
    ``max_body_bytes``, ends the call with ``ResponseTooLarge``. The line limit leaves room for
    the Responses API's ``response.completed`` event, which repeats the whole output."""

    max_line_bytes: int = 4 * 1024 * 1024
    max_body_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_line_bytes", "max_body_bytes"):
            _at_least(name, getattr(self, name), 1024)


@dataclass(frozen=True)
class DeploymentConfig:
    name: str
    model: str
    provider: str                          # a runner's name: actors/providers/__init__.py, checked by the loader
    endpoint: str
    upstream_model: str | None = None
    credentials: CredentialSource | None = None
    workers: int = 4
    # Worker processes the slots run in (threads); None: one per core, more past 32 slots a process.
    worker_processes: int | None = None
    replicas: int = 1
    queue_capacity: int = 256
    idempotent: bool = True
    coalesce_ms: float = 15.0
    estimate_output_tokens: int = 256
    limits: RateLimits = field(default_factory=RateLimits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    response_limits: ResponseLimits = field(default_factory=ResponseLimits)
    pricing: Price | None = None
    headers: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    # Routing (docs/routing.md): share under `weighted`, the pre-call context check, active probes.
    weight: float = 1.0
    max_input_tokens: int | None = None    # overrides actors/data/context_windows.yaml
    health_check: HealthCheck | None = None

    def __post_init__(self) -> None:
        _at_least("weight", self.weight, 0)
        if self.max_input_tokens is not None:
            _at_least("max_input_tokens", self.max_input_tokens, 1)
        for name in ("name", "model"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name}: must not be empty, got {getattr(self, name)!r}")
        for name in ("workers", "replicas"):
            _at_least(name, getattr(self, name), 1)
        if self.worker_processes is not None:
            _at_least("worker_processes", self.worker_processes, 1)
        for name in ("queue_capacity", "estimate_output_tokens", "coalesce_ms"):
            _at_least(name, getattr(self, name), 0)
        if self.endpoint != MOCK_ENDPOINT and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint: must be an http(s) URL or {MOCK_ENDPOINT!r}, "
                             f"got {endpoint_label(self.endpoint)!r}")

    @property
    def endpoint_label(self) -> str:
        """The endpoint without credentials or query: the only form that may be shown."""
        return endpoint_label(self.endpoint)

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
    ledger: str | None = None              # SQLite file of spend records (docs/spend.md); relative to the config
    ledger_retention_days: float = 90.0    # records older than this are deleted (>= the longest budget period)
    log_format: Literal["text", "json"] = "text"   # json: one JSON object per line (docs/observability.md)

    def __post_init__(self) -> None:
        if not 1 <= self.admin_port <= 65535:
            raise ValueError(f"admin_port: must be in 1..65535, got {self.admin_port!r}")
        _at_least("drain_timeout_s", self.drain_timeout_s, 0)
        if self.ledger is not None and not self.ledger.strip():
            raise ValueError(f"ledger: must be a file path, got {self.ledger!r}")
        _at_least("ledger_retention_days", self.ledger_retention_days, 1)


@dataclass(frozen=True)
class MockProviderConfig:
    host: str = "127.0.0.1"
    port: int = 0
    words_per_second: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be in 0..65535, got {self.port!r}")


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
        _positive("sync_interval_ms", self.sync_interval_ms)
        _positive("heartbeat_s", self.heartbeat_s)
        _positive("failure_timeout_s", self.failure_timeout_s)
        if self.failure_timeout_s <= self.heartbeat_s:
            raise ValueError(f"failure_timeout_s: must be > heartbeat_s ({self.heartbeat_s:g}), "
                             f"got {self.failure_timeout_s!r}")
        _at_least("reregistration_s", self.reregistration_s, 1)
        if self.secret_file is not None and not self.secret_file.strip():
            raise ValueError(f"secret_file: must not be empty, got {self.secret_file!r}")


_HEX64 = frozenset("0123456789abcdef")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:4000`` for IPv6) -> (host, port); ValueError names what is wrong."""
    host, sep, port = listen.rpartition(":") if isinstance(listen, str) else ("", "", "")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen: must be HOST:PORT (e.g. 127.0.0.1:4000), got {listen!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ApiKeySource:
    """Where an HTTP caller's key comes from: exactly one of env, file, value, or its sha256 hex digest
    (what ``launch.py key new`` prints, so the config never holds the key itself)."""

    env: str | None = None
    file: str | None = None
    value: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("env", "file", "value", "sha256") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file, value, sha256"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.sha256 is not None and (len(self.sha256) != 64 or not set(self.sha256.lower()) <= _HEX64):
            raise ValueError("sha256: must be 64 hex digits (python launch.py key new prints one), "
                             "got a value that is not (not shown)")
        if self.env is not None:
            CredentialSource(env=self.env)  # the same check of a variable's name (never repeats a key)
        if self.value is not None and not self.value.strip():
            raise ValueError("value: must not be empty, got ''")

    def __repr__(self) -> str:
        shown = {k: getattr(self, k) for k in ("env", "file") if getattr(self, k) is not None}
        if self.value is not None:
            shown["value"] = "***"
        if self.sha256 is not None:
            shown["sha256"] = self.sha256[:8] + "…"
        return "ApiKeySource(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


# Key budgets share the limiter hubs with deployment budgets: their names must not meet.
KEY_BUDGET_PREFIX = "key:"


@dataclass(frozen=True)
class KeyLimits:
    """One HTTP key's own budget, cluster-wide (approximate, like a deployment's; docs/http.md)."""

    rpm: int | None = None
    tpm: int | None = None
    burst: float | None = None
    window_s: float = 60.0
    leader_unavailable: str = "local_share"   # outside the cluster: this node's share, or refuse (docs/http.md)

    def __post_init__(self) -> None:
        if self.rpm is None and self.tpm is None:
            raise ValueError("expected rpm, tpm or both, got neither")
        if self.leader_unavailable not in ("local_share", "fail"):
            raise ValueError(f"leader_unavailable: expected local_share or fail, got {_shown(self.leader_unavailable)}")
        for name in ("rpm", "tpm"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        if self.burst is not None and not (_number(self.burst) and 0 < self.burst <= 1):
            raise ValueError(f"burst: must be in (0, 1], got {_shown(self.burst)}")
        _positive("window_s", self.window_s)

    def rate_limits(self, key_name: str) -> RateLimits:
        # (__post_init__ allowed these two only)
        mode: Literal["local_share", "fail"] = "fail" if self.leader_unavailable == "fail" else "local_share"
        return RateLimits(rpm=self.rpm, tpm=self.tpm, burst=self.burst, window_s=self.window_s,
                          key=KEY_BUDGET_PREFIX + key_name, leader_unavailable=mode)


@dataclass(frozen=True)
class HttpKey:
    """One caller of the HTTP front door; ``models`` (when given) is all it may use."""

    name: str
    key: ApiKeySource
    models: list[str] | None = None
    team: str | None = None     # its calls count against the team's spend budgets too
    admin: bool = False         # may read /metrics, /v1/status and /ui (docs/observability.md)
    limits: KeyLimits | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError(f"name: must not be empty, got {self.name!r}")
        if self.models is not None and not all(isinstance(m, str) and m.strip() for m in self.models):
            raise ValueError(f"models: must be a list of model names, got {self.models!r}")


@dataclass(frozen=True)
class HttpConfig:
    """The OpenAI/Anthropic-compatible HTTP listener of a node (docs/http.md). Off when ``listen`` is absent."""

    listen: str | None = None
    auth: Literal["keys", "none"] = "keys"
    keys: list[HttpKey] = field(default_factory=list)
    threads: int = 64                       # worker threads (a stream holds one for its length)
    max_in_flight: int | None = None        # calls at once, beyond: 429 + retry-after (default threads - 4)
    connection_limit: int = 1000            # open connections, idle or slow ones included
    max_connections_per_client: int = 100   # open connections from one client address; beyond: 429 at accept
    max_body_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    read_timeout_s: float = 30.0            # a connection silent this long between requests is closed
    header_timeout_s: float = 10.0          # a request's headers must arrive within this long; beyond: 408
    body_timeout_s: float = 60.0            # its body within this long of its headers; beyond: 408
    request_timeout_s: float = 600.0        # a call's deadline at the node when the caller gives none
    drain_timeout_s: float = 30.0           # on stop: finish what is in flight for up to this long

    def __post_init__(self) -> None:
        if self.listen is not None:
            host, _ = parse_listen(self.listen)
            if self.auth == "none" and host not in LOOPBACK_HOSTS:
                raise ValueError(f"auth: 'none' is allowed on a loopback listener only, got listen {self.listen!r}")
            if self.auth == "keys" and not self.keys:
                raise ValueError("keys: no keys given, so every request would be refused; add keys "
                                 "(python launch.py key new) or set auth: none on a loopback listener, got []")
        first: dict[str, int] = {}
        for i, key in enumerate(self.keys):
            if key.name in first:
                raise ValueError(f"keys[{i}].name: key names must be unique, got {key.name!r} again")
            first[key.name] = i
        for name in ("threads", "connection_limit"):
            _at_least(name, getattr(self, name), 1)
        if self.max_in_flight is not None and not 1 <= self.max_in_flight <= self.threads:
            raise ValueError(f"max_in_flight: must be in 1..threads ({self.threads}), got {self.max_in_flight!r}")
        _at_least("max_body_bytes", self.max_body_bytes, 1024)
        _at_least("max_header_bytes", self.max_header_bytes, 1024)
        _at_least("max_connections_per_client", self.max_connections_per_client, 1)
        if self.max_connections_per_client > self.connection_limit:
            raise ValueError(f"max_connections_per_client: must be at most connection_limit ({self.connection_limit}), "
                             f"got {self.max_connections_per_client!r}")
        for name in ("read_timeout_s", "request_timeout_s", "header_timeout_s", "body_timeout_s"):
            _positive(name, getattr(self, name))
        _at_least("drain_timeout_s", self.drain_timeout_s, 0)

    @property
    def call_limit(self) -> int:
        """Calls served at once; the threads left over answer refusals and health checks at once."""
        return self.max_in_flight if self.max_in_flight is not None else max(1, self.threads - 4)

    @property
    def address(self) -> tuple[str, int] | None:
        return parse_listen(self.listen) if self.listen is not None else None

    def with_listen(self, listen: str) -> "HttpConfig":
        """This section listening on ``listen`` instead (``launch.py --http HOST:PORT``)."""
        return dataclasses.replace(self, listen=listen)


@dataclass(frozen=True)
class GatewayConfig:
    deployments: list[DeploymentConfig]
    node: NodeConfig = field(default_factory=NodeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    mock_provider: MockProviderConfig | None = None
    http: HttpConfig | None = None
    budgets: list[BudgetSpec] = field(default_factory=list)   # spend budgets in USD (docs/spend.md)
    routing: RoutingPolicy = field(default_factory=RoutingPolicy)

    def __post_init__(self) -> None:
        if not self.deployments:
            raise ValueError("deployments: at least one deployment is needed, got none")
        check_models(self.routing, [d.model for d in self.deployments], [d.name for d in self.deployments])
        first: dict[str, int] = {}
        for i, d in enumerate(self.deployments):
            if d.name in first:
                raise ValueError(f"deployments[{i}].name: deployment names must be unique, got {d.name!r} "
                                 f"again (first at deployments[{first[d.name]}].name)")
            first[d.name] = i
        if self.http is not None and self.routing.cross_node == "local_only":
            served = {d.model for d in self.deployments} | {d.name for d in self.deployments}
            for i, key in enumerate(self.http.keys):
                if key.models is not None and not served & set(key.models):
                    # Requests stay on this node (routing.cross_node: local_only): a key whose models
                    # this node does not serve can call nothing here, which is never what was meant.
                    raise ValueError(
                        f"http.keys[{i}].models: key {key.name!r} may use only models no deployment of this node "
                        f"serves ({', '.join(repr(m) for m in key.models) or 'none'}); served here: "
                        f"{', '.join(sorted({d.model for d in self.deployments}))}")
        for i, d in enumerate(self.deployments):
            if not d.limits.unlimited and d.limit_key.startswith(KEY_BUDGET_PREFIX):
                raise ValueError(f"deployments[{i}].limits.key: budget names starting with {KEY_BUDGET_PREFIX!r} "
                                 f"are the HTTP keys' own budgets; got {d.limit_key!r}")
            if self.mock_provider is None and d.endpoint == MOCK_ENDPOINT:
                raise ValueError(f"deployments[{i}].endpoint: endpoint {MOCK_ENDPOINT!r} needs a "
                                 f"mock_provider section")

    def deployment(self, name: str) -> DeploymentConfig:
        for d in self.deployments:
            if d.name == name:
                return d
        raise KeyError(name)
