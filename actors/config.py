"""Gateway configuration: YAML -> validated, immutable dataclasses, checked once at the edge.

Every section is a frozen dataclass; :func:`build` walks the YAML against the type hints,
so an unknown key, a wrong type, a missing field or a value the dataclass rejects stops
the launch with one :class:`ConfigError` naming the file, the path to the field and what
was expected.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .breaker import BreakerConfig
from .errors import ConfigError
from .ratelimit import RateLimits
from .retry import RetryPolicy

__all__ = [
    "CredentialSource", "Timeouts", "Price", "DeploymentConfig", "NodeConfig", "MockProviderConfig",
    "ClusterConfig", "GatewayConfig", "PROVIDERS", "MOCK_ENDPOINT", "build", "load_config",
    "parse_config", "check_credentials",
]

PROVIDERS = ("openai", "openai_responses", "azure_openai", "openai_compatible", "anthropic", "gemini",
             "cohere", "bedrock")
Provider = Literal["openai", "openai_responses", "azure_openai", "openai_compatible", "anthropic", "gemini",
                   "cohere", "bedrock"]
MOCK_ENDPOINT = "mock"


@dataclass(frozen=True)
class CredentialSource:
    """Where a secret comes from; exactly one of env, file, value, command.

    ``command`` output is either the token itself (valid ``ttl_s``) or JSON with ``token``
    (or AWS credential-process fields) and ``expires_at``/``expires_in``. Credentials are
    re-resolved ``refresh_margin_s`` before they expire, every ``refresh_s`` when set, and
    after the provider answers 401.
    """

    env: str | None = None
    file: str | None = None
    value: str | None = None
    command: list[str] | None = None
    ttl_s: float | None = None
    refresh_s: float | None = None
    refresh_margin_s: float = 60.0
    command_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        given = [k for k in ("env", "file", "value", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file, value, command"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.command is not None and not self.command:
            raise ValueError("command must not be empty")
        for name in ("ttl_s", "refresh_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.refresh_margin_s < 0 or self.command_timeout_s <= 0:
            raise ValueError("refresh_margin_s must be >= 0 and command_timeout_s > 0")

    def __repr__(self) -> str:
        # The literal form never shows its value.
        shown = {k: getattr(self, k) for k in ("env", "file", "command") if getattr(self, k) is not None}
        if self.value is not None:
            shown["value"] = "***"
        return f"CredentialSource({shown})"


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 5.0
    read_s: float = 60.0
    total_s: float = 600.0

    def __post_init__(self) -> None:
        if min(self.connect_s, self.read_s, self.total_s) <= 0:
            raise ValueError("timeouts must be > 0")


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None
    version: str = ""

    def __post_init__(self) -> None:
        if min(self.input, self.output, self.cached_input or 0) < 0:
            raise ValueError("prices must be >= 0")


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


# --- the validator -------------------------------------------------------------------

def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", bool: "a boolean", str: "a string"}.get(
        type(value), type(value).__name__ + f" {value!r}")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"expected {_describe(tp)}, got {value!r}", path=path)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"expected {_describe(tp)}, got {_kind(value)}", path=path)
        (inner,) = typing.get_args(tp)
        return [_convert(inner, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {_kind(value)}", path=path)
        key_tp, value_tp = typing.get_args(tp)
        return {_convert(key_tp, k, f"{path}.{k}"): _convert(value_tp, v, f"{path}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"expected {_describe(tp)}, got {_kind(value)}", path=path)


def build(cls: type, data: Any, path: str = "") -> Any:
    """Instantiate dataclass ``cls`` from plain YAML data, or raise ConfigError at ``path``."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {_kind(data)}", path=path)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; expected one of {', '.join(sorted(fields))}",
                          path=f"{prefix}{unknown[0]}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required field ({_describe(hints[name])})", path=f"{prefix}{name}")
            continue
        kwargs[name] = _convert(hints[name], data[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc), path=path or cls.__name__) from None


# --- loading -------------------------------------------------------------------------

def check_credentials(config: GatewayConfig, environ: typing.Mapping[str, str] = os.environ) -> None:
    """Fail fast on credentials that cannot possibly resolve on this node."""
    for i, dep in enumerate(config.deployments):
        cred = dep.credentials
        path = f"deployments[{i}].credentials"
        if cred is None:
            continue
        if cred.env is not None and not environ.get(cred.env):
            raise ConfigError(f"environment variable {cred.env} is not set (deployment {dep.name!r})",
                              path=f"{path}.env")
        if cred.file is not None and not os.access(os.path.expanduser(cred.file), os.R_OK):
            raise ConfigError(f"credential file {cred.file} is not readable", path=f"{path}.file")
        if cred.command is not None and shutil.which(cred.command[0]) is None:
            raise ConfigError(f"credential command {cred.command[0]!r} not found on PATH", path=f"{path}.command")


def parse_config(data: Any, source: str = "<config>", *, credentials: bool = True,
                 environ: typing.Mapping[str, str] = os.environ) -> GatewayConfig:
    from .providers import make_runner  # runners validate their provider-specific options

    try:
        config = build(GatewayConfig, data)
        for i, dep in enumerate(config.deployments):
            try:
                make_runner(dep)
            except ConfigError as exc:
                exc.path = f"deployments[{i}].{exc.path}" if exc.path else f"deployments[{i}]"
                raise
        if credentials:
            check_credentials(config, environ)
    except ConfigError as exc:
        exc.path = f"{source}: {exc.path}" if exc.path else source
        raise
    return config


def load_config(path: str | os.PathLike, **kw: Any) -> GatewayConfig:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", path=source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", path=source) from None
    config = parse_config(data, source, **kw)
    secret_file = config.cluster.secret_file
    if secret_file is not None:
        # Relative to the config file, so a deployment directory can be moved whole.
        secret_file = os.path.join(os.path.dirname(os.path.abspath(source)), os.path.expanduser(secret_file))
        config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, secret_file=secret_file))
    return config
