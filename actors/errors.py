"""One typed error hierarchy for everything that can go wrong with a remote inference call.

Errors travel between processes and hosts as Thespian messages, so every field is a plain
value and every class pickles with all its fields (see ``__reduce__``). Class attributes
say how the rest of the system treats an error: ``retryable`` (the default; one instance
may override it, e.g. from ``x-should-retry``) and ``counts_for_breaker`` (only signs that
the upstream itself is unhealthy trip a circuit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from actors.types import AttemptInfo

__all__ = [
    "InferenceError",
    "RateLimited",
    "Overloaded",
    "ServerError",
    "Timeout",
    "NetworkError",
    "StreamError",
    "AuthenticationError",
    "PermissionDenied",
    "NotFound",
    "Conflict",
    "BadRequest",
    "ContextLengthExceeded",
    "ContentFiltered",
    "CircuitOpen",
    "BudgetExceeded",
    "LeaderUnavailable",
    "QueueFull",
    "Cancelled",
    "DeadlineExceeded",
    "ShuttingDown",
    "WorkerCrashed",
    "InternalError",
    "EngineCrashed",
    "GatewayUnavailable",
    "GatewayTimeout",
    "CredentialUnavailable",
    "ConfigError",
    "ALL_ERROR_CLASSES",
]


def _restore(cls: type["InferenceError"], fields: dict[str, Any]) -> "InferenceError":
    err = cls.__new__(cls)
    Exception.__init__(err, fields.get("message", ""))
    err.__dict__.update(fields)
    return err


class InferenceError(Exception):
    """Base of every error the project raises or sends."""

    kind: ClassVar[str] = "inference_error"
    default_retryable: ClassVar[bool] = False
    counts_for_breaker: ClassVar[bool] = False
    # Every attempt of the call, on an error a GatewayClient raises (docs/routing.md); set per instance.
    attempt_log: Sequence[AttemptInfo] = ()

    def __init__(
        self,
        message: str = "",
        *,
        provider: str = "",
        status: int | None = None,
        retry_after_s: float | None = None,
        request_id: str = "",
        retryable: bool | None = None,
        partial_usage: dict[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status = status
        self.retry_after_s = retry_after_s
        self.request_id = request_id
        self.retryable = self.default_retryable if retryable is None else retryable
        # Usage already consumed when the call failed (e.g. a stream cut after some tokens),
        # so that accounting and billing never lose it.
        self.partial_usage = partial_usage

    def __reduce__(self) -> tuple[Callable[[type[InferenceError], dict[str, Any]], InferenceError],
                                  tuple[type[InferenceError], dict[str, Any]]]:
        return (_restore, (type(self), dict(self.__dict__)))

    def fields(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        parts = [self.kind]
        if self.provider:
            parts.append(f"provider={self.provider}")
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.retry_after_s is not None:
            parts.append(f"retry_after={self.retry_after_s:g}s")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        head = " ".join(parts)
        return f"{head}: {self.message}" if self.message else head

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if v not in (None, "", {}))
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    __hash__ = Exception.__hash__


# --- upstream said "not now": retry later, does not mean the upstream is broken ---

class RateLimited(InferenceError):
    """The provider answered 429 (or its equivalent)."""

    kind = "rate_limited"
    default_retryable = True


class Conflict(InferenceError):
    """409: a transient conflict on the provider side (e.g. a lock timeout)."""

    kind = "conflict"
    default_retryable = True


# --- upstream unhealthy: retryable, and trips the circuit ---

class ServerError(InferenceError):
    kind = "server_error"
    default_retryable = True
    counts_for_breaker = True


class Overloaded(ServerError):
    """The provider is shedding load (Anthropic 529 ``overloaded_error``)."""

    kind = "overloaded"


class Timeout(InferenceError):
    kind = "timeout"
    default_retryable = True
    counts_for_breaker = True


class NetworkError(InferenceError):
    """Connection refused, reset or failed before a response arrived."""

    kind = "network_error"
    default_retryable = True
    counts_for_breaker = True


class StreamError(InferenceError):
    """The response stream broke: malformed framing or a disconnect mid-stream."""

    kind = "stream_error"
    default_retryable = True
    counts_for_breaker = True


# --- the request itself is wrong: never retried, never trips the circuit ---

class AuthenticationError(InferenceError):
    """401: the credential was rejected (the session refreshes it)."""

    kind = "authentication_error"


class PermissionDenied(InferenceError):
    kind = "permission_denied"


class NotFound(InferenceError):
    kind = "not_found"


class BadRequest(InferenceError):
    kind = "bad_request"


class ContextLengthExceeded(BadRequest):
    kind = "context_length_exceeded"

    def __init__(self, message: str = "", *, tokens: int | None = None,
                 max_tokens: int | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.tokens = tokens
        self.max_tokens = max_tokens


class ContentFiltered(InferenceError):
    """The provider refused the prompt or the completion on policy grounds."""

    kind = "content_filtered"

    def __init__(self, message: str = "", *, reason: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reason = reason


# --- raised by this project, not by the provider ---

class CircuitOpen(InferenceError):
    """The breaker for (provider, endpoint) is open; nothing was sent."""

    kind = "circuit_open"

    def __init__(self, message: str = "", *, endpoint: str = "", opened_at_unix_ms: int = 0,
                 retry_at_unix_ms: int = 0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.endpoint = endpoint
        self.opened_at_unix_ms = opened_at_unix_ms
        self.retry_at_unix_ms = retry_at_unix_ms


class BudgetExceeded(InferenceError):
    """This cluster's own rate limit (RPM/TPM budget) refused the request."""

    kind = "budget_exceeded"
    default_retryable = True

    def __init__(self, message: str = "", *, limit: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.limit = limit


class LeaderUnavailable(InferenceError):
    """Strict admission needs the convention leader and it cannot be reached."""

    kind = "leader_unavailable"
    default_retryable = True


class QueueFull(InferenceError):
    kind = "queue_full"


class Cancelled(InferenceError):
    kind = "cancelled"


class DeadlineExceeded(InferenceError):
    kind = "deadline_exceeded"


class ShuttingDown(InferenceError):
    """The engine stopped before the request could finish."""

    kind = "shutting_down"


class WorkerCrashed(InferenceError):
    """The worker process died while it held the request."""

    kind = "worker_crashed"


class InternalError(InferenceError):
    """A bug: an unexpected exception inside the gateway."""

    kind = "internal_error"


class EngineCrashed(InferenceError):
    """The engine that held the request died; retryable when no token had reached the caller."""

    kind = "engine_crashed"
    default_retryable = True


class GatewayUnavailable(InferenceError):
    """No gateway node answers at that address (nothing listens, or it refuses this client)."""

    kind = "gateway_unavailable"
    default_retryable = True


class GatewayTimeout(Timeout):
    """The client waited past the request's deadline (plus a grace) and heard nothing from the node.

    A Timeout, but the client's own: it says nothing about the provider's health."""

    kind = "gateway_timeout"
    counts_for_breaker = False


class CredentialUnavailable(AuthenticationError):
    """The deployment's credential could not be resolved (variable unset, file unreadable)."""

    kind = "credential_unavailable"


class ConfigError(Exception):
    """Configuration is invalid; ``path`` names the file and field.

    Not an InferenceError: a bad configuration is the operator's to fix, not a call's
    outcome, and ``except InferenceError`` around a call must not swallow it.
    """

    kind: ClassVar[str] = "config_error"

    def __init__(self, message: str = "", *, path: str = "", **kw: Any) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        # Accepted for callers that pass InferenceError's keywords; kept so they pickle too.
        self.__dict__.update(kw)

    def __reduce__(self) -> tuple[Callable[[type[ConfigError], dict[str, Any]], ConfigError],
                                  tuple[type[ConfigError], dict[str, Any]]]:
        return (_restore_config, (type(self), dict(self.__dict__)))

    def fields(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    __hash__ = Exception.__hash__

    def __repr__(self) -> str:
        return f"ConfigError(path={self.path!r}, message={self.message!r})"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def _restore_config(cls: type["ConfigError"], fields: dict[str, Any]) -> "ConfigError":
    err = cls.__new__(cls)
    Exception.__init__(err, fields.get("message", ""))
    err.__dict__.update(fields)
    return err


# --- the upstream's answer is unusable as sent (helper D: transport and size limits) ---

class EmptyResponse(InferenceError):
    """The provider answered 2xx with no event or body at all (e.g. an over-long prompt that a
    server answers with an empty 200). Retried once at most (``max_retries``), and not a sign of
    an unhealthy upstream: one caller's input must not open the circuit for everyone."""

    kind = "empty_response"
    default_retryable = True
    max_retries: ClassVar[int] = 1


class ResponseTooLarge(InferenceError):
    """The response passed a size limit of the deployment (``response_limits``): reading stopped there."""

    kind = "response_too_large"

    def __init__(self, message: str = "", *, limit: str = "", limit_bytes: int = 0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.limit = limit
        self.limit_bytes = limit_bytes


class UpstreamRejected(BadRequest):
    """The upstream failed this request with an HTTP 5xx and a message while it served calls sent
    after it (docs/reliability.md, "Whose fault is a failure"): llama.cpp, vLLM and many internal
    servers answer 500 to input they cannot handle. So it is the request the upstream rejects, not
    the deployment that is sick: never retried, never counted against the circuit. ``status`` is
    the upstream's own (e.g. 500); ``message`` says what the upstream said."""

    kind = "upstream_rejected"


__all__ += ["EmptyResponse", "ResponseTooLarge", "UpstreamRejected"]


def _all_subclasses(cls: type[InferenceError]) -> list[type[InferenceError]]:
    out: list[type[InferenceError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


ALL_ERROR_CLASSES: tuple[type[InferenceError], ...] = (InferenceError, *_all_subclasses(InferenceError))
